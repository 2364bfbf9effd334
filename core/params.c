/* Parameter sets: validate the keys of one INI section (or a test's spec
 * string) against a component's parameter table, the same way for every
 * plugin, and hand the plugin a dm_params with every key filled in. */
#define _GNU_SOURCE
#include "dm_core.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <strings.h>

struct dm_param_set {
    dm_params params;
    const dm_param_def *defs; /* the table it was built from */
    dm_param_value *values;
    char **texts; /* owned copies of every value text */
    int n;
};

/* Edit distance with adjacent transpositions counted as one edit
 * ("alpah" -> "alpha" is 1), case-insensitive. Full table: names are short. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    static _Thread_local size_t d[65][65];
    for (size_t i = 0; i <= la; i++) d[i][0] = i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
            size_t best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) && tolower((unsigned char)a[i - 2]) == cb &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

const char *dm_suggest(const char *word, const char *const *candidates, int n)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    for (int i = 0; i < n; i++) {
        size_t d = edit_distance(word, candidates[i]);
        if (d < best_d) {
            best_d = d;
            best = candidates[i];
        }
    }
    /* Close enough: at most a third of the word wrong (at least 1, at most 3),
     * or one is a prefix of the other ("filter" -> "filters"). */
    size_t len = strlen(word), limit = len / 3;
    if (limit < 1) limit = 1;
    if (limit > 3) limit = 3;
    if (best && (best_d <= limit || strncmp(word, best, len) == 0 || strncmp(word, best, strlen(best)) == 0))
        return best;
    return NULL;
}

static const char *type_word(dm_param_type t)
{
    switch (t) {
    case DM_PARAM_INT: return "an integer";
    case DM_PARAM_FLOAT: return "a number";
    case DM_PARAM_BOOL: return "true or false";
    case DM_PARAM_STRING: return "a string";
    case DM_PARAM_ENUM: return "one of";
    }
    return "?";
}

int dm_param_parse_bool(const char *s, int64_t *out)
{
    static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 1;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 1;
        }
    }
    return 0;
}

