/* MNIST (or Fashion-MNIST, same files and format) from the four IDX files,
 * plain or gzipped.
 *
 * open() reads both splits into memory once as bytes (47 MB for the
 * training images) and checks every header against the file; read() turns
 * the requested examples into floats. Shuffling and sharding are the core's.
 *
 * IDX (big-endian): images = magic 2051, count, rows, cols, then
 * count*rows*cols bytes; labels = magic 2049, count, then count bytes.
 */
#define _XOPEN_SOURCE 700 /* fileno, fstat, realpath, S_ISVTX */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zlib.h>

#include "dmnist/dataset_util.h"
#include "dmnist/dmnist.h"

#define MNIST_ROWS 28
#define MNIST_COLS 28
#define MNIST_PIXELS (MNIST_ROWS * MNIST_COLS)
#define MNIST_CLASSES 10
#define IDX_IMAGES_MAGIC 2051u
#define IDX_LABELS_MAGIC 2049u
#define MNIST_PATH_MAX 4096

/* Mean and standard deviation of MNIST's training pixels scaled to [0, 1]:
 * the defaults of the mean and std keys (Fashion-MNIST: 0.2860, 0.3530). */
#define MNIST_MEAN 0.1307f
#define MNIST_STD 0.3081f

static const char *const image_files[2] = {"train-images-idx3-ubyte", "t10k-images-idx3-ubyte"};
static const char *const label_files[2] = {"train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"};

typedef struct mnist_split {
    int64_t count;
    uint8_t *images; /* (count, 28, 28) */
    uint8_t *labels; /* (count), each < 10 */
} mnist_split;

typedef struct mnist_state {
    mnist_split split[2]; /* DM_SPLIT_TRAIN, DM_SPLIT_TEST */
    float pixel[256];     /* byte value -> float fed to the network */
} mnist_state;

static const dm_param_def mnist_params[] = {
    {"path", DM_PARAM_STRING, "data/mnist", 0, -1, NULL,
     "folder with the four IDX files (.gz or not); relative: to the current "
     "directory, the INI file's folder, then the data home ($DMNIST_DATA, "
     "~/.local/share/dmnist) without a leading data/"},
    {"standardize", DM_PARAM_BOOL, "false", 0, -1, NULL, "false: pixels in [0, 1]; true: also (x - mean) / std"},
    {"mean", DM_PARAM_FLOAT, "0.1307", 0, 1, NULL,
     "training-pixel mean for standardize (MNIST's; Fashion-MNIST: 0.2860)"},
    {"std", DM_PARAM_FLOAT, "0.3081", 1e-6, 1, NULL,
     "training-pixel standard deviation for standardize (MNIST's; Fashion-MNIST: 0.3530)"},
    DM_PARAM_END};

/* ---- reading one IDX file ---------------------------------------------- */

/* A plain or gzipped file read front to back. */
typedef struct idx_source {
    const char *path;
    FILE *f;   /* plain */
    gzFile gz; /* gzipped */
} idx_source;

