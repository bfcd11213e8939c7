// Device helpers for the TokenPool kernels: conversions, the clamps of tpdeploy/tokenpool/reference.py, tie-breaking by
// packed (value, index) minima, and the per-image building blocks (top-K initialisation, grouping by cluster).
#pragma once

#include <cfloat>
#include <cub/block/block_scan.cuh>
#include <cuda_fp16.h>

namespace tokenpool
{

// Threads of the per-image kernels: one CTA per batch element, one token per thread (N <= TP_MAX_TOKENS).
constexpr int kImageThreads = 1024;
constexpr int kMaxTokens = 1024;
using ImageScan = cub::BlockScan<int, kImageThreads>;

__device__ __forceinline__ float to_float(float v)
{
    return v;
}
__device__ __forceinline__ float to_float(__half v)
{
    return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v)
{
    return __float2half_rn(v);
}

// op.py: order_w = W as float, NaN or <= 0 -> 0, +Inf -> FLT_MAX.
__device__ __forceinline__ float order_weight(float w)
{
    return w > 0.0f ? fminf(w, FLT_MAX) : 0.0f;
}

// op.py _clamp_finite_: NaN and +Inf -> FLT_MAX, negatives -> 0. Returns +0 (never -0), so that the float
// bits of every result order like its value.
__device__ __forceinline__ float clamp_distance(float d)
{
    return d < FLT_MAX ? (d > 0.0f ? d : 0.0f) : FLT_MAX;
}

// For non-negative v, the unsigned minimum of pack(v, i) is the smallest v, ties to the lowest i: one
// atomicMin gives an argmin with the reference's tie rule, whatever the order the threads arrive in.
__device__ __forceinline__ unsigned long long pack(float v, int i)
{
    return (static_cast<unsigned long long>(__float_as_uint(v)) << 32) | static_cast<unsigned>(i);
}
__device__ __forceinline__ int packed_index(unsigned long long p)
{
    return static_cast<int>(p & 0xffffffffu);
}
constexpr unsigned long long kPackedNone = ~0ull;

// Work on `rows` rows split among all threads of the CTA: thread t takes row t % rows and part t / rows of
// that row's range, so that the threads of a warp work on consecutive rows.
struct RowSplit
{
    int row, part, parts;
    bool active;
};
__device__ __forceinline__ RowSplit split_rows(int rows)
{
    const int t = threadIdx.x, parts = blockDim.x / rows;
    return {t % rows, t / rows, parts, t / rows < parts};
}

// [begin, end) of part `part` when `total` items are cut into `parts` contiguous ranges.
__device__ __forceinline__ void part_range(int part, int parts, int total, int& begin, int& end)
{
    const int len = (total + parts - 1) / parts;
    begin = min(total, part * len);
    end = min(total, begin + len);
}

// order_w[i] for the n tokens of one image.
template <typename TW>
__device__ void load_order_weights(const TW* w, int n, float* order_w)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x) order_w[i] = order_weight(to_float(w[i]));
}

// init[r] = the token of rank r < k in descending order_w, ties to the lowest index (a stable argsort):
// rank_i = #{j : w_j > w_i or (w_j == w_i and j < i)}. rank is scratch for n ints.
__device__ void top_k(const float* order_w, int n, int k, int* rank, int* init)
{
    if (threadIdx.x < n) rank[threadIdx.x] = 0;
    __syncthreads();
    const RowSplit s = split_rows(n);
    if (s.active)
    {
        int begin, end;
        part_range(s.part, s.parts, n, begin, end);
        const float wi = order_w[s.row];
        int ahead = 0;
        for (int j = begin; j < end; ++j) ahead += order_w[j] > wi || (order_w[j] == wi && j < s.row);
        atomicAdd(&rank[s.row], ahead);  // integer sums: the order does not matter
    }
    __syncthreads();
    if (threadIdx.x < n && rank[threadIdx.x] < k) init[rank[threadIdx.x]] = threadIdx.x;
    __syncthreads();
}

// Each token's nearest centre, ties to the lowest centre: assign[i] = argmin_c dist(i, c) over c < k.
// nearest is scratch for n packed values.
template <typename Dist>
__device__ void assign_nearest(int n, int k, Dist dist, unsigned long long* nearest, int* assign)
{
    if (threadIdx.x < n) nearest[threadIdx.x] = kPackedNone;
    __syncthreads();
    const RowSplit s = split_rows(n);
    int begin = 0, end = 0;
    if (s.active) part_range(s.part, s.parts, k, begin, end);
    if (begin < end)
    {
        float best = FLT_MAX;
        int best_c = begin;
        for (int c = begin; c < end; ++c)
        {
            const float d = dist(s.row, c);
            if (d < best)
            {  // strict: the lowest centre keeps a tie
                best = d;
                best_c = c;
            }
        }
        atomicMin(&nearest[s.row], pack(best, best_c));
    }
    __syncthreads();
    if (threadIdx.x < n) assign[threadIdx.x] = packed_index(nearest[threadIdx.x]);
    __syncthreads();
}

// A deterministic counting sort: members[start[c] .. start[c + 1]) are the tokens of cluster c in ascending
// order. Thread t counts, then lists, the members of cluster t / parts in token range t % parts, so the
// thread order is the (cluster, range) order and one exclusive scan of the counts gives every offset.
__device__ void group_by_cluster(
    const int* assign, int n, int k, int* start, int* members, ImageScan::TempStorage& scan)
{
    const int parts = blockDim.x / k, cluster = threadIdx.x / parts;
    const bool active = cluster < k;
    int begin = 0, end = 0;
    if (active) part_range(threadIdx.x % parts, parts, n, begin, end);
    int count = 0;
    for (int i = begin; i < end; ++i) count += assign[i] == cluster;
    int offset;
    ImageScan(scan).ExclusiveSum(count, offset);
    if (active && threadIdx.x % parts == 0) start[cluster] = offset;
    if (threadIdx.x == 0) start[k] = n;
    for (int i = begin; i < end; ++i)
        if (assign[i] == cluster) members[offset++] = i;
    __syncthreads();
}

// out[r] = sum of squares of row r (float32 products, then a fixed lane-strided sum and shuffle tree: as
// op.py's (x * x).sum(2), deterministic). One warp per row.
template <typename T>
__device__ void row_square_norms(const T* rows, int count, int c, float* out)
{
    const int lane = threadIdx.x % 32;
    for (int r = threadIdx.x / 32; r < count; r += blockDim.x / 32)
    {
        float s = 0.0f;
        for (int ch = lane; ch < c; ch += 32)
        {
            const float v = to_float(rows[static_cast<size_t>(r) * c + ch]);
            s += __fmul_rn(v, v);  // rounded product, no fused multiply-add: as the reference
        }
        for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
        if (lane == 0) out[r] = s;
    }
}

}  // namespace tokenpool
