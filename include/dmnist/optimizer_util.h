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
#endif
