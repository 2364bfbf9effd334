/* Conv2D on CUDA: cuDNN for the three convolutions, small kernels for the
 * fused bias + ReLU (forward) and for ReLU' + the bias gradient (backward).
 *
 * Forward, x (n, C, H, W) -> y (n, F, OH, OW):
 *   y  = conv(x, w)                      cudnnConvolutionForward
 *   y  = act(y + b[f])                   bias_act_kernel, in place
 * Backward:
 *   dz = dy * relu'(y)                   mask_bias_partial_kernel (also the
 *   db = sum over n, OH, OW of dz          per-block partial sums of db, then
 *                                          bias_final_kernel adds them up in a
 *                                          fixed order: db is deterministic)
 *   dw = conv_bwd_filter(x, dz)          cudnnConvolutionBackwardFilter (beta 0)
 *   dx = conv_bwd_data(w, dz)            cudnnConvolutionBackwardData (beta 0)
 *
 * Algorithms: cuDNN's heuristics (the *_v7 queries) pick, once per batch
 * size, the best-ranked algorithm whose workspace fits (and, by default,
 * that cuDNN marks deterministic: the same bits every run); the sizes for the
 * create-time batch decide the workspace the layer asks the core for.
 * TF32 tensor cores only when the layer's `tf32` key is true: the default
 * FMA math keeps results within float32 rounding of the CPU path.
 *
 * Workspace layout (bytes, each part 256-aligned):
 *   [cuDNN workspace | dz (n*F*OH*OW floats) | db partials (F*G floats)]
 * Everything runs on the core's stream; nothing here synchronises the host. */
#include <cuda_runtime.h>
#include <cudnn.h>

#include <new>

#include "dmnist/layer.h"
#include "dmnist/cuda_util.h"
extern "C" {
#include "conv2d.h"
}

#define ALGO_CACHE 8               /* batch sizes remembered */
#define WS_CAP ((size_t)256 << 20) /* never ask for more than this for cuDNN */
#define THREADS 256

namespace
{

struct algos {
    int n; /* batch size they were chosen for; 0 = empty slot */
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
};

struct conv_cuda {
    cudnnHandle_t h;
    cudaStream_t stream;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    int desc_n; /* batch the tensor descriptors hold now */
    algos cache[ALGO_CACHE];
    int next_slot;
    size_t ws_bytes;   /* cuDNN's part of the workspace */
    int groups;        /* G: blocks per filter for the db partial sums */
    int deterministic; /* only algorithms cuDNN marks CUDNN_DETERMINISTIC */
    char *ws;          /* bound workspace */
    float *dz, *partials;
};

size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

int cudnn_fail(dm_error *err, const conv2d_state *s, const char *what, cudnnStatus_t st)
{
    return dm_fail(err, DM_ERR_DEVICE, "%s: cudnn: %s failed: %s", s->name, what, cudnnGetErrorString(st));
}

#define CUDNN_TRY(call, what) \
    do { \
        cudnnStatus_t st_ = (call); \
        if (st_ != CUDNN_STATUS_SUCCESS) return cudnn_fail(err, s, what, st_); \
    } while (0)

#define CUDA_TRY(call, what) DM_CUDA_TRY(s->name, call, what)

/* y[b][f][p] = act(y[b][f][p] + bias[f]); total = n*F*P elements. */
__global__ void bias_act_kernel(float *y, const float *bias, size_t total, int F, int P, int relu)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float v = y[i];
        if (bias) v += bias[(i / (size_t)P) % (size_t)F];
        y[i] = relu && v < 0.0f ? 0.0f : v;
    }
}

