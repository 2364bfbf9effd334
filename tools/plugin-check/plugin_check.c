/* dmnist-plugin-check: load one plugin file exactly as dmnist-run does and
 * check what the ABI asks of it, so a plugin author finds a broken backward,
 * a stray write or a bad parameter table before a training run does.
 *
 *   dmnist-plugin-check [options] PLUGIN.so [TYPE]
 *
 * Each component's checks run in a child process, so a crash, a hang or an
 * exit() inside the plugin becomes a FAIL row instead of ending the tool.
 * Exit codes: 0 every check passed (or was skipped), 1 some check failed,
 * 2 bad command line or the plugin could not be loaded. */
#define _GNU_SOURCE
#include "plugin_check.h"

#include <ctype.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef DMNIST_CORE_CUDA
#include <cuda_runtime_api.h>
#endif

/* ---- the result table ---------------------------------------------------- */

/* Shared with the child that runs a component's checks. */
typedef struct pc_shared {
    int counts[3]; /* rows by pc_result */
    int finished;  /* the child got to the end of its checks */
    char now[256]; /* what the child is doing */
} pc_shared;

static pc_shared *g_sh;
static pc_shared g_local; /* before the shared page exists, and with --no-fork */

static const char *const result_word[3] = {"ok", "skip", "FAIL"};

void pc_row(const dm_loaded_component *lc, const char *check, pc_result result, const char *fmt, ...)
{
    char comp[96], detail[1024];
    if (lc) snprintf(comp, sizeof comp, "%s (%s)", lc->component->type_name, dm_kind_name(lc->component->kind));
    else snprintf(comp, sizeof comp, "(plugin)");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    /* One row is one line, whatever a plugin's message holds. */
    for (char *p = detail; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    printf("%-30s %-24s %-6s %s\n", comp, check, result_word[result], detail);
    fflush(stdout);
    g_sh->counts[result]++;
}

void pc_now(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_sh->now, sizeof g_sh->now, fmt, ap);
    va_end(ap);
}

/* ---- guarded buffers ------------------------------------------------------ */

#define PC_GUARD 256 /* bytes on each side */
#define PC_GUARD_BYTE 0xA5

void pc_buf_alloc(pc_buf *b, size_t bytes)
{
    memset(b, 0, sizeof *b);
    b->bytes = bytes;
    /* The data starts 64-byte aligned right after the front guard and the
     * back guard starts at its last byte + 1, not at a rounded size. */
    size_t total = PC_GUARD + (bytes + 63) / 64 * 64 + PC_GUARD;
    b->raw = aligned_alloc(64, total);
    if (!b->raw) {
        fprintf(stderr, "dmnist-plugin-check: out of memory (%zu bytes)\n", total);
        exit(2);
    }
    memset(b->raw, PC_GUARD_BYTE, total);
    memset(b->raw + PC_GUARD, 0, bytes);
    b->p = bytes ? b->raw + PC_GUARD : NULL;
}

void pc_buf_free(pc_buf *b)
{
    free(b->raw);
    memset(b, 0, sizeof *b);
}

int pc_buf_guards_ok(const pc_buf *b)
{
    size_t total = PC_GUARD + (b->bytes + 63) / 64 * 64 + PC_GUARD;
    for (size_t i = 0; i < PC_GUARD; i++)
        if (b->raw[i] != PC_GUARD_BYTE) return 0;
    for (size_t i = PC_GUARD + b->bytes; i < total; i++)
        if (b->raw[i] != PC_GUARD_BYTE) return 0;
    return 1;
}

void pc_buf_poison(pc_buf *b)
{
    float *f = b->p;
    for (size_t i = 0; i < b->bytes / sizeof(float); i++) f[i] = NAN;
}

long pc_first_nonfinite(const float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return (long)i;
    return -1;
}

void pc_dev_settle(void)
{
#ifdef DMNIST_CORE_CUDA
    cudaDeviceSynchronize();
#endif
}

