/* Small helpers that most layer plugins need: optional, header-only, so a
 * plugin still links nothing of the core. */
#ifndef DMNIST_LAYER_UTIL_H
#define DMNIST_LAYER_UTIL_H

#include "dmnist/layer.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- when a CPU pass goes parallel --------------------------------------
 * Below these sizes a pass runs on the calling thread. Memory-bound passes
 * are cheap (the seed's 2.4M-element maxpool takes 0.7 ms on one core), and
 * on a busy machine each parallel region costs a wait for the other threads
 * to be scheduled, milliseconds with OpenMP's default spinning
 * (docs/cpu-path.md: serial passes made training 25-45% faster at load 13).
 * Use them in `if (...)` clauses of `#pragma omp parallel`. */
#define DM_PARALLEL_MIN_ELEMENTS (1u << 23) /* elementwise and pooling passes, in elements */
#define DM_PARALLEL_MIN_MACS (1u << 20)     /* products (dense), in multiply-adds */

static inline const char *dm_device_str(dm_device d) { return d == DM_DEVICE_CUDA ? "cuda" : "cpu"; }

/* ---- create ------------------------------------------------------------ */

/* The name a layer's messages start with: its section name, else its type. */
static inline const char *dm_layer_name(const dm_layer_config *cfg, const char *type)
{
    return cfg && cfg->name ? cfg->name : type;
}

/* The checks every layer's create makes before it reads its keys, each a
 * one-line error starting with the layer's name: config and info present
 * and at least ABI 1.0's size, an implementation for cfg->device among
 * `devices` (DM_DEVICE_BIT(...) | ...), the NCHW layout, and an input shape
 * whose every dimension is >= 1. `type` is the layer type ("conv2d"). */
static inline int dm_layer_check_create(const char *type, unsigned devices, const dm_layer_config *cfg,
                                        const dm_layer_info *info, dm_error *err)
{
    const char *name = dm_layer_name(cfg, type);
    if (!cfg || cfg->struct_size < DM_LAYER_CONFIG_SIZE_1_0 || !info || info->struct_size < DM_LAYER_INFO_SIZE_1_0)
        return dm_fail(err, DM_ERR_INVALID, "%s: %s: layer config/info missing or struct_size too small", name, type);
    if (!(devices & DM_DEVICE_BIT(cfg->device)))
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: %s has no %s implementation in this build (devices: %s)", name,
                       type, dm_device_str(cfg->device), devices & DM_DEVICE_BIT(DM_DEVICE_CUDA) ? "cpu, cuda" : "cpu");
    if (cfg->layout != DM_LAYOUT_NCHW)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: %s supports only the NCHW layout", name, type);
    const dm_shape in = cfg->in_shape;
    if (in.n < 1 || in.c < 1 || in.h < 1 || in.w < 1)
        return dm_fail(err, DM_ERR_INVALID, "%s: bad input shape (%d, %d, %d, %d)", name, in.n, in.c, in.h, in.w);
    return DM_OK;
}

/* For a layer that counts an item's c*h*w values in an int (dense's input
 * features, flatten's outputs): "<name>: <count> values per item is too
 * many" beyond INT32_MAX. */
static inline int dm_layer_check_per_item(const char *name, dm_shape in, dm_error *err)
{
    if (dm_shape_per_item(in) > 0x7fffffff)
        return dm_fail(err, DM_ERR_INVALID, "%s: %zu values per item is too many (at most %d)", name,
                       dm_shape_per_item(in), 0x7fffffff);
    return DM_OK;
}

/* The CPU threads a layer may use: cfg->num_threads, or OpenMP's default
 * when it is 0 (1 in a build without OpenMP). */
static inline int dm_layer_threads(const dm_layer_config *cfg)
{
#ifdef _OPENMP
    return cfg->num_threads > 0 ? cfg->num_threads : omp_get_max_threads();
#else
    (void)cfg;
    return 1;
#endif
}

/* A layer's state, a struct T of the plugin's own with a `char name[...]`
 * and a `dm_device device` member, allocated zeroed with name (the
 * section name, else `type`, for messages) and device filled from cfg:
 *
 *   dense_state *s = DM_LAYER_STATE_NEW(dense_state, "dense", cfg, err);
 *   if (!s)
 *       return DM_ERR_NOMEM;
 *
 * NULL when out of memory, err then saying "<name>: out of memory". The
 * block is one calloc: free() it (destroy = dm_free_state). */
#define DM_LAYER_STATE_NEW(T, type, cfg, err) \
    ((T *)dm_layer_state_new_(sizeof(T), offsetof(T, name), sizeof(((T *)0)->name), \
                              offsetof(T, device) + 0 * sizeof(1 ? &((T *)0)->device : (dm_device *)0), (type), (cfg), \
                              (err)))

/* DM_LAYER_STATE_NEW's work, on offsets (the `0 * sizeof` above adds
 * nothing: it only makes a `device` of another type a pointer-mismatch
 * diagnostic, an error with -Werror). */
