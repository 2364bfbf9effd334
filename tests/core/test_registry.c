/* The loader refuses bad plugins with one line naming the file and the
 * reason, and a refused plugin leaves nothing registered. The plugins are
 * tests/bad-inputs' (plugins/bad_plugin.c), one folder per defect. */
#include "check.h"
#include "dm_core.h"

#include <stdlib.h>

/* <dir>/<folder>/dm_badtest.so */
static const char *plugin_path(char *buf, size_t size, const char *dir, const char *folder)
{
    snprintf(buf, size, "%s/%s/dm_badtest.so", dir, folder);
    return buf;
}

static void expect_refused(const char *dir, const char *file, const char *needle)
{
    char path[4096];
    plugin_path(path, sizeof path, dir, file);
    dm_registry *r = dm_registry_new();
    dm_error e = {0};
    int rc = dm_registry_load_file(r, path, &e);
    CHECK(rc != DM_OK, "%s was accepted", file);
    CHECK(strstr(e.msg, path) != NULL, "message does not name the file: %s", e.msg);
    CHECK(strstr(e.msg, needle) != NULL, "message for %s lacks '%s': %s", file, needle, e.msg);
    CHECK(strchr(e.msg, '\n') == NULL, "message is not one line: %s", e.msg);
    CHECK(dm_registry_count(r) == 0, "%s left %d components registered", file, dm_registry_count(r));
    printf("refused %-28s %s\n", file, e.msg);
    dm_registry_free(r);
}

int main(void)
{
    const char *dir = getenv("DMNIST_TEST_BAD_PLUGIN_DIR");
    if (!dir) {
        fprintf(stderr, "DMNIST_TEST_BAD_PLUGIN_DIR not set\n");
        return 2;
    }
    dm_error e = {0};

    /* The valid one loads and registers its type. */
    char good[4096];
    plugin_path(good, sizeof good, dir, "valid");
    dm_registry *r = dm_registry_new();
    CHECK(dm_registry_load_file(r, good, &e) == DM_OK, "good plugin refused: %s", e.msg);
    CHECK(dm_registry_find(r, DM_KIND_DATASET, "badtest") != NULL, "type not registered");
    CHECK(dm_registry_find(r, DM_KIND_LAYER, "badtest") == NULL, "kind not respected");
    /* A second plugin with the same type name is refused, naming the first. */
    char dup[4096];
    plugin_path(dup, sizeof dup, dir, "valid_copy");
    int rc = dm_registry_load_file(r, dup, &e);
    CHECK(rc != DM_OK, "duplicate type accepted");
    CHECK(strstr(e.msg, "already registered") && strstr(e.msg, good), "bad duplicate message: %s", e.msg);
    CHECK(dm_registry_count(r) == 1, "duplicate left components behind (%d)", dm_registry_count(r));
    printf("refused %-28s %s\n", "valid_copy", e.msg);
    dm_registry_free(r);

    expect_refused(dir, "abi_major", "newer than this dmnist");
    expect_refused(dir, "no_entry", "no entry point 'dm_plugin_entry'");
    expect_refused(dir, "component_size", "struct too small");
    expect_refused(dir, "does_not_exist", "cannot load");

    /* A directory scan stops at the first refusal with the same message. */
    char bad_folder[4096];
    snprintf(bad_folder, sizeof bad_folder, "%s/abi_major", dir);
    r = dm_registry_new();
    rc = dm_registry_load_path(r, bad_folder, &e);
    CHECK(rc != DM_OK, "scanning a folder of bad plugins succeeded");
    dm_registry_free(r);

    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("registry: all checks passed\n");
    return 0;
}
