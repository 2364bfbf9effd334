/* The gradient checker shared by the layer tests (tests/layers) and
 * dmnist-plugin-check: create a layer through the registry like dmnist-run
 * does, and check its backward against central differences.
 *
 * The gradient check (after Caffe's GradientChecker):
 *  - the layer is created from DMNIST_PLUGIN_PATH with a "key=value" spec,
 *    bound to its own params/grads/workspace, params filled with U(-0.5, 0.5);
 *  - inputs are U(-1, 1) pushed away from 0 (|x| >= 0.1), so an input-side
 *    ReLU kink is never within eps;
 *  - objective L = sum(out * R) for a fixed random R (dout = R), or for a loss
 *    layer L = ctx->metrics[0] / n with random labels; L is summed in double;
 *  - every input and every parameter is perturbed by +-eps and
 *    g_num = (L+ - L-) / (2 eps) is compared with backward's din / grads:
 *        pass  iff  |g - g_num| <= rtol * max(|g|, |g_num|) + atol * scale
 *    where scale = the largest |g| of that tensor (din or grads), so a
 *    gradient that is tiny next to its neighbours is not held to a relative
 *    bound that float32 rounding cannot meet;
 *  - piecewise-linear layers (kinks = 1): L is linear in each single
 *    coordinate away from a kink, so a kink inside [x - eps, x + eps] shows as
 *    a second difference |L+ + L- - 2 L0| that would bias g_num by
 *    second / (2 eps); points where that bias exceeds a tenth of the
 *    tolerance are skipped and counted (Caffe skips kinks the same way);
 *  - din and grads are filled with NaN before backward, so an element
 *    backward forgets to write (or accumulates into) fails the check. */
#ifndef DM_GRADCHECK_H
#define DM_GRADCHECK_H

#include "dm_core.h"

/* A created and bound layer with buffers it owns (for tests). */
typedef struct gc_layer {
    const dm_loaded_component *lc;
    const dm_layer_vtable *vt;
    dm_param_set *ps;
    void *state;
    dm_layer_info info;
    dm_shape in_shape;
    float *params, *grads;
    void *workspace;
    dm_layer_state_api sa; /* ABI 1.1 layer state, bound to `state` */
    float *layer_state;    /* sa.floats floats, from init_state (or zeros) */
} gc_layer;

/* The registry loaded from $DMNIST_PLUGIN_PATH (once per process); NULL with
 * err set when the variable is missing or nothing could be loaded. */
dm_registry *gc_registry(dm_error *err);
/* Look layers up in r instead (a tool that loaded one plugin file); the
 * caller keeps ownership. NULL goes back to DMNIST_PLUGIN_PATH. */
void gc_use_registry(dm_registry *r);

/* Look up `type`, parse `spec` ("filters=4 kernel=3"), create for `in` on the
 * CPU in NCHW with `threads` threads, allocate and bind params, grads,
 * workspace and layer state, init_params(seed) and init_state. On failure returns the layer's (or the
 * parser's) status with err set, and L holds nothing. */
int gc_layer_create(gc_layer *L, const char *type, const char *spec, dm_shape in, int threads, uint64_t seed,
                    dm_error *err);
void gc_layer_free(gc_layer *L);

/* 64-byte aligned, zeroed; NULL for 0 bytes. Exits on failure (tests and tools only). */
void *gc_alloc(size_t bytes);
/* U(lo, hi) floats from a splitmix64 stream. */
void gc_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed);

/* What a tamper hook may change after backward (to prove broken backward
 * passes are caught). */
typedef struct gc_buffers {
    dm_shape in_shape, out_shape;
    const float *x, *out, *dout; /* dout is NULL for a loss layer */
    float *din;
    float *grads;
    size_t n_params;
} gc_buffers;

typedef struct gc_options {
    double eps, rtol, atol; /* 0 = defaults: 1e-2, 1e-2, 1e-3 */
    int kinks;              /* 1: piecewise-linear layer, skip kink points */
    int training;           /* ctx->training during the check */
    int run_n;              /* batch passed to forward/backward; 0 = create-time n */
    int threads;            /* 0 = 2 */
    void (*tamper)(const gc_buffers *b);
    int max_coords; /* > 0: check a seeded sample of at most this many
                                points per tensor (din, grads); 0 = every point */
} gc_options;

typedef struct gc_report {
    int checked, skipped, failures;
    double worst;            /* largest |g - g_num| / tolerance seen */
    char first_failure[256]; /* "din[12]: backward 0.5 vs numeric 0.4" */
} gc_report;

/* Run the check; returns DM_OK when it could run (look at rep->failures),
 * else an error (layer could not be created, forward failed, ...). */
int gc_check(const char *type, const char *spec, dm_shape in, uint64_t seed, const gc_options *opt, gc_report *rep,
             dm_error *err);

#endif
