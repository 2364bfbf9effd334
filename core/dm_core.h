/* Internal API of the dmnist core (not for plugins: they include only
 * include/dmnist/ headers). Used by dmnist-run, the tools and the tests. */
#ifndef DMNIST_CORE_H
#define DMNIST_CORE_H

#include "dmnist/dmnist.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- plugin registry (core/registry.c) ---------------------------------- */

typedef struct dm_registry dm_registry;

typedef struct dm_loaded_component {
    const dm_component *component;
    const dm_plugin_descriptor *plugin;
    const char *path;            /* file it came from */
} dm_loaded_component;

dm_registry *dm_registry_new(void);
/* dlopen one plugin file and register its components. On any refusal the
 * library is closed, nothing of it stays registered, and err says
 * "<path>: <reason>". */
int dm_registry_load_file(dm_registry *r, const char *path, dm_error *err);
/* Load every *.so in each ':'-separated directory (missing dirs are skipped). */
int dm_registry_load_path(dm_registry *r, const char *dirs, dm_error *err);
/* kind < 0 matches any kind. NULL when absent. */
const dm_loaded_component *dm_registry_find(const dm_registry *r, int kind, const char *type_name);
int dm_registry_count(const dm_registry *r);
const dm_loaded_component *dm_registry_at(const dm_registry *r, int i);
void dm_registry_free(dm_registry *r);

const char *dm_kind_name(dm_kind kind);

/* ---- parameter sets (core/params.c) ------------------------------------- */

/* An owned, validated dm_params for one component instance. */
typedef struct dm_param_set dm_param_set;

typedef struct dm_kv {
    const char *key;
    const char *value;
    int line;                    /* INI line, 0 when not from a file */
} dm_kv;

/* Where a section came from, for messages:
 * "configs/cnn.ini:14: layer.conv2: unknown key 'filter' (did you mean 'filters'?)".
 * file may be NULL (then no "file:line: " prefix); line is the section's. */
typedef struct dm_where {
    const char *file;
    const char *section;
    int line;
} dm_where;

/* Validate kvs against defs (type, range, choices; unknown keys are errors
 * with a "did you mean" suggestion; missing required keys are errors) and
 * fill defaults. Messages name the key's own line when it has one. */
int dm_param_set_build(const dm_param_def *defs, const dm_kv *kvs, int n, const dm_where *where,
                       dm_param_set **out, dm_error *err);
/* Format "file:line: section: " for kv (or the section when kv is NULL). */
void dm_where_format(const dm_where *where, const dm_kv *kv, char *buf, size_t size);
/* Convenience for tests and tools: spec is "key=value key=value" (spaces or commas). */
int dm_param_set_parse(const dm_param_def *defs, const char *spec, dm_param_set **out,
                       dm_error *err);
const dm_params *dm_param_set_params(const dm_param_set *ps);
void dm_param_set_free(dm_param_set *ps);

/* Levenshtein-nearest name in defs, or NULL when nothing is close. */
const char *dm_suggest(const char *word, const char *const *candidates, int n);


/* ---- INI experiment files (core/config.c) ------------------------------- */

/* One [section] in file order, with its keys in file order. Keys set with
 * --set carry line -1. */
typedef struct dm_section {
    char *name;
    int line;                    /* line of the [header]; 0 when made by --set */
    dm_kv *kvs;                  /* key/value strings owned by the config */
    int n, cap;
} dm_section;

typedef struct dm_config {
    char *path;                  /* as given on the command line */
    char *dir;                   /* its directory, for relative paths */
    dm_section *sections;
    int n, cap;
} dm_config;

/* Parse an INI file. Errors: "<path>:<line>: <reason>", or "<path>: <strerror>". */
int dm_config_load(const char *path, dm_config **out, dm_error *err);
/* Apply "section.key=value" (the section may contain dots: the key is the
 * part after the last one). Creates the section or key when absent. */
int dm_config_set(dm_config *c, const char *assignment, dm_error *err);
dm_section *dm_config_section(const dm_config *c, const char *name);
const dm_kv *dm_section_get(const dm_section *s, const char *key);
void dm_config_free(dm_config *c);

#ifdef __cplusplus
}
#endif
#endif
