// tpdeploy::TokenPool CUDA kernels and their C launcher (API in tokenPoolKernel.h, design in README.md).
//
// Kernels, in launch order:
//   kmedoids (and T = 0):  gram_f16 | dot_simt (G = X Xᵀ)  ->  select_medoids  ->  gather_rows
//   kmeans (T > 0):        kmeans_init  ->  T x (dot_simt (C Xᵀ), kmeans_step)  ->  cast_centres
// Every step is deterministic (no floating-point atomics) and follows tpdeploy/tokenpool/reference.py's arithmetic.
#include "tokenPoolKernel.h"

#include <algorithm>
#include <cstdint>
#include <mma.h>

#include "tokenPoolKernel.cuh"

namespace tokenpool
{
namespace
{

// Tile (tr, tc), tc >= tr, of the upper triangle of a tiles x tiles grid, numbered row by row.
__device__ void upper_tile(int t, int tiles, int& tr, int& tc)
{
    for (tr = 0; t >= tiles - tr; ++tr) t -= tiles - tr;  // row tr holds tiles - tr upper tiles
    tc = tr + t;
}

// --- G = X Xᵀ in fp16 on tensor cores (fp32 accumulation) ----------------------------------------------------
constexpr int kGramTile = 128, kGramDepth = 64, kGramPad = 8, kGramThreads = 256;
using GramTile = __half[kGramTile][kGramDepth + kGramPad];  // padded rows: fewer bank conflicts, 16-byte rows

// tile[r][q] = x[row0 + r][d0 + q], zero outside the n x c matrix.
__device__ void load_gram_tile(const __half* x, int n, int c, int row0, int d0, bool vec, GramTile& tile)
{
    if (vec)
    {  // 16-byte loads: c % 8 == 0 and x 16-byte aligned
        constexpr int per_row = kGramDepth / 8;
        for (int v = threadIdx.x; v < kGramTile * per_row; v += blockDim.x)
        {
            const int r = v / per_row, q = v % per_row * 8, row = row0 + r, d = d0 + q;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (row < n && d < c) val = *reinterpret_cast<const uint4*>(x + static_cast<size_t>(row) * c + d);
            *reinterpret_cast<uint4*>(&tile[r][q]) = val;
        }
    }
    else
    {
        for (int e = threadIdx.x; e < kGramTile * kGramDepth; e += blockDim.x)
        {
            const int r = e / kGramDepth, q = e % kGramDepth, row = row0 + r, d = d0 + q;
            tile[r][q] = row < n && d < c ? x[static_cast<size_t>(row) * c + d] : __float2half(0.0f);
        }
    }
}

// One 128 x 128 tile of the upper triangle of G per CTA (8 warps of 32 x 64), stored with its mirror so that
// G is symmetric bit for bit. gram is [B, ld, ld], ld = n rounded up to 16 (whole 16 x 16 fragments).
__global__ void __launch_bounds__(kGramThreads) gram_f16(const __half* x, float* gram, int n, int c, int ld, bool vec)
{
    namespace wmma = nvcuda::wmma;
    __shared__ __align__(32) GramTile as, bs;
    int tr, tc;
    upper_tile(blockIdx.x, (n + kGramTile - 1) / kGramTile, tr, tc);
    const bool diagonal = tr == tc;  // A and B are the same rows: load them once
    const GramTile& b_tile = diagonal ? as : bs;
    x += static_cast<size_t>(blockIdx.y) * n * c;
    gram += static_cast<size_t>(blockIdx.y) * ld * ld;
    const int warp = threadIdx.x / 32, wr = warp / 2 * 32, wc = warp % 2 * 64;  // the warp's 32 x 64 in the tile
    const int row0 = tr * kGramTile + wr, col0 = tc * kGramTile + wc;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    for (int d0 = 0; d0 < c; d0 += kGramDepth)
    {
        load_gram_tile(x, n, c, tr * kGramTile, d0, vec, as);
        if (!diagonal) load_gram_tile(x, n, c, tc * kGramTile, d0, vec, bs);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kGramDepth; k += 16)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[4];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &as[wr + 16 * i][k], kGramDepth + kGramPad);
#pragma unroll
            for (int j = 0; j < 4; ++j) wmma::load_matrix_sync(fb[j], &b_tile[wc + 16 * j][k], kGramDepth + kGramPad);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (row0 + 16 * i < n && col0 + 16 * j < n)  // skip fragments of padding only
                        wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
        {
            const int row = row0 + 16 * i, col = col0 + 16 * j;
            if (row >= ld || col >= ld) continue;
            wmma::store_matrix_sync(gram + static_cast<size_t>(row) * ld + col, acc[i][j], ld, wmma::mem_row_major);
            if (!diagonal)
                wmma::store_matrix_sync(gram + static_cast<size_t>(col) * ld + row, acc[i][j], ld, wmma::mem_col_major);
        }
}

// --- out = A Bᵀ in fp32 on CUDA cores: the float32 Gram matrix and the k-means dot products -----------------
constexpr int kDotTile = 64, kDotDepth = 16, kDotThreads = 256;

template <typename TA, typename TB>
struct DotArgs
{
    const TA* a;  // [rows, depth] per image
    const TB* b;  // [cols, depth] per image
    float* out;   // out[r * ld + s] = a_r · b_s
    int rows, cols, depth, ld;
    size_t a_image, b_image, out_image;  // strides between images, in elements
    const int* skip;                     // images to leave alone (converged), or null
    bool symmetric;                      // a == b: compute the upper tiles only and store each with its mirror
};

// Each output is one fused multiply-add chain over the channels in ascending order, the same for every
// position, so a_r · b_s == b_s · a_r bit for bit and identical rows give identical dot products.
template <typename TA, typename TB>
__global__ void __launch_bounds__(kDotThreads) dot_simt(DotArgs<TA, TB> p)
{
    if (p.skip && p.skip[blockIdx.y]) return;
    __shared__ float as[kDotDepth][kDotTile + 4], bs[kDotDepth][kDotTile + 4];  // depth-major
    const int tiles_c = (p.cols + kDotTile - 1) / kDotTile;
    int tr, tc;
    if (p.symmetric)
    {
        upper_tile(blockIdx.x, tiles_c, tr, tc);
    }
    else
    {
        tr = blockIdx.x / tiles_c;
        tc = blockIdx.x % tiles_c;
    }
    const int r0 = tr * kDotTile, c0 = tc * kDotTile;
    const TA* a = p.a + blockIdx.y * p.a_image;
    const TB* b = p.b + blockIdx.y * p.b_image;
    float* out = p.out + blockIdx.y * p.out_image;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;                        // 4 x 4 outputs, 16 apart
    const int load_d = threadIdx.x % kDotDepth, load_r = threadIdx.x / kDotDepth;  // a warp loads 2 row pieces

    float acc[4][4] = {};
    for (int d0 = 0; d0 < p.depth; d0 += kDotDepth)
    {
        const int d = d0 + load_d;
#pragma unroll
        for (int e = 0; e < kDotTile; e += kDotThreads / kDotDepth)
        {
            const int ra = r0 + load_r + e, rb = c0 + load_r + e;
            as[load_d][load_r + e]
                = ra < p.rows && d < p.depth ? to_float(a[static_cast<size_t>(ra) * p.depth + d]) : 0.0f;
            bs[load_d][load_r + e]
                = rb < p.cols && d < p.depth ? to_float(b[static_cast<size_t>(rb) * p.depth + d]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kDotDepth; ++k)
        {
            float av[4], bv[4];
#pragma unroll
            for (int m = 0; m < 4; ++m)
            {
                av[m] = as[k][ty + 16 * m];
                bv[m] = bs[k][tx + 16 * m];
            }
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[m][q] = __fmaf_rn(av[m], bv[q], acc[m][q]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int q = 0; q < 4; ++q)
        {
            const int r = r0 + ty + 16 * m, s = c0 + tx + 16 * q;
            if (r >= p.rows || s >= p.cols) continue;
            out[static_cast<size_t>(r) * p.ld + s] = acc[m][q];
            if (p.symmetric && tr != tc) out[static_cast<size_t>(s) * p.ld + r] = acc[m][q];
        }
}

// --- per image: top-K initialisation and the k-medoids iterations --------------------------------------------

// medoids_out[image] = the K chosen tokens, in initialisation order. gram is null when iterations == 0.
template <typename TW>
__global__ void __launch_bounds__(kImageThreads)
    select_medoids(const float* gram, int ld, const TW* w, int* medoids_out, int n, int k, int iterations, int weighted)
{
    __shared__ float order_w[kMaxTokens], sq[kMaxTokens], partial[kImageThreads];
    __shared__ int assign[kMaxTokens], medoid[kMaxTokens], scratch[kMaxTokens];
    __shared__ unsigned long long nearest[kMaxTokens], best[kMaxTokens];
    const int image = blockIdx.x, t = threadIdx.x;
    load_order_weights(w + static_cast<size_t>(image) * n, n, order_w);
    __syncthreads();
    top_k(order_w, n, k, scratch, medoid);
    if (iterations == 0)
    {
        if (t < k) medoids_out[static_cast<size_t>(image) * k + t] = medoid[t];
        return;
    }
    gram += static_cast<size_t>(image) * ld * ld;
    if (t < n) sq[t] = gram[static_cast<size_t>(t) * ld + t];  // read after assign_nearest's first barrier

    // op.py: D_ij = (g_ii + g_jj) - 2 g_ij, clamped. G is symmetric, so the warp reads along row j.
    auto dist
        = [&](int i, int j) { return clamp_distance((sq[i] + sq[j]) - 2.0f * gram[static_cast<size_t>(j) * ld + i]); };
    auto cluster_w = [&](int j) { return weighted ? order_w[j] : 1.0f; };
    for (int it = 0; it < iterations; ++it)
    {
        if (t < k)
        {
            best[t] = kPackedNone;
            scratch[t] = 0;  // now: does cluster t have a member with weight?
        }
        assign_nearest(n, k, [&](int i, int c) { return dist(i, medoid[c]); }, nearest, assign);

        // cost_i = sum over the members j of i's cluster of w_j D_ij: partial sums over token ranges, ...
        const RowSplit s = split_rows(n);
        if (s.active)
        {
            int begin, end;
            part_range(s.part, s.parts, n, begin, end);
            const int a = assign[s.row];
            float sum = 0.0f;
            for (int j = begin; j < end; ++j)
                if (assign[j] == a) sum = fmaf(cluster_w(j), dist(s.row, j), sum);
            partial[t] = sum;
        }
        __syncthreads();
        // ... added in a fixed order. The candidate medoid is the member of least cost, ties to the lowest index.
        if (t < n)
        {
            float cost = 0.0f;
            for (int part = 0; part < s.parts; ++part) cost += partial[part * n + t];
            const int a = assign[t];
            atomicMin(&best[a], pack(fminf(cost, FLT_MAX), t));
            if (cluster_w(t) > 0.0f) atomicOr(&scratch[a], 1);
        }
        __syncthreads();
        bool moved = false;
        if (t < k && scratch[t])
        {  // an empty or weightless cluster keeps its medoid
            const int m = packed_index(best[t]);
            moved = m != medoid[t];
            medoid[t] = m;
        }
        if (!__syncthreads_or(moved)) break;  // a fixed point: the remaining iterations would change nothing
    }
    if (t < k) medoids_out[static_cast<size_t>(image) * k + t] = medoid[t];
}

// y[image][r] = x[image][medoids[image][r]], copied bit for bit in units U (one row is `units` units).
template <typename U>
__global__ void gather_rows(const U* x, const int* medoids, U* y, int n, int k, int units, size_t count)
{
    for (size_t q = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; q < count;
        q += static_cast<size_t>(gridDim.x) * blockDim.x)
    {
        const size_t row = q / units;
        const size_t image = row / k;
        y[q] = x[(image * n + medoids[row]) * units + q % units];
    }
}

// --- per image: k-means ------------------------------------------------------------------------------------

// centres = X[init] as float32, sq_x = |x_i|², and the image marked as not converged.
template <typename TX, typename TW>
__global__ void __launch_bounds__(kImageThreads)
    kmeans_init(const TX* x, const TW* w, float* centres, float* sq_x, int* done, int n, int c, int k)
{
    __shared__ float order_w[kMaxTokens];
    __shared__ int rank[kMaxTokens], init[kMaxTokens];
    const int image = blockIdx.x;
    x += static_cast<size_t>(image) * n * c;
    centres += static_cast<size_t>(image) * k * c;
    load_order_weights(w + static_cast<size_t>(image) * n, n, order_w);
    __syncthreads();
    top_k(order_w, n, k, rank, init);
    for (int q = threadIdx.x; q < k * c; q += blockDim.x)
        centres[q] = to_float(x[static_cast<size_t>(init[q / c]) * c + q % c]);
    row_square_norms(x, n, c, sq_x + static_cast<size_t>(image) * n);
    if (threadIdx.x == 0) done[image] = 0;
}

// One k-means iteration of one image (nothing once it has converged), with dots[c][i] = centre_c · x_i:
// assign, then move each centre with weight to the weighted mean of its members, summed in ascending token
// order (as op.py's scatter_add). Marks the image done when no centre moved.
template <typename TX, typename TW>
__global__ void __launch_bounds__(kImageThreads) kmeans_step(const TX* x, const TW* w, const float* dots,
    const float* sq_x, float* centres, int* done, int n, int c, int k, int weighted)
{
    __shared__ float cluster_w[kMaxTokens], sqx[kMaxTokens], sqc[kMaxTokens], total[kMaxTokens];
    __shared__ int assign[kMaxTokens], members[kMaxTokens], start[kMaxTokens + 1];
    __shared__ unsigned long long nearest[kMaxTokens];
    __shared__ ImageScan::TempStorage scan;
    const int image = blockIdx.x, t = threadIdx.x;
    if (done[image]) return;
    x += static_cast<size_t>(image) * n * c;
    dots += static_cast<size_t>(image) * k * n;
    centres += static_cast<size_t>(image) * k * c;
    if (t < n)
    {
        const float ow = order_weight(to_float(w[static_cast<size_t>(image) * n + t]));
        cluster_w[t] = weighted ? ow : 1.0f;
        sqx[t] = sq_x[static_cast<size_t>(image) * n + t];
    }
    row_square_norms(centres, k, c, sqc);  // read after assign_nearest's first barrier
    assign_nearest(
        n, k,
        [&](int i, int cc) {
            return clamp_distance((sqx[i] + sqc[cc]) - 2.0f * dots[static_cast<size_t>(cc) * n + i]);
        },
        nearest, assign);
    group_by_cluster(assign, n, k, start, members, scan);
    if (t < k)
    {
        float sum = 0.0f;
        for (int m = start[t]; m < start[t + 1]; ++m) sum += cluster_w[members[m]];
        total[t] = sum;
    }
    __syncthreads();
    bool moved = false;
    for (int q = t; q < k * c; q += blockDim.x)
    {
        const int cc = q / c, ch = q % c;
        if (total[cc] > 0.0f)
        {  // an empty or weightless cluster keeps its centre
            float sum = 0.0f;
            for (int m = start[cc]; m < start[cc + 1]; ++m)
            {
                const int j = members[m];
                sum += __fmul_rn(
                    to_float(x[static_cast<size_t>(j) * c + ch]), cluster_w[j]);  // x * w rounded, as op.py
            }
            const float mean = sum / total[cc];
            // moved as torch.equal sees it (values: NaN moves, -0.0 == +0.0 does not), but the mean's bits are
            // stored either way: a +0.0 mean replaces a -0.0 centre, as op.py's `centres = new`
            moved |= mean != centres[q];
            centres[q] = mean;
        }
    }
    if (!__syncthreads_or(moved) && t == 0) done[image] = 1;
}

template <typename TX>
__global__ void cast_centres(const float* centres, TX* y, size_t count)
{
    for (size_t q = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; q < count;
        q += static_cast<size_t>(gridDim.x) * blockDim.x)
        y[q] = from_float<TX>(centres[q]);
}

// --- launcher ----------------------------------------------------------------------------------------------

constexpr size_t kAlign = 256;
size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}
int ceil_div(size_t a, size_t b)
{
    return static_cast<int>((a + b - 1) / b);
}
int gram_ld(int n)
{
    return static_cast<int>(align_up(n, 16));
}
bool selects_medoids(const tpParams& p)
{
    return p.mode == TP_KMEDOIDS || p.iterations == 0;
}

// Byte offsets of the workspace buffers, each 256-byte aligned.
struct Layout
{
    size_t medoids = 0, gram = 0, centres = 0, dots = 0, sq_x = 0, done = 0, bytes = 0;
};

Layout layout(const tpParams& p)
{
    Layout l;
    const size_t b = p.batch, n = p.tokens, c = p.channels, k = p.clusters, ld = gram_ld(p.tokens);
    auto take = [&l](size_t bytes) {
        const size_t at = l.bytes;
        l.bytes += align_up(bytes, kAlign);
        return at;
    };
    if (selects_medoids(p))
    {
        l.medoids = take(b * k * sizeof(int));
        if (p.iterations > 0) l.gram = take(b * ld * ld * sizeof(float));
    }
    else
    {
        l.centres = take(b * k * c * sizeof(float));
        l.dots = take(b * k * n * sizeof(float));
        l.sq_x = take(b * n * sizeof(float));
        l.done = take(b * sizeof(int));
    }
    return l;
}

tpStatus last_launch()
{
    return cudaGetLastError() == cudaSuccess ? TP_SUCCESS : TP_ERROR_CUDA;
}

// Blocks for a grid-stride loop over count items.
int stride_blocks(size_t count)
{
    return static_cast<int>(std::min<size_t>((count + 255) / 256, 8192));
}

tpStatus launch_gram(const __half* x, float* gram, const tpParams& p, cudaStream_t stream)
{
    const int tiles = ceil_div(p.tokens, kGramTile);
    const bool vec = p.channels % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    gram_f16<<<dim3(tiles * (tiles + 1) / 2, p.batch), kGramThreads, 0, stream>>>(
        x, gram, p.tokens, p.channels, gram_ld(p.tokens), vec);
    return last_launch();
}

tpStatus launch_gram(const float* x, float* gram, const tpParams& p, cudaStream_t stream)
{
    const int n = p.tokens, c = p.channels, ld = gram_ld(n), tiles = ceil_div(n, kDotTile);
    const DotArgs<float, float> args{
        x, x, gram, n, n, c, ld, size_t(n) * c, size_t(n) * c, size_t(ld) * ld, nullptr, true};
    dot_simt<<<dim3(tiles * (tiles + 1) / 2, p.batch), kDotThreads, 0, stream>>>(args);
    return last_launch();
}

template <typename U>
tpStatus gather(const void* x, const int* medoids, void* y, const tpParams& p, size_t row_bytes, cudaStream_t stream)
{
    const int units = static_cast<int>(row_bytes / sizeof(U));
    const size_t count = size_t(p.batch) * p.clusters * units;
    gather_rows<U><<<stride_blocks(count), 256, 0, stream>>>(
        static_cast<const U*>(x), medoids, static_cast<U*>(y), p.tokens, p.clusters, units, count);
    return last_launch();
}

template <typename TX, typename TW>
tpStatus launch(const tpParams& p, const TX* x, const TW* w, TX* y, char* workspace, cudaStream_t stream)
{
    const Layout l = layout(p);
    const int b = p.batch, n = p.tokens, c = p.channels, k = p.clusters;
    tpStatus status;
    if (selects_medoids(p))
    {
        int* medoids = reinterpret_cast<int*>(workspace + l.medoids);
        float* gram = nullptr;
        if (p.iterations > 0)
        {
            gram = reinterpret_cast<float*>(workspace + l.gram);
            if ((status = launch_gram(x, gram, p, stream)) != TP_SUCCESS) return status;
        }
        select_medoids<TW>
            <<<b, kImageThreads, 0, stream>>>(gram, gram_ld(n), w, medoids, n, k, p.iterations, p.weighted);
        if ((status = last_launch()) != TP_SUCCESS) return status;
        // the widest copy unit that divides the row and both base addresses
        const size_t row = size_t(c) * sizeof(TX),
                     bits = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y) | row;
        if (bits % 16 == 0) return gather<uint4>(x, medoids, y, p, row, stream);
        if (bits % 8 == 0) return gather<uint2>(x, medoids, y, p, row, stream);
        if (bits % 4 == 0) return gather<unsigned>(x, medoids, y, p, row, stream);
        return gather<unsigned short>(x, medoids, y, p, row, stream);
    }
    float* centres = reinterpret_cast<float*>(workspace + l.centres);
    float* dots = reinterpret_cast<float*>(workspace + l.dots);
    float* sq_x = reinterpret_cast<float*>(workspace + l.sq_x);
    int* done = reinterpret_cast<int*>(workspace + l.done);
    kmeans_init<TX, TW><<<b, kImageThreads, 0, stream>>>(x, w, centres, sq_x, done, n, c, k);
    if ((status = last_launch()) != TP_SUCCESS) return status;
    const DotArgs<float, TX> args{
        centres, x, dots, k, n, c, n, size_t(k) * c, size_t(n) * c, size_t(k) * n, done, false};
    const dim3 dot_grid(ceil_div(k, kDotTile) * ceil_div(n, kDotTile), b);
    for (int it = 0; it < p.iterations; ++it)
    {
        dot_simt<<<dot_grid, kDotThreads, 0, stream>>>(args);
        if ((status = last_launch()) != TP_SUCCESS) return status;
        kmeans_step<TX, TW><<<b, kImageThreads, 0, stream>>>(x, w, dots, sq_x, centres, done, n, c, k, p.weighted);
        if ((status = last_launch()) != TP_SUCCESS) return status;
    }
    const size_t count = size_t(b) * k * c;
    cast_centres<TX><<<stride_blocks(count), 256, 0, stream>>>(centres, y, count);
    return last_launch();
}

template <typename TX>
tpStatus launch_w(const tpParams& p, const void* x, const void* w, void* y, char* workspace, cudaStream_t stream)
{
    const TX* xt = static_cast<const TX*>(x);
    if (p.w_type == TP_FLOAT32)
        return launch(p, xt, static_cast<const float*>(w), static_cast<TX*>(y), workspace, stream);
    return launch(p, xt, static_cast<const __half*>(w), static_cast<TX*>(y), workspace, stream);
}

size_t type_size(tpDataType t)
{
    return t == TP_FLOAT16 ? 2 : 4;
}

}  // namespace
}  // namespace tokenpool