int pc_tmpdir(char *path, size_t size)
{
    const char *base = getenv("TMPDIR");
    snprintf(path, size, "%s/dmnist-plugin-check-XXXXXX", base && base[0] ? base : "/tmp");
    return mkdtemp(path) ? 0 : -1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void pc_rmtree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* ---- parameter settings ---------------------------------------------------- */

/* Is `key` one of the keys in the user's "k=v k=v" spec? */
static int spec_has(const char *spec, const char *key)
{
    size_t len = strlen(key);
    for (const char *p = spec; p && *p;) {
        while (*p == ' ' || *p == ',' || *p == '\t') p++;
        if (strncmp(p, key, len) == 0 && p[len] == '=') return 1;
        p += strcspn(p, " ,\t");
    }
    return 0;
}

static void append(char *spec, size_t size, const char *key, const char *value)
{
    size_t off = strlen(spec);
    snprintf(spec + off, size > off ? size - off : 0, "%s%s=%s", off ? " " : "", key, value);
}

/* The k-th '|'-separated word of choices (k < count). */
static void enum_word(const char *choices, int k, char *out, size_t size)
{
    const char *p = choices;
    for (int i = 0; i < k && p; i++) {
        p = strchr(p, '|');
        if (p) p++;
    }
    size_t len = p ? strcspn(p, "|") : 0;
    snprintf(out, size, "%.*s", (int)len, p ? p : "");
}

static int enum_count(const char *choices)
{
    int n = 1;
    for (const char *p = choices; *p; p++) n += *p == '|';
    return n;
}

/* A random value for def near its default, within its range. */
static void draw_value(const dm_param_def *d, uint64_t *rng, char *out, size_t size)
{
    const int ranged = d->min <= d->max;
    const double base = d->default_value ? atof(d->default_value) : (ranged ? d->min : 1.0);
    switch (d->type) {
    case DM_PARAM_BOOL: snprintf(out, size, "%s", dm_rng_next(rng) & 1 ? "true" : "false"); return;
    case DM_PARAM_ENUM:
        enum_word(d->choices, (int)(dm_rng_next(rng) % (uint64_t)enum_count(d->choices)), out, size);
        return;
    case DM_PARAM_INT: {
        /* Small sizes: from the minimum to a little past the default. */
        double lo = ranged ? d->min : base, hi = fmax(lo + 3, base + 2);
        if (ranged && hi > d->max) hi = d->max;
        long long v = (long long)lo + (long long)(dm_rng_next(rng) % (uint64_t)(hi - lo + 1));
        snprintf(out, size, "%lld", v);
        return;
    }
    case DM_PARAM_FLOAT: {
        double lo = ranged ? d->min : base - 1 - fabs(base);
        double hi = ranged ? fmin(d->max, fmax(lo + 1, 2 * base)) : base + 1 + fabs(base);
        snprintf(out, size, "%.4g", lo + (hi - lo) * dm_rng_uniform(rng));
        return;
    }
    case DM_PARAM_STRING: snprintf(out, size, "%s", d->default_value ? d->default_value : ""); return;
    }
}

int pc_setting(const dm_param_def *defs, const char *user_spec, int k, uint64_t seed, char *spec, size_t size,
               dm_error *err)
{
    snprintf(spec, size, "%s", user_spec ? user_spec : "");
    uint64_t rng = dm_hash64(seed, 0x5E77 + (uint64_t)k);
    for (const dm_param_def *d = defs; d && d->name; d++) {
        if (spec_has(user_spec, d->name)) continue;
        if (k == 0 && d->default_value) continue;
        if (!d->default_value && d->type == DM_PARAM_STRING)
            return dm_fail(err, DM_ERR_INVALID,
                           "required string key '%s' has no default: give one with --params '%s=...'", d->name,
                           d->name);
        char value[64];
        draw_value(d, &rng, value, sizeof value);
        append(spec, size, d->name, value);
    }
    return DM_OK;
}

int pc_discrete_setting(const dm_param_def *defs, const char *user_spec, int k, char *spec, size_t size)
{
    snprintf(spec, size, "%s", user_spec ? user_spec : "");
    int n = 1; /* setting 0: the defaults */
    for (const dm_param_def *d = defs; d && d->name; d++) {
        if (spec_has(user_spec, d->name) || !d->default_value) continue;
        if (d->type == DM_PARAM_BOOL) {
            if (n++ == k) {
                int64_t v = d->default_value[0] == '1' || strchr("tTyY", d->default_value[0]) ||
                    strcasecmp(d->default_value, "on") == 0;
                append(spec, size, d->name, v ? "false" : "true");
            }
        } else if (d->type == DM_PARAM_ENUM) {
            for (int c = 0; c < enum_count(d->choices); c++) {
                char word[64];
                enum_word(d->choices, c, word, sizeof word);
                if (strcmp(word, d->default_value) != 0 && n++ == k) append(spec, size, d->name, word);
            }
        }
    }
    return n;
}

/* ---- descriptor and parameter table --------------------------------------- */

static int one_line(const char *s) { return s && s[0] && !strchr(s, '\n') && !strchr(s, '\r'); }

/* The core section whose keys share an INI section with this kind's keys. */
static const char *core_section(dm_kind kind)
{
    switch (kind) {
    case DM_KIND_LAYER: return "layer.x";
    case DM_KIND_OPTIMIZER: return "optimizer";
    case DM_KIND_DATASET: return "data";
    default: return NULL;
    }
}

static void check_descriptor(const dm_loaded_component *lc)
{
    const dm_component *c = lc->component;
    const void *vt = c->vtable;
    char bad[256] = "";
    unsigned devices = 0;
    int has_devices = 0, missing = 0;
    /* Every ABI 1.0 method is called without a NULL check by the core. */
#define NEED(vtype, field) \
    do { \
        if (!((const vtype *)vt)->field && !missing++) snprintf(bad, sizeof bad, "method %s is NULL", #field); \
    } while (0)
    switch (c->kind) {
    case DM_KIND_LAYER:
        NEED(dm_layer_vtable, create);
        NEED(dm_layer_vtable, bind);
        NEED(dm_layer_vtable, init_params);
        NEED(dm_layer_vtable, forward);
        NEED(dm_layer_vtable, backward);
        NEED(dm_layer_vtable, destroy);
        devices = ((const dm_layer_vtable *)vt)->devices;
        has_devices = 1;
        break;
    case DM_KIND_OPTIMIZER:
        NEED(dm_optimizer_vtable, create);
        NEED(dm_optimizer_vtable, bind);
        NEED(dm_optimizer_vtable, step);
        NEED(dm_optimizer_vtable, destroy);
        devices = ((const dm_optimizer_vtable *)vt)->devices;
        has_devices = 1;
        break;
    case DM_KIND_DATASET:
        NEED(dm_dataset_vtable, open);
        NEED(dm_dataset_vtable, read);
        NEED(dm_dataset_vtable, close);
        break;
    case DM_KIND_COMM:
        NEED(dm_comm_vtable, init);
        NEED(dm_comm_vtable, allreduce);
        NEED(dm_comm_vtable, allreduce_start);
        NEED(dm_comm_vtable, wait);
        NEED(dm_comm_vtable, broadcast);
        NEED(dm_comm_vtable, barrier);
        NEED(dm_comm_vtable, finalize);
        devices = ((const dm_comm_vtable *)vt)->devices;
        has_devices = 1;
        break;
    default: break;
    }
#undef NEED
    if (!bad[0] && !one_line(c->help)) snprintf(bad, sizeof bad, "help is missing or not one line");
    if (!bad[0] && has_devices && devices & ~(DM_DEVICE_BIT(DM_DEVICE_COUNT) - 1))
        snprintf(bad, sizeof bad, "devices 0x%x has unknown bits", devices);
    if (!bad[0] && has_devices && !(devices & DM_DEVICE_BIT(DM_DEVICE_CPU)))
        snprintf(bad, sizeof bad,
                 "no CPU implementation (devices 0x%x): the CPU path is the "
                 "reference every check compares against",
                 devices);
    if (bad[0]) {
        pc_row(lc, "descriptor", PC_FAIL, "%s", bad);
        return;
    }
    pc_row(lc, "descriptor", PC_OK, "vtable %zu bytes, every method set%s%s", *(const size_t *)vt,
           has_devices ? ", devices cpu" : "", has_devices && devices & DM_DEVICE_BIT(DM_DEVICE_CUDA) ? "+cuda" : "");
}

static void check_param_table(const dm_loaded_component *lc)
{
    const dm_component *c = lc->component;
    const char *section = core_section(c->kind);
    const dm_param_def *core = section ? dm_core_section_defs(section) : NULL;
    int n = 0, required = 0;
    for (const dm_param_def *d = c->params; d && d->name; d++, n++) {
        const char *why = NULL;
        char buf[DM_ERRMSG_MAX + 128];
        if (!d->name[0] || !islower((unsigned char)d->name[0]) ||
            d->name[strspn(d->name, "abcdefghijklmnopqrstuvwxyz0123456789_")] != 0)
            why = "name must be lower-case letters, digits and '_', starting with a letter";
        for (const dm_param_def *e = c->params; !why && e != d; e++)
            if (strcmp(e->name, d->name) == 0) why = "appears twice in the table";
        for (const dm_param_def *e = core; !why && e && e->name; e++)
            if (strcmp(e->name, d->name) == 0) {
                snprintf(buf, sizeof buf, "is also a key of the core's [%s] section",
                         strcmp(section, "layer.x") == 0 ? "layer.NAME" : section);
                why = buf;
            }
        if (!why && ((unsigned)d->type > DM_PARAM_ENUM)) why = "unknown type";
        if (!why && !one_line(d->help)) why = "help is missing or not one line";
        if (!why && (d->type == DM_PARAM_INT || d->type == DM_PARAM_FLOAT) && d->min <= d->max &&
            (isnan(d->min) || isnan(d->max)))
            why = "range is NaN";
        if (!why && d->type == DM_PARAM_ENUM) {
            const char *ch = d->choices;
            if (!ch || !ch[0] || ch[0] == '|' || ch[strlen(ch) - 1] == '|' || strstr(ch, "||") || strpbrk(ch, " ,=\t"))
                why = "choices must be non-empty words separated by '|' (no spaces, ',' or '=')";
            for (int a = 0; !why && a < enum_count(ch); a++)
                for (int b = 0; !why && b < a; b++) {
                    char wa[64], wb[64];
                    enum_word(ch, a, wa, sizeof wa);
                    enum_word(ch, b, wb, sizeof wb);
                    if (strcmp(wa, wb) == 0) why = "a choice appears twice";
                }
        }
        if (!why && d->default_value) {
            /* The default must pass the same validation an INI value does. */
            dm_param_def one[2] = {*d, DM_PARAM_END};
            dm_param_set *ps = NULL;
            dm_error e = {0};
            if (dm_param_set_parse(one, "", &ps, &e) != DM_OK) {
                snprintf(buf, sizeof buf, "default '%s' is invalid: %s", d->default_value, e.msg);
                why = buf;
            }
            dm_param_set_free(ps);
        }
        if (!d->default_value) required++;
        if (why) {
            pc_row(lc, "parameter table", PC_FAIL, "key '%s': %s", d->name ? d->name : "?", why);
            return;
        }
    }
    pc_row(lc, "parameter table", PC_OK, "%d key%s (%d required), defaults valid", n, n == 1 ? "" : "s", required);
}

/* ---- running a component's checks ------------------------------------------ */

typedef void (*pc_check_fn)(const pc_ctx *c, const dm_loaded_component *lc);

static pc_check_fn check_for(dm_kind kind)
{
    switch (kind) {
    case DM_KIND_LAYER: return pc_check_layer;
    case DM_KIND_OPTIMIZER: return pc_check_optimizer;
    case DM_KIND_DATASET: return pc_check_dataset;
    case DM_KIND_COMM: return pc_check_comm;
    default: return NULL;
    }
}

static void run_checks(const pc_ctx *c, const dm_loaded_component *lc, int isolate, int timeout_s)
{
    pc_check_fn fn = check_for(lc->component->kind);
    if (!fn) return;
    g_sh->finished = 0;
    pc_now("starting");
    if (!isolate) {
        fn(c, lc);
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        pc_row(lc, "run", PC_FAIL, "fork failed: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        alarm((unsigned)timeout_s);
        fn(c, lc);
        g_sh->finished = 1;
        fflush(stdout);
        _exit(0); /* skip atexit handlers: the parent still holds the plugin */
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        if (sig == SIGALRM) pc_row(lc, "timeout", PC_FAIL, "no answer within %d s, during: %s", timeout_s, g_sh->now);
        else pc_row(lc, "crash", PC_FAIL, "killed by signal %d (%s), during: %s", sig, strsignal(sig), g_sh->now);
    } else if (!g_sh->finished) {
        pc_row(lc, "exit", PC_FAIL,
               "the process exited with status %d, during: %s (a plugin must "
               "return an error, never exit; a sanitizer's report would be above)",
               WEXITSTATUS(status), g_sh->now);
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: dmnist-plugin-check [options] PLUGIN.so [TYPE]\n"
            "\n"
            "Load PLUGIN.so as dmnist-run does and check each of its components (or only TYPE):\n"
            "  all       descriptor, vtable methods, parameter table (names, help, defaults, ranges)\n"
            "  layer     gradients against central differences on random shapes and settings,\n"
            "            deterministic forward, init_params, poisoned outputs and guarded buffers,\n"
            "            CUDA against CPU when the layer has CUDA and a GPU is present\n"
            "  optimizer a quadratic decreases, lr = 0 changes nothing, determinism, buffers, on the\n"
            "            discrete settings and on random valid settings; with --reference, the update\n"
            "            rule: k steps against expected parameters\n"
            "  dataset   open, info, reads in range and within their buffers, random access\n"
            "  comm      init with world size 1, allreduce/start/wait/broadcast/barrier, finalize\n"
            "\n"
            "options:\n"
            "  --params \"K=V ...\"  keys given to every setting (required keys, data paths, hosts)\n"
            "  --seed N            seed for shapes, settings and data (default 1)\n"
            "  --settings N        random parameter settings per layer or optimizer (default 6)\n"
            "  --reference FILE    optimizers: cases of settings, lr, start parameters, one gradient\n"
            "                      per step and the parameters expected after the last step\n"
            "                      (docs/writing-an-optimizer-plugin.md); a case fails when it is\n"
            "                      off by more than 1e-3 of how far the parameters moved\n"
            "  --timeout S         seconds per component before it counts as hung (default 300)\n"
            "  --no-fork           run the checks in this process (for a debugger)\n"
            "  -v, --verbose       one line per case\n"
            "  --help\n"
            "\n"
            "Prints one row per check; exits 1 if any check failed, 2 if the plugin did not load.\n");
}

int main(int argc, char **argv)
{
    pc_ctx c = {NULL, NULL, 1, 6, NULL, 0};
    int isolate = 1, timeout_s = 300;
    static const struct option opts[] = {{"params", required_argument, NULL, 'p'},
                                         {"seed", required_argument, NULL, 's'},
                                         {"settings", required_argument, NULL, 'n'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {"no-fork", no_argument, NULL, 'F'},
                                         {"verbose", no_argument, NULL, 'v'},
                                         {"reference", required_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'p': c.user_spec = optarg; break;
        case 'r': c.reference = optarg; break;
        case 's': c.seed = strtoull(optarg, &end, 10); break;
        case 'n': c.settings = (int)strtol(optarg, &end, 10); break;
        case 't': timeout_s = (int)strtol(optarg, &end, 10); break;
        case 'F': isolate = 0; break;
        case 'v': c.verbose = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (end && (*end || end == optarg)) {
            fprintf(stderr, "dmnist-plugin-check: --%s wants a number, got '%s'\n",
                    o == 's'       ? "seed"
                        : o == 'n' ? "settings"
                                   : "timeout",
                    optarg);
            return 2;
        }
    }
    if (argc - optind < 1 || argc - optind > 2 || c.settings < 1 || c.settings > 100 || timeout_s < 1) {
        usage(stderr);
        return 2;
    }
    const char *path = argv[optind], *only = argc - optind == 2 ? argv[optind + 1] : NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);

    g_sh = &g_local;
    if (isolate) {
        void *m = mmap(NULL, sizeof(pc_shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "dmnist-plugin-check: mmap: %s\n", strerror(errno));
            return 2;
        }
        g_sh = m;
        memset(g_sh, 0, sizeof *g_sh);
    }

    printf("dmnist-plugin-check %s: %s (seed %llu)\n", DMNIST_VERSION, path, (unsigned long long)c.seed);
    dm_registry *reg = dm_registry_new();
    dm_error err = {0};
    if (!reg || dm_registry_load_file(reg, path, &err) != DM_OK) {
        printf("%-30s %-24s %-6s %s\n", "(plugin)", "load", "FAIL", reg ? err.msg : "out of memory");
        dm_registry_free(reg);
        return 2;
    }
    c.reg = reg;
    const dm_plugin_descriptor *d = dm_registry_at(reg, 0) ? dm_registry_at(reg, 0)->plugin : NULL;
    if (!d) {
        printf("%-30s %-24s %-6s %s\n", "(plugin)", "load", "FAIL", "the plugin has no components");
        dm_registry_free(reg);
        return 1;
    }
    printf("plugin '%s' version %s, built for ABI %u.%u (host %d.%d), build \"%s\", %d component%s\n\n", d->name,
           d->version, d->abi_major, d->abi_minor, DM_ABI_MAJOR, DM_ABI_MINOR, d->build_signature, d->n_components,
           d->n_components == 1 ? "" : "s");
    printf("%-30s %-24s %-6s %s\n", "component", "check", "result", "detail");
    if (!d->name[0] || !d->version[0] || !d->build_signature[0])
        pc_row(NULL, "descriptor", PC_FAIL, "name, version and build signature must not be empty");
    else pc_row(NULL, "load", PC_OK, "dm_registry_load_file accepted it");

    int checked = 0;
    for (int i = 0; i < dm_registry_count(reg); i++) {
        const dm_loaded_component *lc = dm_registry_at(reg, i);
        if (only && strcmp(only, lc->component->type_name) != 0) continue;
        checked++;
        check_descriptor(lc);
        check_param_table(lc);
        run_checks(&c, lc, isolate, timeout_s);
    }
    if (only && !checked) {
        char names[512] = "";
        for (int i = 0; i < dm_registry_count(reg); i++) {
            size_t off = strlen(names);
            snprintf(names + off, sizeof names - off, "%s%s", i ? ", " : "",
                     dm_registry_at(reg, i)->component->type_name);
        }
        pc_row(NULL, "type", PC_FAIL, "no component '%s' in this plugin (it has: %s)", only, names);
    }
    printf("\nsummary: %d ok, %d skipped, %d failed\n", g_sh->counts[PC_OK], g_sh->counts[PC_SKIP],
           g_sh->counts[PC_FAIL]);
    int failed = g_sh->counts[PC_FAIL] > 0;
    dm_registry_free(reg);
    return failed ? 1 : 0;
}
