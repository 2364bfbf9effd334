/* Every refusal of dm_model_build, run in every build (the sanitizer build
 * included, where a read of the freed model is a test failure): the message
 * is one line naming the layer, the half-built model is freed and zeroed,
 * and freeing it again is harmless. A valid model builds. */
#define _GNU_SOURCE
#include "check.h"
#include "dm_core.h"

#include <stdlib.h>
#include <unistd.h>

#define HEAD "[data]\ntype = synthetic\ntrain_size = 64\ntest_size = 16\nbatch_size = 8\n"

/* Build the model of `ini` on `device` (no device is opened: a refusal
 * must come before any device call). want == NULL: it must build. */
static void build(const char *what, const char *ini, const char *extra_path, dm_device device, const char *want)
{
    char *path = check_write_ini(ini);
    dm_config *cfg = NULL;
    dm_experiment *x = NULL;
    dm_error err = {0};
    int rc = dm_config_load(path, &cfg, &err);
    if (!rc) rc = dm_experiment_resolve(cfg, extra_path, &x, &err);
    CHECK(rc == DM_OK, "%s: the experiment itself was refused: %s", what, err.msg);
    if (rc == DM_OK) {
        dm_devctx dev = {device, 0, NULL};
        dm_model m;
        memset(&m, 0x5A, sizeof m); /* build must not trust what was there */
        rc = dm_model_build(&m, x, &dev, (dm_shape){1, 1, 28, 28}, 8, 1, &err);
        if (want) {
            CHECK(rc != DM_OK, "%s: built, expected a refusal with '%s'", what, want);
            CHECK(strstr(err.msg, want) != NULL, "%s: message lacks '%s': %s", what, want, err.msg);
            CHECK(!strchr(err.msg, '\n'), "%s: message is not one line: %s", what, err.msg);
            CHECK(strstr(err.msg, "layer.") != NULL || strstr(err.msg, ".ini") != NULL,
                  "%s: message names neither the layer nor the file: %s", what, err.msg);
            CHECK(m.layers == NULL && m.params == NULL, "%s: the refused model was not freed and zeroed", what);
        } else {
            CHECK(rc == DM_OK, "%s: refused: %s", what, err.msg);
        }
        dm_model_free(&m);
        dm_model_free(&m); /* twice: harmless */
        printf("ok %s: %s\n", what, rc ? err.msg : "built");
    }
    dm_experiment_free(x);
    dm_config_free(cfg);
    unlink(path);
    free(path);
}

int main(void)
{
    build("valid",
          HEAD "[layer.f]\ntype = flatten\n[layer.d]\ntype = dense\nunits = 10\n"
               "[layer.loss]\ntype = softmax_cross_entropy\n",
          NULL, DM_DEVICE_CPU, NULL);
    build("loss first",
          HEAD "[layer.loss]\ntype = softmax_cross_entropy\n[layer.f]\ntype = flatten\n"
               "[layer.d]\ntype = dense\nunits = 10\n",
          NULL, DM_DEVICE_CPU, "must be the last layer");
    build("loss in the middle",
          HEAD "[layer.f]\ntype = flatten\n[layer.loss]\ntype = softmax_cross_entropy\n"
               "[layer.d]\ntype = dense\nunits = 10\n",
          NULL, DM_DEVICE_CPU, "must be the last layer");
    build("no loss", HEAD "[layer.f]\ntype = flatten\n[layer.d]\ntype = dense\nunits = 10\n", NULL, DM_DEVICE_CPU,
          "last layer must be a loss layer");
    build("create refuses (third layer)",
          HEAD "[layer.c]\ntype = conv2d\nfilters = 2\nkernel = 3\n"
               "[layer.c2]\ntype = conv2d\nfilters = 2\nkernel = 3\n"
               "[layer.c3]\ntype = conv2d\nfilters = 2\nkernel = 40\n"
               "[layer.loss]\ntype = softmax_cross_entropy\n",
          NULL, DM_DEVICE_CPU, "layer.c3");
    build("shape refused after a loss",
          HEAD "[layer.f]\ntype = flatten\n[layer.loss]\ntype = softmax_cross_entropy\n"
               "[layer.c]\ntype = conv2d\nfilters = 2\nkernel = 3\n",
          NULL, DM_DEVICE_CPU, "layer.");
    /* "no cuda implementation": the batchnorm example is CPU-only. */
    const char *bn = getenv("DMNIST_TEST_BATCHNORM");
    if (bn && bn[0])
        build("no cuda implementation",
              HEAD "[layer.bn]\ntype = batchnorm\n[layer.f]\ntype = flatten\n"
                   "[layer.d]\ntype = dense\nunits = 10\n"
                   "[layer.loss]\ntype = softmax_cross_entropy\n",
              bn, DM_DEVICE_CUDA, "has no cuda implementation");
    else printf("skip no cuda implementation: DMNIST_TEST_BATCHNORM is not set\n");
    return failures ? 1 : 0;
}