static inline void *dm_layer_state_new_(size_t size, size_t name_at, size_t name_size, size_t device_at,
                                        const char *type, const dm_layer_config *cfg, dm_error *err)
{
    char *s = (char *)calloc(1, size);
    if (!s) {
        dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", dm_layer_name(cfg, type));
        return NULL;
    }
    snprintf(s + name_at, name_size, "%s", dm_layer_name(cfg, type));
    memcpy(s + device_at, &cfg->device, sizeof cfg->device);
    return s;
}

/* The CUDA stream of a call's context (NULL without one). */
static inline void *dm_run_stream(const dm_run_ctx *ctx) { return ctx ? ctx->cuda_stream : NULL; }

/* What create tells the core, all fields of ABI 1.0 at once. */
static inline void dm_layer_info_set(dm_layer_info *info, dm_shape out_shape, size_t param_count,
                                     size_t workspace_bytes, int is_loss)
{
    info->out_shape = out_shape;
    info->param_count = param_count;
    info->workspace_bytes = workspace_bytes;
    info->is_loss = is_loss;
}

/* ---- weights then bias ---------------------------------------------------
 * For a layer whose parameter slice is `nw` weights followed, when it has
 * a bias, by its biases (conv2d, dense). */

/* The weight and bias parts of the parameter and gradient slices (b and db
 * NULL without a bias). */
static inline void dm_layer_slices(float *params, float *grads, size_t nw, int has_bias, float **w, float **dw,
                                   float **b, float **db)
{
    *w = params;
    *dw = grads;
    *b = has_bias ? params + nw : NULL;
    *db = has_bias ? grads + nw : NULL;
}

/* Keras' defaults: Glorot-uniform weights, limit sqrt(6 / (fan_in +
 * fan_out)), drawn from `seed`, then `nbias` zero biases. */
static inline void dm_layer_init_glorot(float *params, size_t nw, double fan_in, double fan_out, size_t nbias,
                                        uint64_t seed)
{
    const float limit = (float)sqrt(6.0 / (fan_in + fan_out));
    uint64_t rng = seed;
    for (size_t i = 0; i < nw; i++) params[i] = (2.0f * dm_rng_uniform(&rng) - 1.0f) * limit;
    if (nbias) memset(params + nw, 0, nbias * sizeof(float));
}

/* ONNX (dmnist-export): "<name>: <type> needs a 4-D (N, C, H, W) input in
 * the graph, got rank 2" unless the layer's input is 4-D. */
static inline int dm_onnx_check_4d(const dm_onnx_builder *b, const char *name, const char *type, dm_error *err)
{
    if (b->in_rank != 4)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: %s needs a 4-D (N, C, H, W) input in the graph, got rank %d", name,
                       type, b->in_rank);
    return DM_OK;
}

/* ONNX (dmnist-export): the weights (dims wdims[0..wrank)) and, when nbias
 * > 0, the nbias biases as initializers "<layer>.weight" and "<layer>.bias",
 * their names written to wname and bname (name_size bytes each). Fails with
 * "<name>: onnx: parameters missing" when the builder has too few. */
static inline int dm_onnx_weight_bias(dm_onnx_builder *b, const char *name, const int64_t *wdims, int wrank,
                                      int64_t nbias, char *wname, char *bname, size_t name_size, dm_error *err)
{
    size_t nw = 1;
    for (int i = 0; i < wrank; i++) nw *= (size_t)wdims[i];
    if (!b->params || b->param_count < nw + (size_t)nbias)
        return dm_fail(err, DM_ERR_INVALID, "%s: onnx: parameters missing", name);
    dm_onnx_name(b, "weight", wname, name_size);
    dm_onnx_name(b, "bias", bname, name_size);
    int rc = b->add_initializer(b, wname, wdims, wrank, b->params, err);
    if (rc == DM_OK && nbias > 0) rc = b->add_initializer(b, bname, &nbias, 1, b->params + nw, err);
    return rc;
}

/* ---- forward and backward ----------------------------------------------- */

/* Check that `t` is a float NCHW tensor on `device` whose per-item shape is
 * (expect.c, expect.h, expect.w) and whose batch n satisfies
 * 1 <= n <= expect.n (the create-time batch), and n == want_n when
 * want_n > 0. `layer` and `what` ("input", "dout", ...) name it in the
 * one-line error. */
static inline int dm_check_tensor(const char *layer, const char *what, const dm_tensor *t, dm_device device,
                                  dm_shape expect, int want_n, dm_error *err)
{
    if (!t || !t->data) return dm_fail(err, DM_ERR_INVALID, "%s: %s tensor missing", layer, what);
    if (t->device != device || t->layout != DM_LAYOUT_NCHW)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: %s tensor must be NCHW on %s", layer, what, dm_device_str(device));
    if (t->shape.n < 1 || t->shape.n > expect.n || (want_n > 0 && t->shape.n != want_n) || t->shape.c != expect.c ||
        t->shape.h != expect.h || t->shape.w != expect.w)
        return dm_fail(err, DM_ERR_INVALID, "%s: %s shape (%d, %d, %d, %d) does not match (<=%d, %d, %d, %d)", layer,
                       what, t->shape.n, t->shape.c, t->shape.h, t->shape.w, expect.n, expect.c, expect.h, expect.w);
    return DM_OK;
}

