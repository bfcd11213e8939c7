// nvcuda::wmma for the one shape tokenPoolKernel.cu uses: m16n16k16, __half inputs, float accumulators.
// Every lane holds the whole 16 x 16 tile of an input fragment, but a lane computes and stores only the
// accumulator elements it owns (l, l + 32, ... of the row-major tile): as on the GPU, a warp-wide store
// writes the tile only if every lane of the warp takes part.
#pragma once
#include <type_traits>

#include "cuda_fp16.h"

namespace nvcuda
{
namespace wmma
{

struct matrix_a
{
};
struct matrix_b
{
};
struct accumulator
{
};
struct row_major
{
};
struct col_major
{
};
enum layout_t
{
    mem_row_major,
    mem_col_major
};

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment
{
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has the m16n16k16 shape only");
    T x[16][16];  // [row][column] of the tile
};

namespace detail
{
inline void check(const void* p, unsigned ldm, size_t element_bytes)
{
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fault("wmma: the pointer is not 256-bit aligned");
    if (ldm * element_bytes % 16 != 0) emu::fault("wmma: ldm is not a multiple of 16 bytes");
}
inline unsigned lane()
{
    return threadIdx.x % 32;
}  // the kernels' blocks are one-dimensional
}  // namespace detail

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const T& value)
{
    for (auto& row : f.x)
        for (T& e : row) e = value;
}

template <class Use, class T, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm)
{
    static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>);
    detail::check(p, ldm, sizeof(T));
    for (unsigned r = 0; r < 16; ++r)
        for (unsigned c = 0; c < 16; ++c)
            f.x[r][c] = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[r + c * ldm];
}

// The order and rounding of a tensor core's sums are its own; this adds the 16 exact products one at a time in
// float32, which is exact for small integers and within rounding otherwise.
template <class LayoutA, class LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __half, LayoutA>& a,
    const fragment<matrix_b, 16, 16, 16, __half, LayoutB>& b, const fragment<accumulator, 16, 16, 16, float>& c)
{
    fragment<accumulator, 16, 16, 16, float> result = c;
    for (unsigned e = detail::lane(); e < 256; e += 32)
    {
        const unsigned r = e / 16, col = e % 16;
        float sum = c.x[r][col];
        for (unsigned k = 0; k < 16; ++k) sum = std::fma(__half2float(a.x[r][k]), __half2float(b.x[k][col]), sum);
        result.x[r][col] = sum;
    }
    d = result;
}

inline void store_matrix_sync(
    float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout)
{
    detail::check(p, ldm, sizeof(float));
    for (unsigned e = detail::lane(); e < 256; e += 32)
    {
        const unsigned r = e / 16, c = e % 16;
        p[layout == mem_row_major ? r * ldm + c : r + c * ldm] = f.x[r][c];
    }
}

}  // namespace wmma
}  // namespace nvcuda