/* zlib's message is "<path>: <reason>"; keep the reason. */
static const char *gz_reason(const char *msg, const char *path)
{
    size_t n = strlen(path);
    if (msg && strncmp(msg, path, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') return msg + n + 2;
    return msg ? msg : "unknown zlib error";
}

/* Read up to len bytes into buf and set *got (short only at the end of
 * the data). A corrupt gzip stream is an error, not an early end. */
static int src_read(idx_source *s, void *buf, size_t len, size_t *got, dm_error *err)
{
    size_t done = 0;
    while (done < len) {
        size_t want = len - done;
        if (want > (1u << 30)) want = 1u << 30; /* gzread takes an unsigned int */
        size_t n;
        if (s->gz) {
            int r = gzread(s->gz, (char *)buf + done, (unsigned)want);
            n = r > 0 ? (size_t)r : 0;
            int zerr;
            const char *msg = gzerror(s->gz, &zerr);
            /* zlib reports a stream cut short (Z_BUF_ERROR) only through gzerror. */
            if (r < 0 || zerr != Z_OK)
                return dm_fail(err, DM_ERR_FORMAT, "%s: corrupt gzip data (%s)", s->path, gz_reason(msg, s->path));
        } else {
            n = fread((char *)buf + done, 1, want, s->f);
            if (n < want && ferror(s->f))
                return dm_fail(err, DM_ERR_IO, "%s: read error (%s)", s->path, strerror(errno));
        }
        done += n;
        if (n < want) break;
    }
    *got = done;
    return DM_OK;
}

/* Count the bytes left in the stream without keeping them. */
static int src_count_rest(idx_source *s, uint64_t *rest, dm_error *err)
{
    uint8_t chunk[65536];
    size_t got;
    *rest = 0;
    do {
        int rc = src_read(s, chunk, sizeof chunk, &got, err);
        if (rc != DM_OK) return rc;
        *rest += got;
    } while (got == sizeof chunk);
    return DM_OK;
}

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

/* Open path and work out how many bytes it holds once decompressed, so the
 * header can be checked before anything large is allocated. For gzip that
 * is the trailer's ISIZE (the length modulo 2^32). */
static int src_open(idx_source *s, const char *path, int is_gz, uint64_t *data_len, dm_error *err)
{
    memset(s, 0, sizeof *s);
    s->path = path;
    s->f = fopen(path, "rb");
    if (!s->f) return dm_fail(err, DM_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(s->f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(s->f);
        s->f = NULL;
        return dm_fail(err, DM_ERR_IO, "%s: not a regular file", path);
    }
    *data_len = (uint64_t)st.st_size;
    if (!is_gz) return DM_OK;

    uint8_t head[2], tail[4];
    int ok = st.st_size >= 18 && fread(head, 1, 2, s->f) == 2 && head[0] == 0x1f && head[1] == 0x8b &&
        fseek(s->f, -4, SEEK_END) == 0 && fread(tail, 1, 4, s->f) == 4;
    fclose(s->f);
    s->f = NULL;
    if (!ok) return dm_fail(err, DM_ERR_FORMAT, "%s: not a gzip file", path);
    *data_len = (uint64_t)tail[0] | (uint64_t)tail[1] << 8 | (uint64_t)tail[2] << 16 | (uint64_t)tail[3] << 24;

    s->gz = gzopen(path, "rb");
    if (!s->gz) return dm_fail(err, DM_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    gzbuffer(s->gz, 1u << 17);
    return DM_OK;
}

static void src_close(idx_source *s)
{
    if (s->f) fclose(s->f);
    if (s->gz) gzclose(s->gz);
}

/* Read an IDX file into a new buffer of *count items: images (magic 2051,
 * 28x28 bytes each) when images != 0, else labels (magic 2049, 1 byte). */
static int read_idx(const char *path, int is_gz, int images, int64_t *count, uint8_t **data, dm_error *err)
{
    idx_source src;
    uint64_t file_len = 0;
    int rc = src_open(&src, path, is_gz, &file_len, err);
    if (rc != DM_OK) return rc;

    const size_t header_len = images ? 16 : 8;
    const uint32_t magic_want = images ? IDX_IMAGES_MAGIC : IDX_LABELS_MAGIC;
    const char *what = images ? "images" : "labels";
    uint8_t header[16];
    uint8_t *buf = NULL;
    size_t got;

    rc = src_read(&src, header, header_len, &got, err);
    if (rc != DM_OK) goto done;
    if (got < header_len) {
        rc = dm_fail(err, DM_ERR_FORMAT, "%s: truncated header (%zu bytes, IDX %s need %zu)", path, got, what,
                     header_len);
        goto done;
    }
    uint32_t magic = be32(header), n = be32(header + 4);
    if (magic != magic_want) {
        rc = dm_fail(err, DM_ERR_FORMAT, "%s: bad magic 0x%08x, expected %u (IDX %s)", path, magic, magic_want, what);
        goto done;
    }
    if (images && (be32(header + 8) != MNIST_ROWS || be32(header + 12) != MNIST_COLS)) {
        rc = dm_fail(err, DM_ERR_FORMAT, "%s: images are %ux%u, expected %dx%d", path, be32(header + 8),
                     be32(header + 12), MNIST_ROWS, MNIST_COLS);
        goto done;
    }
    if (n == 0) {
        rc = dm_fail(err, DM_ERR_FORMAT, "%s: header says 0 %s", path, what);
        goto done;
    }

    /* The length the header implies must match the file before we allocate.
     * A plain file's size is exact; a gzip trailer holds the length modulo
     * 2^32, and when it disagrees we measure the stream itself. */
    const size_t item = images ? MNIST_PIXELS : 1;
    const uint64_t body = (uint64_t)n * item, want_len = header_len + body;
    uint64_t have_len = file_len;
    if (is_gz && (want_len & 0xffffffffu) != file_len) {
        uint64_t rest;
        rc = src_count_rest(&src, &rest, err);
        if (rc != DM_OK) goto done;
        have_len = header_len + rest;
    }
    if (have_len != want_len) {
        rc = dm_fail(err, DM_ERR_FORMAT,
                     "%s: %s: header says %u %s (%llu bytes) but the file "
                     "holds %llu bytes%s",
                     path, have_len < want_len ? "truncated" : "trailing bytes", n, what, (unsigned long long)want_len,
                     (unsigned long long)have_len, is_gz ? " once decompressed" : "");
        goto done;
    }

    buf = malloc(body);
    if (!buf) {
        rc = dm_fail(err, DM_ERR_NOMEM, "%s: out of memory for %llu bytes", path, (unsigned long long)body);
        goto done;
    }
    rc = src_read(&src, buf, body, &got, err);
    if (rc != DM_OK) goto done;
    /* A file that changed under us, or a gzip trailer that lies. */
    uint8_t extra;
    size_t got_extra = 0;
    if (got == body) rc = src_read(&src, &extra, 1, &got_extra, err);
    if (rc != DM_OK) goto done;
    if (got != body || got_extra != 0) {
        rc = dm_fail(err, DM_ERR_FORMAT, "%s: %s: header says %u %s (%llu bytes)", path,
                     got != body ? "truncated" : "trailing bytes", n, what, (unsigned long long)want_len);
        goto done;
    }
    *count = n;
    *data = buf;
    buf = NULL;
done:
    free(buf);
    src_close(&src);
    return rc;
}

/* ---- locating the files ------------------------------------------------- */

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int join(char *out, const char *dir, const char *name, const char *suffix, dm_error *err)
{
    int len = snprintf(out, MNIST_PATH_MAX, "%s/%s%s", dir, name, suffix);
    if (len < 0 || len >= MNIST_PATH_MAX)
        return dm_fail(err, DM_ERR_INVALID, "mnist: path too long: %s/%s%s", dir, name, suffix);
    return DM_OK;
}

/* Why path is there but unusable (a symlink loop, no permission, a file
 * where a folder should be, ...), or NULL when it is simply absent. */
static const char *unusable(const char *path, int want_dir)
{
    struct stat st;
    if (stat(path, &st) != 0) return errno == ENOENT ? NULL : strerror(errno);
    if (want_dir && !S_ISDIR(st.st_mode)) return "not a folder";
    if (!want_dir && !S_ISREG(st.st_mode)) return "not a regular file";
    return NULL;
}

/* ---- the data home ------------------------------------------------------ */

/* A relative data.path inside a data home: leading "./" segments and one
 * leading "data/" segment are dropped (the data home stands for a checkout's
 * data/ folder), so "data/mnist" is looked for as <home>/mnist. NULL when
 * nothing is left or a ".." segment would leave the data home. */
static const char *home_relative(const char *path)
{
    while (path[0] == '.' && path[1] == '/')
        for (path += 2; *path == '/'; path++) {}
    if (strncmp(path, "data/", 5) == 0)
        for (path += 5; *path == '/'; path++) {}
    if (path[0] == '\0') return NULL;
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') return NULL;
        p += n;
        while (*p == '/') p++;
    }
    return path;
}

/* A data home's files are read as they are, so a folder or file anyone can
 * write to could feed the run other data without a word. Refuse dir (a
 * folder found in a data home) when it, or one of the IDX files later, is
 * world-writable, or when a folder above it is world-writable without the
 * sticky bit (anyone could rename it away and put another in its place);
 * /tmp-like sticky folders above are fine. */
static int check_not_world_writable(const char *path, int is_folder, dm_error *err)
{
    char real[MNIST_PATH_MAX];
    if (!realpath(path, real)) return dm_fail(err, DM_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (stat(real, &st) != 0) return dm_fail(err, DM_ERR_IO, "%s: %s", real, strerror(errno));
    if (st.st_mode & S_IWOTH)
        return dm_fail(err, DM_ERR_IO,
                       "%s: refused: the %s is in the data home and anyone can "
                       "write to it (world-writable%s); chmod o-w it, or name it in data.path",
                       path, is_folder ? "folder" : "file", strcmp(real, path) ? ", through a symbolic link" : "");
    if (!is_folder) return DM_OK;
    for (char *slash = strrchr(real, '/'); slash; slash = strrchr(real, '/')) {
        if (slash == real) slash[1] = '\0'; /* "/" itself */
        else *slash = '\0';
        if (stat(real, &st) != 0) return dm_fail(err, DM_ERR_IO, "%s: %s", real, strerror(errno));
        if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
            return dm_fail(err, DM_ERR_IO,
                           "%s: refused: the data home folder %s above it can be "
                           "changed by anyone (world-writable, no sticky bit); chmod o-w it",
                           path, real);
        if (slash == real) break;
    }
    return DM_OK;
}

/* ---- locating the folder ------------------------------------------------ */

/* One place searched: the path tried and how it is described. */
typedef struct place {
    char path[MNIST_PATH_MAX];
    char why[64];
    int data_home;
} place;

/* Append s to the string in buf (size bytes), cutting it if needed. */
static void append(char *buf, size_t size, const char *s)
{
    size_t len = strlen(buf), n = strlen(s);
    if (len + 1 >= size) return;
    if (n > size - len - 1) n = size - len - 1;
    memcpy(buf + len, s, n);
    buf[len + n] = '\0';
}

/* Append "path (why)" to the list of places searched, a relative path shown
 * from cwd (NULL: as it is). */
static void list_place(char *list, size_t size, const char *cwd, const place *p)
{
    if (list[0]) append(list, size, ", ");
    if (cwd && p->path[0] != '/') {
        append(list, size, cwd);
        append(list, size, "/");
    }
    append(list, size, p->path);
    if (p->why[0]) {
        append(list, size, " (");
        append(list, size, p->why);
        append(list, size, ")");
    }
}

/* The folder for data.path = path, searched in this order:
 *   1. path itself (absolute, or relative to the current directory);
 *   and for a relative path only:
 *   2. config_dir/path (the INI file's folder);
 *   3. $DMNIST_DATA/<rel>            (when DMNIST_DATA is set and not empty);
 *   4. $XDG_DATA_HOME/dmnist/<rel>   (when XDG_DATA_HOME is an absolute path),
 *      else $HOME/.local/share/dmnist/<rel>;
 * where <rel> is home_relative(path). The first folder found wins; a place
 * that is there but unusable (no permission, not a folder) stops the search
 * with the reason. *data_home tells whether the folder is in a data home. */
static int find_dir(const char *path, const char *config_dir, char *out, int *data_home, dm_error *err)
{
    if (path[0] == '\0') return dm_fail(err, DM_ERR_INVALID, "mnist: path is empty");
    place places[4];
    int n = 0;
    memset(places, 0, sizeof places);
    if (path[0] != '/') snprintf(places[n].why, sizeof places[n].why, "current folder");
    snprintf(places[n++].path, MNIST_PATH_MAX, "%s", path);
    char skipped[160] = "";
    if (path[0] != '/') {
        if (config_dir && config_dir[0]) {
            snprintf(places[n].why, sizeof places[n].why, "INI folder");
            snprintf(places[n++].path, MNIST_PATH_MAX, "%s/%s", config_dir, path);
        }
        const char *rel = home_relative(path);
        const char *env = getenv("DMNIST_DATA");
        const char *xdg = getenv("XDG_DATA_HOME");
        const char *home = getenv("HOME");
        if (!rel) {
            snprintf(skipped, sizeof skipped,
                     "; the data home was not searched: '%s' does not "
                     "name a folder inside it",
                     path);
        } else {
            if (env && env[0]) {
                snprintf(places[n].why, sizeof places[n].why, "$DMNIST_DATA");
                places[n].data_home = 1;
                snprintf(places[n++].path, MNIST_PATH_MAX, "%s/%s", env, rel);
            }
            if (xdg && xdg[0] == '/') {
                snprintf(places[n].why, sizeof places[n].why, "per-user, $XDG_DATA_HOME");
                places[n].data_home = 1;
                snprintf(places[n++].path, MNIST_PATH_MAX, "%s/dmnist/%s", xdg, rel);
            } else if (home && home[0]) {
                snprintf(places[n].why, sizeof places[n].why, "per-user");
                places[n].data_home = 1;
                snprintf(places[n++].path, MNIST_PATH_MAX, "%s/.local/share/dmnist/%s", home, rel);
            }
            if (!(env && env[0])) snprintf(skipped, sizeof skipped, "; DMNIST_DATA is not set");
        }
    }
    for (int k = 0; k < n; k++)
        if (strlen(places[k].path) >= MNIST_PATH_MAX - 1)
            return dm_fail(err, DM_ERR_INVALID, "mnist: path too long: %.200s...", places[k].path);
    for (int k = 0; k < n; k++) {
        const char *cand = places[k].path;
        if (is_dir(cand)) {
            if (places[k].data_home) {
                int rc = check_not_world_writable(cand, 1, err);
                if (rc != DM_OK) return rc;
            }
            memcpy(out, cand, strlen(cand) + 1); /* shorter than MNIST_PATH_MAX - 1 */
            *data_home = places[k].data_home;
            return DM_OK;
        }
        if (unusable(cand, 1)) return dm_fail(err, DM_ERR_IO, "%s: MNIST folder: %s", cand, unusable(cand, 1));
    }
    char list[5 * MNIST_PATH_MAX + 256] = "", cwd[MNIST_PATH_MAX];
    int have_cwd = getcwd(cwd, sizeof cwd) != NULL;
    for (int k = 0; k < n; k++) list_place(list, sizeof list, have_cwd ? cwd : NULL, &places[k]);
    return dm_fail(err, DM_ERR_IO,
                   "%s: MNIST folder not found; looked in %s%s; fetch it "
                   "with scripts/get-mnist.sh%s",
                   path, list, skipped, strstr(path, "fashion") ? " --fashion" : "");
}

/* dir/name if it exists, else dir/name.gz. */
static int find_file(const char *dir, const char *name, char *out, int *is_gz, dm_error *err)
{
    int rc = join(out, dir, name, "", err);
    if (rc != DM_OK) return rc;
    if (is_file(out)) {
        *is_gz = 0;
        return DM_OK;
    }
    rc = join(out, dir, name, ".gz", err);
    if (rc != DM_OK) return rc;
    if (is_file(out)) {
        *is_gz = 1;
        return DM_OK;
    }
    char plain[MNIST_PATH_MAX];
    if (join(plain, dir, name, "", err) == DM_OK && unusable(plain, 0))
        return dm_fail(err, DM_ERR_IO, "%s: %s", plain, unusable(plain, 0));
    if (unusable(out, 0)) return dm_fail(err, DM_ERR_IO, "%s: %s", out, unusable(out, 0));
    return dm_fail(err, DM_ERR_IO,
                   "%s/%s: not found (nor %s.gz); run scripts/get-mnist.sh "
                   "(--fashion for Fashion-MNIST)",
                   dir, name, name);
}

/* ---- the component ------------------------------------------------------ */

static void mnist_close(void *state)
{
    mnist_state *s = state;
    if (!s) return;
    for (int k = 0; k < 2; k++) {
        free(s->split[k].images);
        free(s->split[k].labels);
    }
    free(s);
}

static int load_split(mnist_split *sp, const char *dir, int data_home, int k, dm_error *err)
{
    char img_path[MNIST_PATH_MAX], lab_path[MNIST_PATH_MAX];
    int img_gz, lab_gz;
    int64_t n_img, n_lab;
    int rc = find_file(dir, image_files[k], img_path, &img_gz, err);
    if (rc == DM_OK) rc = find_file(dir, label_files[k], lab_path, &lab_gz, err);
    if (rc == DM_OK && data_home) rc = check_not_world_writable(img_path, 0, err);
    if (rc == DM_OK && data_home) rc = check_not_world_writable(lab_path, 0, err);
    if (rc == DM_OK) rc = read_idx(img_path, img_gz, 1, &n_img, &sp->images, err);
    if (rc == DM_OK) rc = read_idx(lab_path, lab_gz, 0, &n_lab, &sp->labels, err);
    if (rc != DM_OK) return rc;
    if (n_img != n_lab)
        return dm_fail(err, DM_ERR_FORMAT, "%s: %lld labels but %s holds %lld images", lab_path, (long long)n_lab,
                       img_path, (long long)n_img);
    for (int64_t i = 0; i < n_lab; i++)
        if (sp->labels[i] >= MNIST_CLASSES)
            return dm_fail(err, DM_ERR_FORMAT, "%s: label %u at index %lld is not a digit 0-9", lab_path, sp->labels[i],
                           (long long)i);
    sp->count = n_img;
    return DM_OK;
}

static int mnist_open(const dm_params *params, const dm_dataset_config *cfg, void **state, dm_dataset_info *info,
                      dm_error *err)
{
    const char *path = dm_param_str(params, "path", "data/mnist");
    int standardize = (int)dm_param_int(params, "standardize", 0);
    float mean = (float)dm_param_float(params, "mean", MNIST_MEAN);
    float std = (float)dm_param_float(params, "std", MNIST_STD);
    char dir[MNIST_PATH_MAX];
    int data_home = 0;
    int rc = find_dir(path, cfg->config_dir, dir, &data_home, err);
    if (rc != DM_OK) return rc;

    mnist_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "mnist: out of memory");
    for (int k = 0; k < 2; k++) {
        rc = load_split(&s->split[k], dir, data_home, k, err);
        if (rc != DM_OK) {
            mnist_close(s);
            return rc;
        }
    }
    for (int v = 0; v < 256; v++) {
        float x = (float)v / 255.0f;
        s->pixel[v] = standardize ? (x - mean) / std : x;
    }

    info->count[DM_SPLIT_TRAIN] = s->split[DM_SPLIT_TRAIN].count;
    info->count[DM_SPLIT_TEST] = s->split[DM_SPLIT_TEST].count;
    info->item = (dm_shape){1, 1, MNIST_ROWS, MNIST_COLS};
    info->num_classes = MNIST_CLASSES;
    *state = s;
    return DM_OK;
}

static int mnist_read(void *state, dm_split split, const int64_t *idx, int n, float *images, int32_t *labels,
                      dm_error *err)
{
    const mnist_state *s = state;
    const int64_t count[2] = {s->split[DM_SPLIT_TRAIN].count, s->split[DM_SPLIT_TEST].count};
    DM_TRY(dm_dataset_check_read("mnist", split, idx, n, count, err));
    const mnist_split *sp = &s->split[split];
    for (int i = 0; i < n; i++) {
        const int64_t j = idx[i];
        const uint8_t *src = sp->images + (size_t)j * MNIST_PIXELS;
        float *dst = images + (size_t)i * MNIST_PIXELS; /* (1, 28, 28) */
        for (int p = 0; p < MNIST_PIXELS; p++) dst[p] = s->pixel[src[p]];
        labels[i] = sp->labels[j];
    }
    return DM_OK;
}

DM_DATASET_VTABLE(mnist);

DM_PLUGIN_DEFINE("mnist", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE ";zlib",
                 DM_DATASET_COMPONENT("mnist",
                                      "MNIST digits (or Fashion-MNIST) from the IDX files "
                                      "(60000 train, 10000 test, 1x28x28)",
                                      mnist_params, &mnist_vtable));
