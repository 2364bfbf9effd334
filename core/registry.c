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
    char *path;  /* as found on the search path (messages) */
    char *real;  /* resolved by dm_trust_path (a file reached twice loads once) */
    const dm_plugin_descriptor *desc;
} dm_loaded_lib;

struct dm_registry {
    dm_loaded_lib *libs;
    int n_libs, cap_libs;
    dm_loaded_component *comps;
    int n_comps, cap_comps;
    dm_shadowed *shadowed;   /* components a folder earlier on the path already had */
    int n_shadowed, cap_shadowed;
    int n_folders;           /* search folders loaded so far */
    int folder;              /* the one being loaded: 1, 2, ...; 0 for dm_registry_load_file */
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
    if (prev && !shadowing(r, c->type_name))
        return dm_fail(err, DM_ERR_INVALID, "type name '%s' already registered by %s",
                       c->type_name, prev->path);
    for (int j = 0; j < index; j++)
        if (strcmp(siblings[j]->type_name, c->type_name) == 0)
            return dm_fail(err, DM_ERR_INVALID, "type name '%s' appears twice in this plugin",
                           c->type_name);
    return DM_OK;
}

/* ---- loading one file ------------------------------------------------------ */

/* Where a load can be when a plugin misbehaves: the probe child reports the
 * phase through its pipe, the in-process guard names it in its message. */
enum { PH_CTOR = 'L', PH_ENTRY = 'E', PH_CHECK = 'C', PH_OK = 'O', PH_FAIL = 'F' };

static const char *phase_what(int ph)
{
    switch (ph) {
    case PH_ENTRY: return "in dm_plugin_entry";
    case PH_CHECK: return "while its descriptor was read";
    default: return "while loading (in a constructor or a library it needs)";
    }
}

/* The probe child's own exit status when it cannot report through its pipe
 * (a full disk, a fault injected in a test): the parent then loads the file
 * under the in-process guard instead of blaming the plugin. */
#define PROBE_LOST 125

static void report(int fd, const void *buf, size_t len)
{
    ssize_t w;
    while ((w = write(fd, buf, len)) < 0 && errno == EINTR)
        ;
    if (w != (ssize_t)len) _exit(PROBE_LOST);
}

static void phase(int fd, char ph)
{
    if (fd >= 0) {
        report(fd, &ph, 1);
    } else {
        dm_plugin_guard_what("%s", phase_what(ph));
    }
}

/* dlopen real, call its entry point and check the descriptor. Reports each
 * phase (see phase()). On failure the library is closed and e holds the
 * reason without the path. */
