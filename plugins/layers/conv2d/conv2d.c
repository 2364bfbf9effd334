/* Conv2D layer plugin: parameters, shapes, and dispatch to the device math.
 * Weights (filters, in_c, k, k) then bias (filters) in the parameter slice. */
#include "conv2d.h"
#include "dmnist/cpu_isa.h"
#include "dmnist/layer_util.h"
#include "dmnist/plugin.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

/* Auto chunking, from the L2 cache the machine reports (dm_cpu_l2_bytes:
 * sysconf, else 1 MiB): about 1.5 x L2 of im2col columns per task (see
 * docs/cpu-path.md: big enough for an efficient GEMM, small enough to stay
 * near the core), and for the Winograd path L2 / 2 of transformed inputs and
 * outputs (V and M in conv2d_winograd.c) per sub-batch of a task. On the
 * 1 MiB-L2 machines these were tuned on: 1.5 MiB and 512 KiB. */
#define CONV2D_AUTO_COL_BYTES (dm_cpu_l2_bytes() / 2 * 3)
#define CONV2D_WINO_AUTO_BYTES (dm_cpu_l2_bytes() / 2)

/* Devices with an implementation in this build (conv2d_cuda.cu under DM_WITH_CUDA). */
#define CONV2D_DEVICES DM_DEVICES_BUILT

static const dm_param_def conv2d_params[] = {
    {"filters", DM_PARAM_INT, NULL, 1, 65536, NULL, "number of output channels"},
    {"kernel", DM_PARAM_INT, "3", 1, 1024, NULL, "square kernel size"},
    {"stride", DM_PARAM_INT, "1", 1, 1024, NULL, "stride in both directions"},
    {"padding", DM_PARAM_ENUM, "valid", 0, -1, "valid|same",
     "valid: no padding; same: output = ceil(input / stride), like Keras"},
    {"bias", DM_PARAM_BOOL, "true", 0, -1, NULL, "add a learned bias per filter"},
    {"activation", DM_PARAM_ENUM, "none", 0, -1, "none|relu", "fused activation on the output"},
    {"chunk", DM_PARAM_INT, "0", 0, 1 << 20, NULL,
     "images per im2col/GEMM task on the CPU; 0 = auto (up to 1.5 MiB of columns)"},
    {"algo", DM_PARAM_ENUM, "auto", 0, -1, "auto|im2col|winograd",
     "cpu: winograd = F(4x4,3x3), 3x3 stride 1 only; auto = winograd there when in and out "
     "channels are >= 16, else im2col"},
    {"tf32", DM_PARAM_BOOL, "false", 0, -1, NULL,
     "cuda: let cuDNN use TF32 tensor cores (faster; ~1e-3 relative error)"},
    {"deterministic", DM_PARAM_BOOL, "true", 0, -1, NULL,
     "cuda: only cuDNN algorithms that give the same bits every run (false: any, some use atomics)"},
    DM_PARAM_END};

/* Output size and leading padding along one axis. */
static void out_size(int in, int k, int stride, int same, int *out, int *pad_lead)
{
    if (same) {
        *out = (in + stride - 1) / stride;
        int total = (*out - 1) * stride + k - in;
        if (total < 0) total = 0;
        *pad_lead = total / 2;
    } else {
        *out = in >= k ? (in - k) / stride + 1 : 0;
        *pad_lead = 0;
    }
}

