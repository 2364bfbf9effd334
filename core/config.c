/* INI experiment files, read with inih. We keep sections in file order
 * ourselves (Debian's inih has no new-section callback), so layer order is
 * the order of the [layer.*] sections in the file. */
#define _GNU_SOURCE
#include "dm_core.h"

#include <errno.h>
#include <ini.h>
#include <libgen.h>
#include <stdlib.h>
#include <sys/stat.h>

typedef struct {
    dm_config *cfg;
    dm_error *err;
    FILE *f;
    int failed;
    int fail_line;   /* line of our first error (inih may have found an earlier one) */
    int line;        /* line just read: inih calls the handler right after */
    int header_line; /* line of the last [section] header seen */
} parse_state;

static dm_section *add_section(dm_config *c, const char *name, int line);

/* A [section] header, as inih will read it: the section is registered here,
 * so that one without keys still exists (inih reports key = value lines
 * only). A header inih calls a syntax error
 * (no ']', or a ';' comment before it) is left to inih. */
static void on_header(parse_state *ps, const char *p)
{
    const char *end = p + 1;
    while (*end && *end != ']' && !(*end == ';' && (end[-1] == ' ' || end[-1] == '\t'))) end++;
    if (*end != ']') return;
    size_t len = (size_t)(end - p - 1);
    char name[64];
    ps->header_line = ps->line;
    ps->fail_line = ps->line;
    if (len == 0 || len >= 50) { /* inih cuts names at 49 characters: two long ones could merge */
        dm_fail(ps->err, DM_ERR_FORMAT, "%s:%d: %s", ps->cfg->path, ps->line,
                len ? "section name longer than 49 characters" : "empty section name []");
        ps->failed = 1;
        return;
    }
    memcpy(name, p + 1, len);
    name[len] = 0;
    /* A repeated name is found after parsing (find_repeats), in n log n. */
    if (!add_section(ps->cfg, name, ps->line)) {
        dm_fail(ps->err, DM_ERR_NOMEM, "%s: out of memory", ps->cfg->path);
        ps->failed = 1;
    }
}

/* Debian's inih is built without line numbers in the handler, so we feed it
 * lines ourselves and count them. */
static char *reader(char *buf, int size, void *stream)
{
    parse_state *ps = stream;
    if (ps->failed) return NULL; /* stop at the first error: keep its message */
    char *r = fgets(buf, size, ps->f);
    if (r) {
        ps->line++;
        /* inih would cut a longer line in pieces and parse each one as a
         * line of its own: refuse it instead. */
        size_t len = strlen(r);
        if (len == (size_t)size - 1 && r[len - 1] != '\n' && !feof(ps->f)) {
            dm_fail(ps->err, DM_ERR_FORMAT, "%s:%d: line longer than %d characters", ps->cfg->path, ps->line, size - 2);
            ps->failed = 1;
            ps->fail_line = ps->line;
            return NULL;
        }
        const char *p = r;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '[') {
            on_header(ps, p);
            if (ps->failed) return NULL;
        }
    }
    return r;
}

static dm_section *add_section(dm_config *c, const char *name, int line)
{
    if (dm_grow(&c->sections, &c->cap, c->n + 1, sizeof *c->sections, 16)) return NULL;
    dm_section *s = &c->sections[c->n];
    memset(s, 0, sizeof *s);
    if (!(s->name = strdup(name))) return NULL;
    s->line = line;
    c->n++;
    return s;
}

/* c->order: the section indices sorted by name, then by position, so that
 * lookups are binary searches and repeated names are neighbours. */
static const dm_config *sort_cfg; /* qsort has no context argument; loading is single-threaded */

static int cmp_section(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    int c = strcmp(sort_cfg->sections[i].name, sort_cfg->sections[j].name);
    return c ? c : (i > j) - (i < j);
}

static int sort_sections(dm_config *c)
{
    int *order = realloc(c->order, (size_t)(c->n ? c->n : 1) * sizeof *order);
    if (!order) return -1;
    c->order = order;
    for (int i = 0; i < c->n; i++) order[i] = i;
    sort_cfg = c;
    qsort(order, (size_t)c->n, sizeof *order, cmp_section);
    return 0;
}

dm_section *dm_config_section(const dm_config *c, const char *name)
{
    if (!c || !c->order) return NULL;
    int lo = 0, hi = c->n - 1, found = -1;
    while (lo <= hi) { /* the first of equal names */
        int mid = lo + (hi - lo) / 2, cmp = strcmp(c->sections[c->order[mid]].name, name);
        if (cmp >= 0) {
            if (cmp == 0) found = mid;
            hi = mid - 1;
        } else lo = mid + 1;
    }
    return found < 0 ? NULL : &c->sections[c->order[found]];
}

const dm_kv *dm_section_get(const dm_section *s, const char *key)
{
    for (int i = 0; s && i < s->n; i++)
        if (strcmp(s->kvs[i].key, key) == 0) return &s->kvs[i];
    return NULL;
}

