/* Plugin registry: dlopen() plugin files, check their descriptors against
 * this host's ABI, and index their components by type name.
 *
 * A refused plugin is closed again and leaves nothing registered (as
 * Redis's moduleLoad undoes a half-done load). */
#define _GNU_SOURCE
#include "dm_core.h"
#include "plugin_load.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct dm_loaded_lib {
    void *handle;
    char *path; /* as found on the search path (messages) */
    char *real; /* resolved by dm_trust_path (a file reached twice loads once) */
    const dm_plugin_descriptor *desc;
} dm_loaded_lib;

struct dm_registry {
    dm_loaded_lib *libs;
    int n_libs, cap_libs;
    dm_loaded_component *comps;
    int n_comps, cap_comps;
    dm_shadowed *shadowed; /* components a folder earlier on the path already had */
    int n_shadowed, cap_shadowed;
    int n_folders; /* search folders loaded so far */
    int folder;    /* the one being loaded: 1, 2, ...; 0 for dm_registry_load_file */
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
        if ((kind < 0 || (int)c->kind == kind) && strcmp(c->type_name, type_name) == 0) return &r->comps[i];
    }
    return NULL;
}

int dm_registry_count(const dm_registry *r) { return r ? r->n_comps : 0; }
int dm_registry_shadowed_count(const dm_registry *r) { return r ? r->n_shadowed : 0; }
const dm_shadowed *dm_registry_shadowed_at(const dm_registry *r, int i)
{
    return (r && i >= 0 && i < r->n_shadowed) ? &r->shadowed[i] : NULL;
}

/* The component of that type name a folder before the one being loaded
 * registered: it wins, and this one is shadowed (not an error). Within a
 * folder, and for files loaded one by one, a second one is refused. */
static const dm_loaded_component *shadowing(const dm_registry *r, const char *type_name)
{
    const dm_loaded_component *prev = dm_registry_find(r, -1, type_name);
    return prev && r->folder > 0 && prev->folder > 0 && prev->folder < r->folder ? prev : NULL;
}
const dm_loaded_component *dm_registry_at(const dm_registry *r, int i)
{
    return (r && i >= 0 && i < r->n_comps) ? &r->comps[i] : NULL;
}

/* Check one component; returns DM_OK or fills err (without the path prefix). */
static int check_component(const dm_registry *r, const dm_component *c, int index, const dm_component *const *siblings,
                           dm_error *err)
{
    if (!c) return dm_fail(err, DM_ERR_FORMAT, "component %d is NULL", index);
    if (c->struct_size < DM_COMPONENT_SIZE_1_0)
        return dm_fail(err, DM_ERR_FORMAT, "component %d: struct too small (%zu bytes, need %zu)", index,
                       c->struct_size, (size_t)DM_COMPONENT_SIZE_1_0);
    if ((int)c->kind < 0 || c->kind >= DM_KIND_COUNT)
        return dm_fail(err, DM_ERR_FORMAT, "component %d: unknown kind %d", index, (int)c->kind);
    if (!c->type_name || !c->type_name[0]) return dm_fail(err, DM_ERR_FORMAT, "component %d: empty type name", index);
    if (!c->vtable) return dm_fail(err, DM_ERR_FORMAT, "component '%s': no vtable", c->type_name);
    size_t vsize = *(const size_t *)c->vtable;
    if (vsize < dm_vtable_min_size[c->kind])
        return dm_fail(err, DM_ERR_FORMAT, "component '%s': %s vtable too small (%zu bytes, need %zu)", c->type_name,
                       dm_kind_name(c->kind), vsize, dm_vtable_min_size[c->kind]);
    for (const dm_param_def *p = c->params; p && p->name; p++) {
        if (p->type == DM_PARAM_ENUM && !p->choices)
            return dm_fail(err, DM_ERR_FORMAT, "component '%s': enum parameter '%s' has no choices", c->type_name,
                           p->name);
        if (strcmp(p->name, "type") == 0)
            return dm_fail(err, DM_ERR_FORMAT, "component '%s': parameter name 'type' is reserved", c->type_name);
    }
    const dm_loaded_component *prev = dm_registry_find(r, -1, c->type_name);
    if (prev && !shadowing(r, c->type_name))
        return dm_fail(err, DM_ERR_INVALID, "type name '%s' already registered by %s", c->type_name, prev->path);
    for (int j = 0; j < index; j++)
        if (strcmp(siblings[j]->type_name, c->type_name) == 0)
            return dm_fail(err, DM_ERR_INVALID, "type name '%s' appears twice in this plugin", c->type_name);
    return DM_OK;
}

