/* Dataset plugins (mnist, synthetic) loaded through the registry.
 *
 * The mnist cases write small IDX files (plain and gzipped, good and
 * corrupted) into a fresh temporary folder; mnist_real reads the real files
 * when they are present and skips (exit 77) otherwise.
 *
 *   test_datasets <case>     (cases listed in main; one ctest each)
 */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "cases.h"
#include "check.h"
#include "dm_core.h"

#define SKIP_CODE 77
#define PIXELS (28 * 28)

/* snprintf that fails the test loudly instead of truncating a path. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
xfmt(char *out, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "path too long: %s...\n", out);
        exit(1);
    }
}
#define FMT(buf, ...) xfmt(buf, sizeof buf, __VA_ARGS__)

static dm_registry *g_reg;
static char g_tmp[512]; /* this run's scratch folder, removed at exit */

/* ---- a dataset instance -------------------------------------------------- */

typedef struct ds {
    const dm_dataset_vtable *vt;
    dm_param_set *ps;
    void *state;
    dm_dataset_info info;
} ds;

static int ds_open(ds *d, const char *type, const char *spec, uint64_t seed, const char *config_dir, dm_error *err)
{
    memset(d, 0, sizeof *d);
    const dm_loaded_component *lc = dm_registry_find(g_reg, DM_KIND_DATASET, type);
    if (!lc) return dm_fail(err, DM_ERR_INVALID, "dataset '%s' not found in DMNIST_PLUGIN_PATH", type);
    d->vt = lc->component->vtable;
    int rc = dm_param_set_parse(lc->component->params, spec, &d->ps, err);
    if (rc != DM_OK) return rc;
    dm_dataset_config cfg = {sizeof cfg, seed, config_dir};
    d->info.struct_size = sizeof d->info;
    return d->vt->open(dm_param_set_params(d->ps), &cfg, &d->state, &d->info, err);
}

static void ds_close(ds *d)
{
    if (d->state) d->vt->close(d->state);
    dm_param_set_free(d->ps);
    memset(d, 0, sizeof *d);
}

/* ---- writing IDX files ----------------------------------------------------- */

static const char *const file_names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
enum { TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS };

typedef struct blob {
    uint8_t *data;
    size_t len;
} blob;

static void put_be32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24), b[1] = (uint8_t)(v >> 16), b[2] = (uint8_t)(v >> 8), b[3] = (uint8_t)v;
}

/* The pixel and label the generated files hold, so reads can be checked. */
static uint8_t fake_pixel(int split, int i, int p) { return (uint8_t)((i * 31 + p * 7 + split * 13) % 256); }
static uint8_t fake_label(int split, int i) { return (uint8_t)((i * 3 + split) % 10); }

static blob make_images(int split, int n, int rows, int cols)
{
    blob b = {malloc(16 + (size_t)n * rows * cols), 16 + (size_t)n * rows * cols};
    put_be32(b.data, 2051);
    put_be32(b.data + 4, (uint32_t)n);
    put_be32(b.data + 8, (uint32_t)rows);
    put_be32(b.data + 12, (uint32_t)cols);
    for (int i = 0; i < n; i++)
        for (int p = 0; p < rows * cols; p++) b.data[16 + (size_t)i * rows * cols + p] = fake_pixel(split, i, p);
    return b;
}

static blob make_labels(int split, int n)
{
    blob b = {malloc(8 + (size_t)n), 8 + (size_t)n};
    put_be32(b.data, 2049);
    put_be32(b.data + 4, (uint32_t)n);
    for (int i = 0; i < n; i++) b.data[8 + i] = fake_label(split, i);
    return b;
}

/* The four files of a good set with n_train and n_test examples. */
static void make_good(blob f[4], int n_train, int n_test)
{
    f[TRAIN_IMAGES] = make_images(0, n_train, 28, 28);
    f[TRAIN_LABELS] = make_labels(0, n_train);
    f[TEST_IMAGES] = make_images(1, n_test, 28, 28);
    f[TEST_LABELS] = make_labels(1, n_test);
}

static void free_blobs(blob f[4])
{
    for (int k = 0; k < 4; k++) free(f[k].data);
}