/* Set or replace key in section. */
static int append(dm_section *s, const char *key, const char *value, int line, const char *origin)
{
    if (dm_grow(&s->kvs, &s->cap, s->n + 1, sizeof *s->kvs, 8)) return -1;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return -1;
    }
    s->kvs[s->n++] = (dm_kv){k, v, line, origin};
    return 0;
}

/* Set key (replacing its value where it exists: --set). */
static int put(dm_section *s, const char *key, const char *value, int line, const char *origin)
{
    for (int i = 0; i < s->n; i++) {
        if (strcmp(s->kvs[i].key, key) == 0) {
            char *v = strdup(value);
            if (!v) return -1;
            free((char *)s->kvs[i].value);
            s->kvs[i].value = v;
            s->kvs[i].line = line;
            s->kvs[i].origin = origin;
            return 0;
        }
    }
    return append(s, key, value, line, origin);
}

static const dm_section *sort_sec; /* as sort_cfg, for cmp_key */

static int cmp_key(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    int c = strcmp(sort_sec->kvs[i].key, sort_sec->kvs[j].key);
    return c ? c : (i > j) - (i < j);
}

/* After parsing: the earliest line at which a section name or a key within
 * a section is repeated (0 if none), with its message. Sorting makes this
 * n log n: 100,000 keys take milliseconds, not minutes. */
static int find_repeats(dm_config *c, char *msg, size_t size)
{
    int first = 0;
    if (sort_sections(c) != 0) return -1;
    for (int k = 1; k < c->n; k++) {
        const dm_section *a = &c->sections[c->order[k - 1]], *b = &c->sections[c->order[k]];
        if (strcmp(a->name, b->name) == 0 && (k < 2 || strcmp(c->sections[c->order[k - 2]].name, a->name) != 0) &&
            (!first || b->line < first)) {
            first = b->line;
            snprintf(msg, size,
                     "%s:%d: section [%s] appears twice (first at line %d); give each layer a unique "
                     "name",
                     c->path, b->line, b->name, a->line);
        }
    }
    int *idx = NULL, cap = 0;
    for (int i = 0; i < c->n; i++) {
        const dm_section *s = &c->sections[i];
        if (s->n < 2) continue;
        if (s->n > cap) {
            int *n = realloc(idx, (size_t)s->n * sizeof *n);
            if (!n) {
                free(idx);
                return -1;
            }
            idx = n;
            cap = s->n;
        }
        for (int k = 0; k < s->n; k++) idx[k] = k;
        sort_sec = s;
        qsort(idx, (size_t)s->n, sizeof *idx, cmp_key);
        for (int k = 1; k < s->n; k++) {
            const dm_kv *a = &s->kvs[idx[k - 1]], *b = &s->kvs[idx[k]];
            if (strcmp(a->key, b->key) == 0 && (!first || b->line < first)) {
                first = b->line;
                snprintf(msg, size, "%s:%d: %s: key '%s' given twice", c->path, b->line, s->name, b->key);
            }
        }
    }
    free(idx);
    return first;
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
    parse_state *ps = user;
    dm_config *c = ps->cfg;
    int lineno = ps->line;
    if (ps->failed) return 0; /* inih goes on after an error; the first one counts */
    ps->fail_line = lineno;
    if (!section[0]) {
        dm_fail(ps->err, DM_ERR_FORMAT, "%s:%d: key '%s' before any [section]", c->path, lineno, name);
        ps->failed = 1;
        return 0;
    }
    dm_section *s = c->n ? &c->sections[c->n - 1] : NULL;
    if ((!s || strcmp(s->name, section) != 0) && !(s = add_section(c, section, ps->header_line))) goto nomem;
    /* Appended as read: a key given twice is found after parsing (find_repeats). */
    if (append(s, name, value, lineno, NULL) != 0) goto nomem;
    return 1;
nomem:
    dm_fail(ps->err, DM_ERR_NOMEM, "%s: out of memory", c->path);
    ps->failed = 1;
    return 0;
}

void dm_config_free(dm_config *c)
{
    if (!c) return;
    for (int i = 0; i < c->n; i++) {
        for (int k = 0; k < c->sections[i].n; k++) {
            free((char *)c->sections[i].kvs[k].key);
            free((char *)c->sections[i].kvs[k].value);
        }
        free(c->sections[i].kvs);
        free(c->sections[i].name);
    }
    free(c->sections);
    free(c->order);
    free(c->path);
    free(c->dir);
    free(c);
}

/* The whole file, at most DM_CONFIG_MAX_BYTES: /dev/zero, a FIFO that never
 * ends or a 100 MB file stop here with a message instead of running on. */
