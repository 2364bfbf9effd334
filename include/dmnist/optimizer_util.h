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

/* The checks at the top of every step, one line each starting with the
 * optimizer's type: n is the param_count it was created for, and `unbound`
 * (the optimizer needs its state buffer and bind has not given it one) is
 * false. */
static inline int dm_optimizer_check_step(const char *type, size_t n, size_t param_count,
                                          int unbound, dm_error *err)
{
    if (n != param_count)
        return dm_fail(err, DM_ERR_INVALID, "%s: step got %zu parameters, created for %zu", type,
                       n, param_count);
    if (unbound)
        return dm_fail(err, DM_ERR_INVALID, "%s: step before bind", type);
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
#define DM_OPTIMIZER_VTABLE(NAME, DEVICES)                                                  \
    static const dm_optimizer_vtable NAME##_vtable = {                                      \
        .struct_size = sizeof(dm_optimizer_vtable), .devices = (DEVICES),                   \
        .create = NAME##_create, .bind = NAME##_bind, .step = NAME##_step,                  \
        .destroy = dm_free_state}

#endif
