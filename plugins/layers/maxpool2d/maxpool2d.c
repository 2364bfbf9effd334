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

static int maxpool2d_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                            dm_error *err)
{
    DM_TRY(dm_layer_check_create("maxpool2d", MAXPOOL2D_DEVICES, cfg, info, err));
    const char *name = dm_layer_name(cfg, "maxpool2d");
    const dm_shape in = cfg->in_shape;
    const int pool = (int)dm_param_int(p, "pool", 2);
    int stride = (int)dm_param_int(p, "stride", 0);
    if (stride == 0) stride = pool;
    if (pool < 1 || stride < 1)
        return dm_fail(err, DM_ERR_INVALID, "%s: pool and stride must be >= 1 (got %d, %d)", name, pool, stride);
    if (pool > in.h || pool > in.w)
        return dm_fail(err, DM_ERR_INVALID, "%s: pool %d is larger than the %dx%d input", name, pool, in.h, in.w);

    maxpool2d_state *s = DM_LAYER_STATE_NEW(maxpool2d_state, "maxpool2d", cfg, err);
    if (!s) return DM_ERR_NOMEM;
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

/* The output's shape: (batch, c, out_h, out_w), batch <= the create-time n. */
static dm_shape out_shape(const maxpool2d_state *s) { return (dm_shape){s->in.n, s->in.c, s->out_h, s->out_w}; }

static int maxpool2d_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    maxpool2d_state *s = state;
    DM_TRY(dm_check_pass(s->name, s->device, s->in, out_shape(s), 1, 0, in, out, NULL, NULL, err));
    const int n = in->shape.n;
    return DM_CPU_OR_CUDA(s->device, maxpool2d_forward_cpu(s, n, in->data, out->data),
                          maxpool2d_forward_cuda(s, dm_run_stream(ctx), n, in->data, out->data, err));
}

/* Called with a din only (DM_LAYER_VTABLE_NO_PARAMS). The maxima are found
 * again from in, so out is not read. */
static int maxpool2d_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                              const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    maxpool2d_state *s = state;
    (void)out;
    DM_TRY(dm_check_tensor(s->name, "input", in, s->device, s->in, 0, err));
    const int n = in->shape.n;
    DM_TRY(dm_check_tensor(s->name, "dout", dout, s->device, out_shape(s), n, err));
    DM_TRY(dm_check_tensor(s->name, "din", din, s->device, s->in, n, err));
    return DM_CPU_OR_CUDA(s->device, maxpool2d_backward_cpu(s, n, in->data, dout->data, din->data),
                          maxpool2d_backward_cuda(s, dm_run_stream(ctx), n, in->data, dout->data, din->data, err));
}

/* ONNX (dmnist-export): MaxPool, no padding, windows that do not fit dropped
 * (ONNX's default floor mode). */
static int maxpool2d_onnx(void *state, dm_onnx_builder *b, dm_error *err)
{
    const maxpool2d_state *s = state;
    DM_TRY(dm_onnx_check_4d(b, s->name, "maxpool2d", err));
    const int64_t kernel[2] = {s->pool, s->pool}, strides[2] = {s->stride, s->stride};
    int rc;
    if ((rc = dm_onnx_unary(b, "MaxPool", b->input, b->output, err)) ||
        (rc = b->attr_ints(b, "kernel_shape", kernel, 2, err)) || (rc = b->attr_ints(b, "strides", strides, 2, err)))
        return rc;
    return DM_OK;
}

DM_LAYER_VTABLE_NO_PARAMS(maxpool2d, MAXPOOL2D_DEVICES, .onnx = maxpool2d_onnx);

DM_PLUGIN_DEFINE("maxpool2d", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_LAYER_COMPONENT("maxpool2d", "2-D max pooling (NCHW, square window, no padding)", maxpool2d_params,
                                    &maxpool2d_vtable));
