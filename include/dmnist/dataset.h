/* dmnist dataset components.
 *
 * A dataset is random access: it says how many examples each split holds
 * and copies the examples the core asks for, by index, into host buffers.
 * The core owns shuffling (a permutation per epoch drawn from the experiment
 * seed), sharding (rank r of N takes a disjoint slice of each epoch's
 * permutation), resume positions and device transfer, so these behave the
 * same for every dataset.
 *
 * Lifecycle: open -> read* (from one thread) -> close.
 */
#ifndef DMNIST_DATASET_H
#define DMNIST_DATASET_H

#include "dmnist/abi.h"
#include "dmnist/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dm_split { DM_SPLIT_TRAIN = 0, DM_SPLIT_TEST = 1 } dm_split;

typedef struct dm_dataset_config {
    size_t struct_size;
    uint64_t seed;          /* experiment seed (synthetic data uses it) */
    const char *config_dir; /* directory of the INI file: relative paths start here */
} dm_dataset_config;

typedef struct dm_dataset_info {
    size_t struct_size;
    int64_t count[2]; /* examples in DM_SPLIT_TRAIN, DM_SPLIT_TEST */
    dm_shape item;    /* n = 1; e.g. (1, 1, 28, 28) */
    int num_classes;
} dm_dataset_info;

typedef struct dm_dataset_vtable {
    size_t struct_size;
    int (*open)(const dm_params *params, const dm_dataset_config *cfg, void **state, dm_dataset_info *info,
                dm_error *err);
    /* Copy examples idx[0..n) of `split` into images (n * item floats, NCHW)
     * and labels (n int32). Indices are in range (the core checks). */
    int (*read)(void *state, dm_split split, const int64_t *idx, int n, float *images, int32_t *labels, dm_error *err);
    void (*close)(void *state);
    /* Later minor versions append new methods here, never in between (docs/plugin-abi.md). */
} dm_dataset_vtable;

#define DM_DATASET_VTABLE_SIZE_1_0 (offsetof(dm_dataset_vtable, close) + sizeof(void *))

#ifdef __cplusplus
}
#endif
#endif
