/* Plugin registry: dlopen() plugin files, check their descriptors against
 * this host's ABI, and index their components by type name.
 *
 * A refused plugin is closed again and leaves nothing registered (as
 * Redis's moduleLoad undoes a half-done load). */
#define _GNU_SOURCE
#include "dm_core.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct dm_loaded_lib {
    void *handle;
    char *path;
    const dm_plugin_descriptor *desc;
} dm_loaded_lib;

struct dm_registry {
    dm_loaded_lib *libs;
    int n_libs, cap_libs;
    dm_loaded_component *comps;
    int n_comps, cap_comps;
};

static const size_t dm_vtable_min_size[DM_KIND_COUNT] = {
    [DM_KIND_LAYER] = DM_LAYER_VTABLE_SIZE_1_0,
    [DM_KIND_OPTIMIZER] = DM_OPTIMIZER_VTABLE_SIZE_1_0,
    [DM_KIND_DATASET] = DM_DATASET_VTABLE_SIZE_1_0,
    [DM_KIND_COMM] = DM_COMM_VTABLE_SIZE_1_0,
};

const char *dm_kind_name(dm_kind kind)
{
    switch (kind) {
    case DM_KIND_LAYER: return "layer";
    case DM_KIND_OPTIMIZER: return "optimizer";
    case DM_KIND_DATASET: return "dataset";
    case DM_KIND_COMM: return "comm";
    default: return "unknown";
    }
}

dm_registry *dm_registry_new(void) { return calloc(1, sizeof(dm_registry)); }

const dm_loaded_component *dm_registry_find(const dm_registry *r, int kind, const char *type_name)
{
    for (int i = 0; r && type_name && i < r->n_comps; i++) {
        const dm_component *c = r->comps[i].component;
        if ((kind < 0 || (int)c->kind == kind) && strcmp(c->type_name, type_name) == 0)
            return &r->comps[i];
    }
    return NULL;
}

int dm_registry_count(const dm_registry *r) { return r ? r->n_comps : 0; }
const dm_loaded_component *dm_registry_at(const dm_registry *r, int i)
{
    return (r && i >= 0 && i < r->n_comps) ? &r->comps[i] : NULL;
}

/* Check one component; returns DM_OK or fills err (without the path prefix). */
static int check_component(const dm_registry *r, const dm_component *c, int index,
                           const dm_component *const *siblings, dm_error *err)
{
    if (!c)
        return dm_fail(err, DM_ERR_FORMAT, "component %d is NULL", index);
    if (c->struct_size < DM_COMPONENT_SIZE_1_0)
        return dm_fail(err, DM_ERR_FORMAT, "component %d: struct too small (%zu bytes, need %zu)",
                       index, c->struct_size, (size_t)DM_COMPONENT_SIZE_1_0);
    if ((int)c->kind < 0 || c->kind >= DM_KIND_COUNT)
        return dm_fail(err, DM_ERR_FORMAT, "component %d: unknown kind %d", index, (int)c->kind);
    if (!c->type_name || !c->type_name[0])
        return dm_fail(err, DM_ERR_FORMAT, "component %d: empty type name", index);
    if (!c->vtable)
        return dm_fail(err, DM_ERR_FORMAT, "component '%s': no vtable", c->type_name);
    size_t vsize = *(const size_t *)c->vtable;
    if (vsize < dm_vtable_min_size[c->kind])
        return dm_fail(err, DM_ERR_FORMAT, "component '%s': %s vtable too small (%zu bytes, need %zu)",
                       c->type_name, dm_kind_name(c->kind), vsize, dm_vtable_min_size[c->kind]);
    for (const dm_param_def *p = c->params; p && p->name; p++) {
        if (p->type == DM_PARAM_ENUM && !p->choices)
            return dm_fail(err, DM_ERR_FORMAT, "component '%s': enum parameter '%s' has no choices",
                           c->type_name, p->name);
        if (strcmp(p->name, "type") == 0)
            return dm_fail(err, DM_ERR_FORMAT, "component '%s': parameter name 'type' is reserved",
                           c->type_name);
    }
    const dm_loaded_component *prev = dm_registry_find(r, -1, c->type_name);
    if (prev)
        return dm_fail(err, DM_ERR_INVALID, "type name '%s' already registered by %s",
                       c->type_name, prev->path);
    for (int j = 0; j < index; j++)
        if (strcmp(siblings[j]->type_name, c->type_name) == 0)
            return dm_fail(err, DM_ERR_INVALID, "type name '%s' appears twice in this plugin",
                           c->type_name);
    return DM_OK;
}

