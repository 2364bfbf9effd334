/* Fuzz target: INI experiment files end to end up to a validated
 * experiment: dm_config_load, dm_config_set (--set), dm_experiment_resolve
 * against the plugins of the build tree, and dm_experiment_hash.
 *
 * Input: the INI text, optionally followed by a line "--set" and then one
 * SECTION.KEY=VALUE assignment per line. Every refusal must be one
 * non-empty line. */
#include "fuzz_util.h"

#include "dm_core.h"

static void check_message(const dm_error *err)
{
    if (!err->msg[0] || strchr(err->msg, '\n')) {
        fprintf(stderr, "bad message: '%s'\n", err->msg);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* the plugins this build made (the fuzzer does not run from the build root) */
    setenv("DMNIST_PLUGIN_PATH", DMNIST_BUILD_PLUGIN_DIR, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char marker[] = "\n--set\n";
    size_t ini_len = size;
    for (size_t i = 0; i + sizeof marker - 1 <= size; i++)
        if (memcmp(data + i, marker, sizeof marker - 1) == 0) {
            ini_len = i + 1;
            break;
        }
    char path[512];
    snprintf(path, sizeof path, "%s/x.ini", fuzz_scratch());
    fuzz_write(path, data, ini_len);

    dm_error err = {0};
    dm_config *cfg = NULL;
    if (dm_config_load(path, &cfg, &err) != DM_OK) {
        check_message(&err);
        return 0;
    }
    /* --set lines */
    size_t pos = ini_len + sizeof marker - 2;
    while (pos < size) {
        size_t end = pos;
        while (end < size && data[end] != '\n') end++;
        char line[512];
        size_t n = end - pos < sizeof line - 1 ? end - pos : sizeof line - 1;
        memcpy(line, data + pos, n);
        line[n] = 0;
        pos = end + 1;
        if (strlen(line) != n || !n) continue; /* NUL inside: the shell could not pass it either */
        if (dm_config_set(cfg, line, &err) != DM_OK) {
            check_message(&err);
            dm_config_free(cfg);
            return 0;
        }
    }
    dm_experiment *x = NULL;
    if (dm_experiment_resolve(cfg, NULL, &x, &err) == DM_OK) {
        volatile uint64_t h = dm_experiment_hash(x);
        (void)h;
        dm_experiment_free(x);
    } else {
        check_message(&err);
    }
    dm_config_free(cfg);
    return 0;
}
