/* Synthetic images with learnable labels, for tests and benchmarks that must
 * not depend on downloaded data.
 *
 * Every value is a pure function of (seed, split, index, pixel) through
 * dm_hash64, so any rank reads any example without coordination and a run
 * repeats exactly. Each class has a fixed random template; an example is
 *   x[p] = TEMPLATE_WEIGHT * template[label][p] + (1 - TEMPLATE_WEIGHT) * noise[p]
 * with template and noise uniform in [0, 1), so a model can learn the labels.
 */
#include <stdlib.h>

#include "dmnist/dataset_util.h"
#include "dmnist/dmnist.h"

/* Share of the class template in each pixel; the rest is per-example noise. */
#define TEMPLATE_WEIGHT 0.5f
/* Templates are held in memory: classes * pixels floats at most this many. */
#define MAX_TEMPLATE_FLOATS (64u << 20)

/* Stream tags, so templates, labels and noise never share hash inputs. */
#define TAG_TEMPLATES 0x74656d706c617465ull /* "template" */
#define TAG_SPLIT 0x73706c6974000000ull     /* "split" */
#define TAG_NOISE 0x6e6f697365000000ull     /* "noise" */

typedef struct synthetic_state {
    int64_t count[2];
    int classes;
    size_t pixels; /* channels * height * width */
    uint64_t label_seed[2];
    uint64_t noise_seed[2];
    float *templates; /* (classes, channels, height, width) */
} synthetic_state;

static const dm_param_def synthetic_params[] = {
    {"train_size", DM_PARAM_INT, "60000", 1, 1e9, NULL, "examples in the training split"},
    {"test_size", DM_PARAM_INT, "10000", 1, 1e9, NULL, "examples in the test split"},
    {"classes", DM_PARAM_INT, "10", 2, 1000, NULL, "number of labels"},
    {"channels", DM_PARAM_INT, "1", 1, 64, NULL, "image channels"},
    {"height", DM_PARAM_INT, "28", 1, 1024, NULL, "image height"},
    {"width", DM_PARAM_INT, "28", 1, 1024, NULL, "image width"},
    DM_PARAM_END};

/* Uniform in [0, 1) from the top 24 bits, like dm_rng_uniform. */
static float hash_uniform(uint64_t seed, uint64_t index)
{
    return (float)(dm_hash64(seed, index) >> 40) * (1.0f / 16777216.0f);
}

static void synthetic_close(void *state)
{
    synthetic_state *s = state;
    if (!s) return;
    free(s->templates);
    free(s);
}

static int synthetic_open(const dm_params *params, const dm_dataset_config *cfg, void **state, dm_dataset_info *info,
                          dm_error *err)
{
    int64_t train = dm_param_int(params, "train_size", 60000);
    int64_t test = dm_param_int(params, "test_size", 10000);
    int64_t classes = dm_param_int(params, "classes", 10);
    int64_t c = dm_param_int(params, "channels", 1);
    int64_t h = dm_param_int(params, "height", 28);
    int64_t w = dm_param_int(params, "width", 28);

    if (train < 1 || test < 1)
        return dm_fail(err, DM_ERR_INVALID,
                       "synthetic: train_size %lld and test_size %lld "
                       "must be >= 1",
                       (long long)train, (long long)test);
    if (classes < 2 || c < 1 || h < 1 || w < 1 || c > 64 || h > 1024 || w > 1024)
        return dm_fail(err, DM_ERR_INVALID,
                       "synthetic: classes %lld, channels %lld, height "
                       "%lld, width %lld out of range",
                       (long long)classes, (long long)c, (long long)h, (long long)w);
    size_t pixels = (size_t)(c * h * w);
    if ((uint64_t)classes * pixels > MAX_TEMPLATE_FLOATS)
        return dm_fail(err, DM_ERR_INVALID,
                       "synthetic: classes * channels * height * width = "
                       "%llu exceeds %u",
                       (unsigned long long)((uint64_t)classes * pixels), MAX_TEMPLATE_FLOATS);

    synthetic_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "synthetic: out of memory");
    s->templates = malloc((size_t)classes * pixels * sizeof(float));
    if (!s->templates) {
        synthetic_close(s);
        return dm_fail(err, DM_ERR_NOMEM, "synthetic: out of memory for %lld templates", (long long)classes);
    }
    s->count[DM_SPLIT_TRAIN] = train;
    s->count[DM_SPLIT_TEST] = test;
    s->classes = (int)classes;
    s->pixels = pixels;

    uint64_t template_seed = dm_hash64(cfg->seed, TAG_TEMPLATES);
    for (size_t k = 0; k < (size_t)classes * pixels; k++) s->templates[k] = hash_uniform(template_seed, k);
    for (int split = 0; split < 2; split++) {
        s->label_seed[split] = dm_hash64(cfg->seed, TAG_SPLIT + (uint64_t)split);
        s->noise_seed[split] = dm_hash64(s->label_seed[split], TAG_NOISE);
    }

    info->count[DM_SPLIT_TRAIN] = train;
    info->count[DM_SPLIT_TEST] = test;
    info->item = (dm_shape){1, (int)c, (int)h, (int)w};
    info->num_classes = (int)classes;
    *state = s;
    return DM_OK;
}

static int synthetic_read(void *state, dm_split split, const int64_t *idx, int n, float *images, int32_t *labels,
                          dm_error *err)
{
    const synthetic_state *s = state;
    DM_TRY(dm_dataset_check_read("synthetic", split, idx, n, s->count, err));
    for (int i = 0; i < n; i++) {
        const int64_t j = idx[i];
        int label = (int)(dm_hash64(s->label_seed[split], (uint64_t)j) % (uint64_t)s->classes);
        uint64_t example_seed = dm_hash64(s->noise_seed[split], (uint64_t)j);
        const float *tpl = s->templates + (size_t)label * s->pixels;
        float *dst = images + (size_t)i * s->pixels; /* (1, C, H, W) */
        for (size_t p = 0; p < s->pixels; p++)
            dst[p] = TEMPLATE_WEIGHT * tpl[p] + (1.0f - TEMPLATE_WEIGHT) * hash_uniform(example_seed, p);
        labels[i] = label;
    }
    return DM_OK;
}

DM_DATASET_VTABLE(synthetic);

DM_PLUGIN_DEFINE("synthetic", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_DATASET_COMPONENT("synthetic",
                                      "deterministic random images, one noisy template per class "
                                      "(no files needed)",
                                      synthetic_params, &synthetic_vtable));