/* Could someone other than us (or root) change what st describes? */
static int writable_by_others(const struct stat *st)
{
    int trusted_owner = st->st_uid == geteuid() || st->st_uid == 0;
    return (st->st_mode & S_IWOTH) || ((st->st_mode & S_IWGRP) && !trusted_owner);
}

/* Refuse a plugin that other users could replace: the file, its folder
 * (where anyone could drop a new .so) and every folder above it (where
 * anyone could rename ours away), except sticky folders such as /tmp above
 * the plugin's own, whose entries only their owners may rename. */
static int check_not_writable_by_others(const char *real, dm_error *err)
{
    struct stat st;
    if (stat(real, &st) != 0)
        return dm_fail(err, DM_ERR_IO, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode))
        return dm_fail(err, DM_ERR_IO, "not a regular file");
    if (writable_by_others(&st))
        return dm_fail(err, DM_ERR_INVALID, "refused: the file is writable by other users (mode %04o, owner "
                       "uid %u); chmod go-w it", (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", real);
    for (int own_folder = 1;; own_folder = 0) {
        char *slash = strrchr(dir, '/');
        if (!slash) break;
        if (slash == dir) slash[1] = 0; /* "/" itself */
        else *slash = 0;
        if (stat(dir, &st) != 0)
            return dm_fail(err, DM_ERR_IO, "cannot stat folder %s: %s", dir, strerror(errno));
        if (writable_by_others(&st) && (own_folder || !(st.st_mode & S_ISVTX)))
            return dm_fail(err, DM_ERR_INVALID, "refused: folder %s is writable by other users (mode %04o, "
                           "owner uid %u); chmod go-w it or move the plugin", dir,
                           (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
        if (strcmp(dir, "/") == 0) break;
    }
    return DM_OK;
}

int dm_registry_load_file(dm_registry *r, const char *path, dm_error *err)
{
    dm_error e = {0};
    /* dlopen() gets an absolute path, so it never searches LD_LIBRARY_PATH
     * or the system folders for a bare name. */
    char *real = realpath(path, NULL);
    if (!real)
        return dm_fail(err, DM_ERR_IO, "%s: cannot load: %s", path, strerror(errno));
    if (check_not_writable_by_others(real, &e) != DM_OK) {
        free(real);
        return dm_fail(err, e.code, "%s: %s", path, e.msg);
    }
    /* RTLD_LOCAL: plugins never see each other's symbols. RTLD_NOW: an
     * unresolved symbol is refused here, not at the first call. */
    /* RTLD_NODELETE: a plugin's OpenMP/OpenBLAS worker threads may outlive
     * dlclose(); unmapping their code under them crashes at exit. */
    void *h = dlopen(real, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    free(real);
    if (!h)
        return dm_fail(err, DM_ERR_IO, "%s: cannot load: %s", path, dlerror());
    dm_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, DM_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(h);
        return dm_fail(err, DM_ERR_FORMAT, "%s: no entry point '%s' (not a dmnist plugin?)", path,
                       DM_PLUGIN_ENTRY_SYMBOL);
    }
    const dm_plugin_descriptor *d = entry(DM_ABI_MAJOR, DM_ABI_MINOR);
    int rc = DM_OK;
    if (!d) {
        rc = dm_fail(&e, DM_ERR_FORMAT, "entry point returned no descriptor (plugin refused host ABI %d.%d)",
                     DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (d->struct_size < DM_DESCRIPTOR_SIZE_1_0) {
        rc = dm_fail(&e, DM_ERR_FORMAT, "descriptor struct too small (%zu bytes, need %zu)",
                     d->struct_size, (size_t)DM_DESCRIPTOR_SIZE_1_0);
    } else if (d->abi_major > DM_ABI_MAJOR) {
        rc = dm_fail(&e, DM_ERR_FORMAT, "built for ABI %u.%u, newer than this dmnist (ABI %d.%d): rebuild "
                     "dmnist or use an older plugin", d->abi_major, d->abi_minor, DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (d->abi_major < DM_ABI_MAJOR) {
        rc = dm_fail(&e, DM_ERR_FORMAT, "built for ABI %u.%u, older major than this dmnist (ABI %d.%d): "
                     "rebuild the plugin", d->abi_major, d->abi_minor, DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (!d->name || !d->version || !d->build_signature) {
        rc = dm_fail(&e, DM_ERR_FORMAT, "descriptor lacks name, version or build signature");
    } else if (d->n_components < 0 || (d->n_components > 0 && !d->components)) {
        rc = dm_fail(&e, DM_ERR_FORMAT, "descriptor has a bad component list");
    }
    for (int i = 0; rc == DM_OK && i < d->n_components; i++)
        rc = check_component(r, d->components[i], i, d->components, &e);
    if (rc != DM_OK) {
        dlclose(h);
        return dm_fail(err, rc, "%s: %s", path, e.msg);
    }

    /* Commit: nothing can fail below except allocation, which we undo. */
    if (r->n_libs == r->cap_libs) {
        int cap = r->cap_libs ? 2 * r->cap_libs : 16;
        dm_loaded_lib *nl = realloc(r->libs, (size_t)cap * sizeof *nl);
        if (!nl) goto nomem;
        r->libs = nl;
        r->cap_libs = cap;
    }
    if (r->n_comps + d->n_components > r->cap_comps) {
        int cap = r->cap_comps ? 2 * r->cap_comps : 32;
        while (cap < r->n_comps + d->n_components) cap *= 2;
        dm_loaded_component *nc = realloc(r->comps, (size_t)cap * sizeof *nc);
        if (!nc) goto nomem;
        /* comps moved: fix nothing, paths point at libs[].path (stable strings) */
        r->comps = nc;
        r->cap_comps = cap;
    }
    char *p = strdup(path);
    if (!p) goto nomem;
    r->libs[r->n_libs++] = (dm_loaded_lib){h, p, d};
    for (int i = 0; i < d->n_components; i++)
        r->comps[r->n_comps++] = (dm_loaded_component){d->components[i], d, p};
    return DM_OK;
nomem:
    dlclose(h);
    return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", path);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Load every *.so in one directory, in name order (so duplicates are
 * reported the same way every time). */
static int load_dir(dm_registry *r, const char *dir, dm_error *err)
{
    DIR *d = opendir(dir);
    if (!d) {
        /* out of memory or descriptors: say so, not "unknown type" later */
        if (errno == ENOMEM || errno == EMFILE || errno == ENFILE)
            return dm_fail(err, DM_ERR_NOMEM, "%s: cannot open plugin directory: %s", dir, strerror(errno));
        return DM_OK; /* missing search dirs are normal (install vs build tree) */
    }
    char **names = NULL;
    int n = 0, cap = 0, rc = DM_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 3, ".so") != 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) { rc = dm_fail(err, DM_ERR_NOMEM, "out of memory"); break; }
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) { rc = dm_fail(err, DM_ERR_NOMEM, "out of memory"); break; }
        n++;
    }
    closedir(d);
    if (n > 1) qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n && rc == DM_OK; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        /* The same file reached through two search-path entries loads once. */
        char *real = realpath(path, NULL);
        int seen = 0;
        for (int k = 0; real && k < r->n_libs; k++) {
            char *other = realpath(r->libs[k].path, NULL);
            if (other && strcmp(other, real) == 0) seen = 1;
            free(other);
        }
        free(real);
        if (!seen)
            rc = dm_registry_load_file(r, path, err);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

int dm_registry_load_path(dm_registry *r, const char *dirs, dm_error *err)
{
    if (!dirs)
        return DM_OK;
    char *copy = strdup(dirs);
    if (!copy)
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int rc = DM_OK;
    char *save = NULL;
    /* Empty entries are skipped (never "the current directory", unlike
     * LD_LIBRARY_PATH), and relative ones refused: they would resolve
     * against whatever folder dmnist happens to run in. */
    for (char *tok = strtok_r(copy, ":", &save); tok && rc == DM_OK; tok = strtok_r(NULL, ":", &save)) {
        if (tok[0] && tok[0] != '/')
            rc = dm_fail(err, DM_ERR_INVALID, "plugin search path entry '%s' is relative: use an absolute "
                         "path (it would depend on the current directory)", tok);
        else if (tok[0])
            rc = load_dir(r, tok, err);
    }
    free(copy);
    return rc;
}

void dm_registry_free(dm_registry *r)
{
    if (!r) return;
    for (int i = r->n_libs - 1; i >= 0; i--) {
        dlclose(r->libs[i].handle);
        free(r->libs[i].path);
    }
    free(r->libs);
    free(r->comps);
    free(r);
}
