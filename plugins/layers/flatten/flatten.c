/* Flatten layer plugin: no parameters. */
#include "flatten.h"
#include "dmnist/layer_util.h"
#include "dmnist/plugin.h"

#include <stdlib.h>

/* Devices with an implementation in this build (flatten_cuda.cu under DM_WITH_CUDA). */
#define FLATTEN_DEVICES DM_DEVICES_BUILT

static int flatten_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                          dm_error *err)
{
    DM_TRY(dm_layer_check_create("flatten", FLATTEN_DEVICES, cfg, info, err));
    const char *name = dm_layer_name(cfg, "flatten");
    (void)p;
    const dm_shape in = cfg->in_shape;
    DM_TRY(dm_layer_check_per_item(name, in, err)); /* the output's c is an int */

    flatten_state *s = DM_LAYER_STATE_NEW(flatten_state, "flatten", cfg, err);
    if (!s) return DM_ERR_NOMEM;
    s->in = in;
    s->out = (dm_shape){in.n, (int)dm_shape_per_item(in), 1, 1};
    dm_layer_info_set(info, s->out, 0, 0, 0);
    *state = s;
    return DM_OK;
}

/* dst = src, on the instance's device (nothing when the core hands one
 * buffer for both). */
static int copy(const flatten_state *s, const dm_run_ctx *ctx, const dm_tensor *src, dm_tensor *dst, dm_error *err)
{
    const size_t count = dm_shape_count(src->shape); /* this batch, not the largest */
    return DM_CPU_OR_CUDA(s->device, flatten_copy_cpu(count, src->data, dst->data),
                          flatten_copy_cuda(s, dm_run_stream(ctx), count, src->data, dst->data, err));
}

static int flatten_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    flatten_state *s = state;
    DM_TRY(dm_check_pass(s->name, s->device, s->in, s->out, 1, 0, in, out, NULL, NULL, err));
    return copy(s, ctx, in, out, err);
}

/* Called with a din only (DM_LAYER_VTABLE_NO_PARAMS); in and out are not read. */
static int flatten_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                            const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    flatten_state *s = state;
    (void)in, (void)out;
    DM_TRY(dm_check_tensor(s->name, "dout", dout, s->device, s->out, 0, err));
    DM_TRY(dm_check_tensor(s->name, "din", din, s->device, s->in, dout->shape.n, err));
    return copy(s, ctx, dout, din, err);
}

/* ONNX (dmnist-export): Flatten(axis = 1), (N, C, H, W) -> (N, C*H*W). */
static int flatten_onnx(void *state, dm_onnx_builder *b, dm_error *err)
{
    (void)state;
    int rc = dm_onnx_unary(b, "Flatten", b->input, b->output, err);
    if (rc == DM_OK) rc = b->attr_int(b, "axis", 1, err);
    if (rc == DM_OK) b->out_rank = 2;
    return rc;
}

DM_LAYER_VTABLE_NO_PARAMS(flatten, FLATTEN_DEVICES, .onnx = flatten_onnx);

static const dm_param_def flatten_params[] = {DM_PARAM_END};

DM_PLUGIN_DEFINE("flatten", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_LAYER_COMPONENT("flatten", "reshape (n, c, h, w) to (n, c*h*w, 1, 1) in NCHW order", flatten_params,
                                    &flatten_vtable));
