/* Small helpers that optimizer plugins share: optional, header-only, so a
 * plugin still links nothing of the core. */
#ifndef DMNIST_OPTIMIZER_UTIL_H
#define DMNIST_OPTIMIZER_UTIL_H

#include "dmnist/optimizer.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The CPU threads an update may use: cfg->num_threads as the optimizer kept
 * it, or OpenMP's default when it is <= 0 (1 in a build without OpenMP). */
static inline int dm_optimizer_threads(int num_threads)
{
#ifdef _OPENMP
    return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
    (void)num_threads;
    return 1;
#endif
}

/* ---- create and bind ----------------------------------------------------- */

/* The check at the top of every create: an implementation for cfg->device
 * among `devices` (DM_DEVICE_BIT(...) | ...), else "<type>: device cuda is
 * not supported: this build has only a CPU implementation (use device =
 * cpu)" (and the other way round). */
static inline int dm_optimizer_check_create(const char *type, unsigned devices, const dm_optimizer_config *cfg,
                                            dm_error *err)
{
    if (!(devices & DM_DEVICE_BIT(cfg->device))) {
        const int cuda = cfg->device == DM_DEVICE_CUDA;
        return dm_fail(err, DM_ERR_UNSUPPORTED,
                       "%s: device %s is not supported: this build has only a %s implementation "
                       "(use device = %s)",
                       type, cuda ? "cuda" : "cpu", cuda ? "CPU" : "CUDA", cuda ? "cpu" : "cuda");
    }
    return DM_OK;
}

/* The flat buffer an optimizer updates, as every optimizer keeps it from
 * its config: how many parameters, on which device, with how many CPU
 * threads. */
typedef struct dm_opt_buffer {
    size_t param_count; /* floats in params and grads, and in each state slice */
    dm_device device;   /* where params, grads and the state live */
    int num_threads;    /* for the CPU update; <= 0: OpenMP's default */
} dm_opt_buffer;

static inline dm_opt_buffer dm_opt_buffer_of(const dm_optimizer_config *cfg)
{
    dm_opt_buffer b = {cfg->param_count, cfg->device, cfg->num_threads};
    return b;
}

/* bind's check: an optimizer that asked for state (`needs_state`) and has
 * parameters gets a state buffer, else "<type>: needs a state buffer, got
 * NULL". Slice k of the state (k < state_floats_per_param) then starts at
 * opt_state + k * b->param_count. */
static inline int dm_opt_buffer_check_state(const char *type, const dm_opt_buffer *b, const float *opt_state,
                                            int needs_state, dm_error *err)
{
    if (needs_state && b->param_count > 0 && !opt_state)
        return dm_fail(err, DM_ERR_INVALID, "%s: needs a state buffer, got NULL", type);
    return DM_OK;
}

/* The checks at the top of every step, one line each starting with the
 * optimizer's type: n is the param_count it was created for, and `unbound`
 * (the optimizer needs its state buffer and bind has not given it one) is
 * false. */
static inline int dm_optimizer_check_step(const char *type, size_t n, size_t param_count, int unbound, dm_error *err)
{
    if (n != param_count)
        return dm_fail(err, DM_ERR_INVALID, "%s: step got %zu parameters, created for %zu", type, n, param_count);
    if (unbound) return dm_fail(err, DM_ERR_INVALID, "%s: step before bind", type);
    return DM_OK;
}

#ifdef __cplusplus
}
#endif

/* An optimizer's vtable from a naming convention: NAME_create, NAME_bind
 * and NAME_step, static functions of the plugin's own file, and destroy =
 * dm_free_state (the state is one malloc'ed block):
 *
 *   DM_OPTIMIZER_VTABLE(adam, ADAM_DEVICES);
 *
 * defines `static const dm_optimizer_vtable adam_vtable` with struct_size
 * and `devices` (the second argument). C only (designated initialisers);
 * an optimizer whose destroy frees more writes the struct out itself. */
#define DM_OPTIMIZER_VTABLE(NAME, DEVICES) \
    static const dm_optimizer_vtable NAME##_vtable = {.struct_size = sizeof(dm_optimizer_vtable), \
                                                      .devices = (DEVICES), \
                                                      .create = NAME##_create, \
                                                      .bind = NAME##_bind, \
                                                      .step = NAME##_step, \
                                                      .destroy = dm_free_state}

#endif
