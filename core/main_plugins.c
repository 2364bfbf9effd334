/* dmnist-run --list-plugins and --help-plugin TYPE: what the search path
 * holds, and the keys a plugin (or a core section) takes. */
#define _GNU_SOURCE
#include "dm_core.h"
#include "main_plugins.h"

#include <stdlib.h>

static const char *type_name(dm_param_type t)
{
    static const char *n[] = {"int", "float", "bool", "string", "enum"};
    return (unsigned)t < 5 ? n[t] : "?";
}

static void print_defs(const dm_param_def *defs)
{
    printf("  %-18s %-7s %-12s %-22s %s\n", "key", "type", "default", "range", "help");
    for (const dm_param_def *d = defs; d && d->name; d++) {
        char range[64] = "";
        if (d->type == DM_PARAM_ENUM) snprintf(range, sizeof range, "%s", d->choices);
        else if ((d->type == DM_PARAM_INT || d->type == DM_PARAM_FLOAT) && d->min <= d->max)
            snprintf(range, sizeof range, "[%g, %g]", d->min, d->max);
        printf("  %-18s %-7s %-12s %-22s %s\n", d->name, type_name(d->type),
               d->default_value ? (d->default_value[0] ? d->default_value : "\"\"") : "(required)", range,
               d->help ? d->help : "");
    }
}

/* The search path a run of config_path (NULL: none) would use: --plugin-path,
 * its experiment.plugin_path (relative to its folder), $DMNIST_PLUGIN_PATH,
 * the built-in folder. */
static int load_registry(dm_registry **reg, const char *extra, const char *config_path, dm_error *err)
{
    char path[4096], full[8192];
    const char *ini_path = NULL, *dir = NULL;
    dm_config *cfg = NULL;
    *reg = NULL;
    if (config_path) {
        if (dm_config_load(config_path, &cfg, err)) return err->code;
        const dm_kv *kv = dm_section_get(dm_config_section(cfg, "experiment"), "plugin_path");
        ini_path = kv ? kv->value : NULL;
        dir = cfg->dir;
    }
    dm_default_plugin_path(ini_path, dir, path, sizeof path);
    dm_config_free(cfg);
    snprintf(full, sizeof full, "%s%s%s", extra ? extra : "", extra ? ":" : "", path);
    *reg = dm_registry_new();
    if (!*reg) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    return dm_registry_load_path(*reg, full, err);
}

/* load_registry for --list-plugins and --help-plugin: NULL after saying why. */
static dm_registry *registry_or_say(const char *extra, const char *config_path)
{
    dm_registry *reg;
    dm_error err = {0};
    if (load_registry(&reg, extra, config_path, &err) == DM_OK) return reg;
    fprintf(stderr, "dmnist-run: %s\n", err.msg);
    dm_registry_free(reg);
    return NULL;
}

int dm_cli_list_plugins(const char *extra, const char *config_path)
{
    dm_registry *reg = registry_or_say(extra, config_path);
    if (!reg) return 2;
    printf("%-10s %-24s %-6s %-16s %s\n", "kind", "type", "abi", "signature", "file");
    for (int k = 0; k < DM_KIND_COUNT; k++)
        for (int i = 0; i < dm_registry_count(reg); i++) {
            const dm_loaded_component *c = dm_registry_at(reg, i);
            if ((int)c->component->kind != k) continue;
            char abi[16];
            snprintf(abi, sizeof abi, "%u.%u", c->plugin->abi_major, c->plugin->abi_minor);
            printf("%-10s %-24s %-6s %-16s %s\n", dm_kind_name(c->component->kind), c->component->type_name, abi,
                   c->plugin->build_signature, c->path);
        }
    if (dm_registry_shadowed_count(reg) > 0) {
        printf("\nshadowed (a folder earlier on the search path has the same type; that one is used):\n");
        printf("%-10s %-24s %s\n", "kind", "type", "file (shadowed by)");
        for (int i = 0; i < dm_registry_shadowed_count(reg); i++) {
            const dm_shadowed *sh = dm_registry_shadowed_at(reg, i);
            printf("%-10s %-24s %s (shadowed by %s)\n", dm_kind_name(sh->component->kind), sh->component->type_name,
                   sh->path, sh->by);
        }
    }
    dm_registry_free(reg);
    return 0;
}

int dm_cli_help_plugin(const char *type, const char *extra, const char *config_path)
{
    const dm_param_def *core = dm_core_section_defs(type);
    if (core && strncmp(type, "layer.", 6) != 0) {
        printf("[%s] (core section)\n", type);
        print_defs(core);
        return 0;
    }
    dm_registry *reg = registry_or_say(extra, config_path);
    if (!reg) return 2;
    const dm_loaded_component *c = dm_registry_find(reg, -1, type);
    if (!c) {
        const char *names[256];
        int n = 0;
        for (int i = 0; i < dm_registry_count(reg) && n < 256; i++)
            names[n++] = dm_registry_at(reg, i)->component->type_name;
        const char *s = dm_suggest(type, names, n);
        fprintf(stderr, "dmnist-run: --help-plugin: unknown type '%s'%s%s%s; see --list-plugins\n", type,
                s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
        dm_registry_free(reg);
        return 2;
    }
    printf("%s '%s' from %s (plugin %s %s, ABI %u.%u, %s)\n  %s\n", dm_kind_name(c->component->kind),
           c->component->type_name, c->path, c->plugin->name, c->plugin->version, c->plugin->abi_major,
           c->plugin->abi_minor, c->plugin->build_signature, c->component->help ? c->component->help : "");
    if (c->component->kind == DM_KIND_LAYER) {
        const dm_layer_vtable *vt = c->component->vtable;
        printf("  devices: %s%s\n", vt->devices & DM_DEVICE_BIT(DM_DEVICE_CPU) ? "cpu " : "",
               vt->devices & DM_DEVICE_BIT(DM_DEVICE_CUDA) ? "cuda" : "");
    }
    if (c->component->params && c->component->params->name) print_defs(c->component->params);
    else printf("  (no keys)\n");
    dm_registry_free(reg);
    return 0;
}
