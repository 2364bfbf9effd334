/* Dropout layer plugin: no parameters; identity when ctx->training == 0. */
#include "dropout.h"
#include "dmnist/layer_util.h"
#include "dmnist/plugin.h"

#include <math.h>
#include <stdlib.h>

/* Devices with an implementation in this build (dropout_cuda.cu under DM_WITH_CUDA). */
#define DROPOUT_DEVICES DM_DEVICES_BUILT

static const dm_param_def dropout_params[] = {
    {"rate", DM_PARAM_FLOAT, NULL, 0, 1, NULL, "fraction of inputs zeroed while training, in [0, 1)"}, DM_PARAM_END};

static int dropout_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                          dm_error *err)
{
    DM_TRY(dm_layer_check_create("dropout", DROPOUT_DEVICES, cfg, info, err));
    const char *name = dm_layer_name(cfg, "dropout");
    const dm_param_value *rv = dm_param_find(p, "rate");
    if (!rv) return dm_fail(err, DM_ERR_INVALID, "%s: missing required key 'rate'", name);
    const double rate = rv->f;
    if (!(rate >= 0.0 && rate < 1.0))
        return dm_fail(err, DM_ERR_INVALID, "%s: rate must be in [0, 1) (got %g)", name, rate);
    const dm_shape in = cfg->in_shape;

    dropout_state *s = DM_LAYER_STATE_NEW(dropout_state, "dropout", cfg, err);
    if (!s) return DM_ERR_NOMEM;
    s->nthreads = dm_layer_threads(cfg);
    s->shape = in;
    s->rate = (float)rate;
    s->threshold = (uint32_t)floor(rate * 16777216.0);
    s->scale = (float)(1.0 / (1.0 - rate));
    dm_layer_info_set(info, in, 0, 0, 0);
    *state = s;
    return DM_OK;
}

/* dst = src through the mask of ctx->seed while training (the same mask
 * for forward's activations and backward's gradients), else a copy. */
static int apply(const dropout_state *s, const dm_run_ctx *ctx, int backward, const dm_tensor *src, dm_tensor *dst,
                 dm_error *err)
{
    const size_t count = dm_shape_count(src->shape); /* this batch, not the largest */
    const float *x = src->data;
    float *y = dst->data;
    void *stream = ctx->cuda_stream;
    if (!ctx->training || s->threshold == 0) /* evaluation, or rate 0 */
        return DM_CPU_OR_CUDA(s->device, dropout_copy_cpu(count, x, y), dropout_copy_cuda(s, stream, count, x, y, err));
    if (backward)
        return DM_CPU_OR_CUDA(s->device, dropout_backward_cpu(s, ctx->seed, count, x, y),
                              dropout_backward_cuda(s, stream, ctx->seed, count, x, y, err));
    return DM_CPU_OR_CUDA(s->device, dropout_forward_cpu(s, ctx->seed, count, x, y),
                          dropout_forward_cuda(s, stream, ctx->seed, count, x, y, err));
}

static int dropout_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    dropout_state *s = state;
    if (!ctx) return dm_fail(err, DM_ERR_INVALID, "%s: forward needs a run context", s->name);
    DM_TRY(dm_check_pass(s->name, s->device, s->shape, s->shape, 1, 0, in, out, NULL, NULL, err));
    return apply(s, ctx, 0, in, out, err);
}

/* Called with a din only (DM_LAYER_VTABLE_NO_PARAMS); in and out are not read. */
static int dropout_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                            const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    dropout_state *s = state;
    (void)in, (void)out;
    if (!ctx) return dm_fail(err, DM_ERR_INVALID, "%s: backward needs a run context", s->name);
    DM_TRY(dm_check_tensor(s->name, "dout", dout, s->device, s->shape, 0, err));
    DM_TRY(dm_check_tensor(s->name, "din", din, s->device, s->shape, dout->shape.n, err));
    return apply(s, ctx, 1, dout, din, err);
}

/* ONNX (dmnist-export): the identity, as at evaluation (inverted dropout
 * scales while training, so inference needs no factor). */
static int dropout_onnx(void *state, dm_onnx_builder *b, dm_error *err)
{
    (void)state;
    return dm_onnx_unary(b, "Identity", b->input, b->output, err);
}

DM_LAYER_VTABLE_NO_PARAMS(dropout, DROPOUT_DEVICES, .onnx = dropout_onnx);

DM_PLUGIN_DEFINE("dropout", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_LAYER_COMPONENT("dropout",
                                    "inverted dropout while training (mask from the step seed), "
                                    "identity in evaluation",
                                    dropout_params, &dropout_vtable));
