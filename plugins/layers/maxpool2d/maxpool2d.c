/* MaxPool2D layer plugin: no parameters, no padding. */
#include "maxpool2d.h"
#include "dmnist/layer_util.h"
#include "dmnist/plugin.h"

#include <stdlib.h>

/* Devices with an implementation in this build (maxpool2d_cuda.cu under DM_WITH_CUDA). */
#define MAXPOOL2D_DEVICES DM_DEVICES_BUILT

static const dm_param_def maxpool2d_params[] = {
    {"pool", DM_PARAM_INT, "2", 1, 1024, NULL, "square window size"},
    {"stride", DM_PARAM_INT, "0", 0, 1024, NULL, "step between windows; 0 = same as pool"},
    DM_PARAM_END};

static int maxpool2d_create(const dm_params *p, const dm_layer_config *cfg, void **state,
                            dm_layer_info *info, dm_error *err)
{
    int rc = dm_layer_check_create("maxpool2d", MAXPOOL2D_DEVICES, cfg, info, err);
    if (rc != DM_OK)
        return rc;
    const char *name = dm_layer_name(cfg, "maxpool2d");
    const dm_shape in = cfg->in_shape;
    const int pool = (int)dm_param_int(p, "pool", 2);
    int stride = (int)dm_param_int(p, "stride", 0);
    if (stride == 0)
        stride = pool;
    if (pool < 1 || stride < 1)
        return dm_fail(err, DM_ERR_INVALID, "%s: pool and stride must be >= 1 (got %d, %d)", name,
                       pool, stride);
    if (pool > in.h || pool > in.w)
        return dm_fail(err, DM_ERR_INVALID, "%s: pool %d is larger than the %dx%d input", name,
                       pool, in.h, in.w);

    maxpool2d_state *s = DM_LAYER_STATE_NEW(maxpool2d_state, "maxpool2d", cfg, err);
    if (!s)
        return DM_ERR_NOMEM;
    s->nthreads = dm_layer_threads(cfg);
    s->in = in;
    s->pool = pool;
    s->stride = stride;
    /* Windows that do not fit are dropped (Keras 'valid'). */
    s->out_h = (in.h - pool) / stride + 1;
    s->out_w = (in.w - pool) / stride + 1;
    dm_layer_info_set(info, (dm_shape){in.n, in.c, s->out_h, s->out_w}, 0, 0, 0);
    *state = s;
    return DM_OK;
}

/* t must be (n, c, h, w) with the create-time c and batch <= the create-time n
 * (exactly n when n > 0). */
static int check_tensor(const maxpool2d_state *s, const dm_tensor *t, int n, int h, int w,
                        const char *what, dm_error *err)
{
    dm_shape e = {s->in.n, s->in.c, h, w};
    return dm_check_tensor(s->name, what, t, s->device, e, n, err);
}

static int maxpool2d_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in,
                             dm_tensor *out, dm_error *err)
{
    maxpool2d_state *s = state;
    (void)ctx;
    const dm_shape outs = {s->in.n, s->in.c, s->out_h, s->out_w};
    int rc = dm_check_pass(s->name, s->device, s->in, outs, 1, 0, in, out, NULL, NULL, err);
    if (rc != DM_OK)
        return rc;
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA)
        return maxpool2d_forward_cuda(s, ctx ? ctx->cuda_stream : NULL, in->shape.n, in->data,
                                      out->data, err);
#endif
    maxpool2d_forward_cpu(s, in->shape.n, in->data, out->data);
    return DM_OK;
}

static int maxpool2d_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in,
                              const dm_tensor *out, const dm_tensor *dout, dm_tensor *din,
                              dm_error *err)
{
    maxpool2d_state *s = state;
    (void)ctx, (void)out;
    if (!din)
        return DM_OK;
    int rc = check_tensor(s, in, 0, s->in.h, s->in.w, "input", err);
    if (rc == DM_OK)
        rc = check_tensor(s, dout, in->shape.n, s->out_h, s->out_w, "dout", err);
    if (rc == DM_OK)
        rc = check_tensor(s, din, in->shape.n, s->in.h, s->in.w, "din", err);
    if (rc != DM_OK)
        return rc;
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA)
        return maxpool2d_backward_cuda(s, ctx ? ctx->cuda_stream : NULL, in->shape.n, in->data,
                                       dout->data, din->data, err);
#endif
    maxpool2d_backward_cpu(s, in->shape.n, in->data, dout->data, din->data);
    return DM_OK;
}

/* ONNX (dmnist-export): MaxPool, no padding, windows that do not fit dropped
 * (ONNX's default floor mode). */
static int maxpool2d_onnx(void *state, dm_onnx_builder *b, dm_error *err)
{
    const maxpool2d_state *s = state;
    if (b->in_rank != 4)
        return dm_fail(err, DM_ERR_UNSUPPORTED,
                       "%s: maxpool2d needs a 4-D (N, C, H, W) input in the graph, got rank %d",
                       s->name, b->in_rank);
    const int64_t kernel[2] = {s->pool, s->pool}, strides[2] = {s->stride, s->stride};
    int rc;
    if ((rc = dm_onnx_unary(b, "MaxPool", b->input, b->output, err)) ||
        (rc = b->attr_ints(b, "kernel_shape", kernel, 2, err)) ||
        (rc = b->attr_ints(b, "strides", strides, 2, err)))
        return rc;
    return DM_OK;
}

DM_LAYER_VTABLE_NO_PARAMS(maxpool2d, MAXPOOL2D_DEVICES, .onnx = maxpool2d_onnx);

DM_PLUGIN_DEFINE("maxpool2d", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
    DM_LAYER_COMPONENT("maxpool2d", "2-D max pooling (NCHW, square window, no padding)",
                       maxpool2d_params, &maxpool2d_vtable));
