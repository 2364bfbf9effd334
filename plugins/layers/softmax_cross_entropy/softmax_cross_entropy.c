/* Softmax cross-entropy loss layer plugin (is_loss = 1, no parameters).
 * forward: out = softmax(in); with labels, metrics[0] += sum of -log p[label]
 * and metrics[1] += correct argmax predictions. backward ignores dout and
 * writes din = (p - onehot) / n, the gradient of the mean loss. */
#include "softmax_cross_entropy.h"
#include "dmnist/layer_util.h"
#include "dmnist/plugin.h"

#include <stdlib.h>

/* Devices with an implementation in this build (softmax_cross_entropy_cuda.cu under DM_WITH_CUDA). */
#define SCE_DEVICES DM_DEVICES_BUILT

static int sce_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info, dm_error *err)
{
    DM_TRY(dm_layer_check_create("softmax_cross_entropy", SCE_DEVICES, cfg, info, err));
    const char *name = dm_layer_name(cfg, "softmax_cross_entropy");
    (void)p;
    const dm_shape in = cfg->in_shape;
    if (dm_shape_per_item(in) < 2 || dm_shape_per_item(in) > 0x7fffffff)
        return dm_fail(err, DM_ERR_INVALID, "%s: needs at least 2 classes per item (got %zu)", name,
                       dm_shape_per_item(in));

    sce_state *s = DM_LAYER_STATE_NEW(sce_state, "softmax_cross_entropy", cfg, err);
    if (!s) return DM_ERR_NOMEM;
    s->in = in;
    s->classes = (int)dm_shape_per_item(in);
    dm_layer_info_set(info, in, 0, 0, 1);
    *state = s;
    return DM_OK;
}

static int check_labels(const sce_state *s, int n, const int32_t *labels, dm_error *err)
{
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= s->classes)
            return dm_fail(err, DM_ERR_INVALID, "%s: label %d of item %d is outside [0, %d)", s->name, (int)labels[i],
                           i, s->classes);
    return DM_OK;
}

static int sce_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    sce_state *s = state;
    DM_TRY(dm_check_pass(s->name, s->device, s->in, s->in, 1, 0, in, out, NULL, NULL, err));
    const int n = in->shape.n;
    /* Without labels (prediction only) there is no loss to report. */
    const int32_t *labels = ctx ? ctx->labels : NULL;
#ifdef DM_WITH_CUDA
    /* Labels live on the device: the kernel turns a bad one into a NaN loss. */
    if (s->device == DM_DEVICE_CUDA)
        return sce_forward_cuda(s, dm_run_stream(ctx), n, in->data, labels, out->data, ctx ? ctx->metrics : NULL, err);
#endif
    if (labels) DM_TRY(check_labels(s, n, labels, err));
    double loss = 0.0;
    int correct = 0;
    sce_forward_cpu(s, n, in->data, labels, out->data, &loss, &correct);
    if (labels && ctx->metrics) {
        ctx->metrics[0] += (float)loss;
        ctx->metrics[1] += (float)correct;
    }
    return DM_OK;
}

/* Called with a din only (DM_LAYER_VTABLE_NO_PARAMS); the gradient starts
 * from the labels, so in and dout are not read. */
static int sce_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                        const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    sce_state *s = state;
    (void)in, (void)dout;
    if (!ctx || !ctx->labels)
        return dm_fail(err, DM_ERR_INVALID, "%s: backward needs labels in the run context", s->name);
    DM_TRY(dm_check_tensor(s->name, "output", out, s->device, s->in, 0, err));
    const int n = out->shape.n;
    DM_TRY(dm_check_tensor(s->name, "din", din, s->device, s->in, n, err));
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA)
        return sce_backward_cuda(s, ctx->cuda_stream, n, out->data, ctx->labels, din->data, err);
#endif
    DM_TRY(check_labels(s, n, ctx->labels, err));
    sce_backward_cpu(s, n, out->data, ctx->labels, din->data);
    return DM_OK;
}

/* ONNX (dmnist-export): at inference the loss layer passes its input on as the
 * model's output (the logits, (N, classes)) and adds a second graph output,
 * "probabilities" = Softmax(logits, axis = 1). */
static int sce_onnx(void *state, dm_onnx_builder *b, dm_error *err)
{
    const sce_state *s = state;
    char flat[128];
    int rc;
    const char *x = b->input;
    if (b->in_rank != 2) { /* classes over c*h*w, as forward counts them */
        dm_onnx_name(b, "flat", flat, sizeof flat);
        if ((rc = dm_onnx_unary(b, "Flatten", b->input, flat, err)) || (rc = b->attr_int(b, "axis", 1, err))) return rc;
        x = flat;
    }
    b->out_rank = 2;
    const int64_t dims[2] = {-1, s->classes};
    if ((rc = dm_onnx_unary(b, "Identity", x, b->output, err)) ||
        (rc = dm_onnx_unary(b, "Softmax", b->output, "probabilities", err)) || (rc = b->attr_int(b, "axis", 1, err)) ||
        (rc = b->add_output(b, "probabilities", dims, 2, err)))
        return rc;
    return DM_OK;
}

DM_LAYER_VTABLE_NO_PARAMS(sce, SCE_DEVICES, .onnx = sce_onnx);

static const dm_param_def sce_params[] = {DM_PARAM_END};

DM_PLUGIN_DEFINE("softmax_cross_entropy", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_LAYER_COMPONENT("softmax_cross_entropy",
                                    "softmax over c*h*w classes with mean cross-entropy loss (final layer)", sce_params,
                                    &sce_vtable));
