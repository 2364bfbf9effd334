/* Elementwise activation layers from two expressions: the function and its
 * derivative applied to the incoming gradient. Optional and header-only.
 *
 *   #define RELU(x, a)         ((x) > 0.0f ? (x) : 0.0f)      // y = f(x)
 *   #define RELU_DX(x, y, dy, a) ((x) > 0.0f ? (dy) : 0.0f)   // dx = f'(x) * dy
 *   DM_ELEMENTWISE_LAYER(relu, RELU, RELU_DX);
 *
 * defines relu_vtable: a layer with no parameters whose output has the
 * input's shape, on the CPU (OpenMP-parallel above DM_PARALLEL_MIN_ELEMENTS
 * when built with -fopenmp), with the usual checks and one-line errors. In
 * the two expressions `x` is the input element, `y` the output of the
 * matching forward (for f' = y (1 - y) and the like), `dy` dL/dy, and `a`
 * the layer's FLOAT keys in the order of its parameter table (a[0] is
 * leaky_relu's alpha); F and DX may be macros or static inline functions.
 * DX is written with dy rather than returning f' alone so that a select
 * (`x > 0 ? dy : 0`) stays a select: it is exact and vectorises.
 *
 * A layer with a CUDA implementation passes its two entry points too (see
 * plugins/layers/relu):
 *   DM_ELEMENTWISE_LAYER_CUDA(relu, RELU, RELU_DX, relu_forward_cuda, relu_backward_cuda);
 *
 * The DM_ELEMENTWISE_LAYER* macros are C (they use designated
 * initialisers); the struct and function types also compile as C++/CUDA. */
#ifndef DMNIST_ELEMENTWISE_H
#define DMNIST_ELEMENTWISE_H

#include "dmnist/layer_util.h"

#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DM_ELEMENTWISE_MAX_ARGS 4

/* One instance of an elementwise layer. */
typedef struct dm_elementwise {
    char name[64];    /* section name, for messages */
    const char *type; /* layer type, for messages */
    dm_device device;
    int nthreads;                     /* cfg->num_threads, or OpenMP's default */
    dm_shape shape;                   /* create-time input shape; n = the largest batch */
    float a[DM_ELEMENTWISE_MAX_ARGS]; /* the FLOAT keys of the table, in order */
} dm_elementwise;

/* The per-device passes over `count` floats. The CUDA ones run on `stream`
 * and return a dm_status. */
typedef void (*dm_elementwise_cpu_fwd)(const dm_elementwise *s, size_t count, const float *x, float *y);
typedef void (*dm_elementwise_cpu_bwd)(const dm_elementwise *s, size_t count, const float *x, const float *y,
                                       const float *dy, float *dx);
typedef int (*dm_elementwise_cuda_fwd)(const dm_elementwise *s, void *stream, size_t count, const float *x, float *y,
                                       dm_error *err);
typedef int (*dm_elementwise_cuda_bwd)(const dm_elementwise *s, void *stream, size_t count, const float *x,
                                       const float *y, const float *dy, float *dx, dm_error *err);

static inline int dm_elementwise_create(const char *type, unsigned devices, const dm_params *p,
                                        const dm_layer_config *cfg, void **state, dm_layer_info *info, dm_error *err)
{
    int rc = dm_layer_check_create(type, devices, cfg, info, err);
    if (rc != DM_OK) return rc;
    const dm_shape in = cfg->in_shape;

    dm_elementwise *s = DM_LAYER_STATE_NEW(dm_elementwise, type, cfg, err);
    if (!s) return DM_ERR_NOMEM;
    s->type = type;
    s->nthreads = dm_layer_threads(cfg);
    s->shape = in;
    for (int k = 0, j = 0; p && k < p->count && j < DM_ELEMENTWISE_MAX_ARGS; k++)
        if (p->values[k].type == DM_PARAM_FLOAT) s->a[j++] = (float)p->values[k].f;
    dm_layer_info_set(info, in, 0, 0, 0);
    *state = s;
    return DM_OK;
}

static inline int dm_elementwise_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out,
                                         dm_error *err, dm_elementwise_cpu_fwd cpu, dm_elementwise_cuda_fwd cuda)
{
    const dm_elementwise *s = (const dm_elementwise *)state;
    int rc = dm_check_pass(s->name, s->device, s->shape, s->shape, 1, 0, in, out, NULL, NULL, err);
    if (rc != DM_OK) return rc;
    const size_t count = dm_shape_count(in->shape); /* this batch, not the largest */
    if (s->device == DM_DEVICE_CUDA)
        return cuda ? cuda(s, ctx ? ctx->cuda_stream : NULL, count, in->data, out->data, err)
                    : dm_fail(err, DM_ERR_UNSUPPORTED, "%s: %s has no cuda implementation", s->name, s->type);
    cpu(s, count, in->data, out->data);
    return DM_OK;
}

static inline int dm_elementwise_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                                          const dm_tensor *dout, dm_tensor *din, dm_error *err,
                                          dm_elementwise_cpu_bwd cpu, dm_elementwise_cuda_bwd cuda)
{
    const dm_elementwise *s = (const dm_elementwise *)state;
    if (!din) return DM_OK; /* first layer: nothing to propagate, no parameters */
    int rc = dm_check_pass(s->name, s->device, s->shape, s->shape, 1, 1, in, out, dout, din, err);
    if (rc != DM_OK) return rc;
    const size_t count = dm_shape_count(in->shape);
    if (s->device == DM_DEVICE_CUDA)
        return cuda ? cuda(s, ctx ? ctx->cuda_stream : NULL, count, in->data, out->data, dout->data, din->data, err)
                    : dm_fail(err, DM_ERR_UNSUPPORTED, "%s: %s has no cuda implementation", s->name, s->type);
    cpu(s, count, in->data, out->data, dout->data, din->data);
    return DM_OK;
}

