/* Dense on CUDA: cuBLAS sgemm for the three products, small kernels for
 * the fused bias + ReLU (forward) and ReLU' + bias gradient (backward).
 *
 * cuBLAS is column-major; a row-major (r, c) matrix is the column-major
 * (c, r) matrix with the same bytes. With K = in_features, U = units:
 *   y  (n, U) = x (n, K) * w^T        ->  Y' (U, n) = op_T(W' (K, U)) * X' (K, n)
 *   dw (U, K) = dz^T (U, n) * x (n, K) ->  dW' (K, U) = X' (K, n) * op_T(DZ' (U, n))
 *   dx (n, K) = dz (n, U) * w (U, K)   ->  DX' (K, n) = W' (K, U) * DZ' (U, n)
 *   db (U)    = column sums of dz        bias_grad_kernel, one block per unit,
 *                                        a fixed summation order (deterministic)
 *
 * Math: plain FP32 (CUBLAS_DEFAULT_MATH) unless the layer's `tf32` key is
 * true, which allows TF32 tensor cores (about 10 mantissa bits in the
 * products: faster, but no longer within float32 rounding of the CPU).
 *
 * Workspace layout (bytes): [cuBLAS workspace (4 MiB) | dz (n*U floats)].
 * Giving cuBLAS its own workspace keeps it from allocating on the stream,
 * so the layer can be captured in a CUDA graph. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <new>

#include "dmnist/layer.h"
#include "dmnist/cuda_util.h"
extern "C" {
#include "dense.h"
}

#define CUBLAS_WS ((size_t)4 << 20)
#define THREADS 256

namespace
{

struct dense_cuda {
    cublasHandle_t h;
    cudaStream_t stream;
    void *ws;
    float *dz;
};

#define CUBLAS_TRY(call, what) \
    do { \
        cublasStatus_t st_ = (call); \
        if (st_ != CUBLAS_STATUS_SUCCESS) \
            return dm_fail(err, DM_ERR_DEVICE, "%s: cublas: %s failed: %s", s->name, what, \
                           cublasGetStatusString(st_)); \
    } while (0)

#define CUDA_TRY(call, what) DM_CUDA_TRY(s->name, call, what)

/* y[i][u] = act(y[i][u] + b[u]) over n*U elements. */
__global__ void bias_act_kernel(float *y, const float *b, size_t total, int U, int relu)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float v = y[i];
        if (b) v += b[i % (size_t)U];
        y[i] = relu && v < 0.0f ? 0.0f : v;
    }
}

/* dz = dy where y > 0, else 0 (n*U elements). */
__global__ void relu_mask_kernel(const float *y, const float *dy, float *dz, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        dz[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* db[u] = sum over i of dz[i][u]; block u, threads over i. */
__global__ void bias_grad_kernel(const float *dz, float *db, int n, int U)
{
    __shared__ float warp_sums[THREADS / 32];
    const int u = blockIdx.x;
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += THREADS) v += dz[(size_t)i * U + u];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < THREADS / 32 ? warp_sums[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) db[u] = v;
    }
}

int use_stream(dense_state *s, dense_cuda *c, void *stream, dm_error *err)
{
    cudaStream_t st = stream ? (cudaStream_t)stream : c->stream;
    if (st != c->stream) {
        CUBLAS_TRY(cublasSetStream(c->h, st), "cublasSetStream");
        c->stream = st;
    }
    return DM_OK;
}

} // namespace

int dense_cuda_create(dense_state *s, int tf32, void *stream, size_t *workspace_bytes, dm_error *err)
{
    dense_cuda *c = new (std::nothrow) dense_cuda();
    if (!c) return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", s->name);
    cublasStatus_t st = cublasCreate(&c->h);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(c->h, (cudaStream_t)stream);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasSetMathMode(c->h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
    if (st != CUBLAS_STATUS_SUCCESS) {
        if (c->h) cublasDestroy(c->h);
        delete c;
        return dm_fail(err, DM_ERR_DEVICE, "%s: cublas: cannot set up a handle: %s", s->name,
                       cublasGetStatusString(st));
    }
    c->stream = (cudaStream_t)stream;
    s->cuda = c;
    *workspace_bytes = CUBLAS_WS + (size_t)s->n * s->units * sizeof(float);
    return DM_OK;
}

int dense_cuda_bind(dense_state *s, void *workspace, dm_error *err)
{
    dense_cuda *c = (dense_cuda *)s->cuda;
    c->ws = workspace;
    c->dz = (float *)((char *)workspace + CUBLAS_WS);
    CUBLAS_TRY(cublasSetWorkspace(c->h, c->ws, CUBLAS_WS), "cublasSetWorkspace");
    return DM_OK;
}

int dense_forward_cuda(dense_state *s, void *stream, int n, const float *x, float *y, dm_error *err)
{
    dense_cuda *c = (dense_cuda *)s->cuda;
    if (!c || !c->ws) return dm_fail(err, DM_ERR_INVALID, "%s: forward before bind", s->name);
    int rc = use_stream(s, c, stream, err);
    if (rc) return rc;
    const int K = s->in_features, U = s->units;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cublasSgemm(c->h, CUBLAS_OP_T, CUBLAS_OP_N, U, n, K, &one, s->w, K, x, K, &zero, y, U),
               "cublasSgemm (forward)");
    if (s->b || s->relu) {
        const size_t total = (size_t)n * U;
        bias_act_kernel<<<dm_cuda_grid(total, THREADS, 65535), THREADS, 0, c->stream>>>(y, s->b, total, U, s->relu);
        CUDA_TRY(cudaGetLastError(), "bias_act_kernel launch");
    }
    return DM_OK;
}

int dense_backward_cuda(dense_state *s, void *stream, int n, const float *x, const float *y, const float *dy, float *dx,
                        dm_error *err)
{
    dense_cuda *c = (dense_cuda *)s->cuda;
    if (!c || !c->ws) return dm_fail(err, DM_ERR_INVALID, "%s: backward before bind", s->name);
    int rc = use_stream(s, c, stream, err);
    if (rc) return rc;
    const int K = s->in_features, U = s->units;
    const float *dz = dy;
    if (s->relu) {
        const size_t total = (size_t)n * U;
        relu_mask_kernel<<<dm_cuda_grid(total, THREADS, 65535), THREADS, 0, c->stream>>>(y, dy, c->dz, total);
        CUDA_TRY(cudaGetLastError(), "relu_mask_kernel launch");
        dz = c->dz;
    }
    if (s->db) {
        bias_grad_kernel<<<U, THREADS, 0, c->stream>>>(dz, s->db, n, U);
        CUDA_TRY(cudaGetLastError(), "bias_grad_kernel launch");
    }
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cublasSgemm(c->h, CUBLAS_OP_N, CUBLAS_OP_T, K, U, n, &one, x, K, dz, U, &zero, s->dw, K),
               "cublasSgemm (weight gradient)");
    if (dx)
        CUBLAS_TRY(cublasSgemm(c->h, CUBLAS_OP_N, CUBLAS_OP_N, K, n, U, &one, s->w, K, dz, U, &zero, dx, K),
                   "cublasSgemm (input gradient)");
    return DM_OK;
}

void dense_cuda_destroy(dense_state *s)
{
    dense_cuda *c = (dense_cuda *)s->cuda;
    if (!c) return;
    cublasDestroy(c->h);
    delete c;
    s->cuda = NULL;
}