static int conv2d_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                         dm_error *err)
{
    DM_TRY(dm_layer_check_create("conv2d", CONV2D_DEVICES, cfg, info, err));
    const char *name = dm_layer_name(cfg, "conv2d");
    const int filters = (int)dm_param_int(p, "filters", 0);
    const int k = (int)dm_param_int(p, "kernel", 3);
    const int stride = (int)dm_param_int(p, "stride", 1);
    const int same = strcmp(dm_param_str(p, "padding", "valid"), "same") == 0;
    const int chunk = (int)dm_param_int(p, "chunk", 0);
    const dm_shape in = cfg->in_shape;
    if (filters < 1) return dm_fail(err, DM_ERR_INVALID, "%s: filters must be >= 1 (got %d)", name, filters);
    if (k < 1 || stride < 1)
        return dm_fail(err, DM_ERR_INVALID, "%s: kernel and stride must be >= 1 (got %d, %d)", name, k, stride);
    if (chunk < 0) return dm_fail(err, DM_ERR_INVALID, "%s: chunk must be >= 0 (got %d)", name, chunk);
    dm_cpu_isa isa;
    if (dm_cpu_isa_select(&isa) != 0)
        return dm_fail(err, DM_ERR_INVALID, "%s: DMNIST_CPU_ISA='%s': expected generic, avx2, avx512 or auto", name,
                       getenv("DMNIST_CPU_ISA"));
    if (!same && (k > in.h || k > in.w))
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: kernel %d is larger than the %dx%d input (use padding=same or a "
                       "smaller kernel)",
                       name, k, in.h, in.w);

    conv2d_state *s = DM_LAYER_STATE_NEW(conv2d_state, "conv2d", cfg, err);
    if (!s) return DM_ERR_NOMEM;
    s->nthreads = dm_layer_threads(cfg);
    s->isa = (int)isa;
    s->n = in.n;
    s->in_c = in.c;
    s->in_h = in.h;
    s->in_w = in.w;
    s->filters = filters;
    s->k = k;
    s->stride = stride;
    s->has_bias = dm_param_int(p, "bias", 1) != 0;
    s->relu = strcmp(dm_param_str(p, "activation", "none"), "relu") == 0;
    out_size(in.h, k, stride, same, &s->out_h, &s->pad_top);
    out_size(in.w, k, stride, same, &s->out_w, &s->pad_left);

    /* Winograd where it applies and pays: with few channels the 36 small
     * GEMMs cost more than im2col's one. */
    const char *algo = dm_param_str(p, "algo", "auto");
    const int wino_ok = k == 3 && stride == 1;
    if (strcmp(algo, "winograd") == 0 && !wino_ok) {
        free(s);
        return dm_fail(err, DM_ERR_INVALID, "%s: algo=winograd needs kernel=3 and stride=1 (got kernel %d, stride %d)",
                       name, k, stride);
    }
    s->winograd = s->device == DM_DEVICE_CPU &&
        (strcmp(algo, "winograd") == 0 || (strcmp(algo, "auto") == 0 && wino_ok && in.c >= 16 && filters >= 16));

    /* Bytes of per-task scratch for one image: im2col columns, or
     * Winograd's transformed input and output (36 values per 4x4 tile). */
    const size_t tiles = (size_t)((s->out_h + 3) / 4) * ((s->out_w + 3) / 4);
    const size_t per_image = s->winograd ? 36 * tiles * (size_t)(in.c + filters) * sizeof(float)
                                         : (size_t)in.c * k * k * s->out_h * s->out_w * sizeof(float);
    const size_t budget = s->winograd ? CONV2D_WINO_AUTO_BYTES : CONV2D_AUTO_COL_BYTES;
    const int fit = per_image >= budget ? 1 : (int)(budget / per_image);
    if (chunk > 0) s->chunk = chunk;
    else /* Winograd's scratch is per sub-batch (below), so its tasks can be larger */
        s->chunk = s->winograd ? in.n : fit;
    /* At least 4 tasks per thread, so that dynamic scheduling can even out
     * a thread slowed down by another process on its core. */
    const int most = (in.n + 4 * s->nthreads - 1) / (4 * s->nthreads);
    if (s->chunk > most) s->chunk = most;
    /* Winograd transforms a task's images `sub` at a time, as many as fit. */
    s->sub = s->winograd && fit < s->chunk ? fit : s->chunk;

    /* One pool of threads: OpenMP hands tasks to threads and each task calls
     * a single-threaded GEMM. OpenBLAS's own threads would fight OpenMP's
     * spinning ones for the cores; the setting is process-wide. */
    openblas_set_num_threads(1);

    dm_layer_info_set(info, (dm_shape){in.n, filters, s->out_h, s->out_w},
                      (size_t)filters * in.c * k * k + (s->has_bias ? (size_t)filters : 0),
                      s->winograd ? conv2d_winograd_workspace_bytes(s) : conv2d_workspace_bytes(s), 0);
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA) {
        int tf32 = dm_param_int(p, "tf32", 0) != 0, deterministic = dm_param_int(p, "deterministic", 1) != 0;
        int rc = conv2d_cuda_create(s, tf32, deterministic, cfg->cuda_stream, &info->workspace_bytes, err);
        if (rc != DM_OK) {
            free(s);
            return rc;
        }
    }
#endif
    *state = s;
    return DM_OK;
}

static int conv2d_bind(void *state, float *params, float *grads, void *workspace, dm_error *err)
{
    conv2d_state *s = state;
    if (!params || !grads || !workspace)
        return dm_fail(err, DM_ERR_INVALID, "%s: bind needs params, grads and workspace", s->name);
    dm_layer_slices(params, grads, (size_t)s->filters * s->in_c * s->k * s->k, s->has_bias, &s->w, &s->dw, &s->b,
                    &s->db);
    s->workspace = workspace;
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA) conv2d_cuda_bind(s, workspace);
#endif
    return DM_OK;
}

/* Glorot uniform with fan_in = in_c*k*k, fan_out = filters*k*k; zero bias. */
static int conv2d_init_params(void *state, float *params, uint64_t seed, dm_error *err)
{
    conv2d_state *s = state;
    if (!params) return dm_fail(err, DM_ERR_INVALID, "%s: init_params needs a buffer", s->name);
    const size_t kk = (size_t)s->k * s->k;
    dm_layer_init_glorot(params, (size_t)s->filters * s->in_c * kk, (double)(s->in_c * kk), (double)(s->filters * kk),
                         s->has_bias ? (size_t)s->filters : 0, seed);
    return DM_OK;
}

