/* Small helpers that most layer plugins need: optional, header-only, so a
 * plugin still links nothing of the core. */
#ifndef DMNIST_LAYER_UTIL_H
#define DMNIST_LAYER_UTIL_H

#include "dmnist/layer.h"

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

static inline const char *dm_device_str(dm_device d)
{
    return d == DM_DEVICE_CUDA ? "cuda" : "cpu";
}

/* Check that `t` is a float NCHW tensor on `device` whose per-item shape is
 * (expect.c, expect.h, expect.w) and whose batch n satisfies
 * 1 <= n <= expect.n (the create-time batch), and n == want_n when
 * want_n > 0. `layer` and `what` ("input", "dout", ...) name it in the
 * one-line error. */
static inline int dm_check_tensor(const char *layer, const char *what, const dm_tensor *t,
                                  dm_device device, dm_shape expect, int want_n, dm_error *err)
{
    if (!t || !t->data)
        return dm_fail(err, DM_ERR_INVALID, "%s: %s tensor missing", layer, what);
    if (t->device != device || t->layout != DM_LAYOUT_NCHW)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: %s tensor must be NCHW on %s", layer, what,
                       dm_device_str(device));
    if (t->shape.n < 1 || t->shape.n > expect.n || (want_n > 0 && t->shape.n != want_n) ||
        t->shape.c != expect.c || t->shape.h != expect.h || t->shape.w != expect.w)
        return dm_fail(err, DM_ERR_INVALID, "%s: %s shape (%d, %d, %d, %d) does not match (<=%d, %d, %d, %d)",
                       layer, what, t->shape.n, t->shape.c, t->shape.h, t->shape.w, expect.n, expect.c,
                       expect.h, expect.w);
    return DM_OK;
}

/* For layers without parameters. */
static inline int dm_layer_bind_nothing(void *state, float *params, float *grads, void *workspace,
                                        dm_error *err)
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
#endif
