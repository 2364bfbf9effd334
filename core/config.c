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
 * only) and a repeated one is refused. A header inih calls a syntax error
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
    dm_section *prev = dm_config_section(ps->cfg, name);
    if (prev) {
        dm_fail(ps->err, DM_ERR_FORMAT, "%s:%d: section [%s] appears twice (first at line %d); give each layer "
                "a unique name", ps->cfg->path, ps->line, name, prev->line);
        ps->failed = 1;
    } else if (!add_section(ps->cfg, name, ps->line)) {
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
            dm_fail(ps->err, DM_ERR_FORMAT, "%s:%d: line longer than %d characters", ps->cfg->path, ps->line,
                    size - 2);
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
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        dm_section *ns = realloc(c->sections, (size_t)cap * sizeof *ns);
        if (!ns) return NULL;
        c->sections = ns;
        c->cap = cap;
    }
    dm_section *s = &c->sections[c->n];
    memset(s, 0, sizeof *s);
    if (!(s->name = strdup(name))) return NULL;
    s->line = line;
    c->n++;
    return s;
}

dm_section *dm_config_section(const dm_config *c, const char *name)
{
    for (int i = 0; c && i < c->n; i++)
        if (strcmp(c->sections[i].name, name) == 0) return &c->sections[i];
    return NULL;
}

const dm_kv *dm_section_get(const dm_section *s, const char *key)
{
    for (int i = 0; s && i < s->n; i++)
        if (strcmp(s->kvs[i].key, key) == 0) return &s->kvs[i];
    return NULL;
}

/* Set or replace key in section. */
static int put(dm_section *s, const char *key, const char *value, int line)
{
    for (int i = 0; i < s->n; i++) {
        if (strcmp(s->kvs[i].key, key) == 0) {
            char *v = strdup(value);
            if (!v) return -1;
            free((char *)s->kvs[i].value);
            s->kvs[i].value = v;
            s->kvs[i].line = line;
            return 0;
        }
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 8;
        dm_kv *nk = realloc(s->kvs, (size_t)cap * sizeof *nk);
        if (!nk) return -1;
        s->kvs = nk;
        s->cap = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) { free(k); free(v); return -1; }
    s->kvs[s->n++] = (dm_kv){k, v, line};
    return 0;
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
    if (!s || strcmp(s->name, section) != 0) {
        /* A section that reappears after another one is almost always a
         * copy-paste mistake (two [layer.conv1]): refuse it. */
        dm_section *prev = dm_config_section(c, section);
        if (prev) {
            dm_fail(ps->err, DM_ERR_FORMAT, "%s:%d: section [%s] appears twice (first at line %d); "
                    "give each layer a unique name", c->path, lineno, section, prev->line);
            ps->failed = 1;
            return 0;
        }
        if (!(s = add_section(c, section, ps->header_line))) goto nomem;
    }
    if (dm_section_get(s, name)) {
        dm_fail(ps->err, DM_ERR_FORMAT, "%s:%d: %s: key '%s' given twice", c->path, lineno, section, name);
        ps->failed = 1;
        return 0;
    }
    if (put(s, name, value, lineno) != 0) goto nomem;
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
    free(c->path);
    free(c->dir);
    free(c);
}

int dm_config_load(const char *path, dm_config **out, dm_error *err)
{
    *out = NULL;
    dm_config *c = calloc(1, sizeof *c);
    if (!c) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    c->path = strdup(path);
    char *tmp = strdup(path);
    if (!c->path || !tmp) { free(tmp); dm_config_free(c); return dm_fail(err, DM_ERR_NOMEM, "out of memory"); }
    c->dir = strdup(dirname(tmp));
    free(tmp);
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        dm_config_free(c);
        return dm_fail(err, DM_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || S_ISDIR(st.st_mode)) {
        fclose(f);
        dm_config_free(c);
        return dm_fail(err, DM_ERR_IO, "%s: cannot read: %s", path, strerror(EISDIR));
    }
    parse_state ps = {c, err, f, 0, 0, 0, 0};
    int rc = ini_parse_stream(reader, &ps, on_entry, &ps);
    int read_error = ferror(f) ? errno : 0;
    fclose(f);
    if (!ps.failed && read_error) {
        dm_config_free(c);
        return dm_fail(err, DM_ERR_IO, "%s: cannot read: %s", path, strerror(read_error));
    }
    if (ps.failed && !(rc > 0 && rc < ps.fail_line)) {
        dm_config_free(c);
        return err ? err->code : DM_ERR_FORMAT;
    }
    if (rc != 0) {
        dm_config_free(c);
        if (rc < 0) return dm_fail(err, DM_ERR_IO, "%s: cannot read", path);
        return dm_fail(err, DM_ERR_FORMAT, "%s:%d: syntax error (expected [section], key = value, "
                       "or a ; comment)", path, rc);
    }
    *out = c;
    return DM_OK;
}

int dm_config_set(dm_config *c, const char *assignment, dm_error *err)
{
    const char *eq = strchr(assignment, '=');
    if (!eq)
        return dm_fail(err, DM_ERR_INVALID, "--set %s: expected section.key=value", assignment);
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
        return dm_fail(err, DM_ERR_INVALID, "--set %s: expected section.key=value "
                       "(for example optimizer.lr=0.002)", assignment);
    *dot = 0;
    const char *key = dot + 1;
    dm_section *s = dm_config_section(c, lhs);
    if (!s && !(s = add_section(c, lhs, 0)))
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    if (put(s, key, value, -1) != 0)
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    return DM_OK;
}
