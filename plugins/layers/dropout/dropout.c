/* Dropout layer plugin: no parameters; identity when ctx->training == 0. */
#include "dropout.h"
#include "dmnist/layer_util.h"
#include "dmnist/plugin.h"

#include <math.h>
#include <stdlib.h>

/* Devices with an implementation in this build (dropout_cuda.cu under DM_WITH_CUDA). */
#define DROPOUT_DEVICES DM_DEVICES_BUILT

static const dm_param_def dropout_params[] = {
    {"rate", DM_PARAM_FLOAT, NULL, 0, 1, NULL,
     "fraction of inputs zeroed while training, in [0, 1)"},
    DM_PARAM_END};

static int dropout_create(const dm_params *p, const dm_layer_config *cfg, void **state,
                          dm_layer_info *info, dm_error *err)
{
    int rc = dm_layer_check_create("dropout", DROPOUT_DEVICES, cfg, info, err);
    if (rc != DM_OK)
        return rc;
    const char *name = dm_layer_name(cfg, "dropout");
    const dm_param_value *rv = dm_param_find(p, "rate");
    if (!rv)
        return dm_fail(err, DM_ERR_INVALID, "%s: missing required key 'rate'", name);
    const double rate = rv->f;
    if (!(rate >= 0.0 && rate < 1.0))
        return dm_fail(err, DM_ERR_INVALID, "%s: rate must be in [0, 1) (got %g)", name, rate);
    const dm_shape in = cfg->in_shape;

    dropout_state *s = DM_LAYER_STATE_NEW(dropout_state, "dropout", cfg, err);
    if (!s)
        return DM_ERR_NOMEM;
    s->nthreads = dm_layer_threads(cfg);
    s->shape = in;
    s->rate = (float)rate;
    s->threshold = (uint32_t)floor(rate * 16777216.0);
    s->scale = (float)(1.0 / (1.0 - rate));
    dm_layer_info_set(info, in, 0, 0, 0);
    *state = s;
    return DM_OK;
}

/* t must have the create-time per-item shape and a batch <= the create-time
 * one (exactly n when n > 0). */
static int check_tensor(const dropout_state *s, const dm_tensor *t, int n, const char *what,
                        dm_error *err)
{
    return dm_check_tensor(s->name, what, t, s->device, s->shape, n, err);
}

static int dropout_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in,
                           dm_tensor *out, dm_error *err)
{
    dropout_state *s = state;
    if (!ctx)
        return dm_fail(err, DM_ERR_INVALID, "%s: forward needs a run context", s->name);
    int rc = check_tensor(s, in, 0, "input", err);
    if (rc == DM_OK)
        rc = check_tensor(s, out, in->shape.n, "output", err);
    if (rc != DM_OK)
        return rc;
    const size_t count = dm_shape_count(in->shape);
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA)
        return ctx->training && s->threshold > 0
                   ? dropout_forward_cuda(s, ctx->cuda_stream, ctx->seed, count, in->data,
                                          out->data, err)
                   : dropout_copy_cuda(s, ctx->cuda_stream, count, in->data, out->data, err);
#endif
    if (ctx->training && s->threshold > 0)
        dropout_forward_cpu(s, ctx->seed, count, in->data, out->data);
    else
        dropout_copy_cpu(count, in->data, out->data);
    return DM_OK;
}

static int dropout_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in,
                            const dm_tensor *out, const dm_tensor *dout, dm_tensor *din,
                            dm_error *err)
{
    dropout_state *s = state;
    (void)in, (void)out;
    if (!din)
        return DM_OK;
    if (!ctx)
        return dm_fail(err, DM_ERR_INVALID, "%s: backward needs a run context", s->name);
    int rc = check_tensor(s, dout, 0, "dout", err);
    if (rc == DM_OK)
        rc = check_tensor(s, din, dout->shape.n, "din", err);
    if (rc != DM_OK)
        return rc;
    const size_t count = dm_shape_count(dout->shape);
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA)
        return ctx->training && s->threshold > 0
                   ? dropout_backward_cuda(s, ctx->cuda_stream, ctx->seed, count, dout->data,
                                           din->data, err)
                   : dropout_copy_cuda(s, ctx->cuda_stream, count, dout->data, din->data, err);
#endif
    if (ctx->training && s->threshold > 0)
        dropout_backward_cpu(s, ctx->seed, count, dout->data, din->data);
    else
        dropout_copy_cpu(count, dout->data, din->data);
    return DM_OK;
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