/* The call's tensors: input (batch, in_c, in_h, in_w) and output and dout
 * (batch, filters, out_h, out_w), any batch <= the create-time n; and bind
 * done. */
static int check_pass(const conv2d_state *s, int backward, const dm_tensor *in, const dm_tensor *out,
                      const dm_tensor *dout, const dm_tensor *din, dm_error *err)
{
    const dm_shape ins = {s->n, s->in_c, s->in_h, s->in_w};
    const dm_shape outs = {s->n, s->filters, s->out_h, s->out_w};
    DM_TRY(dm_check_pass(s->name, s->device, ins, outs, 0, backward, in, out, dout, din, err));
    return dm_layer_check_bound(s->name, s->w, backward, err);
}

/* The CPU passes: Winograd or im2col, as create chose. */
static void forward_cpu(const conv2d_state *s, int n, const float *x, float *y)
{
    if (s->winograd) conv2d_winograd_forward_cpu(s, n, x, y);
    else conv2d_forward_cpu(s, n, x, y);
}
static void backward_cpu(const conv2d_state *s, int n, const float *x, const float *y, const float *dy, float *dx)
{
    if (s->winograd) conv2d_winograd_backward_cpu(s, n, x, y, dy, dx);
    else conv2d_backward_cpu(s, n, x, y, dy, dx);
}

static int conv2d_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    conv2d_state *s = state;
    DM_TRY(check_pass(s, 0, in, out, NULL, NULL, err));
    const int n = in->shape.n;
    return DM_CPU_OR_CUDA(s->device, forward_cpu(s, n, in->data, out->data),
                          conv2d_forward_cuda(s, dm_run_stream(ctx), n, in->data, out->data, err));
}

static int conv2d_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                           const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    conv2d_state *s = state;
    DM_TRY(check_pass(s, 1, in, out, dout, din, err));
    const int n = in->shape.n;
    float *dx = din ? din->data : NULL; /* NULL for the first layer */
    return DM_CPU_OR_CUDA(s->device, backward_cpu(s, n, in->data, out->data, dout->data, dx),
                          conv2d_backward_cuda(s, dm_run_stream(ctx), n, in->data, out->data, dout->data, dx, err));
}

static void conv2d_destroy(void *state)
{
#ifdef DM_WITH_CUDA
    if (state) conv2d_cuda_destroy(state);
#endif
    free(state);
}

/* ONNX (dmnist-export): Conv with the weights (filters, in_c, k, k) and bias as
 * initializers "<layer>.weight", "<layer>.bias" (torch.nn.Conv2d's layout),
 * explicit pads ('same' puts the odd pixel at the bottom/right, as create
 * does), then Relu when it is fused. */
static int conv2d_onnx(void *state, dm_onnx_builder *b, dm_error *err)
{
    const conv2d_state *s = state;
    DM_TRY(dm_onnx_check_4d(b, s->name, "conv2d", err));
    char wname[128], bname[128], conv[128];
    const int64_t wdims[4] = {s->filters, s->in_c, s->k, s->k};
    int rc = dm_onnx_weight_bias(b, s->name, wdims, 4, s->has_bias ? s->filters : 0, wname, bname, sizeof wname, err);
    if (rc != DM_OK) return rc;
    dm_onnx_name(b, "conv", conv, sizeof conv);
    int th = (s->out_h - 1) * s->stride + s->k - s->in_h, tw = (s->out_w - 1) * s->stride + s->k - s->in_w;
    th = th > 0 ? th : 0;
    tw = tw > 0 ? tw : 0;
    const int64_t kernel[2] = {s->k, s->k}, strides[2] = {s->stride, s->stride};
    const int64_t pads[4] = {s->pad_top, s->pad_left, th - s->pad_top, tw - s->pad_left};
    const char *in[3] = {b->input, wname, bname}, *out[1] = {s->relu ? conv : b->output};
    if ((rc = b->add_node(b, "Conv", in, s->has_bias ? 3 : 2, out, 1, err)) ||
        (rc = b->attr_ints(b, "kernel_shape", kernel, 2, err)) || (rc = b->attr_ints(b, "strides", strides, 2, err)) ||
        (rc = b->attr_ints(b, "pads", pads, 4, err)))
        return rc;
    return s->relu ? dm_onnx_unary(b, "Relu", conv, b->output, err) : DM_OK;
}

DM_LAYER_VTABLE(conv2d, CONV2D_DEVICES, .onnx = conv2d_onnx);

DM_PLUGIN_DEFINE("conv2d", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE ";openblas",
                 DM_LAYER_COMPONENT("conv2d", "2-D convolution (NCHW, square kernel), optional bias and fused ReLU",
                                    conv2d_params, &conv2d_vtable));
