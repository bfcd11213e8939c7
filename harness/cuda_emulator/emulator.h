// The subset of CUDA C++ that plugins/tokenpool uses, for g++ on a CPU (see README.md). Every CUDA thread is
// a fiber; build.py rewrites `kernel<<<grid, block, shared, stream>>>(args)` into emu::Launch and registers
// every __shared__ variable with emu::shared. Nothing here is fast; it exists to check the kernels' logic.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One CTA runs at a time, so a function-local static is the CTA's shared memory. build.py adds an
// emu::shared call after each declaration, which fills the variable with garbage at the start of every CTA.
#define __shared__ static

struct dim3
{
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
        : x(x_)
        , y(y_)
        , z(z_)
    {
    }
};
struct uint3
{
    unsigned x, y, z;
};
// Set by the scheduler before it resumes a thread. Kernels read them across calls into emulator.cpp, which
// the compiler must assume can change them, so no stale copy survives a thread switch.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

struct alignas(8) uint2
{
    unsigned x, y;
};
struct alignas(16) uint4
{
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w)
{
    return {x, y, z, w};
}

typedef struct emu_stream* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorLaunchFailure = 719;
// The emulator's fault (deadlock, bad launch, misaligned WMMA pointer...) of the last launch, then cleared.
cudaError_t cudaGetLastError();

// --- arithmetic: the build uses -ffp-contract=off, so a * b is one rounded product, as __fmul_rn ------------
inline float __fmul_rn(float a, float b)
{
    return a * b;
}
inline float __fmaf_rn(float a, float b, float c)
{
    return std::fma(a, b, c);
}
inline unsigned __float_as_uint(float f)
{
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline int min(int a, int b)
{
    return a < b ? a : b;
}

// --- synchronisation -----------------------------------------------------------------------------------
// All threads of the CTA must reach the same __syncthreads line (anything else is a fault, as divergent
// barriers are undefined in CUDA); threads that have returned never arrive, so waiting for them is a deadlock.
// Macros, because the source line names a barrier better than a return address, which optimisation duplicates.
#define __syncthreads() emu::sync_cta(0, __FILE__, __LINE__)
#define __syncthreads_or(predicate) emu::sync_cta((predicate) != 0, __FILE__, __LINE__)

namespace emu
{
int sync_cta(int predicate, const char* file, int line);  // returns the OR of all threads' predicates
// A thread runs without interruption from one barrier to the next, so a read-modify-write is atomic.
template <class T>
inline constexpr bool atomic_type
    = std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, unsigned long long>;
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane);  // a warp-wide barrier on both sides
void shared(void* variable, size_t bytes);                            // see __shared__ above
[[noreturn]] void fault(const char* what);                            // ends the launch with an error
}  // namespace emu

template <class T, class = std::enable_if_t<emu::atomic_type<T>>>
T atomicAdd(T* address, T value)
{
    const T old = *address;
    *address = old + value;
    return old;
}
template <class T, class = std::enable_if_t<emu::atomic_type<T>>>
T atomicOr(T* address, T value)
{
    const T old = *address;
    *address = old | value;
    return old;
}
template <class T, class = std::enable_if_t<emu::atomic_type<T>>>
T atomicMin(T* address, T value)
{
    const T old = *address;
    *address = value < old ? value : old;
    return old;
}

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "the emulator shuffles values of up to 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    bits = emu::warp_exchange(mask, bits, static_cast<int>(threadIdx.x % 32) ^ lane_mask);
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

// --- launches ------------------------------------------------------------------------------------------
namespace emu
{
// Runs body(arg) once per thread of every CTA of the grid, the CTAs one after the other.
void run_grid(dim3 grid, dim3 block, size_t dynamic_shared, void (*body)(void*), void* arg);

// `k<<<g, b, s, st>>>(args...)` becomes `emu::Launch(g, b, s, st)([](auto... a) { k(a...); })(args...)`:
// the generic lambda lets template argument deduction and argument conversions happen as in CUDA.
template <class Kernel>
struct BoundLaunch
{
    dim3 grid, block;
    size_t dynamic_shared;
    Kernel kernel;
    template <class... Args>
    void operator()(Args... args) const
    {  // by value: each thread gets its own copy of the parameters
        auto call = [&] { kernel(args...); };
        run_grid(grid, block, dynamic_shared, [](void* f) { (*static_cast<decltype(call)*>(f))(); }, &call);
    }
};
struct Launch
{
    dim3 grid, block;
    size_t dynamic_shared;
    Launch(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr)
        : grid(g)
        , block(b)
        , dynamic_shared(s)
    {
    }
    template <class Kernel>
    BoundLaunch<Kernel> operator()(Kernel kernel) const
    {
        return {grid, block, dynamic_shared, kernel};
    }
};
}  // namespace emu