static int enum_has(const char *choices, const char *word)
{
    size_t len = strlen(word);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == len && strncmp(p, word, l) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

/* Convert text into v per def; message without location on failure. */
static int convert(const dm_param_def *def, const char *text, dm_param_value *v, dm_error *err)
{
    v->name = def->name;
    v->type = def->type;
    v->s = text;
    v->i = 0;
    v->f = 0;
    char *end = NULL;
    int in_range = 1;
    switch (def->type) {
    case DM_PARAM_INT: {
        errno = 0;
        long long x = strtoll(text, &end, 10);
        if (!text[0] || *end || errno)
            return dm_fail(err, DM_ERR_INVALID, "'%s' must be %s, got '%s'", def->name, type_word(def->type), text);
        v->i = x;
        v->f = (double)x;
        in_range = def->min > def->max || (v->f >= def->min && v->f <= def->max);
        break;
    }
    case DM_PARAM_FLOAT: {
        errno = 0;
        double x = strtod(text, &end);
        if (!text[0] || *end || errno || !isfinite(x))
            return dm_fail(err, DM_ERR_INVALID, "'%s' must be %s, got '%s'", def->name, type_word(def->type), text);
        v->f = x;
        in_range = def->min > def->max || (x >= def->min && x <= def->max);
        break;
    }
    case DM_PARAM_BOOL:
        if (!dm_param_parse_bool(text, &v->i))
            return dm_fail(err, DM_ERR_INVALID, "'%s' must be true or false, got '%s'", def->name, text);
        v->f = (double)v->i;
        break;
    case DM_PARAM_STRING: break;
    case DM_PARAM_ENUM:
        if (!enum_has(def->choices, text))
            return dm_fail(err, DM_ERR_INVALID, "'%s' must be one of %s, got '%s'", def->name, def->choices, text);
        break;
    }
    if (!in_range)
        return dm_fail(err, DM_ERR_INVALID, "'%s' = %s is out of range [%g, %g]", def->name, text, def->min, def->max);
    return DM_OK;
}

void dm_param_set_free(dm_param_set *ps)
{
    if (!ps) return;
    for (int i = 0; i < ps->n; i++) free(ps->texts[i]);
    free(ps->texts);
    free(ps->values);
    free(ps);
}

const dm_params *dm_param_set_params(const dm_param_set *ps) { return ps ? &ps->params : NULL; }

void dm_where_format(const dm_where *where, const dm_kv *kv, char *buf, size_t size)
{
    buf[0] = 0;
    if (!where) return;
    int line = kv && kv->line > 0 ? kv->line : where->line;
    size_t off = 0;
    if (kv && kv->line < 0) {
        /* came from the command line, not the file */
        const char *sec = where->section ? where->section : "?";
        if (kv->origin && strcmp(kv->origin, "--set") != 0)
            snprintf(buf, size, "%s (%s.%s): ", kv->origin, sec, kv->key);
        else snprintf(buf, size, "--set %s.%s: ", sec, kv->key);
        return;
    }
    if (where->file) {
        if (line > 0) off = (size_t)snprintf(buf, size, "%s:%d: ", where->file, line);
        else off = (size_t)snprintf(buf, size, "%s: ", where->file);
    }
    if (where->section && off < size) snprintf(buf + off, size - off, "%s: ", where->section);
}

int dm_param_set_build(const dm_param_def *defs, const dm_kv *kvs, int n, const dm_where *where, dm_param_set **out,
                       dm_error *err)
{
    char loc[512];
    *out = NULL;
    int nd = 0;
    for (const dm_param_def *d = defs; d && d->name; d++) nd++;
    const char *names[256];
    for (int i = 0; i < nd && i < 256; i++) names[i] = defs[i].name;

    /* Unknown keys first: they are the most common typo. */
    for (int k = 0; k < n; k++) {
        int known = 0;
        for (int i = 0; i < nd; i++) known |= strcmp(defs[i].name, kvs[k].key) == 0;
        if (!known) {
            const char *s = dm_suggest(kvs[k].key, names, nd < 256 ? nd : 256);
            char hint[160] = "";
            if (s) snprintf(hint, sizeof hint, " (did you mean '%s'?)", s);
            else if (nd == 0) snprintf(hint, sizeof hint, " (this component takes no keys)");
            dm_where_format(where, &kvs[k], loc, sizeof loc);
            return dm_fail(err, DM_ERR_INVALID, "%sunknown key '%s'%s", loc, kvs[k].key, hint);
        }
        for (int j = 0; j < k; j++)
            if (strcmp(kvs[j].key, kvs[k].key) == 0) {
                dm_where_format(where, &kvs[k], loc, sizeof loc);
                return dm_fail(err, DM_ERR_INVALID, "%skey '%s' given twice", loc, kvs[k].key);
            }
    }

    dm_param_set *ps = calloc(1, sizeof *ps);
    if (!ps) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    ps->values = calloc((size_t)(nd ? nd : 1), sizeof *ps->values);
    ps->texts = calloc((size_t)(nd ? nd : 1), sizeof *ps->texts);
    if (!ps->values || !ps->texts) {
        dm_param_set_free(ps);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < nd; i++) {
        const char *text = defs[i].default_value;
        const dm_kv *from = NULL;
        for (int k = 0; k < n; k++)
            if (strcmp(defs[i].name, kvs[k].key) == 0) {
                text = kvs[k].value;
                from = &kvs[k];
            }
        dm_where_format(where, from, loc, sizeof loc);
        if (!text) {
            dm_param_set_free(ps);
            return dm_fail(err, DM_ERR_INVALID, "%smissing required key '%s' (%s)", loc, defs[i].name,
                           defs[i].help ? defs[i].help : "no help");
        }
        ps->texts[i] = strdup(text);
        ps->n = i + 1;
        if (!ps->texts[i]) {
            dm_param_set_free(ps);
            return dm_fail(err, DM_ERR_NOMEM, "out of memory");
        }
        dm_error e = {0};
        if (convert(&defs[i], ps->texts[i], &ps->values[i], &e) != DM_OK) {
            dm_param_set_free(ps);
            return dm_fail(err, e.code, "%s%s", loc, e.msg);
        }
    }
    ps->defs = defs;
    ps->params.struct_size = sizeof ps->params;
    ps->params.count = nd;
    ps->params.values = ps->values;
    *out = ps;
    return DM_OK;
}

int dm_param_set_replace(dm_param_set *ps, const char *name, const char *text, dm_error *err)
{
    for (int i = 0; ps && i < ps->n; i++) {
        if (strcmp(ps->defs[i].name, name) != 0) continue;
        dm_param_value v;
        char *copy = strdup(text);
        if (!copy) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
        int rc = convert(&ps->defs[i], copy, &v, err);
        if (rc) {
            free(copy);
            return rc;
        }
        free(ps->texts[i]);
        ps->texts[i] = copy;
        ps->values[i] = v;
        return DM_OK;
    }
    return dm_fail(err, DM_ERR_INTERNAL, "no key '%s' to replace", name);
}

int dm_param_set_parse(const dm_param_def *defs, const char *spec, dm_param_set **out, dm_error *err)
{
    char *copy = strdup(spec ? spec : "");
    if (!copy) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    dm_kv kvs[64];
    int n = 0, rc = DM_OK;
    char *save = NULL;
    for (char *tok = strtok_r(copy, " ,\t\n", &save); tok; tok = strtok_r(NULL, " ,\t\n", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok) {
            rc = dm_fail(err, DM_ERR_INVALID, "bad spec item '%s' (want key=value)", tok);
            break;
        }
        if (n == 64) {
            rc = dm_fail(err, DM_ERR_INVALID, "too many items in spec");
            break;
        }
        *eq = 0;
        kvs[n++] = (dm_kv){tok, eq + 1, 0, NULL};
    }
    if (rc == DM_OK) rc = dm_param_set_build(defs, kvs, n, NULL, out, err);
    free(copy);
    return rc;
}