/* The tensors of a forward call (in, out) or, when `backward`, of a
 * backward call (in, out, dout, and din unless it is NULL): in with the
 * create-time in_shape, out and dout with out_shape, din with in_shape, each
 * checked by dm_check_tensor in that order. With `same_batch`, out, dout
 * and din must also have in's batch. */
static inline int dm_check_pass(const char *layer, dm_device device, dm_shape in_shape, dm_shape out_shape,
                                int same_batch, int backward, const dm_tensor *in, const dm_tensor *out,
                                const dm_tensor *dout, const dm_tensor *din, dm_error *err)
{
    int rc = dm_check_tensor(layer, "input", in, device, in_shape, 0, err);
    const int n = rc == DM_OK && same_batch ? in->shape.n : 0;
    if (rc == DM_OK) rc = dm_check_tensor(layer, "output", out, device, out_shape, n, err);
    if (rc == DM_OK && backward) rc = dm_check_tensor(layer, "dout", dout, device, out_shape, n, err);
    if (rc == DM_OK && backward && din) rc = dm_check_tensor(layer, "din", din, device, in_shape, n, err);
    return rc;
}

/* For a layer with parameters, in forward and backward: "<layer>: forward
 * before bind" (or backward) unless `bound` (a pointer bind sets, such as
 * the weights) is set. */
static inline int dm_layer_check_bound(const char *layer, const void *bound, int backward, dm_error *err)
{
    if (!bound) return dm_fail(err, DM_ERR_INVALID, "%s: %s before bind", layer, backward ? "backward" : "forward");
    return DM_OK;
}

/* For layers without parameters. */
static inline int dm_layer_bind_nothing(void *state, float *params, float *grads, void *workspace, dm_error *err)
{
    (void)state, (void)params, (void)grads, (void)workspace, (void)err;
    return DM_OK;
}
static inline int dm_layer_init_nothing(void *state, float *params, uint64_t seed, dm_error *err)
{
    (void)state, (void)params, (void)seed, (void)err;
    return DM_OK;
}

#ifdef __cplusplus
}
#endif

/* ---- the vtable --------------------------------------------------------
 * A layer's vtable from a naming convention: NAME_create, NAME_bind,
 * NAME_init_params, NAME_forward, NAME_backward and NAME_destroy, the six
 * methods of ABI 1.0, each a static function of the plugin's own file.
 *
 *   DM_LAYER_VTABLE(dense, DENSE_DEVICES, .onnx = dense_onnx);
 *
 * defines `static const dm_layer_vtable dense_vtable` with struct_size,
 * `devices` (the second argument) and those six. After the devices come,
 * as designated initialisers, the optional methods a later minor version
 * added that the layer has (.onnx, .bind_state, .init_state); a method
 * named there that the macro also sets does not compile (-Woverride-init).
 *
 * A layer without parameters whose state is one malloc'ed block writes
 * only NAME_create, NAME_forward and NAME_backward:
 *
 *   DM_LAYER_VTABLE_NO_PARAMS(maxpool2d, MAXPOOL2D_DEVICES, .onnx = maxpool2d_onnx);
 *
 * sets bind to dm_layer_bind_nothing, init_params to dm_layer_init_nothing
 * and destroy to dm_free_state, and calls NAME_backward only with a din:
 * as the first layer (din NULL) such a layer has nothing to compute, and
 * its backward returns DM_OK at once. Both are C (designated
 * initialisers); a layer whose methods have other names writes the struct
 * out itself. */
#define DM_LAYER_VTABLE(NAME, ...) \
    DM_LAYER_VTABLE_(NAME, NAME##_bind, NAME##_init_params, NAME##_backward, NAME##_destroy, __VA_ARGS__)
#define DM_LAYER_VTABLE_NO_PARAMS(NAME, ...) \
    static int NAME##_backward_with_din_(void *state, const dm_run_ctx *ctx, const dm_tensor *in, \
                                         const dm_tensor *out, const dm_tensor *dout, dm_tensor *din, dm_error *err) \
    { \
        return din ? NAME##_backward(state, ctx, in, out, dout, din, err) : DM_OK; \
    } \
    DM_LAYER_VTABLE_(NAME, dm_layer_bind_nothing, dm_layer_init_nothing, NAME##_backward_with_din_, dm_free_state, \
                     __VA_ARGS__)
#define DM_LAYER_VTABLE_(NAME, BIND, INIT_PARAMS, BACKWARD, DESTROY, ...) \
    static const dm_layer_vtable NAME##_vtable = {.struct_size = sizeof(dm_layer_vtable), \
                                                  .create = NAME##_create, \
                                                  .bind = BIND, \
                                                  .init_params = INIT_PARAMS, \
                                                  .forward = NAME##_forward, \
                                                  .backward = BACKWARD, \
                                                  .destroy = DESTROY, \
                                                  .devices = __VA_ARGS__}

#endif