#ifdef __cplusplus
}
#endif

/* `#pragma omp parallel for` over a pass when built with OpenMP and `cond`
 * holds; nothing (and no unknown-pragma warning) without OpenMP. */
#ifdef _OPENMP
#define DM_PRAGMA_(x) _Pragma(#x)
#define DM_OMP_PARALLEL_FOR_IF(threads, cond) \
    DM_PRAGMA_(omp parallel for schedule(static) num_threads(threads) if (cond))
#else
#define DM_OMP_PARALLEL_FOR_IF(threads, cond)
#endif

#define DM_ELEMENTWISE_LAYER(NAME, F, DX) \
    DM_ELEMENTWISE_LAYER_(NAME, F, DX, DM_DEVICE_BIT(DM_DEVICE_CPU), NULL, NULL, NULL)
#define DM_ELEMENTWISE_LAYER_CUDA(NAME, F, DX, CUDA_FWD, CUDA_BWD) \
    DM_ELEMENTWISE_LAYER_(NAME, F, DX, DM_DEVICE_BIT(DM_DEVICE_CPU) | DM_DEVICE_BIT(DM_DEVICE_CUDA), CUDA_FWD, \
                          CUDA_BWD, NULL)

/* The same for a layer that is one ONNX operator without attributes
 * (ABI 1.3, dmnist-export): OP is its op_type, e.g. "Relu".
 *   DM_ELEMENTWISE_LAYER_ONNX(relu, RELU, RELU_DX, "Relu");
 *   DM_ELEMENTWISE_LAYER_CUDA_ONNX(relu, RELU, RELU_DX, relu_forward_cuda, relu_backward_cuda, "Relu");
 */
#define DM_ELEMENTWISE_LAYER_ONNX(NAME, F, DX, OP) \
    DM_ELEMENTWISE_ONNX_FN_(NAME, OP) \
    DM_ELEMENTWISE_LAYER_(NAME, F, DX, DM_DEVICE_BIT(DM_DEVICE_CPU), NULL, NULL, NAME##_onnx)
#define DM_ELEMENTWISE_LAYER_CUDA_ONNX(NAME, F, DX, CUDA_FWD, CUDA_BWD, OP) \
    DM_ELEMENTWISE_ONNX_FN_(NAME, OP) \
    DM_ELEMENTWISE_LAYER_(NAME, F, DX, DM_DEVICE_BIT(DM_DEVICE_CPU) | DM_DEVICE_BIT(DM_DEVICE_CUDA), CUDA_FWD, \
                          CUDA_BWD, NAME##_onnx)

/* One node OP from the layer's input to its output (any rank). */
static inline int dm_elementwise_onnx(const char *op, dm_onnx_builder *b, dm_error *err)
{
    return dm_onnx_unary(b, op, b->input, b->output, err);
}
#define DM_ELEMENTWISE_ONNX_FN_(NAME, OP) \
    static int NAME##_onnx(void *state, dm_onnx_builder *b, dm_error *err) \
    { \
        (void)state; \
        return dm_elementwise_onnx((OP), b, err); \
    }

/* The loops load every operand unconditionally so that a select in F or DX
 * vectorises. */
#define DM_ELEMENTWISE_LAYER_(NAME, F, DX, DEVICES, CUDA_FWD, CUDA_BWD, ONNX) \
    static void NAME##_forward_cpu(const dm_elementwise *s, size_t count, const float *x, float *y) \
    { \
        const float *a = s->a; \
        (void)a; \
        DM_OMP_PARALLEL_FOR_IF(s->nthreads, count >= DM_PARALLEL_MIN_ELEMENTS) \
        for (size_t i = 0; i < count; i++) { \
            const float xi = x[i]; \
            y[i] = F(xi, a); \
        } \
    } \
    static void NAME##_backward_cpu(const dm_elementwise *s, size_t count, const float *x, const float *y, \
                                    const float *dy, float *dx) \
    { \
        const float *a = s->a; \
        (void)a; \
        DM_OMP_PARALLEL_FOR_IF(s->nthreads, count >= DM_PARALLEL_MIN_ELEMENTS) \
        for (size_t i = 0; i < count; i++) { \
            const float xi = x[i], yi = y[i], dyi = dy[i]; \
            (void)xi, (void)yi; \
            dx[i] = DX(xi, yi, dyi, a); \
        } \
    } \
    static int NAME##_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info, \
                             dm_error *err) \
    { \
        return dm_elementwise_create(#NAME, (DEVICES), p, cfg, state, info, err); \
    } \
    static int NAME##_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err) \
    { \
        return dm_elementwise_forward(state, ctx, in, out, err, NAME##_forward_cpu, CUDA_FWD); \
    } \
    static int NAME##_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out, \
                               const dm_tensor *dout, dm_tensor *din, dm_error *err) \
    { \
        return dm_elementwise_backward(state, ctx, in, out, dout, din, err, NAME##_backward_cpu, CUDA_BWD); \
    } \
    DM_LAYER_VTABLE_NO_PARAMS(NAME, (DEVICES), .onnx = (ONNX))

#endif /* DMNIST_ELEMENTWISE_H */