static int read_capped(const char *path, char **text, size_t *len, dm_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return dm_fail(err, DM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || S_ISDIR(st.st_mode)) {
        fclose(f);
        return dm_fail(err, DM_ERR_IO, "%s: cannot read: %s", path, strerror(EISDIR));
    }
    size_t cap = 64 * 1024, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap || cap > DM_CONFIG_MAX_BYTES) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int read_error = ferror(f) ? errno : 0;
    fclose(f);
    if (!buf) return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", path);
    if (read_error || n > DM_CONFIG_MAX_BYTES) {
        free(buf);
        if (read_error) return dm_fail(err, DM_ERR_IO, "%s: cannot read: %s", path, strerror(read_error));
        return dm_fail(err, DM_ERR_FORMAT, "%s: larger than %d bytes: not an experiment file", path,
                       DM_CONFIG_MAX_BYTES);
    }
    *text = buf;
    *len = n;
    return DM_OK;
}

int dm_config_load(const char *path, dm_config **out, dm_error *err)
{
    *out = NULL;
    dm_config *c = calloc(1, sizeof *c);
    if (!c) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    c->path = strdup(path);
    char *tmp = strdup(path);
    if (!c->path || !tmp) {
        free(tmp);
        dm_config_free(c);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    c->dir = strdup(dirname(tmp));
    free(tmp);
    char *text = NULL;
    size_t len = 0;
    int rc = read_capped(path, &text, &len, err);
    if (rc) {
        dm_config_free(c);
        return rc;
    }
    /* inih would stop reading a line at a NUL and silently drop the rest
     * of it ("seed = 4\0002" would train with seed 4). */
    const char *nul = memchr(text, 0, len);
    if (nul) {
        int line = 1;
        for (const char *q = text; q < nul; q++) line += *q == '\n';
        free(text);
        dm_config_free(c);
        return dm_fail(err, DM_ERR_FORMAT, "%s:%d: NUL byte in the file (is it a text file?)", path, line);
    }
    FILE *f = len ? fmemopen(text, len, "r") : NULL;
    if (len && !f) {
        free(text);
        dm_config_free(c);
        return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", path);
    }
    parse_state ps = {c, err, f, 0, 0, 0, 0};
    rc = f ? ini_parse_stream(reader, &ps, on_entry, &ps) : 0;
    if (f) fclose(f);
    free(text);
    /* The earliest of: our own error, inih's syntax error, a repeat. */
    char repeat_msg[DM_ERRMSG_MAX];
    int repeat_line = find_repeats(c, repeat_msg, sizeof repeat_msg);
    if (repeat_line < 0) {
        dm_config_free(c);
        return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", path);
    }
    int our_line = ps.failed ? ps.fail_line : 0, inih_line = rc > 0 ? rc : 0;
    if (repeat_line && (!our_line || repeat_line <= our_line) && (!inih_line || repeat_line < inih_line)) {
        dm_config_free(c);
        return dm_fail(err, DM_ERR_FORMAT, "%s", repeat_msg);
    }
    if (ps.failed && !(rc > 0 && rc < ps.fail_line)) {
        dm_config_free(c);
        return err ? err->code : DM_ERR_FORMAT;
    }
    if (rc != 0) {
        dm_config_free(c);
        if (rc < 0) return dm_fail(err, DM_ERR_IO, "%s: cannot read", path);
        return dm_fail(err, DM_ERR_FORMAT,
                       "%s:%d: syntax error (expected [section], key = value, "
                       "or a ; comment)",
                       path, rc);
    }
    *out = c;
    return DM_OK;
}

int dm_config_set(dm_config *c, const char *assignment, dm_error *err)
{
    return dm_config_set_as(c, assignment, "--set", err);
}

int dm_config_set_as(dm_config *c, const char *assignment, const char *origin, dm_error *err)
{
    const char *eq = strchr(assignment, '=');
    if (!eq) return dm_fail(err, DM_ERR_INVALID, "--set %s: expected section.key=value", assignment);
    size_t lhs_len = (size_t)(eq - assignment);
    char lhs[256];
    if (lhs_len == 0 || lhs_len >= sizeof lhs)
        return dm_fail(err, DM_ERR_INVALID, "--set %s: expected section.key=value", assignment);
    memcpy(lhs, assignment, lhs_len);
    lhs[lhs_len] = 0;
    /* trim spaces around the name and the value */
    while (lhs_len && lhs[lhs_len - 1] == ' ') lhs[--lhs_len] = 0;
    const char *value = eq + 1;
    while (*value == ' ') value++;
    char *dot = strrchr(lhs, '.');
    if (!dot || dot == lhs || !dot[1])
        return dm_fail(err, DM_ERR_INVALID,
                       "--set %s: expected section.key=value "
                       "(for example optimizer.lr=0.002)",
                       assignment);
    *dot = 0;
    const char *key = dot + 1;
    dm_section *s = dm_config_section(c, lhs);
    if (!s && (!(s = add_section(c, lhs, 0)) || sort_sections(c) != 0))
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    if (put(s, key, value, -1, origin) != 0) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    return DM_OK;
}