static int open_plugin(const dm_registry *r, const char *real, int phase_fd, void **hp,
                       const dm_plugin_descriptor **dp, dm_error *e)
{
    /* RTLD_LOCAL: plugins never see each other's symbols. RTLD_NOW: an
     * unresolved symbol is refused here, not at the first call. */
    /* RTLD_NODELETE: a plugin's OpenMP/OpenBLAS worker threads may outlive
     * dlclose(); unmapping their code under them crashes at exit. */
    /* The probe child binds lazily (much cheaper for libraries as large as
     * cuDNN): an unresolved symbol is still refused by the real load. */
    phase(phase_fd, PH_CTOR);
    void *h = dlopen(real, (phase_fd >= 0 ? RTLD_LAZY : RTLD_NOW) | RTLD_LOCAL | RTLD_NODELETE);
    if (!h)
        return dm_fail(e, DM_ERR_IO, "cannot load: %s", dlerror());
    dm_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, DM_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(h);
        return dm_fail(e, DM_ERR_FORMAT, "no entry point '%s' (not a dmnist plugin?)", DM_PLUGIN_ENTRY_SYMBOL);
    }
    phase(phase_fd, PH_ENTRY);
    const dm_plugin_descriptor *d = entry(DM_ABI_MAJOR, DM_ABI_MINOR);
    phase(phase_fd, PH_CHECK);
    int rc = DM_OK;
    if (!d) {
        rc = dm_fail(e, DM_ERR_FORMAT, "entry point returned no descriptor (plugin refused host ABI %d.%d)",
                     DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (d->struct_size < DM_DESCRIPTOR_SIZE_1_0) {
        rc = dm_fail(e, DM_ERR_FORMAT, "descriptor struct too small (%zu bytes, need %zu)",
                     d->struct_size, (size_t)DM_DESCRIPTOR_SIZE_1_0);
    } else if (d->abi_major > DM_ABI_MAJOR) {
        rc = dm_fail(e, DM_ERR_FORMAT, "built for ABI %u.%u, newer than this dmnist (ABI %d.%d): rebuild "
                     "dmnist or use an older plugin", d->abi_major, d->abi_minor, DM_ABI_MAJOR, DM_ABI_MINOR);
    } else if (d->abi_major < DM_ABI_MAJOR) {
        rc = dm_fail(e, DM_ERR_FORMAT, "built for ABI %u.%u, older major than this dmnist (ABI %d.%d): "
                     "rebuild the plugin", d->abi_major, d->abi_minor, DM_ABI_MAJOR, DM_ABI_MINOR);
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
static int load_trusted(dm_registry *r, const char *path, const char *real, const struct stat *st,
                        double timeout_s, dm_error *err)
{
    /* The walk saw st at real; make sure the file we hand to dlopen() is
     * still that one (not swapped for a symlink or another file since). */
    int fd = open(real, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    struct stat now;
    if (fd < 0)
        return dm_fail(err, DM_ERR_IO, "%s: cannot load: %s", path, strerror(errno));
    int same = fstat(fd, &now) == 0 && now.st_dev == st->st_dev && now.st_ino == st->st_ino &&
               S_ISREG(now.st_mode);
    close(fd);
    if (!same)
        return dm_fail(err, DM_ERR_IO, "%s: refused: the file changed while it was checked", path);

    dm_error e = {0};
    void *h = NULL;
    const dm_plugin_descriptor *d = NULL;
    dm_plugin_guard_begin(path, timeout_s, "%s", phase_what(PH_CTOR));
    int rc = open_plugin(r, real, -1, &h, &d, &e);
    dm_plugin_guard_end();
    if (rc != DM_OK)
        return dm_fail(err, rc, "%s: %s", path, e.msg);

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
    if (r->n_shadowed + d->n_components > r->cap_shadowed) {
        int cap = r->cap_shadowed ? 2 * r->cap_shadowed : 8;
        while (cap < r->n_shadowed + d->n_components) cap *= 2;
        dm_shadowed *ns = realloc(r->shadowed, (size_t)cap * sizeof *ns);
        if (!ns) goto nomem;
        r->shadowed = ns;
        r->cap_shadowed = cap;
    }
    char *p = strdup(path), *rp = strdup(real);
    if (!p || !rp) { free(p); free(rp); goto nomem; }
    r->libs[r->n_libs++] = (dm_loaded_lib){h, p, rp, d};
    /* A type an earlier folder has stays that folder's: a development
     * build first on the path overrides an installed plugin. */
    for (int i = 0; i < d->n_components; i++) {
        const dm_loaded_component *by = shadowing(r, d->components[i]->type_name);
        if (by)
            r->shadowed[r->n_shadowed++] = (dm_shadowed){d->components[i], d, p, by->path};
        else
            r->comps[r->n_comps++] = (dm_loaded_component){d->components[i], d, p, r->folder};
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
        if (missing)
            return dm_fail(err, DM_ERR_IO, "%s: cannot load: %s", path, strerror(ENOENT));
        return dm_fail(err, e.code, "%s: %s", path, e.msg);
    }
    double timeout_s = dm_plugin_load_timeout_s(&e);
    if (timeout_s < 0)
        return dm_fail(err, e.code, "%s", e.msg);
    r->folder = 0;
    return load_trusted(r, path, real, &st, timeout_s, err);
}

/* ---- probing files in a child process ------------------------------------ */

typedef struct probe {
    char *path, *real;
    struct stat st;
    int phase;          /* the last phase the child reported */
    int result;         /* PH_OK, PH_FAIL, or 0: the child died or hung in it */
    int status;         /* the child's wait status when it died here */
    int timed_out;
    char msg[sizeof(((dm_error *)0)->msg)];
    size_t n;
} probe;

/* In the probe child, an exit() from a plugin ends the child at once, with
 * its status, before any exit handler of the parent's could run. */
static void probe_on_exit(int status, void *arg)
{
    (void)arg;
    _exit(status);
}

/* Child: load ps[from..n) one after the other as the parent would, telling
 * through fd how far it got: per file its phases, then 'O', or 'F', the
 * reason and a NUL. A crash, exit() or hang leaves the file unfinished. */
static void probe_child(const dm_registry *r, const probe *ps, int from, int n, int fd)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) { dup2(null, 1); dup2(null, 2); }
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGALRM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], SIG_DFL);
    on_exit(probe_on_exit, NULL);
    for (int i = from; i < n; i++) {
        dm_error e = {0};
        void *h = NULL;
        const dm_plugin_descriptor *d = NULL;
        if (open_plugin(r, ps[i].real, fd, &h, &d, &e) == DM_OK) {
            phase(fd, PH_OK);
        } else {
            char rec[sizeof e.msg + 2];
            size_t len = strnlen(e.msg, sizeof e.msg - 1);
            rec[0] = PH_FAIL;
            memcpy(rec + 1, e.msg, len);
            rec[len + 1] = 0;
            report(fd, rec, len + 2);
        }
    }
    _exit(0); /* no atexit handlers, no destructors of the parent's state */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* What a probe that neither accepted nor refused the plugin saw, as
 * "crashed (...) while loading (...)"; NULL when it finished. */
static const char *probe_failure(const probe *p, double timeout_s, char *buf, size_t size)
{
    if (p->result)
        return NULL;
    const char *what = phase_what(p->phase);
    if (p->timed_out)
        snprintf(buf, size, "did not return within %g s (DMNIST_PLUGIN_LOAD_TIMEOUT_S) %s", timeout_s, what);
    else if (WIFSIGNALED(p->status))
        snprintf(buf, size, "crashed (%s%s) %s", sigabbrev_np(WTERMSIG(p->status)) ? "SIG" : "signal",
                 sigabbrev_np(WTERMSIG(p->status)) ? sigabbrev_np(WTERMSIG(p->status)) : "", what);
    else
        snprintf(buf, size, "called exit(%d) %s", WEXITSTATUS(p->status), what);
    return buf;
}

/* Act on the probe's verdict on p (probed = 0: there was none), in file
 * order: load it in this process, refuse it, or skip it with a warning. */
static int settle(dm_registry *r, const probe *p, int probed, double timeout_s, dm_error *err)
{
    char why[512];
    const char *bad = probed ? probe_failure(p, timeout_s, why, sizeof why) : NULL;
    if (bad) {
        fprintf(stderr, "%s: warning: %s: %s; skipped\n", program_invocation_short_name, p->path, bad);
        return DM_OK;
    }
    if (probed && p->result == PH_FAIL) /* refused (bad ABI ...): never run it here */
        return dm_fail(err, DM_ERR_FORMAT, "%s: %s", p->path, p->msg);
    /* the real load can still refuse it: an unresolved symbol (the probe
     * binds lazily), a type name another file of this folder registered */
    return load_trusted(r, p->path, p->real, &p->st, timeout_s, err);
}

/* Probe ps[0..n) in a child process, each file within timeout_s (0: no
 * limit), and settle() each as soon as its verdict is in, so this process
 * loads a file while the child goes on with the next. Files share the
 * child, so the libraries they need load once; when the child dies or
 * hangs in a file, a new one goes on after it. */
static int probe_all(dm_registry *r, probe *ps, int n, double timeout_s, dm_error *err)
{
    int cur = 0, rc = DM_OK;
    while (cur < n) {
        int pfd[2];
        fflush(stdout);
        fflush(stderr);
        if (pipe2(pfd, O_CLOEXEC) != 0)
            return dm_fail(err, DM_ERR_IO, "cannot probe plugins: pipe: %s", strerror(errno));
        pid_t pid = fork();
        if (pid < 0) {
            close(pfd[0]);
            close(pfd[1]);
            return dm_fail(err, DM_ERR_IO, "cannot probe plugins: fork: %s", strerror(errno));
        }
        if (pid == 0) {
            close(pfd[0]);
            probe_child(r, ps, cur, n, pfd[1]);
        }
        close(pfd[1]);
        int in_msg = 0, timed_out = 0;
        double deadline = now_s() + timeout_s;
        while (rc == DM_OK) {
            int wait_ms = -1;
            if (timeout_s > 0) {
                double left = deadline - now_s();
                if (left <= 0) { timed_out = 1; break; }
                wait_ms = (int)(left * 1000) + 1;
            }
            struct pollfd pf = {pfd[0], POLLIN, 0};
            int k = poll(&pf, 1, wait_ms);
            if (k < 0 && errno == EINTR) continue;
            if (k == 0) continue; /* the deadline is checked above */
            char buf[512];
            ssize_t got = read(pfd[0], buf, sizeof buf);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            for (ssize_t j = 0; j < got && cur < n && rc == DM_OK; j++) {
                probe *p = &ps[cur];
                char c = buf[j];
                if (in_msg) {
                    if (c == 0) in_msg = 0, p->result = PH_FAIL;
                    else if (p->n + 1 < sizeof p->msg) { p->msg[p->n++] = c; p->msg[p->n] = 0; }
                } else if (c == PH_OK) {
                    p->result = PH_OK;
                } else if (c == PH_FAIL) {
                    in_msg = 1;
                } else {
                    p->phase = c;
                }
                if (p->result) {
                    rc = settle(r, p, 1, timeout_s, err);
                    cur++;
                    deadline = now_s() + timeout_s;
                }
            }
        }
        if (timed_out || rc != DM_OK) kill(pid, SIGKILL);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        close(pfd[0]);
        if (rc == DM_OK && cur < n) { /* it died (or hung) in ps[cur]: go on after it */
            ps[cur].status = status;
            ps[cur].timed_out = timed_out;
            if (in_msg) ps[cur].result = PH_FAIL; /* died after its message: keep it */
            int lost = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == PROBE_LOST;
            rc = settle(r, &ps[cur], !lost, timeout_s, err);
            cur++;
        }
        if (rc != DM_OK) break;
    }
    return rc;
}

/* ---- search folders --------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int already_loaded(const dm_registry *r, const probe *ps, int n, const char *real)
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
        return dm_fail(err, errno == ENOMEM ? DM_ERR_NOMEM : DM_ERR_IO, "%s: cannot open plugin directory: %s",
                       dir, strerror(errno));
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
    r->folder = ++r->n_folders;
    probe *ps = n ? calloc((size_t)n, sizeof *ps) : NULL;
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
        ps[np] = (probe){.path = strdup(path), .real = strdup(real), .st = st, .phase = PH_CTOR};
        if (!ps[np].path || !ps[np].real) {
            free(ps[np].path);
            free(ps[np].real);
            rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
            break;
        }
        np++;
    }
    if (rc == DM_OK && probe_first && np > 0)
        rc = probe_all(r, ps, np, timeout_s, err);
    for (int i = 0; i < np && rc == DM_OK && !probe_first; i++)
        rc = settle(r, &ps[i], 0, timeout_s, err);
    for (int i = 0; i < np; i++) { free(ps[i].path); free(ps[i].real); }
    free(ps);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

int dm_registry_load_path(dm_registry *r, const char *dirs, dm_error *err)
{
    if (!dirs)
        return DM_OK;
    dm_error e = {0};
    double timeout_s = dm_plugin_load_timeout_s(&e);
    if (timeout_s < 0)
        return dm_fail(err, e.code, "%s", e.msg);
    /* DMNIST_PLUGIN_PROBE=0 loads every file in this process (a debugger). */
    const char *pv = getenv("DMNIST_PLUGIN_PROBE");
    int probe_first = !(pv && strcmp(pv, "0") == 0);
    char *copy = strdup(dirs);
    if (!copy)
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int rc = DM_OK;
    char *save = NULL;
    /* Empty entries are skipped (never "the current directory", unlike
     * LD_LIBRARY_PATH); a relative one is relative to the current
     * directory, as in --plugin-path (dm_absolute_dirs), and is made
     * absolute before anything in it is loaded. */
    for (char *tok = strtok_r(copy, ":", &save); tok && rc == DM_OK; tok = strtok_r(NULL, ":", &save)) {
        char abs_dir[PATH_MAX];
        if (!tok[0])
            continue;
        if (absolute(tok, abs_dir, sizeof abs_dir) != 0)
            rc = dm_fail(err, DM_ERR_INVALID, "plugin search path entry '%s': too long, or the current "
                         "directory is unknown", tok);
        else
            rc = load_dir(r, abs_dir, timeout_s, probe_first, err);
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