static int write_file(const char *path, const uint8_t *data, size_t len, int gz)
{
    if (gz) {
        gzFile g = gzopen(path, "wb");
        if (!g) return -1;
        int ok = len == 0 || gzwrite(g, data, (unsigned)len) == (int)len;
        return gzclose(g) == Z_OK && ok ? 0 : -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t put = fwrite(data, 1, len, f);
    return fclose(f) == 0 && put == len ? 0 : -1;
}

/* A new folder g_tmp/name holding the four files (gzipped when gz). */
static int write_set(char *dir, size_t dir_size, const char *name, blob f[4], int gz)
{
    xfmt(dir, dir_size, "%s/%s", g_tmp, name);
    if (mkdir(dir, 0755) != 0) return -1;
    for (int k = 0; k < 4; k++) {
        char path[1024];
        FMT(path, "%s/%s%s", dir, file_names[k], gz ? ".gz" : "");
        if (write_file(path, f[k].data, f[k].len, gz) != 0) return -1;
    }
    return 0;
}

/* A good set of n_train/n_test examples written by write_set. */
static int write_good_set(char *dir, size_t dir_size, const char *name, int n_train, int n_test, int gz)
{
    blob f[4];
    make_good(f, n_train, n_test);
    int rc = write_set(dir, dir_size, name, f, gz);
    free_blobs(f);
    return rc;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tmp(void)
{
    if (g_tmp[0]) nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- mnist on good files ------------------------------------------------- */

/* Open dir and check counts, shape, and examples read by index. */
static int check_good(const char *spec, const char *config_dir, int n_train, int n_test, int standardize)
{
    dm_error err = {0};
    ds d;
    int rc = ds_open(&d, "mnist", spec, 1, config_dir, &err);
    REQUIRE(rc == DM_OK, "open '%s': %s", spec, err.msg);
    REQUIRE(d.info.count[DM_SPLIT_TRAIN] == n_train && d.info.count[DM_SPLIT_TEST] == n_test,
            "counts %lld/%lld, want %d/%d", (long long)d.info.count[0], (long long)d.info.count[1], n_train, n_test);
    REQUIRE(d.info.item.n == 1 && d.info.item.c == 1 && d.info.item.h == 28 && d.info.item.w == 28,
            "item shape %dx%dx%dx%d", d.info.item.n, d.info.item.c, d.info.item.h, d.info.item.w);
    REQUIRE(d.info.num_classes == 10, "num_classes %d", d.info.num_classes);

    for (int split = 0; split < 2; split++) {
        int n = split ? n_test : n_train;
        int64_t idx[3] = {n - 1, 0, n / 2}; /* out of order on purpose */
        float images[3 * PIXELS];
        int32_t labels[3];
        rc = d.vt->read(d.state, (dm_split)split, idx, 3, images, labels, &err);
        REQUIRE(rc == DM_OK, "read: %s", err.msg);
        for (int k = 0; k < 3; k++) {
            REQUIRE(labels[k] == fake_label(split, (int)idx[k]), "split %d index %lld: label %d", split,
                    (long long)idx[k], labels[k]);
            for (int p = 0; p < PIXELS; p++) {
                double x = fake_pixel(split, (int)idx[k], p) / 255.0;
                if (standardize) x = (x - 0.1307) / 0.3081;
                REQUIRE(fabs(images[k * PIXELS + p] - x) < 1e-5, "split %d index %lld pixel %d: %g, want %g", split,
                        (long long)idx[k], p, images[k * PIXELS + p], x);
            }
        }
    }
    /* An index out of range is refused, not read. */
    int64_t bad = n_train;
    float img[PIXELS];
    int32_t lab;
    rc = d.vt->read(d.state, DM_SPLIT_TRAIN, &bad, 1, img, &lab, &err);
    REQUIRE(rc == DM_ERR_INVALID, "read of index %lld gave %d", (long long)bad, rc);
    ds_close(&d);
    return 0;
}

static int test_mnist_good_plain(void)
{
    char dir[1024], spec[1200];
    REQUIRE(write_good_set(dir, sizeof dir, "plain", 7, 4, 0) == 0, "cannot write %s", dir);
    FMT(spec, "path=%s", dir);
    if (check_good(spec, NULL, 7, 4, 0)) return 1;
    FMT(spec, "path=%s standardize=true", dir);
    return check_good(spec, NULL, 7, 4, 1);
}

static int test_mnist_good_gz(void)
{
    char dir[1024], spec[1200];
    REQUIRE(write_good_set(dir, sizeof dir, "gz", 5, 3, 1) == 0, "cannot write %s", dir);
    FMT(spec, "path=%s", dir);
    return check_good(spec, NULL, 5, 3, 0);
}

/* Plain and .gz side by side: the plain files win (they hold 6/2 examples,
 * the gzipped ones 9/5). */
static int test_mnist_prefers_plain(void)
{
    blob f[4];
    char dir[1024], spec[1200];
    REQUIRE(write_good_set(dir, sizeof dir, "both", 9, 5, 1) == 0, "cannot write %s", dir);
    make_good(f, 6, 2);
    for (int k = 0; k < 4; k++) {
        char path[1100];
        FMT(path, "%s/%s", dir, file_names[k]);
        REQUIRE(write_file(path, f[k].data, f[k].len, 0) == 0, "cannot write %s", path);
    }
    free_blobs(f);
    FMT(spec, "path=%s", dir);
    return check_good(spec, NULL, 6, 2, 0);
}

/* A relative path missing from the current directory is found next to
 * the INI file (config_dir). */
static int test_mnist_config_dir(void)
{
    char dir[1024];
    REQUIRE(write_good_set(dir, sizeof dir, "relative-mnist", 3, 2, 1) == 0, "cannot write %s", dir);
    REQUIRE(chdir("/") == 0, "chdir /");
    return check_good("path=relative-mnist", g_tmp, 3, 2, 0);
}

/* ---- the data home ------------------------------------------------------- */

static int is_dir_(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* mkdir -p g_tmp/rel (each level 0755). */
static int mkdirs(char *dir, size_t size, const char *rel)
{
    xfmt(dir, size, "%s/%s", g_tmp, rel);
    for (char *p = dir + strlen(g_tmp) + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        int bad = mkdir(dir, 0755) != 0 && !is_dir_(dir);
        *p = '/';
        if (bad) return -1;
    }
    return mkdir(dir, 0755) != 0 && !is_dir_(dir) ? -1 : 0;
}

/* A good set of n_train/n_test examples written to g_tmp/rel (parents made). */
static int write_set_at(const char *rel, int n_train, int n_test)
{
    char dir[1024];
    if (mkdirs(dir, sizeof dir, rel) != 0) return -1;
    blob f[4];
    make_good(f, n_train, n_test);
    int rc = 0;
    for (int k = 0; k < 4 && rc == 0; k++) {
        char path[1100];
        FMT(path, "%s/%s.gz", dir, file_names[k]);
        rc = write_file(path, f[k].data, f[k].len, 1);
    }
    free_blobs(f);
    return rc;
}

/* Train-split size of the set that path=spec_path resolves to from the
 * current directory (config_dir as given), or -1 with the message in err. */
static int64_t opened_count(const char *spec_path, const char *config_dir, dm_error *err)
{
    char spec[1200];
    FMT(spec, "path=%s", spec_path);
    ds d;
    int rc = ds_open(&d, "mnist", spec, 1, config_dir, err);
    int64_t n = rc == DM_OK ? d.info.count[DM_SPLIT_TRAIN] : -1;
    ds_close(&d);
    return n;
}

/* With `path` chmod'ed to `mode`, the data home data/mnist is refused with
 * a message naming path and saying `why`; `what` names the case. The mode
 * stays: the caller restores it. */
static int home_refused_with_mode(const char *path, mode_t mode, const char *why, const char *what)
{
    dm_error err = {0};
    REQUIRE(chmod(path, mode) == 0, "chmod %s", path);
    const int64_t n = opened_count("data/mnist", NULL, &err);
    printf("%s -> %s\n", what, err.msg);
    REQUIRE(n == -1 && strstr(err.msg, path) && strstr(err.msg, why), "%s: %lld %s", what, (long long)n, err.msg);
    return 0;
}

/* Point the data-home variables at folders under g_tmp ("" = unset). */
static void set_home_env(const char *data, const char *home, const char *xdg)
{
    char buf[1024];
    const char *names[3] = {"DMNIST_DATA", "HOME", "XDG_DATA_HOME"};
    const char *vals[3] = {data, home, xdg};
    for (int k = 0; k < 3; k++) {
        if (!vals[k][0]) {
            unsetenv(names[k]);
            continue;
        }
        if (vals[k][0] == '/' || vals[k][0] == '.') FMT(buf, "%s", vals[k]);
        else FMT(buf, "%s/%s", g_tmp, vals[k]);
        setenv(names[k], buf, 1);
    }
}

/* A relative data.path, run from an empty folder: $DMNIST_DATA/<path without
 * data/>, then the per-user folder ($XDG_DATA_HOME/dmnist when absolute, else
 * $HOME/.local/share/dmnist), each after the INI file's folder. Each set has
 * its own size, so the count tells which one was opened. */
static int test_mnist_data_home(void)
{
    char run[1024], cfg[1024];
    REQUIRE(mkdirs(run, sizeof run, "run") == 0 && mkdirs(cfg, sizeof cfg, "cfg") == 0, "mkdir under %s", g_tmp);
    REQUIRE(chdir(run) == 0, "chdir %s", run);
    REQUIRE(write_set_at("dd/mnist", 11, 2) == 0 && write_set_at("dd/nested/set", 12, 2) == 0 &&
                write_set_at("user/.local/share/dmnist/mnist", 13, 2) == 0 &&
                write_set_at("xdg/dmnist/mnist", 14, 2) == 0,
            "cannot write the sets");
    dm_error err = {0};
    int64_t n;

    set_home_env("dd", "user", "");
    n = opened_count("data/mnist", cfg, &err);
    printf("DMNIST_DATA, data/mnist -> %lld %s\n", (long long)n, err.msg);
    REQUIRE(n == 11, "data/mnist with DMNIST_DATA: %lld (%s)", (long long)n, err.msg);
    REQUIRE(opened_count("./data/mnist", cfg, &err) == 11, "./data/mnist: %s", err.msg);
    REQUIRE(opened_count("mnist", NULL, &err) == 11, "mnist: %s", err.msg);
    REQUIRE(opened_count("data/nested/set", cfg, &err) == 12, "data/nested/set: %s", err.msg);

    /* A path that would leave the data home is not looked for there. */
    n = opened_count("data/../mnist", cfg, &err);
    printf("data/../mnist -> %lld: %s\n", (long long)n, err.msg);
    REQUIRE(n == -1 && strstr(err.msg, "data home was not searched"), "data/../mnist: %lld %s", (long long)n, err.msg);

    /* Without DMNIST_DATA: the per-user folder under HOME. */
    set_home_env("", "user", "");
    n = opened_count("data/mnist", cfg, &err);
    printf("HOME only -> %lld %s\n", (long long)n, err.msg);
    REQUIRE(n == 13, "per-user under HOME: %lld (%s)", (long long)n, err.msg);
    /* An absolute XDG_DATA_HOME replaces ~/.local/share; a relative one is ignored. */
    set_home_env("", "user", "xdg");
    REQUIRE(opened_count("data/mnist", cfg, &err) == 14, "XDG_DATA_HOME: %s", err.msg);
    set_home_env("", "user", "./xdg");
    REQUIRE(opened_count("data/mnist", cfg, &err) == 13, "relative XDG_DATA_HOME: %s", err.msg);
    /* DMNIST_DATA comes before the per-user folder... */
    set_home_env("dd", "user", "xdg");
    REQUIRE(opened_count("data/mnist", cfg, &err) == 11, "DMNIST_DATA first: %s", err.msg);
    /* ...and the INI file's folder, then the current one, before both. */
    REQUIRE(write_set_at("cfg/data/mnist", 15, 2) == 0, "cannot write cfg/data/mnist");
    REQUIRE(opened_count("data/mnist", cfg, &err) == 15, "INI folder first: %s", err.msg);
    REQUIRE(write_set_at("run/data/mnist", 16, 2) == 0, "cannot write run/data/mnist");
    REQUIRE(opened_count("data/mnist", cfg, &err) == 16, "current folder first: %s", err.msg);
    /* An absolute path is only itself. */
    char abs[1100];
    FMT(abs, "%s/nowhere/mnist", g_tmp);
    n = opened_count(abs, cfg, &err);
    REQUIRE(n == -1 && strstr(err.msg, "not found") && !strstr(err.msg, "DMNIST_DATA"), "absolute path: %lld %s",
            (long long)n, err.msg);
    return 0;
}

/* Not found anywhere: one line naming every place searched, in order. */
static int test_mnist_not_found_lists(void)
{
    char run[1024], cfg[1024];
    REQUIRE(mkdirs(run, sizeof run, "run") == 0 && mkdirs(cfg, sizeof cfg, "cfg") == 0, "mkdir under %s", g_tmp);
    REQUIRE(chdir(run) == 0, "chdir %s", run);
    dm_error err = {0};
    char want[4][1100];
    FMT(want[0], "%s/data/mnist (current folder)", run);
    FMT(want[1], "%s/data/mnist (INI folder)", cfg);
    FMT(want[2], "%s/dd/mnist ($DMNIST_DATA)", g_tmp);
    FMT(want[3], "%s/user/.local/share/dmnist/mnist (per-user)", g_tmp);
    set_home_env("dd", "user", "");
    int64_t n = opened_count("data/mnist", cfg, &err);
    printf("not found -> %s\n", err.msg);
    REQUIRE(n == -1 && strncmp(err.msg, "data/mnist: MNIST folder not found; looked in ", 46) == 0, "message: %s",
            err.msg);
    REQUIRE(!strchr(err.msg, '\n') && strstr(err.msg, "scripts/get-mnist.sh"), "message: %s", err.msg);
    const char *at = err.msg;
    for (int k = 0; k < 4; k++) {
        const char *hit = strstr(at, want[k]);
        REQUIRE(hit, "place %d '%s' missing or out of order in: %s", k, want[k], err.msg);
        at = hit + strlen(want[k]);
    }
    /* Without DMNIST_DATA the message says so; XDG_DATA_HOME is named when used. */
    set_home_env("", "user", "xdg");
    opened_count("data/mnist", cfg, &err);
    printf("not found -> %s\n", err.msg);
    FMT(want[0], "%s/xdg/dmnist/mnist (per-user, $XDG_DATA_HOME)", g_tmp);
    REQUIRE(strstr(err.msg, want[0]) && strstr(err.msg, "DMNIST_DATA is not set"), "message: %s", err.msg);
    return 0;
}

/* Something in the data home that anyone can write to is refused, with the
 * path and the reason; sticky world-writable folders above (like /tmp) are
 * fine; the same folder named explicitly in data.path is the user's choice. */
static int test_mnist_data_home_world_writable(void)
{
    char run[1024], dir[1024], file[1100];
    REQUIRE(mkdirs(run, sizeof run, "run") == 0, "mkdir under %s", g_tmp);
    REQUIRE(chdir(run) == 0, "chdir %s", run);
    REQUIRE(write_set_at("dd/mnist", 5, 2) == 0, "cannot write the set");
    set_home_env("dd", "user", "");
    dm_error err = {0};
    REQUIRE(opened_count("data/mnist", NULL, &err) == 5, "good data home: %s", err.msg);

    FMT(dir, "%s/dd/mnist", g_tmp);
    if (home_refused_with_mode(dir, 0757, "world-writable", "world-writable folder")) return 1;
    REQUIRE(opened_count(dir, NULL, &err) == 5, "explicit path refused: %s", err.msg);
    REQUIRE(chmod(dir, 0755) == 0, "chmod %s", dir);

    FMT(file, "%s/%s.gz", dir, file_names[TEST_LABELS]);
    if (home_refused_with_mode(file, 0646, "world-writable", "world-writable file")) return 1;
    REQUIRE(chmod(file, 0644) == 0, "chmod %s", file);

    FMT(dir, "%s/dd", g_tmp);
    if (home_refused_with_mode(dir, 0777, "no sticky bit", "world-writable folder above")) return 1;
    REQUIRE(chmod(dir, 01777) == 0, "chmod %s", dir);
    REQUIRE(opened_count("data/mnist", NULL, &err) == 5, "sticky parent refused: %s", err.msg);
    REQUIRE(chmod(dir, 0755) == 0, "chmod %s", dir);
    return 0;
}

/* ---- mnist on broken files ----------------------------------------------- */

/* Open a set in which file `which` was replaced by `bad` (gz: all four
 * gzipped); expect status `want_code` and a one-line message naming that
 * file and containing want_text. */
static int expect_broken(const char *name, int which, blob bad, int gz, int want_code, const char *want_text)
{
    blob f[4];
    char dir[1024], spec[1200], file[1100];
    make_good(f, 6, 4);
    free(f[which].data);
    f[which] = bad;
    int wrote = write_set(dir, sizeof dir, name, f, gz);
    free_blobs(f);
    REQUIRE(wrote == 0, "cannot write %s", dir);
    FMT(file, "%s/%s%s", dir, file_names[which], gz ? ".gz" : "");
    FMT(spec, "path=%s", dir);

    dm_error err = {0};
    ds d;
    int rc = ds_open(&d, "mnist", spec, 1, NULL, &err);
    printf("%-22s -> %d: %s\n", name, rc, err.msg);
    REQUIRE(rc == want_code, "%s: status %d (%s), want %d", name, rc, err.msg, want_code);
    REQUIRE(strstr(err.msg, file), "%s: message '%s' does not name %s", name, err.msg, file);
    REQUIRE(strstr(err.msg, want_text), "%s: message '%s' lacks '%s'", name, err.msg, want_text);
    REQUIRE(!strchr(err.msg, '\n'), "%s: message has a newline", name);
    ds_close(&d);
    return 0;
}

static blob with_be32(blob b, size_t at, uint32_t v)
{
    put_be32(b.data + at, v);
    return b;
}

static blob resized(blob b, size_t len)
{
    uint8_t *p = realloc(b.data, len);
    if (len > b.len) memset(p + b.len, 0xAB, len - b.len);
    return (blob){p, len};
}

static int test_mnist_corrupt(void)
{
    const int F = DM_ERR_FORMAT;
    int failed = 0;
    for (int gz = 0; gz <= 1; gz++) {
        char name[64];
#define CASE(label, which, bad, code, text) \
    FMT(name, "%s%s", label, gz ? "-gz" : ""); \
    failed |= expect_broken(name, which, bad, gz, code, text)

        CASE("bad-magic-images", TRAIN_IMAGES, with_be32(make_images(0, 6, 28, 28), 0, 2049), F,
             "bad magic 0x00000801, expected 2051");
        CASE("bad-magic-labels", TEST_LABELS, with_be32(make_labels(1, 4), 0, 2051), F,
             "bad magic 0x00000803, expected 2049");
        CASE("truncated", TRAIN_IMAGES, resized(make_images(0, 6, 28, 28), 16 + 5 * PIXELS + 9), F, "truncated");
        CASE("truncated-header", TRAIN_LABELS, resized(make_labels(0, 6), 6), F, "truncated header");
        CASE("trailing", TEST_IMAGES, resized(make_images(1, 4, 28, 28), 16 + 4 * PIXELS + 3), F, "trailing bytes");
        CASE("count-mismatch", TEST_LABELS, make_labels(1, 3), F, "3 labels but");
        CASE("wrong-dims", TRAIN_IMAGES, make_images(0, 6, 28, 27), F, "28x27, expected 28x28");
        CASE("label-too-big", TRAIN_LABELS, with_be32(make_labels(0, 6), 8, 0x0C000000), F, "label 12 at index 0");
        /* A header claiming 4 billion images must be refused before allocating. */
        CASE("huge-count", TRAIN_IMAGES, with_be32(make_images(0, 6, 28, 28), 4, 0xFFFFFFFFu), F, "truncated");
#undef CASE
    }
    return failed;
}

/* Bytes that are not gzip at all, and gzip whose stream is cut or garbled. */
static int test_mnist_bad_gzip(void)
{
    int failed = 0;
    blob junk = {malloc(4000), 4000};
    uint64_t s = 9;
    for (size_t i = 0; i < junk.len; i++) junk.data[i] = (uint8_t)dm_rng_next(&s);
    junk.data[0] = 0x42;
    /* Written as plain bytes under a .gz name. */
    blob f[4];
    char dir[1024], path[1100], spec[1200];
    REQUIRE(write_good_set(dir, sizeof dir, "junk-gz", 6, 4, 1) == 0, "cannot write %s", dir);
    FMT(path, "%s/%s.gz", dir, file_names[TRAIN_LABELS]);
    REQUIRE(write_file(path, junk.data, junk.len, 0) == 0, "cannot write %s", path);

    FMT(spec, "path=%s", dir);
    dm_error err = {0};
    ds d;
    int rc = ds_open(&d, "mnist", spec, 1, NULL, &err);
    printf("junk-gz -> %d: %s\n", rc, err.msg);
    if (rc != DM_ERR_FORMAT || !strstr(err.msg, path) || !strstr(err.msg, "not a gzip file")) {
        fprintf(stderr, "junk-gz: status %d, message '%s'\n", rc, err.msg);
        failed = 1;
    }
    ds_close(&d);

    /* gzip magic, then garbage: inflate must fail cleanly. */
    junk.data[0] = 0x1f, junk.data[1] = 0x8b, junk.data[2] = 8, junk.data[3] = 0;
    REQUIRE(write_file(path, junk.data, junk.len, 0) == 0, "cannot write %s", path);
    rc = ds_open(&d, "mnist", spec, 1, NULL, &err);
    printf("garbled-gz -> %d: %s\n", rc, err.msg);
    if (rc != DM_ERR_FORMAT || !strstr(err.msg, path) || !strstr(err.msg, "gzip")) {
        fprintf(stderr, "garbled-gz: status %d, message '%s'\n", rc, err.msg);
        failed = 1;
    }
    ds_close(&d);
    free(junk.data);

    /* A real gzip file cut in half. */
    FMT(path, "%s/%s.gz", dir, file_names[TRAIN_IMAGES]);
    struct stat st;
    REQUIRE(stat(path, &st) == 0 && truncate(path, st.st_size / 2) == 0, "cannot cut %s", path);
    FMT(path, "%s/%s.gz", dir, file_names[TRAIN_LABELS]);
    make_good(f, 6, 4);
    REQUIRE(write_file(path, f[TRAIN_LABELS].data, f[TRAIN_LABELS].len, 1) == 0, "rewrite labels");
    free_blobs(f);
    FMT(path, "%s/%s.gz", dir, file_names[TRAIN_IMAGES]);
    rc = ds_open(&d, "mnist", spec, 1, NULL, &err);
    printf("cut-gz -> %d: %s\n", rc, err.msg);
    if (rc != DM_ERR_FORMAT || !strstr(err.msg, path)) {
        fprintf(stderr, "cut-gz: status %d, message '%s'\n", rc, err.msg);
        failed = 1;
    }
    ds_close(&d);
    return failed;
}

static int test_mnist_missing(void)
{
    char dir[1024], path[1100], spec[1200];
    REQUIRE(write_good_set(dir, sizeof dir, "missing-file", 6, 4, 0) == 0, "cannot write %s", dir);
    FMT(path, "%s/%s", dir, file_names[TEST_LABELS]);
    REQUIRE(unlink(path) == 0, "unlink %s", path);
    FMT(spec, "path=%s", dir);

    dm_error err = {0};
    ds d;
    int rc = ds_open(&d, "mnist", spec, 1, NULL, &err);
    printf("missing file -> %d: %s\n", rc, err.msg);
    REQUIRE(rc == DM_ERR_IO, "missing file: status %d (%s)", rc, err.msg);
    REQUIRE(strstr(err.msg, path) && strstr(err.msg, "scripts/get-mnist.sh"), "message: %s", err.msg);
    ds_close(&d);

    FMT(spec, "path=%s/no-such-folder", g_tmp);
    rc = ds_open(&d, "mnist", spec, 1, g_tmp, &err);
    printf("missing folder -> %d: %s\n", rc, err.msg);
    REQUIRE(rc == DM_ERR_IO, "missing folder: status %d (%s)", rc, err.msg);
    REQUIRE(strstr(err.msg, "no-such-folder") && strstr(err.msg, "scripts/get-mnist.sh"), "message: %s", err.msg);
    ds_close(&d);

    rc = ds_open(&d, "mnist", "path=also-missing", 1, g_tmp, &err);
    printf("missing relative folder -> %d: %s\n", rc, err.msg);
    REQUIRE(rc == DM_ERR_IO && strstr(err.msg, "also-missing"), "status %d (%s)", rc, err.msg);
    ds_close(&d);
    return 0;
}

/* ---- the real MNIST ------------------------------------------------------ */

static int has_file(const char *dir, const char *name)
{
    char path[1100];
    struct stat st;
    FMT(path, "%s/%s", dir, name);
    if (stat(path, &st) == 0) return 1;
    FMT(path, "%s/%s.gz", dir, name);
    return stat(path, &st) == 0;
}

/* Opens the mnist plugin on the full 60,000/10,000 set in `dir`,
 * standardized, with `extra` keys appended to the spec (" mean=... std=..."). */
static int open_full_mnist(ds *d, const char *dir, const char *extra)
{
    char spec[1200];
    FMT(spec, "path=%s standardize=true%s", dir, extra);
    dm_error err = {0};
    int rc = ds_open(d, "mnist", spec, 1, NULL, &err);
    REQUIRE(rc == DM_OK, "%s", err.msg);
    REQUIRE(d->info.count[DM_SPLIT_TRAIN] == 60000 && d->info.count[DM_SPLIT_TEST] == 10000, "counts %lld/%lld",
            (long long)d->info.count[0], (long long)d->info.count[1]);
    return 0;
}

/* One split read whole, 1000 images at a time: examples per class, and the
 * mean and standard deviation of its pixels. */
typedef struct split_stats {
    int counts[10];
    double mean, sd;
} split_stats;

static int read_split_stats(ds *d, int split, split_stats *st)
{
    enum { B = 1000 };
    float *images = malloc((size_t)B * PIXELS * sizeof(float));
    int32_t labels[B];
    int64_t idx[B];
    dm_error err = {0};
    REQUIRE(images, "out of memory");
    memset(st, 0, sizeof *st);
    double sum = 0, sum2 = 0;
    for (int64_t start = 0; start < d->info.count[split]; start += B) {
        for (int i = 0; i < B; i++) idx[i] = start + i;
        int rc = d->vt->read(d->state, (dm_split)split, idx, B, images, labels, &err);
        REQUIRE(rc == DM_OK, "%s", err.msg);
        for (int i = 0; i < B; i++) st->counts[labels[i]]++;
        for (size_t p = 0; p < (size_t)B * PIXELS; p++) sum += images[p], sum2 += (double)images[p] * images[p];
    }
    free(images);
    double n = (double)d->info.count[split] * PIXELS;
    st->mean = sum / n;
    st->sd = sqrt(sum2 / n - st->mean * st->mean);
    return 0;
}

static int test_mnist_real(void)
{
    /* $DMNIST_MNIST_DIR, else data/mnist in the source tree, else the shared
     * copy next to the repository. */
    char cand[3][1024] = {{0}};
    const char *env = getenv("DMNIST_MNIST_DIR"), *src = getenv("DMNIST_SOURCE_DIR");
    if (env) FMT(cand[0], "%s", env);
    if (src) {
        FMT(cand[1], "%s/data/mnist", src);
        FMT(cand[2], "%s/../shared/data/mnist", src);
    }
    const char *dir = NULL;
    for (int c = 0; c < 3 && !dir; c++) {
        int all = cand[c][0] != 0;
        for (int k = 0; k < 4 && all; k++) all = has_file(cand[c], file_names[k]);
        if (all) dir = cand[c];
    }
    if (!dir) {
        printf("SKIP: no MNIST files in $DMNIST_MNIST_DIR, $DMNIST_SOURCE_DIR/data/mnist or "
               "../shared/data/mnist (run scripts/get-mnist.sh)\n");
        return SKIP_CODE;
    }
    printf("reading MNIST from %s\n", dir);

    static const int want_train[10] = {5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949};
    static const int want_test[10] = {980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009};
    ds d;
    REQUIRE(open_full_mnist(&d, dir, "") == 0, "cannot open MNIST in %s", dir);
    for (int split = 0; split < 2; split++) {
        split_stats st;
        REQUIRE(read_split_stats(&d, split, &st) == 0, "cannot read split %d", split);
        const int *want = split ? want_test : want_train;
        for (int c = 0; c < 10; c++)
            REQUIRE(st.counts[c] == want[c], "split %d class %d: %d examples, want %d", split, c, st.counts[c],
                    want[c]);
        /* Standardized with the training statistics: mean 0, std 1 on train. */
        printf("split %d: per-class counts match; standardized mean %.4f std %.4f\n", split, st.mean, st.sd);
        if (split == DM_SPLIT_TRAIN)
            REQUIRE(fabs(st.mean) < 2e-3 && fabs(st.sd - 1.0) < 2e-3, "train mean %g std %g", st.mean, st.sd);
    }
    ds_close(&d);
    return 0;
}

/* Fashion-MNIST through the same plugin, from $DMNIST_FASHION_DIR or the
 * Debian package's folder (skipped when neither holds it): 6000 training and
 * 1000 test images per class (MNIST's classes are uneven), and its own pixel
 * statistics, given through the mean and std keys. */
static int test_fashion_real(void)
{
    const char *env = getenv("DMNIST_FASHION_DIR");
    const char *dir = env && env[0] ? env : "/usr/share/datasets/fashion-mnist";
    for (int k = 0; k < 4; k++)
        if (!has_file(dir, file_names[k])) {
            printf("SKIP: no Fashion-MNIST in %s (apt-get install dataset-fashion-mnist, or set "
                   "DMNIST_FASHION_DIR)\n",
                   dir);
            return SKIP_CODE;
        }
    printf("reading Fashion-MNIST from %s\n", dir);
    ds d;
    REQUIRE(open_full_mnist(&d, dir, " mean=0.2860 std=0.3530") == 0, "cannot open Fashion-MNIST in %s", dir);
    for (int split = 0; split < 2; split++) {
        split_stats st;
        REQUIRE(read_split_stats(&d, split, &st) == 0, "cannot read split %d", split);
        for (int c = 0; c < 10; c++)
            REQUIRE(st.counts[c] == (split ? 1000 : 6000), "split %d class %d: %d examples", split, c, st.counts[c]);
        const double mean = st.mean, sd = st.sd;
        printf("split %d: 10 classes of %d; standardized mean %.4f std %.4f\n", split, split ? 1000 : 6000, mean, sd);
        if (split == DM_SPLIT_TRAIN)
            REQUIRE(fabs(mean) < 2e-3 && fabs(sd - 1.0) < 2e-3, "train mean %g std %g", mean, sd);
    }
    ds_close(&d);
    return 0;
}

/* ---- synthetic ------------------------------------------------------------- */

static int test_synthetic_deterministic(void)
{
    dm_error err = {0};
    ds a, b, c;
    REQUIRE(ds_open(&a, "synthetic", "", 123, NULL, &err) == DM_OK, "%s", err.msg);
    REQUIRE(ds_open(&b, "synthetic", "", 123, NULL, &err) == DM_OK, "%s", err.msg);
    REQUIRE(ds_open(&c, "synthetic", "", 124, NULL, &err) == DM_OK, "%s", err.msg);
    REQUIRE(a.info.count[0] == 60000 && a.info.count[1] == 10000 && a.info.num_classes == 10 && a.info.item.c == 1 &&
                a.info.item.h == 28 && a.info.item.w == 28,
            "defaults: %lld/%lld, %d classes", (long long)a.info.count[0], (long long)a.info.count[1],
            a.info.num_classes);

    /* Two instances, different batches and order: the same example either way. */
    int64_t ia[3] = {5, 0, 59999}, ib[2] = {59999, 5};
    float xa[3 * PIXELS], xb[2 * PIXELS], xc[3 * PIXELS], xt[3 * PIXELS];
    int32_t la[3], lb[2], lc[3], lt[3];
    REQUIRE(a.vt->read(a.state, DM_SPLIT_TRAIN, ia, 3, xa, la, &err) == DM_OK, "%s", err.msg);
    REQUIRE(b.vt->read(b.state, DM_SPLIT_TRAIN, ib, 2, xb, lb, &err) == DM_OK, "%s", err.msg);
    REQUIRE(c.vt->read(c.state, DM_SPLIT_TRAIN, ia, 3, xc, lc, &err) == DM_OK, "%s", err.msg);
    int64_t it[3] = {5, 0, 9999};
    REQUIRE(a.vt->read(a.state, DM_SPLIT_TEST, it, 3, xt, lt, &err) == DM_OK, "%s", err.msg);
    REQUIRE(la[2] == lb[0] && la[0] == lb[1], "labels differ between instances");
    REQUIRE(memcmp(xa + 2 * PIXELS, xb, PIXELS * sizeof(float)) == 0, "index 59999 differs");
    REQUIRE(memcmp(xa, xb + PIXELS, PIXELS * sizeof(float)) == 0, "index 5 differs");
    REQUIRE(memcmp(xa, xc, sizeof xa) != 0, "seed 123 and 124 give the same images");
    REQUIRE(memcmp(xa, xt, sizeof xa) != 0, "train and test give the same images");
    for (int p = 0; p < 3 * PIXELS; p++)
        REQUIRE(xa[p] >= 0.0f && xa[p] < 1.0f, "pixel %d = %g outside [0, 1)", p, xa[p]);

    int64_t bad = 10000;
    REQUIRE(a.vt->read(a.state, DM_SPLIT_TEST, &bad, 1, xt, lt, &err) == DM_ERR_INVALID,
            "index 10000 of the test split was accepted");
    ds_close(&a), ds_close(&b), ds_close(&c);
    return 0;
}

/* Labels are balanced, and a nearest-class-mean classifier fitted on train
 * examples labels test examples well: there is something to learn. */
static int test_synthetic_learnable(void)
{
    enum { NTRAIN = 2000, NTEST = 500, K = 10 };
    dm_error err = {0};
    ds d;
    REQUIRE(ds_open(&d, "synthetic", "train_size=5000 test_size=1000", 7, NULL, &err) == DM_OK, "%s", err.msg);
    float *x = malloc((size_t)NTRAIN * PIXELS * sizeof(float));
    double *mean = calloc((size_t)K * PIXELS, sizeof(double));
    int32_t *y = malloc(NTRAIN * sizeof(int32_t));
    int64_t *idx = malloc(NTRAIN * sizeof(int64_t));
    int count[K] = {0};
    REQUIRE(x && mean && y && idx, "out of memory");
    for (int i = 0; i < NTRAIN; i++) idx[i] = 3 * i % 5000;
    REQUIRE(d.vt->read(d.state, DM_SPLIT_TRAIN, idx, NTRAIN, x, y, &err) == DM_OK, "%s", err.msg);
    for (int i = 0; i < NTRAIN; i++) {
        REQUIRE(y[i] >= 0 && y[i] < K, "label %d", y[i]);
        count[y[i]]++;
        for (int p = 0; p < PIXELS; p++) mean[y[i] * PIXELS + p] += x[(size_t)i * PIXELS + p];
    }
    for (int c = 0; c < K; c++) {
        REQUIRE(count[c] > NTRAIN / K / 2 && count[c] < NTRAIN / K * 2, "class %d has %d of %d", c, count[c], NTRAIN);
        for (int p = 0; p < PIXELS; p++) mean[c * PIXELS + p] /= count[c];
    }
    for (int i = 0; i < NTEST; i++) idx[i] = i;
    REQUIRE(d.vt->read(d.state, DM_SPLIT_TEST, idx, NTEST, x, y, &err) == DM_OK, "%s", err.msg);
    int right = 0;
    for (int i = 0; i < NTEST; i++) {
        int best = -1;
        double best_d = INFINITY;
        for (int c = 0; c < K; c++) {
            double dist = 0;
            for (int p = 0; p < PIXELS; p++) {
                double e = x[(size_t)i * PIXELS + p] - mean[c * PIXELS + p];
                dist += e * e;
            }
            if (dist < best_d) best_d = dist, best = c;
        }
        right += best == y[i];
    }
    printf("nearest class mean: %d of %d test examples right\n", right, NTEST);
    REQUIRE(right > NTEST * 9 / 10, "only %d of %d right", right, NTEST);
    free(x), free(mean), free(y), free(idx);
    ds_close(&d);
    return 0;
}

static int test_synthetic_shapes(void)
{
    dm_error err = {0};
    ds d;
    REQUIRE(ds_open(&d, "synthetic",
                    "train_size=100 test_size=7 classes=4 channels=3 height=8 "
                    "width=5",
                    1, NULL, &err) == DM_OK,
            "%s", err.msg);
    REQUIRE(d.info.count[0] == 100 && d.info.count[1] == 7 && d.info.num_classes == 4, "counts %lld/%lld classes %d",
            (long long)d.info.count[0], (long long)d.info.count[1], d.info.num_classes);
    REQUIRE(d.info.item.n == 1 && d.info.item.c == 3 && d.info.item.h == 8 && d.info.item.w == 5, "item %dx%dx%dx%d",
            d.info.item.n, d.info.item.c, d.info.item.h, d.info.item.w);
    int64_t idx[7] = {0, 1, 2, 3, 4, 5, 6};
    float x[7 * 3 * 8 * 5];
    int32_t y[7];
    REQUIRE(d.vt->read(d.state, DM_SPLIT_TEST, idx, 7, x, y, &err) == DM_OK, "%s", err.msg);
    for (int i = 0; i < 7; i++) REQUIRE(y[i] >= 0 && y[i] < 4, "label %d of 4 classes", y[i]);
    ds_close(&d);

    /* Out-of-range parameters are refused with the key named. */
    REQUIRE(ds_open(&d, "synthetic", "classes=1", 1, NULL, &err) == DM_ERR_INVALID && strstr(err.msg, "classes"),
            "classes=1: %s", err.msg);
    ds_close(&d);
    return 0;
}

/* ---- driver --------------------------------------------------------------- */

static const test_case cases[] = {
    {"mnist_good_plain", test_mnist_good_plain},
    {"mnist_good_gz", test_mnist_good_gz},
    {"mnist_prefers_plain", test_mnist_prefers_plain},
    {"mnist_config_dir", test_mnist_config_dir},
    {"mnist_corrupt", test_mnist_corrupt},
    {"mnist_bad_gzip", test_mnist_bad_gzip},
    {"mnist_missing", test_mnist_missing},
    {"mnist_real", test_mnist_real},
    {"mnist_data_home", test_mnist_data_home},
    {"mnist_not_found_lists", test_mnist_not_found_lists},
    {"mnist_data_home_world_writable", test_mnist_data_home_world_writable},
    {"fashion_real", test_fashion_real},
    {"synthetic_deterministic", test_synthetic_deterministic},
    {"synthetic_learnable", test_synthetic_learnable},
    {"synthetic_shapes", test_synthetic_shapes},
};

int main(int argc, char **argv)
{
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    const test_case *tc = argc == 2 ? test_find(argv[1], cases, n_cases) : NULL;
    if (!tc) {
        test_usage(argv[0], cases, n_cases);
        return 2;
    }
    if (!(g_reg = test_load_plugins())) return 1;
    const char *tmp = getenv("TMPDIR");
    FMT(g_tmp, "%s/dmnist-datasets-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(g_tmp)) {
        fprintf(stderr, "cannot create a folder under %s\n", tmp ? tmp : "/tmp");
        return 1;
    }
    int rc = tc->fn();
    remove_tmp();
    dm_registry_free(g_reg);
    return rc;
}
