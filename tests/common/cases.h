/* The driver of a C test with named cases (`test_x <case>`, one ctest test
 * per case) and the registry of every plugin on $DMNIST_PLUGIN_PATH.
 * Header-only, for the tests. */
#ifndef DM_TEST_CASES_H
#define DM_TEST_CASES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dm_core.h"

typedef struct test_case {
    const char *name;
    int (*fn)(void);
} test_case;

/* "usage: <argv0> <case>; cases: a b c" on stderr. */
static inline void test_usage(const char *argv0, const test_case *cases, int n_cases)
{
    fprintf(stderr, "usage: %s <case>; cases:", argv0);
    for (int i = 0; i < n_cases; i++) fprintf(stderr, " %s", cases[i].name);
    fprintf(stderr, "\n");
}

/* The case called `name`, or NULL. */
static inline const test_case *test_find(const char *name, const test_case *cases, int n_cases)
{
    for (int i = 0; i < n_cases; i++)
        if (strcmp(name, cases[i].name) == 0) return &cases[i];
    return NULL;
}

/* A registry with every plugin on $DMNIST_PLUGIN_PATH (ctest sets it), or
 * NULL after one line on stderr. */
static inline dm_registry *test_load_plugins(void)
{
    const char *path = getenv("DMNIST_PLUGIN_PATH");
    if (!path) {
        fprintf(stderr, "DMNIST_PLUGIN_PATH is not set (run through ctest)\n");
        return NULL;
    }
    dm_error err = {0};
    dm_registry *reg = dm_registry_new();
    if (!reg || dm_registry_load_path(reg, path, &err) != DM_OK) {
        fprintf(stderr, "loading plugins from %s: %s\n", path, err.msg);
        dm_registry_free(reg);
        return NULL;
    }
    return reg;
}

#endif
