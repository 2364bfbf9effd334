/* Fuzz target: the IDX reader of the mnist dataset plugin, through its
 * open() on a scratch folder of four files, three of them valid and small.
 *
 * Input: one selector byte, then the contents of the fourth file.
 *   bits 0-1  which file: train images, train labels, test images, test labels
 *   bit 2     name it *.gz (the bytes are taken as gzip data)
 *   bit 3     gzip the bytes first (so the decompressed content is fuzzed)
 *   bit 4     standardize = true
 * An accepted set is read back (first and last example of each split);
 * every refusal must be one non-empty line. */
#include "fuzz_util.h"

#include <sys/stat.h>
#include <zlib.h>

#include "dm_core.h"

static const char *const names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                     "t10k-labels-idx1-ubyte"};
static const dm_component *mnist;
static dm_registry *reg;

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A valid IDX file: `count` images (28x28) or labels. */
static void write_valid(const char *path, int images, uint32_t count)
{
    size_t head = images ? 16 : 8, body = (size_t)count * (images ? 784 : 1);
    uint8_t *b = calloc(1, head + body);
    if (!b) abort();
    be32(b, images ? 2051 : 2049);
    be32(b + 4, count);
    if (images) {
        be32(b + 8, 28);
        be32(b + 12, 28);
    }
    for (size_t i = 0; i < body; i++) b[head + i] = (uint8_t)(i * 7 % (images ? 256 : 10));
    fuzz_write(path, b, head + body);
    free(b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("DMNIST_FUZZ_PLUGIN_DIR") ? getenv("DMNIST_FUZZ_PLUGIN_DIR") : DMNIST_BUILD_PLUGIN_DIR;
    char so[4096];
    snprintf(so, sizeof so, "%s/dm_mnist.so", dir);
    dm_error err = {0};
    reg = dm_registry_new();
    if (!reg || dm_registry_load_file(reg, so, &err) != DM_OK) {
        fprintf(stderr, "fuzz_idx: %s\n", err.msg);
        abort();
    }
    const dm_loaded_component *lc = dm_registry_find(reg, DM_KIND_DATASET, "mnist");
    if (!lc) abort();
    mnist = lc->component;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int sel = data[0], which = sel & 3, as_gz = (sel & 4) || (sel & 8), compress = sel & 8;
    data++;
    size--;
    char dir[400], path[600];
    snprintf(dir, sizeof dir, "%s/idx", fuzz_scratch());
    mkdir(dir, 0700);
    for (int k = 0; k < 4; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        unlink(path);
        snprintf(path, sizeof path, "%s/%s.gz", dir, names[k]);
        unlink(path);
        snprintf(path, sizeof path, "%s/%s%s", dir, names[k], k == which && as_gz ? ".gz" : "");
        if (k != which) {
            write_valid(path, !(k & 1), k < 2 ? 3 : 2);
        } else if (compress) {
            gzFile gz = gzopen(path, "wb");
            if (!gz || (size && gzwrite(gz, data, (unsigned)size) != (int)size) || gzclose(gz) != Z_OK) abort();
        } else {
            fuzz_write(path, data, size);
        }
    }

    char spec[600];
    snprintf(spec, sizeof spec, "path=%s standardize=%s", dir, (sel & 16) ? "true" : "false");
    dm_param_set *ps = NULL;
    dm_error err = {0};
    if (dm_param_set_parse(mnist->params, spec, &ps, &err) != DM_OK) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    const dm_dataset_vtable *vt = mnist->vtable;
    dm_dataset_config cfg = {sizeof cfg, 1, dir};
    dm_dataset_info info = {sizeof info, {0, 0}, {0, 0, 0, 0}, 0};
    void *state = NULL;
    if (vt->open(dm_param_set_params(ps), &cfg, &state, &info, &err) == DM_OK) {
        float img[784];
        int32_t lab;
        for (int s = 0; s < 2; s++) {
            if (info.count[s] < 1 || dm_shape_per_item(info.item) != 784) abort();
            int64_t idx[2] = {0, info.count[s] - 1};
            for (int k = 0; k < 2; k++) {
                if (vt->read(state, (dm_split)s, &idx[k], 1, img, &lab, &err) != DM_OK) abort();
                if (lab < 0 || lab >= info.num_classes) abort();
            }
        }
        vt->close(state);
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        fprintf(stderr, "bad message: '%s'\n", err.msg);
        abort();
    }
    dm_param_set_free(ps);
    return 0;
}
