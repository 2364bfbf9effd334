/* Parameter validation and the INI reader, on files the test writes. */
#define _GNU_SOURCE
#include "check.h"
#include "dm_core.h"

#include <stdlib.h>
#include <unistd.h>

static const dm_param_def defs[] = {{"filters", DM_PARAM_INT, NULL, 1, 4096, NULL, "number of filters"},
                                    {"kernel", DM_PARAM_INT, "3", 1, 11, NULL, "kernel size"},
                                    {"rate", DM_PARAM_FLOAT, "0.5", 0, 0.99, NULL, "rate"},
                                    {"bias", DM_PARAM_BOOL, "true", 1, 0, NULL, "bias"},
                                    {"padding", DM_PARAM_ENUM, "valid", 1, 0, "valid|same", "padding"},
                                    {"name", DM_PARAM_STRING, "", 1, 0, NULL, "a string"},
                                    DM_PARAM_END};

static void expect_error(const char *spec, const char *needle)
{
    dm_param_set *ps = NULL;
    dm_error e = {0};
    int rc = dm_param_set_parse(defs, spec, &ps, &e);
    CHECK(rc == DM_ERR_INVALID, "'%s' accepted (rc %d)", spec, rc);
    CHECK(strstr(e.msg, needle) != NULL, "'%s': message lacks '%s': %s", spec, needle, e.msg);
    CHECK(ps == NULL, "'%s': set returned on error", spec);
    dm_param_set_free(ps);
}

int main(void)
{
    dm_param_set *ps = NULL;
    dm_error e = {0};
    /* defaults filled, types converted */
    CHECK(dm_param_set_parse(defs, "filters=32 padding=same bias=off rate=0.25", &ps, &e) == DM_OK, "%s", e.msg);
    const dm_params *p = dm_param_set_params(ps);
    CHECK(p && p->count == 6, "count");
    CHECK(dm_param_int(p, "filters", 0) == 32, "filters");
    CHECK(dm_param_int(p, "kernel", 0) == 3, "kernel default");
    CHECK(dm_param_int(p, "bias", 1) == 0, "bool off");
    CHECK(dm_param_float(p, "rate", 0) == 0.25, "rate");
    CHECK(strcmp(dm_param_str(p, "padding", ""), "same") == 0, "enum");
    dm_param_set_free(ps);

    expect_error("filter=32", "unknown key 'filter' (did you mean 'filters'?)");
    expect_error("kernel=3", "missing required key 'filters'");
    expect_error("filters=abc", "'filters' must be an integer, got 'abc'");
    expect_error("filters=0", "out of range [1, 4096]");
    expect_error("filters=8 rate=1.5", "out of range");
    expect_error("filters=8 rate=nan", "must be a number");
    expect_error("filters=8 bias=maybe", "must be true or false");
    expect_error("filters=8 padding=full", "must be one of valid|same");
    expect_error("filters=8 zzzzzz=1", "unknown key 'zzzzzz'");

    /* suggestions are not made for unrelated words */
    const char *cands[] = {"filters", "kernel"};
    CHECK(dm_suggest("kernal", cands, 2) && strcmp(dm_suggest("kernal", cands, 2), "kernel") == 0, "kernal");
    CHECK(dm_suggest("xyz", cands, 2) == NULL, "xyz");
    CHECK(dm_suggest("kenrel", cands, 2) && strcmp(dm_suggest("kenrel", cands, 2), "kernel") == 0, "transposition");

    /* INI reader: line numbers, duplicate sections, syntax errors, --set */
    char *good =
        check_write_ini("[experiment]\nseed = 7 ; comment\n\n[layer.a]\ntype = relu\n[layer.b]\ntype = flatten\n");
    dm_config *c = NULL;
    CHECK(dm_config_load(good, &c, &e) == DM_OK, "%s", e.msg);
    CHECK(c && c->n == 3, "sections %d", c ? c->n : -1);
    CHECK(c && strcmp(c->sections[1].name, "layer.a") == 0 && strcmp(c->sections[2].name, "layer.b") == 0, "order");
    CHECK(c && c->sections[1].line == 4, "header line %d", c ? c->sections[1].line : -1);
    const dm_kv *kv = dm_section_get(dm_config_section(c, "experiment"), "seed");
    CHECK(kv && strcmp(kv->value, "7") == 0 && kv->line == 2, "seed kv");
    CHECK(dm_config_set(c, "layer.a.type=dense", &e) == DM_OK, "%s", e.msg);
    kv = dm_section_get(dm_config_section(c, "layer.a"), "type");
    CHECK(kv && strcmp(kv->value, "dense") == 0 && kv->line == -1, "--set with dotted section");
    CHECK(dm_config_set(c, "optimizer.lr=0.5", &e) == DM_OK && dm_config_section(c, "optimizer"), "--set new section");
    CHECK(dm_config_set(c, "nodot=1", &e) != DM_OK && strstr(e.msg, "section.key=value"), "--set without dot: %s",
          e.msg);
    CHECK(dm_config_set(c, "a.b", &e) != DM_OK, "--set without =");
    dm_config_free(c);
    unlink(good);
    free(good);

    char *bad = check_write_ini("[experiment]\nseed = 1\nthis line is wrong\n");
    CHECK(dm_config_load(bad, &c, &e) != DM_OK && strstr(e.msg, ":3: syntax error"), "syntax: %s", e.msg);
    CHECK(strstr(e.msg, bad) != NULL, "syntax error names file: %s", e.msg);
    unlink(bad);
    free(bad);
    bad = check_write_ini("[layer.a]\ntype = relu\n[layer.b]\ntype = relu\n[layer.a]\nx = 1\n");
    CHECK(dm_config_load(bad, &c, &e) != DM_OK && strstr(e.msg, "appears twice (first at line 1)"), "dup: %s", e.msg);
    unlink(bad);
    free(bad);
    bad = check_write_ini("seed = 1\n");
    CHECK(dm_config_load(bad, &c, &e) != DM_OK && strstr(e.msg, "before any [section]"), "no section: %s", e.msg);
    unlink(bad);
    free(bad);
    CHECK(dm_config_load("/nonexistent/x.ini", &c, &e) == DM_ERR_IO && strstr(e.msg, "cannot open"), "missing: %s",
          e.msg);

    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("params and config: all checks passed\n");
    return 0;
}