/* ---- loading one file ------------------------------------------------------ */

/* dlopen real, call its entry point and check the descriptor. Reports each
 * phase (see dm_plugin_phase()). On failure the library is closed and e holds the
 * reason without the path. */
int dm_plugin_open(const dm_registry *r, const char *real, int phase_fd, void **hp, const dm_plugin_descriptor **dp,
                   dm_error *e)
{
    /* RTLD_LOCAL: plugins never see each other's symbols. RTLD_NOW: an
     * unresolved symbol is refused here, not at the first call. */
    /* RTLD_NODELETE: a plugin's OpenMP/OpenBLAS worker threads may outlive
     * dlclose(); unmapping their code under them crashes at exit. */
    /* The probe child binds lazily (much cheaper for libraries as large as
     * cuDNN): an unresolved symbol is still refused by the real load. */
    dm_plugin_phase(phase_fd, PH_CTOR);
    void *h = dlopen(real, (phase_fd >= 0 ? RTLD_LAZY : RTLD_NOW) | RTLD_LOCAL | RTLD_NODELETE);
    if (!h) return dm_fail(e, DM_ERR_IO, "cannot load: %s", dlerror());
    dm_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, DM_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(h);
        return dm_fail(e, DM_ERR_FORMAT, "no entry point '%s' (not a dmnist plugin?)", DM_PLUGIN_ENTRY_SYMBOL);
    }
    dm_plugin_phase(phase_fd, PH_ENTRY);
    const dm_plugin_descriptor *d = entry(DM_ABI_MAJOR, DM_ABI_MINOR);
    dm_plugin_phase(phase_fd, PH_CHECK);
    int rc = DM_OK;
    if (!d) {
        rc = dm_fail(e, DM_ERR_FORMAT, "entry point returned no descriptor (plugin refused host ABI %d.%d)",
                     DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (d->struct_size < DM_DESCRIPTOR_SIZE_1_0) {
        rc = dm_fail(e, DM_ERR_FORMAT, "descriptor struct too small (%zu bytes, need %zu)", d->struct_size,
                     (size_t)DM_DESCRIPTOR_SIZE_1_0);
    } else if (d->abi_major > DM_ABI_MAJOR) {
        rc = dm_fail(e, DM_ERR_FORMAT,
                     "built for ABI %u.%u, newer than this dmnist (ABI %d.%d): rebuild "
                     "dmnist or use an older plugin",
                     d->abi_major, d->abi_minor, DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (d->abi_major < DM_ABI_MAJOR) {
        rc = dm_fail(e, DM_ERR_FORMAT,
                     "built for ABI %u.%u, older major than this dmnist (ABI %d.%d): "
                     "rebuild the plugin",
                     d->abi_major, d->abi_minor, DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (!d->name || !d->version || !d->build_signature) {
        rc = dm_fail(e, DM_ERR_FORMAT, "descriptor lacks name, version or build signature");
    } else if (d->n_components < 0 || (d->n_components > 0 && !d->components)) {
        rc = dm_fail(e, DM_ERR_FORMAT, "descriptor has a bad component list");
    }
    for (int i = 0; rc == DM_OK && i < d->n_components; i++)
        rc = check_component(r, d->components[i], i, d->components, e);
    if (rc != DM_OK) {
        dlclose(h);
        return rc;
    }
    *hp = h;
    *dp = d;
    return DM_OK;
}

/* Load a file whose path dm_trust_path() accepted (real, with lstat st):
 * in this process, under the guard. */
int dm_plugin_load_trusted(dm_registry *r, const char *path, const char *real, const struct stat *st, double timeout_s,
                           dm_error *err)
{
    /* The walk saw st at real; make sure the file we hand to dlopen() is
     * still that one (not swapped for a symlink or another file since). */
    int fd = open(real, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    struct stat now;
    if (fd < 0) return dm_fail(err, DM_ERR_IO, "%s: cannot load: %s", path, strerror(errno));
    int same = fstat(fd, &now) == 0 && now.st_dev == st->st_dev && now.st_ino == st->st_ino && S_ISREG(now.st_mode);
    close(fd);
    if (!same) return dm_fail(err, DM_ERR_IO, "%s: refused: the file changed while it was checked", path);

    dm_error e = {0};
    void *h = NULL;
    const dm_plugin_descriptor *d = NULL;
    dm_plugin_guard_begin(path, timeout_s, "%s", dm_plugin_phase_what(PH_CTOR));
    int rc = dm_plugin_open(r, real, -1, &h, &d, &e);
    dm_plugin_guard_end();
    if (rc != DM_OK) return dm_fail(err, rc, "%s: %s", path, e.msg);

    /* Commit: nothing can fail below except allocation, which we undo. */
    /* comps may move: fix nothing, paths point at libs[].path (stable strings) */
    if (dm_grow(&r->libs, &r->cap_libs, r->n_libs + 1, sizeof *r->libs, 16) ||
        dm_grow(&r->comps, &r->cap_comps, r->n_comps + d->n_components, sizeof *r->comps, 32) ||
        dm_grow(&r->shadowed, &r->cap_shadowed, r->n_shadowed + d->n_components, sizeof *r->shadowed, 8))
        goto nomem;
    char *p = strdup(path), *rp = strdup(real);
    if (!p || !rp) {
        free(p);
        free(rp);
        goto nomem;
    }
    r->libs[r->n_libs++] = (dm_loaded_lib){h, p, rp, d};
    /* A type an earlier folder has stays that folder's: a development
     * build first on the path overrides an installed plugin. */
    for (int i = 0; i < d->n_components; i++) {
        const dm_loaded_component *by = shadowing(r, d->components[i]->type_name);
        if (by) r->shadowed[r->n_shadowed++] = (dm_shadowed){d->components[i], d, p, by->path};
        else r->comps[r->n_comps++] = (dm_loaded_component){d->components[i], d, p, r->folder};
    }
    return DM_OK;
nomem:
    dlclose(h);
    return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", path);
}

/* path made absolute against the current directory (dlopen() then never
 * searches LD_LIBRARY_PATH or the system folders for a bare name). */
static int absolute(const char *path, char *out, size_t size)
{
    if (path[0] == '/') return snprintf(out, size, "%s", path) < (int)size ? 0 : -1;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return -1;
    return snprintf(out, size, "%s/%s", cwd, path) < (int)size ? 0 : -1;
}

int dm_absolute_dirs(const char *dirs, char *out, size_t size)
{
    size_t off = 0;
    out[0] = 0;
    for (const char *p = dirs; *p;) {
        size_t len = strcspn(p, ":");
        if (len) {
            char entry[PATH_MAX], abs_entry[PATH_MAX];
            if (len >= sizeof entry) return -1;
            memcpy(entry, p, len);
            entry[len] = 0;
            if (absolute(entry, abs_entry, sizeof abs_entry) != 0) return -1;
            int n = snprintf(out + off, size - off, "%s%s", off ? ":" : "", abs_entry);
            if (n < 0 || (size_t)n >= size - off) return -1;
            off += (size_t)n;
        }
        p += len;
        if (*p == ':') p++;
    }
    return 0;
}

int dm_registry_load_file(dm_registry *r, const char *path, dm_error *err)
{
    char abs_path[PATH_MAX], real[PATH_MAX];
    struct stat st;
    dm_error e = {0};
    int missing = 0;
    if (absolute(path, abs_path, sizeof abs_path) != 0)
        return dm_fail(err, DM_ERR_IO, "%s: cannot load: path too long", path);
    if (dm_trust_path(abs_path, 0, real, sizeof real, &st, &missing, &e) != DM_OK) {
        if (missing) return dm_fail(err, DM_ERR_IO, "%s: cannot load: %s", path, strerror(ENOENT));
        return dm_fail(err, e.code, "%s: %s", path, e.msg);
    }
    double timeout_s = dm_plugin_load_timeout_s(&e);
    if (timeout_s < 0) return dm_fail(err, e.code, "%s", e.msg);
    r->folder = 0;
    return dm_plugin_load_trusted(r, path, real, &st, timeout_s, err);
}

/* ---- search folders --------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int already_loaded(const dm_registry *r, const dm_probe *ps, int n, const char *real)
{
    for (int k = 0; k < r->n_libs; k++)
        if (strcmp(r->libs[k].real, real) == 0) return 1;
    for (int k = 0; k < n; k++)
        if (strcmp(ps[k].real, real) == 0) return 1;
    return 0;
}

/* Load every *.so in one directory, in name order (so duplicates are
 * reported the same way every time). */
static int load_dir(dm_registry *r, const char *dir, double timeout_s, int probe_first, dm_error *err)
{
    char real_dir[PATH_MAX];
    dm_error e = {0};
    int missing = 0;
    if (dm_trust_path(dir, 1, real_dir, sizeof real_dir, NULL, &missing, &e) != DM_OK)
        /* missing search dirs are normal (install vs build tree) */
        return missing ? DM_OK : dm_fail(err, e.code, "plugin search folder %s: %s", dir, e.msg);
    DIR *d = opendir(real_dir);
    if (!d) /* out of memory or descriptors: say so, not "unknown type" later */
        return dm_fail(err, errno == ENOMEM ? DM_ERR_NOMEM : DM_ERR_IO, "%s: cannot open plugin directory: %s", dir,
                       strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0, rc = DM_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 3, ".so") != 0) continue;
        if (dm_grow(&names, &cap, n + 1, sizeof *names, 32) || !(names[n] = strdup(de->d_name))) {
            rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (n > 1) qsort(names, (size_t)n, sizeof *names, cmp_str);
    r->folder = ++r->n_folders;
    dm_probe *ps = n ? calloc((size_t)n, sizeof *ps) : NULL;
    if (n && !ps && rc == DM_OK) rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int np = 0;
    /* Every file is checked before any is loaded; the same file reached
     * twice (two path entries, a symlink) loads once. */
    for (int i = 0; i < n && rc == DM_OK; i++) {
        char path[PATH_MAX], real[PATH_MAX];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) {
            rc = dm_fail(err, DM_ERR_IO, "%s/%s: cannot load: path too long", dir, names[i]);
            break;
        }
        if (dm_trust_path(path, 0, real, sizeof real, &st, &missing, &e) != DM_OK) {
            rc = missing ? dm_fail(err, DM_ERR_IO, "%s: cannot load: %s", path, e.msg)
                         : dm_fail(err, e.code, "%s: %s", path, e.msg);
            break;
        }
        if (already_loaded(r, ps, np, real)) continue;
        ps[np] = (dm_probe){.path = strdup(path), .real = strdup(real), .st = st, .phase = PH_CTOR};
        if (!ps[np].path || !ps[np].real) {
            free(ps[np].path);
            free(ps[np].real);
            rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
            break;
        }
        np++;
    }
    if (rc == DM_OK && probe_first && np > 0) rc = dm_probe_all(r, ps, np, timeout_s, err);
    for (int i = 0; i < np && rc == DM_OK && !probe_first; i++) rc = dm_probe_settle(r, &ps[i], 0, timeout_s, err);
    for (int i = 0; i < np; i++) {
        free(ps[i].path);
        free(ps[i].real);
    }
    free(ps);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

int dm_registry_load_path(dm_registry *r, const char *dirs, dm_error *err)
{
    if (!dirs) return DM_OK;
    dm_error e = {0};
    double timeout_s = dm_plugin_load_timeout_s(&e);
    if (timeout_s < 0) return dm_fail(err, e.code, "%s", e.msg);
    /* DMNIST_PLUGIN_PROBE=0 loads every file in this process (a debugger). */
    const char *pv = getenv("DMNIST_PLUGIN_PROBE");
    int probe_first = !(pv && strcmp(pv, "0") == 0);
    char *copy = strdup(dirs);
    if (!copy) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int rc = DM_OK;
    char *save = NULL;
    /* Empty entries are skipped (never "the current directory", unlike
     * LD_LIBRARY_PATH); a relative one is relative to the current
     * directory, as in --plugin-path (dm_absolute_dirs), and is made
     * absolute before anything in it is loaded. */
    for (char *tok = strtok_r(copy, ":", &save); tok && rc == DM_OK; tok = strtok_r(NULL, ":", &save)) {
        char abs_dir[PATH_MAX];
        if (!tok[0]) continue;
        if (absolute(tok, abs_dir, sizeof abs_dir) != 0)
            rc = dm_fail(err, DM_ERR_INVALID,
                         "plugin search path entry '%s': too long, or the current "
                         "directory is unknown",
                         tok);
        else rc = load_dir(r, abs_dir, timeout_s, probe_first, err);
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
        free(r->libs[i].real);
    }
    free(r->libs);
    free(r->comps);
    free(r->shadowed);
    free(r);
}