extern "C"
{

    tpStatus tokenPoolValidate(const tpParams* p)
    {
        if (p == nullptr) return TP_ERROR_INVALID_VALUE;
        const bool types_ok = (p->x_type == TP_FLOAT32 || p->x_type == TP_FLOAT16)
            && (p->w_type == TP_FLOAT32 || p->w_type == TP_FLOAT16);
        if (p->batch < 0 || p->tokens < 1 || p->channels < 1 || p->clusters < 1 || p->clusters > p->tokens
            || p->iterations < 0 || (p->mode != TP_KMEDOIDS && p->mode != TP_KMEANS)
            || (p->weighted != 0 && p->weighted != 1) || !types_ok)
            return TP_ERROR_INVALID_VALUE;
        if (p->tokens > TP_MAX_TOKENS || p->channels > TP_MAX_CHANNELS || p->batch > TP_MAX_BATCH)
            return TP_ERROR_UNSUPPORTED;
        return TP_SUCCESS;
    }

    size_t tokenPoolWorkspaceSize(const tpParams* params)
    {
        if (tokenPoolValidate(params) != TP_SUCCESS) return 0;
        const size_t bytes = tokenpool::layout(*params).bytes;
        return bytes == 0 ? 0 : bytes + tokenpool::kAlign;  // slack to align the base pointer
    }

    tpStatus tokenPoolLaunch(
        const tpParams* params, const void* x, const void* w, void* y, void* workspace, cudaStream_t stream)
    {
        using namespace tokenpool;
        const tpStatus status = tokenPoolValidate(params);
        if (status != TP_SUCCESS) return status;
        const tpParams& p = *params;
        if (p.batch == 0) return TP_SUCCESS;
        if (x == nullptr || w == nullptr || y == nullptr || workspace == nullptr) return TP_ERROR_INVALID_VALUE;
        const size_t xs = type_size(p.x_type), ws = type_size(p.w_type);
        if (reinterpret_cast<uintptr_t>(x) % xs || reinterpret_cast<uintptr_t>(y) % xs
            || reinterpret_cast<uintptr_t>(w) % ws)
            return TP_ERROR_INVALID_VALUE;
        // the buffers are laid out from the first 256-byte boundary: any workspace pointer will do
        char* scratch
            = static_cast<char*>(workspace) + (kAlign - reinterpret_cast<uintptr_t>(workspace) % kAlign) % kAlign;
        if (p.x_type == TP_FLOAT32) return launch_w<float>(p, x, w, y, scratch, stream);
        return launch_w<__half>(p, x, w, y, scratch, stream);
    }

    const char* tokenPoolStatusString(tpStatus status)
    {
        switch (status)
        {
        case TP_SUCCESS: return "success";
        case TP_ERROR_INVALID_VALUE:
            return "invalid value: params outside the TokenPool definition (sizes >= 1, 1 <= K <= N, T >= 0, known "
                   "mode "
                   "and data types, weighted 0 or 1) or a null or misaligned pointer";
        case TP_ERROR_UNSUPPORTED:
            return "unsupported: the TokenPool kernels take N <= 1024 tokens, C <= 65536 channels and batch <= 65535";
        case TP_ERROR_CUDA: return "CUDA error: a TokenPool kernel failed to launch";
        }
        return "unknown TokenPool status";
    }

}  // extern "C"
