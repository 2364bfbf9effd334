/* Dense layer plugin: weights (units, in_features) then bias (units) in the
 * parameter slice. Any (n, c, h, w) input is read as (n, c*h*w) in NCHW
 * order; the output is (n, units, 1, 1). */
#include "dense.h"
#include "dmnist/layer_util.h"
#include "dmnist/plugin.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

/* Devices with an implementation in this build (dense_cuda.cu under DM_WITH_CUDA). */
#define DENSE_DEVICES DM_DEVICES_BUILT

static const dm_param_def dense_params[] = {
    {"units", DM_PARAM_INT, NULL, 1, 1 << 24, NULL, "number of outputs"},
    {"bias", DM_PARAM_BOOL, "true", 0, -1, NULL, "add a learned bias per output"},
    {"activation", DM_PARAM_ENUM, "none", 0, -1, "none|relu", "fused activation on the output"},
    {"tf32", DM_PARAM_BOOL, "false", 0, -1, NULL,
     "cuda: let cuBLAS use TF32 tensor cores (faster; ~1e-3 relative error)"},
    DM_PARAM_END};

static int dense_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                        dm_error *err)
{
    DM_TRY(dm_layer_check_create("dense", DENSE_DEVICES, cfg, info, err));
    const char *name = dm_layer_name(cfg, "dense");
    const dm_shape in = cfg->in_shape;
    const int64_t units = dm_param_int(p, "units", 0);
    if (units < 1 || units > (1 << 24))
        return dm_fail(err, DM_ERR_INVALID, "%s: units must be in [1, %d] (got %lld)", name, 1 << 24, (long long)units);
    DM_TRY(dm_layer_check_per_item(name, in, err)); /* in_features is an int */

    dense_state *s = DM_LAYER_STATE_NEW(dense_state, "dense", cfg, err);
    if (!s) return DM_ERR_NOMEM;
    s->nthreads = dm_layer_threads(cfg);
    s->in = in;
    s->n = in.n;
    s->in_features = (int)dm_shape_per_item(in);
    s->units = (int)units;
    s->has_bias = dm_param_int(p, "bias", 1) != 0;
    s->relu = strcmp(dm_param_str(p, "activation", "none"), "relu") == 0;

    /* One pool of threads: OpenMP splits the GEMMs and each part runs
     * single-threaded. OpenBLAS's own threads would fight OpenMP's spinning
     * ones for the cores; the setting is process-wide. */
    openblas_set_num_threads(1);

    dm_layer_info_set(info, (dm_shape){in.n, s->units, 1, 1},
                      (size_t)s->units * s->in_features + (s->has_bias ? (size_t)s->units : 0),
                      s->relu ? (size_t)in.n * s->units * sizeof(float) : 0, 0);
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA) {
        int rc = dense_cuda_create(s, dm_param_int(p, "tf32", 0) != 0, cfg->cuda_stream, &info->workspace_bytes, err);
        if (rc != DM_OK) {
            free(s);
            return rc;
        }
    }
#endif
    *state = s;
    return DM_OK;
}

static int dense_bind(void *state, float *params, float *grads, void *workspace, dm_error *err)
{
    dense_state *s = state;
    if (!params || !grads || (s->relu && !workspace))
        return dm_fail(err, DM_ERR_INVALID, "%s: bind needs params, grads%s", s->name, s->relu ? " and workspace" : "");
    dm_layer_slices(params, grads, (size_t)s->units * s->in_features, s->has_bias, &s->w, &s->dw, &s->b, &s->db);
    s->dz = workspace;
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA) return dense_cuda_bind(s, workspace, err);
#endif
    return DM_OK;
}

/* Glorot uniform with fan_in = in_features, fan_out = units; zero bias. */
static int dense_init_params(void *state, float *params, uint64_t seed, dm_error *err)
{
    dense_state *s = state;
    if (!params) return dm_fail(err, DM_ERR_INVALID, "%s: init_params needs a buffer", s->name);
    dm_layer_init_glorot(params, (size_t)s->units * s->in_features, (double)s->in_features, (double)s->units,
                         s->has_bias ? (size_t)s->units : 0, seed);
    return DM_OK;
}

