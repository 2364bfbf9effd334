/* dmnist optimizer components.
 *
 * An optimizer updates the whole flat parameter buffer from the whole flat
 * (already averaged over ranks) gradient buffer. Its state (moments,
 * velocities) is also one flat buffer the core allocates, so the core can
 * broadcast and checkpoint it without knowing what it holds.
 *
 * The learning rate is NOT a plugin parameter: the core owns `lr`, scaling
 * by world size and warm-up, and passes the rate for this step in
 * dm_opt_step_ctx.lr. The same for every optimizer.
 *
 * Lifecycle: create -> bind -> step* -> destroy.
 */
#ifndef DMNIST_OPTIMIZER_H
#define DMNIST_OPTIMIZER_H

#include "dmnist/abi.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dm_optimizer_config {
    size_t struct_size;
    dm_device device;
    size_t param_count; /* floats in the flat parameter buffer */
    int num_threads;
    void *cuda_stream;
} dm_optimizer_config;

typedef struct dm_optimizer_info {
    size_t struct_size;
    size_t state_floats_per_param; /* e.g. 2 for Adam (m, v), 1 for momentum SGD */
} dm_optimizer_info;

typedef struct dm_opt_step_ctx {
    size_t struct_size;
    int64_t step; /* 1-based count of updates, including this one */
    float lr;     /* learning rate for this step (scaled, warmed up) */
    void *cuda_stream;
} dm_opt_step_ctx;

typedef struct dm_optimizer_vtable {
    size_t struct_size;
    unsigned devices;
    int (*create)(const dm_params *params, const dm_optimizer_config *cfg, void **state, dm_optimizer_info *info,
                  dm_error *err);
    /* state: param_count * state_floats_per_param floats on the device,
     * zeroed by the core before the first step (NULL when 0). */
    int (*bind)(void *state, float *opt_state, dm_error *err);
    /* params -= update(grads); n == param_count. */
    int (*step)(void *state, const dm_opt_step_ctx *ctx, float *params, const float *grads, size_t n, dm_error *err);
    void (*destroy)(void *state);
    /* Later minor versions append new methods here, never in between (docs/plugin-abi.md). */
} dm_optimizer_vtable;

/* Not ABI: below this many parameters an optimizer's CPU update runs on the
 * calling thread (a parallel region costs more than it saves). */
#define DM_OPTIMIZER_PARALLEL_MIN 32768u

#define DM_OPTIMIZER_VTABLE_SIZE_1_0 (offsetof(dm_optimizer_vtable, destroy) + sizeof(void *))

#ifdef __cplusplus
}
#endif
#endif