/* Sum of v over the block (THREADS threads); valid in thread 0. */
__device__ float block_sum(float v)
{
    __shared__ float warp_sums[THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < THREADS / 32 ? warp_sums[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    return v;
}

/* Block (f, g) handles filter f for images [g*n/G, (g+1)*n/G):
 * dz = relu ? (y > 0 ? dy : 0) : dy (written when dz != NULL), and
 * partials[f*G + g] = the sum of those dz (when partials != NULL). */
__global__ void mask_bias_partial_kernel(const float *y, const float *dy, float *dz, float *partials, int n, int F,
                                         int P, int relu)
{
    const int f = blockIdx.x, g = blockIdx.y, G = gridDim.y;
    const int b0 = (int)((long long)n * g / G), b1 = (int)((long long)n * (g + 1) / G);
    float sum = 0.0f;
    for (int b = b0; b < b1; b++) {
        const size_t base = ((size_t)b * F + f) * P;
        for (int p = threadIdx.x; p < P; p += THREADS) {
            float v = dy[base + p];
            if (relu && !(y[base + p] > 0.0f)) v = 0.0f;
            if (dz) dz[base + p] = v;
            sum += v;
        }
    }
    if (partials) {
        sum = block_sum(sum);
        if (threadIdx.x == 0) partials[(size_t)f * G + g] = sum;
    }
}

/* db[f] = sum over g of partials[f*G + g], in order. */
__global__ void bias_final_kernel(const float *partials, float *db, int F, int G)
{
    int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= F) return;
    float s = 0.0f;
    for (int g = 0; g < G; g++) s += partials[(size_t)f * G + g];
    db[f] = s;
}

int set_batch(conv2d_state *s, conv_cuda *c, int n, dm_error *err)
{
    if (c->desc_n == n) return DM_OK;
    CUDNN_TRY(cudnnSetTensor4dDescriptor(c->xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, s->in_c, s->in_h, s->in_w),
              "cudnnSetTensor4dDescriptor(x)");
    CUDNN_TRY(cudnnSetTensor4dDescriptor(c->yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, s->filters, s->out_h, s->out_w),
              "cudnnSetTensor4dDescriptor(y)");
    c->desc_n = n;
    return DM_OK;
}

/* An algorithm cuDNN can run here, within the workspace limit, and (with
 * deterministic = true) giving the same bits every run: the
 * non-deterministic ones accumulate with atomics in a varying order. */
bool usable(const conv_cuda *c, cudnnStatus_t st, size_t memory, cudnnDeterminism_t det, size_t limit)
{
    return st == CUDNN_STATUS_SUCCESS && memory <= limit && (!c->deterministic || det == CUDNN_DETERMINISTIC);
}

const char *det_note(const conv_cuda *c)
{
    return c->deterministic ? " among the deterministic ones (deterministic = false allows the others)" : "";
}

/* The best-ranked algorithms for batch n whose workspace is at most
 * `limit` bytes (cuDNN's heuristics, no timing runs); their largest
 * workspace in *need. Tensor descriptors must hold batch n. */
int choose_algos(conv2d_state *s, conv_cuda *c, int n, size_t limit, algos *a, size_t *need, dm_error *err)
{
    int got = 0;
    size_t best = 0;
    a->n = n;

    cudnnConvolutionFwdAlgoPerf_t fp[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(c->h, c->xd, c->wd, c->cd, c->yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                     &got, fp),
              "cudnnGetConvolutionForwardAlgorithm_v7");
    int k = 0;
    while (k < got && !usable(c, fp[k].status, fp[k].memory, fp[k].determinism, limit)) k++;
    if (k == got)
        return dm_fail(err, DM_ERR_DEVICE,
                       "%s: cudnn: no forward algorithm for batch %d fits in "
                       "%zu bytes of workspace%s",
                       s->name, n, limit, det_note(c));
    a->fwd = fp[k].algo;
    best = fp[k].memory;

    cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(c->h, c->wd, c->yd, c->cd, c->xd,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, dp),
              "cudnnGetConvolutionBackwardDataAlgorithm_v7");
    k = 0;
    while (k < got && !usable(c, dp[k].status, dp[k].memory, dp[k].determinism, limit)) k++;
    if (k == got)
        return dm_fail(err, DM_ERR_DEVICE,
                       "%s: cudnn: no backward-data algorithm for batch %d fits "
                       "in %zu bytes of workspace%s",
                       s->name, n, limit, det_note(c));
    a->bwd_data = dp[k].algo;
    if (dp[k].memory > best) best = dp[k].memory;

    cudnnConvolutionBwdFilterAlgoPerf_t wp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(c->h, c->xd, c->yd, c->cd, c->wd,
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, wp),
              "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
    k = 0;
    while (k < got && !usable(c, wp[k].status, wp[k].memory, wp[k].determinism, limit)) k++;
    if (k == got)
        return dm_fail(err, DM_ERR_DEVICE,
                       "%s: cudnn: no backward-filter algorithm for batch %d "
                       "fits in %zu bytes of workspace%s",
                       s->name, n, limit, det_note(c));
    a->bwd_filter = wp[k].algo;
    if (wp[k].memory > best) best = wp[k].memory;
    *need = best;
    return DM_OK;
}

/* Algorithms for batch n, from the cache or chosen now to fit ws_bytes. */
int algos_for(conv2d_state *s, conv_cuda *c, int n, const algos **out, dm_error *err)
{
    for (int i = 0; i < ALGO_CACHE; i++)
        if (c->cache[i].n == n) {
            *out = &c->cache[i];
            return set_batch(s, c, n, err);
        }
    int rc = set_batch(s, c, n, err);
    if (rc) return rc;
    algos a;
    size_t need = 0;
    if ((rc = choose_algos(s, c, n, c->ws_bytes, &a, &need, err))) return rc;
    c->cache[c->next_slot] = a;
    *out = &c->cache[c->next_slot];
    c->next_slot = (c->next_slot + 1) % ALGO_CACHE;
    return DM_OK;
}

