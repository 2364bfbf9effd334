/* Test-only dataset "poison": small random images whose training example
 * number `poison_index` carries a NaN (or Inf) pixel, so the step that
 * draws it has a non-finite loss. The robustness tests use it to check that
 * train.nan_policy = stop names the step and = skip leaves training healthy.
 *
 * Every value is a pure function of (seed, split, index, pixel), so any rank
 * reads any example and runs repeat exactly. Items are (1, 12, 12). */
#include <math.h>
#include <stdlib.h>

#include "dmnist/dmnist.h"

#define SIDE 12
#define PIXELS (SIDE * SIDE)
#define CLASSES 10

typedef struct poison_state {
    int64_t count[2];
    int64_t poison_index; /* training example with the bad pixel; -1 none */
    float poison;         /* NAN or INFINITY */
    uint64_t seed;
} poison_state;

static const dm_param_def poison_params[] = {
    {"train_size", DM_PARAM_INT, "512", 1, 1e7, NULL, "examples in the training split"},
    {"test_size", DM_PARAM_INT, "64", 1, 1e7, NULL, "examples in the test split"},
    {"poison_index", DM_PARAM_INT, "-1", -1, 1e7, NULL, "training example whose first pixel is bad (-1: none)"},
    {"poison", DM_PARAM_ENUM, "inf", 0, -1, "nan|inf", "the bad value (a NaN pixel dies in a ReLU; Inf survives)"},
    DM_PARAM_END};

static int poison_open(const dm_params *params, const dm_dataset_config *cfg, void **state, dm_dataset_info *info,
                       dm_error *err)
{
    poison_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "poison: out of memory");
    s->count[DM_SPLIT_TRAIN] = dm_param_int(params, "train_size", 512);
    s->count[DM_SPLIT_TEST] = dm_param_int(params, "test_size", 64);
    s->poison_index = dm_param_int(params, "poison_index", -1);
    s->poison = strcmp(dm_param_str(params, "poison", "inf"), "nan") == 0 ? NAN : INFINITY;
    s->seed = cfg->seed;
    info->count[DM_SPLIT_TRAIN] = s->count[DM_SPLIT_TRAIN];
    info->count[DM_SPLIT_TEST] = s->count[DM_SPLIT_TEST];
    info->item = (dm_shape){1, 1, SIDE, SIDE};
    info->num_classes = CLASSES;
    *state = s;
    return DM_OK;
}

static int poison_read(void *state, dm_split split, const int64_t *idx, int n, float *images, int32_t *labels,
                       dm_error *err)
{
    const poison_state *s = state;
    (void)err;
    uint64_t split_seed = dm_hash64(s->seed, 0x9015011ull + (uint64_t)split);
    for (int i = 0; i < n; i++) {
        uint64_t ex = dm_hash64(split_seed, (uint64_t)idx[i]);
        int label = (int)(ex % CLASSES);
        float *img = images + (size_t)i * PIXELS; /* (1, 12, 12) */
        for (int p = 0; p < PIXELS; p++) {
            /* a faint class-dependent stripe plus noise: learnable, cheap */
            float noise = (float)(dm_hash64(ex, (uint64_t)p) >> 40) * (1.0f / 16777216.0f);
            img[p] = 0.5f * noise + ((p / SIDE) == label ? 0.5f : 0.0f);
        }
        if (split == DM_SPLIT_TRAIN && idx[i] == s->poison_index) img[0] = s->poison;
        labels[i] = label;
    }
    return DM_OK;
}

static void poison_close(void *state) { free(state); }

DM_DATASET_VTABLE(poison);

DM_PLUGIN_DEFINE("poison", "1.0.0", "cpu;test",
                 DM_DATASET_COMPONENT("poison",
                                      "test data: random 12x12 images, one training example with a NaN/Inf pixel",
                                      poison_params, &poison_vtable));
