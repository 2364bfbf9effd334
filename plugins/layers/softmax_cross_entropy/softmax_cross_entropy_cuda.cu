/* Softmax cross-entropy on CUDA, with the CPU's arithmetic: per item the
 * first argmax m, p = expf(x - m) summed in double, p *= (float)(1/sum),
 * and loss = m + log(sum) - x[label] in double.
 *
 * The metrics stay on the device: one block walks all n items (MNIST has
 * 10 classes, so an item is a few dozen flops), reduces loss and hits in
 * double in a fixed order, and adds them to ctx->metrics; nothing waits on
 * the host. A label outside [0, classes) gives a NaN loss (the trainer
 * stops on it at the next log) instead of reading out of bounds. */
#include <cuda_runtime.h>

#include "dmnist/layer.h"
#include "dmnist/cuda_util.h"
extern "C" {
#include "softmax_cross_entropy.h"
}

#define FWD_THREADS 256
#define THREADS 256

namespace
{

__global__ void sce_fwd_kernel(const float *x, const int32_t *labels, float *p, float *metrics, int n, int C)
{
    __shared__ double loss_s[FWD_THREADS];
    __shared__ double hits_s[FWD_THREADS];
    double loss = 0.0, hits = 0.0;
    for (int i = threadIdx.x; i < n; i += FWD_THREADS) {
        const float *xi = x + (size_t)i * C;
        float *pi = p + (size_t)i * C;
        int arg = 0;
        for (int j = 1; j < C; j++)
            if (xi[j] > xi[arg]) arg = j;
        const float m = xi[arg];
        double sum = 0.0;
        for (int j = 0; j < C; j++) {
            pi[j] = expf(xi[j] - m);
            sum += pi[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < C; j++) pi[j] *= inv;
        if (labels) {
            const int32_t l = labels[i];
            if (l < 0 || l >= C) {
                loss += __longlong_as_double(0x7ff8000000000000LL); /* NaN */
            } else {
                loss += (double)m + log(sum) - (double)xi[l];
                hits += arg == l;
            }
        }
    }
    if (!labels || !metrics) return;
    loss_s[threadIdx.x] = loss;
    hits_s[threadIdx.x] = hits;
    __syncthreads();
    for (int half = FWD_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            loss_s[threadIdx.x] += loss_s[threadIdx.x + half];
            hits_s[threadIdx.x] += hits_s[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        metrics[0] += (float)loss_s[0];
        metrics[1] += (float)hits_s[0];
    }
}

/* dx = (p - onehot(label)) / n over n*C elements. */
__global__ void sce_bwd_kernel(const float *p, const int32_t *labels, float *dx, int n, int C)
{
    const float inv_n = 1.0f / (float)n;
    const size_t total = (size_t)n * C;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total; k += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(k / C), j = (int)(k % C);
        float v = p[k] * inv_n;
        if (labels[i] == j) v -= inv_n;
        dx[k] = v;
    }
}

} // namespace

int sce_forward_cuda(const sce_state *s, void *stream, int n, const float *x, const int32_t *labels, float *p,
                     float *metrics, dm_error *err)
{
    sce_fwd_kernel<<<1, FWD_THREADS, 0, (cudaStream_t)stream>>>(x, labels, p, metrics, n, s->classes);
    return dm_cuda_launched(s->name, "softmax forward", err);
}

int sce_backward_cuda(const sce_state *s, void *stream, int n, const float *p, const int32_t *labels, float *dx,
                      dm_error *err)
{
    const size_t total = (size_t)n * s->classes;
    sce_bwd_kernel<<<dm_cuda_grid(total, THREADS, 65535), THREADS, 0, (cudaStream_t)stream>>>(p, labels, dx, n,
                                                                                              s->classes);
    return dm_cuda_launched(s->name, "softmax backward", err);
}