void release(conv_cuda *c)
{
    if (c->cd) cudnnDestroyConvolutionDescriptor(c->cd);
    if (c->wd) cudnnDestroyFilterDescriptor(c->wd);
    if (c->yd) cudnnDestroyTensorDescriptor(c->yd);
    if (c->xd) cudnnDestroyTensorDescriptor(c->xd);
    if (c->h) cudnnDestroy(c->h);
    delete c;
}

int use_stream(conv2d_state *s, conv_cuda *c, void *stream, dm_error *err)
{
    cudaStream_t st = stream ? (cudaStream_t)stream : c->stream;
    if (st != c->stream) {
        CUDNN_TRY(cudnnSetStream(c->h, st), "cudnnSetStream");
        c->stream = st;
    }
    return DM_OK;
}

} // namespace

int conv2d_cuda_create(conv2d_state *s, int tf32, int deterministic, void *stream, size_t *workspace_bytes,
                       dm_error *err)
{
    /* cuDNN pads symmetrically; 'same' with an odd total padding puts the
     * extra pixel at the bottom/right (Keras), which cuDNN cannot express. */
    const int pad_h_total = (s->out_h - 1) * s->stride + s->k - s->in_h;
    const int pad_w_total = (s->out_w - 1) * s->stride + s->k - s->in_w;
    if ((s->pad_top || s->pad_left || pad_h_total > 0 || pad_w_total > 0) &&
        (pad_h_total != 2 * s->pad_top || pad_w_total != 2 * s->pad_left))
        return dm_fail(err, DM_ERR_UNSUPPORTED,
                       "%s: conv2d on cuda supports padding = same only when it is symmetric "
                       "(odd kernel and stride 1); use padding = valid or device = cpu",
                       s->name);

    conv_cuda *c = new (std::nothrow) conv_cuda();
    if (!c) return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", s->name);
    int rc = DM_OK;
    cudnnStatus_t st;
    const char *what = "";
#define STEP(call, name) \
    if (rc == DM_OK && (st = (call)) != CUDNN_STATUS_SUCCESS) { \
        what = name; \
        rc = cudnn_fail(err, s, what, st); \
    }
    STEP(cudnnCreate(&c->h), "cudnnCreate");
    c->stream = (cudaStream_t)stream;
    c->deterministic = deterministic;
    STEP(cudnnSetStream(c->h, c->stream), "cudnnSetStream");
    STEP(cudnnCreateTensorDescriptor(&c->xd), "cudnnCreateTensorDescriptor");
    STEP(cudnnCreateTensorDescriptor(&c->yd), "cudnnCreateTensorDescriptor");
    STEP(cudnnCreateFilterDescriptor(&c->wd), "cudnnCreateFilterDescriptor");
    STEP(cudnnCreateConvolutionDescriptor(&c->cd), "cudnnCreateConvolutionDescriptor");
    STEP(cudnnSetFilter4dDescriptor(c->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s->filters, s->in_c, s->k, s->k),
         "cudnnSetFilter4dDescriptor");
    STEP(cudnnSetConvolution2dDescriptor(c->cd, s->pad_top, s->pad_left, s->stride, s->stride, 1, 1,
                                         CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
         "cudnnSetConvolution2dDescriptor");
    STEP(cudnnSetConvolutionMathType(c->cd, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH), "cudnnSetConvolutionMathType");
#undef STEP
    if (rc == DM_OK) rc = set_batch(s, c, s->n, err);
    if (rc == DM_OK) {
        /* cuDNN must produce the output size conv2d.c computed. */
        int on, oc, oh, ow;
        st = cudnnGetConvolution2dForwardOutputDim(c->cd, c->xd, c->wd, &on, &oc, &oh, &ow);
        if (st != CUDNN_STATUS_SUCCESS) rc = cudnn_fail(err, s, "cudnnGetConvolution2dForwardOutputDim", st);
        else if (oh != s->out_h || ow != s->out_w || oc != s->filters)
            rc = dm_fail(err, DM_ERR_INTERNAL, "%s: cudnn output %dx%dx%d differs from %dx%dx%d", s->name, oc, oh, ow,
                         s->filters, s->out_h, s->out_w);
    }
    size_t need = 0;
    if (rc == DM_OK) rc = choose_algos(s, c, s->n, WS_CAP, &c->cache[0], &need, err);
    if (rc != DM_OK) {
        release(c);
        return rc;
    }
    c->next_slot = 1;
    c->ws_bytes = need;
    /* About two blocks per multiprocessor of a large GPU for the db sums,
     * never more blocks than images. */
    c->groups = (264 + s->filters - 1) / s->filters;
    if (c->groups > s->n) c->groups = s->n;
    if (c->groups < 1) c->groups = 1;
    const size_t dz_bytes = (size_t)s->n * s->filters * s->out_h * s->out_w * sizeof(float);
    *workspace_bytes = align256(need) + align256(dz_bytes) + align256((size_t)s->filters * c->groups * sizeof(float));
    s->cuda = c;
    return DM_OK;
}

void conv2d_cuda_bind(conv2d_state *s, void *workspace)
{
    conv_cuda *c = (conv_cuda *)s->cuda;
    const size_t dz_bytes = (size_t)s->n * s->filters * s->out_h * s->out_w * sizeof(float);
    c->ws = (char *)workspace;
    c->dz = (float *)(c->ws + align256(c->ws_bytes));
    c->partials = (float *)(c->ws + align256(c->ws_bytes) + align256(dz_bytes));
}

int conv2d_forward_cuda(conv2d_state *s, void *stream, int n, const float *x, float *y, dm_error *err)
{
    conv_cuda *c = (conv_cuda *)s->cuda;
    if (!c || !c->ws) return dm_fail(err, DM_ERR_INVALID, "%s: forward before bind", s->name);
    int rc = use_stream(s, c, stream, err);
    const algos *a = NULL;
    if (rc == DM_OK) rc = algos_for(s, c, n, &a, err);
    if (rc) return rc;
    const float one = 1.0f, zero = 0.0f;
    CUDNN_TRY(
        cudnnConvolutionForward(c->h, &one, c->xd, x, c->wd, s->w, c->cd, a->fwd, c->ws, c->ws_bytes, &zero, c->yd, y),
        "cudnnConvolutionForward");
    if (s->b || s->relu) {
        const size_t total = (size_t)n * s->filters * s->out_h * s->out_w;
        bias_act_kernel<<<dm_cuda_grid(total, THREADS, 65535), THREADS, 0, c->stream>>>(y, s->b, total, s->filters,
                                                                                        s->out_h * s->out_w, s->relu);
        CUDA_TRY(cudaGetLastError(), "bias_act_kernel launch");
    }
    return DM_OK;
}

int conv2d_backward_cuda(conv2d_state *s, void *stream, int n, const float *x, const float *y, const float *dy,
                         float *dx, dm_error *err)
{
    conv_cuda *c = (conv_cuda *)s->cuda;
    if (!c || !c->ws) return dm_fail(err, DM_ERR_INVALID, "%s: backward before bind", s->name);
    int rc = use_stream(s, c, stream, err);
    const algos *a = NULL;
    if (rc == DM_OK) rc = algos_for(s, c, n, &a, err);
    if (rc) return rc;
    const int P = s->out_h * s->out_w;
    const float *dz = dy;
    if (s->relu || s->db) {
        /* Never more groups than images in this batch. */
        const int G = c->groups < n ? c->groups : n;
        float *dz_out = s->relu ? c->dz : NULL;
        mask_bias_partial_kernel<<<dim3((unsigned)s->filters, (unsigned)G), THREADS, 0, c->stream>>>(
            y, dy, dz_out, s->db ? c->partials : NULL, n, s->filters, P, s->relu);
        CUDA_TRY(cudaGetLastError(), "mask_bias_partial_kernel launch");
        if (s->db) {
            bias_final_kernel<<<(s->filters + THREADS - 1) / THREADS, THREADS, 0, c->stream>>>(c->partials, s->db,
                                                                                               s->filters, G);
            CUDA_TRY(cudaGetLastError(), "bias_final_kernel launch");
        }
        if (s->relu) dz = c->dz;
    }
    const float one = 1.0f, zero = 0.0f;
    CUDNN_TRY(cudnnConvolutionBackwardFilter(c->h, &one, c->xd, x, c->yd, dz, c->cd, a->bwd_filter, c->ws, c->ws_bytes,
                                             &zero, c->wd, s->dw),
              "cudnnConvolutionBackwardFilter");
    if (dx)
        CUDNN_TRY(cudnnConvolutionBackwardData(c->h, &one, c->wd, s->w, c->yd, dz, c->cd, a->bwd_data, c->ws,
                                               c->ws_bytes, &zero, c->xd, dx),
                  "cudnnConvolutionBackwardData");
    return DM_OK;
}

void conv2d_cuda_destroy(conv2d_state *s)
{
    if (s->cuda) release((conv_cuda *)s->cuda);
    s->cuda = NULL;
}