/* The call's tensors: input with the create-time per-item shape and a batch
 * <= the create-time n, output and dout (batch, units, 1, 1) and din with
 * the input's batch; and bind done. */
static int check_pass(const dense_state *s, int backward, const dm_tensor *in, const dm_tensor *out,
                      const dm_tensor *dout, const dm_tensor *din, dm_error *err)
{
    const dm_shape ins = {s->n, s->in.c, s->in.h, s->in.w}, outs = {s->n, s->units, 1, 1};
    DM_TRY(dm_check_pass(s->name, s->device, ins, outs, 1, backward, in, out, dout, din, err));
    return dm_layer_check_bound(s->name, s->w, backward, err);
}

static int dense_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    dense_state *s = state;
    DM_TRY(check_pass(s, 0, in, out, NULL, NULL, err));
    const int n = in->shape.n;
    return DM_CPU_OR_CUDA(s->device, dense_forward_cpu(s, n, in->data, out->data),
                          dense_forward_cuda(s, dm_run_stream(ctx), n, in->data, out->data, err));
}

static int dense_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                          const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    dense_state *s = state;
    DM_TRY(check_pass(s, 1, in, out, dout, din, err));
    const int n = in->shape.n;
    float *dx = din ? din->data : NULL; /* NULL for the first layer */
    return DM_CPU_OR_CUDA(s->device, dense_backward_cpu(s, n, in->data, out->data, dout->data, dx),
                          dense_backward_cuda(s, dm_run_stream(ctx), n, in->data, out->data, dout->data, dx, err));
}

static void dense_destroy(void *state)
{
#ifdef DM_WITH_CUDA
    if (state) dense_cuda_destroy(state);
#endif
    free(state);
}

/* ONNX (dmnist-export): Flatten (a 4-D input), Gemm with transB = 1 over the
 * weights (units, in_features) and bias as "<layer>.weight", "<layer>.bias"
 * (torch.nn.Linear's layout), then Relu when it is fused. Output (N, units). */
static int dense_onnx(void *state, dm_onnx_builder *b, dm_error *err)
{
    const dense_state *s = state;
    char wname[128], bname[128], flat[128], gemm[128];
    const int64_t wdims[2] = {s->units, s->in_features};
    int rc = dm_onnx_weight_bias(b, s->name, wdims, 2, s->has_bias ? s->units : 0, wname, bname, sizeof wname, err);
    if (rc != DM_OK) return rc;
    dm_onnx_name(b, "flat", flat, sizeof flat);
    dm_onnx_name(b, "gemm", gemm, sizeof gemm);
    const char *x = b->input;
    if (b->in_rank != 2) { /* (N, C, H, W) -> (N, C*H*W), NCHW order as dense reads it */
        if ((rc = dm_onnx_unary(b, "Flatten", b->input, flat, err)) || (rc = b->attr_int(b, "axis", 1, err))) return rc;
        x = flat;
    }
    const char *in[3] = {x, wname, bname}, *out[1] = {s->relu ? gemm : b->output};
    if ((rc = b->add_node(b, "Gemm", in, s->has_bias ? 3 : 2, out, 1, err)) || (rc = b->attr_int(b, "transB", 1, err)))
        return rc;
    b->out_rank = 2;
    return s->relu ? dm_onnx_unary(b, "Relu", gemm, b->output, err) : DM_OK;
}

DM_LAYER_VTABLE(dense, DENSE_DEVICES, .onnx = dense_onnx);

DM_PLUGIN_DEFINE("dense", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE ";openblas",
                 DM_LAYER_COMPONENT("dense", "fully connected layer, optional bias and fused ReLU", dense_params,
                                    &dense_vtable));
