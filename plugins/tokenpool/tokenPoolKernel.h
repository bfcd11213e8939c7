/*
 * tpdeploy::TokenPool (SPEC section 1) on CUDA: a plain C API over the kernels, usable without TensorRT.
 *
 * Y [B, K, C] = TokenPool(X [B, N, C], W [B, N]); X and W are float32 or float16 (independently), Y has X's
 * type. The arithmetic follows tpdeploy/tokenpool/reference.py step for step (see README.md beside this file).
 *
 * tokenPoolLaunch is asynchronous on `stream`, allocates nothing and never synchronises, so it can be
 * captured in a CUDA graph and called from a TensorRT enqueue; all scratch memory comes from `workspace`
 * (tokenPoolWorkspaceSize bytes, any alignment). Pointers are device pointers to contiguous arrays.
 */
#ifndef TPDEPLOY_TOKEN_POOL_KERNEL_H
#define TPDEPLOY_TOKEN_POOL_KERNEL_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#if defined(__GNUC__)
#define TP_API __attribute__((visibility("default")))
#else
#define TP_API
#endif

#ifdef __cplusplus
extern "C"
{
#endif

/* Limits of this implementation; larger sizes give TP_ERROR_UNSUPPORTED. */
#define TP_MAX_TOKENS 1024    /* N: one token per thread in the per-image kernels */
#define TP_MAX_CHANNELS 65536 /* C */
#define TP_MAX_BATCH 65535    /* B: the grid's y dimension */

    typedef enum
    {
        TP_FLOAT32 = 0,
        TP_FLOAT16 = 1
    } tpDataType;
    typedef enum
    {
        TP_KMEDOIDS = 0,
        TP_KMEANS = 1
    } tpMode;
    typedef enum
    {
        TP_SUCCESS = 0,
        TP_ERROR_INVALID_VALUE = 1,
        TP_ERROR_UNSUPPORTED = 2,
        TP_ERROR_CUDA = 3
    } tpStatus;

    typedef struct
    {
        int batch;      /* B >= 0 (0: nothing to do) */
        int tokens;     /* N >= 1 */
        int channels;   /* C >= 1 */
        int clusters;   /* K, 1 <= K <= N */
        int iterations; /* T >= 0 */
        tpMode mode;
        int weighted; /* 0 or 1 */
        tpDataType x_type;
        tpDataType w_type;
    } tpParams;

    /* Bytes of workspace tokenPoolLaunch needs; 0 for invalid params (and for batch 0). */
    TP_API size_t tokenPoolWorkspaceSize(const tpParams* params);

    /* Checks sizes, ranges and enum values without touching the GPU: TP_ERROR_INVALID_VALUE for params that
     * break the operator's definition (K > N, K < 1, negative sizes, unknown enums, weighted not 0/1),
     * TP_ERROR_UNSUPPORTED for valid params beyond the limits above. */
    TP_API tpStatus tokenPoolValidate(const tpParams* params);

    /* Enqueues the op on `stream`. When batch > 0, x, w, y and workspace must not be null, and x, w, y must be
     * aligned to their element size. Returns TP_ERROR_CUDA if a kernel launch fails. */
    TP_API tpStatus tokenPoolLaunch(
        const tpParams* params, const void* x, const void* w, void* y, void* workspace, cudaStream_t stream);

    /* A static, human-readable sentence for a status. */
    TP_API const char* tokenPoolStatusString(tpStatus status);

#ifdef __cplusplus
}
#endif

#endif /* TPDEPLOY_TOKEN_POOL_KERNEL_H */
