/* Checkpoints: one self-describing file per save, written so that a crash
 * at any moment leaves the previous checkpoint intact. Layout (little-endian):
 *
 *   offset  size  field
 *   0       8     magic "DMNISTCK"
 *   8       4     format version (2; version 1 is still read)
 *   12      4     header bytes that follow (72; 64 in version 1)
 *   16      8     config hash
 *   24      8     step          32  8  epoch        40  8  epoch position
 *   48      8     seed          56  4  world size   60  4  reserved (0)
 *   64      8     n_params      72  8  n_opt        80  8  n_state (version 2+)
 *   88      4*n_params parameters, then 4*n_opt optimizer state, then
 *           4*n_state layer state (version 1: from offset 80, no state)
 *   end-4   4     CRC-32 (zlib) of every byte before it
 */
#define _GNU_SOURCE
#include "dm_core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define CK_MAGIC "DMNISTCK"
#define CK_VERSION 2u /* what the writer writes; the reader takes 1..CK_VERSION */
#define CK_HEADER 88u /* header bytes of CK_VERSION, magic included */

/* Header bytes (magic included) of each version the reader knows. */
static uint32_t header_bytes(uint32_t version) { return version == 1 ? 80u : CK_HEADER; }

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Exactly "ckpt-" + ten digits + ".dmck": nothing else in the folder is
 * taken for a checkpoint (not "ckpt-0000000900-best1.dmck", not a temp
 * file, not "ckpt-12.dmck"), so neither resume nor retention can be led
 * astray by a file that merely starts like one. */
static int is_ckpt_name(const char *name, long long *step)
{
    if (strlen(name) != 20 || strncmp(name, "ckpt-", 5) != 0 || strcmp(name + 15, ".dmck") != 0) return 0;
    long long v = 0;
    for (int i = 5; i < 15; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        v = v * 10 + (name[i] - '0');
    }
    *step = v;
    return 1;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Is dir/name a checkpoint this experiment wrote: a regular file (not a
 * symlink) whose header has our magic, a known version and config_hash? */
static int is_own_checkpoint(int dfd, const char *name, uint64_t config_hash)
{
    struct stat sb;
    if (fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode)) return 0;
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return 0;
    unsigned char h[24];
    ssize_t got = read(fd, h, sizeof h);
    close(fd);
    if (got != (ssize_t)sizeof h || memcmp(h, CK_MAGIC, 8) != 0) return 0;
    uint32_t version = get_u32(h + 8);
    return version >= 1 && version <= CK_VERSION && get_u32(h + 12) == header_bytes(version) - 16 &&
        get_u64(h + 16) == config_hash;
}

/* Sorted steps of the checkpoints in dir; caller frees. With own != NULL,
 * only the files is_own_checkpoint() proves are *own's. */
static int list_steps(const char *dir, const uint64_t *own, long long **steps, int *n)
{
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int cap = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        long long s;
        if (!is_ckpt_name(de->d_name, &s)) continue;
        if (own && !is_own_checkpoint(dirfd(d), de->d_name, *own)) continue;
        if (dm_grow(steps, &cap, *n + 1, sizeof **steps, 16)) {
            rc = -1;
            errno = ENOMEM;
            break;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    if (rc) {
        free(*steps);
        *steps = NULL;
        *n = 0;
        return rc;
    }
    if (*n > 1) qsort(*steps, (size_t)*n, sizeof **steps, cmp_ll);
    return 0;
}

/* Retention: of this experiment's own checkpoints at or below the step just
 * written, keep the newest `keep` (the one just written among them) and
 * delete the rest. Files it cannot prove are its own, and checkpoints of
 * later steps (an earlier, longer run's), are never touched. */
static void apply_retention(const char *dir, uint64_t config_hash, int64_t step, int keep)
{
    long long *steps;
    int n;
    if (keep <= 0 || list_steps(dir, &config_hash, &steps, &n) != 0) return;
    int upto = 0; /* steps[0 .. upto) are <= step */
    while (upto < n && steps[upto] <= step) upto++;
    for (int i = 0; i + keep < upto; i++) {
        char old[4096];
        snprintf(old, sizeof old, "%s/ckpt-%010lld.dmck", dir, steps[i]);
        unlink(old);
    }
    free(steps);
}

/* Test hook (tests/robustness): with DMNIST_TEST_CKPT_PAUSE_STEP=S the
 * writer of step S's checkpoint stops half-way through, so a test can
 * SIGKILL it there and check that nothing readable was lost. */
static void pause_for_test(int64_t step, const char *tmp_path)
{
    const char *s = getenv("DMNIST_TEST_CKPT_PAUSE_STEP");
    if (!s || !s[0] || atoll(s) != step) return;
    fprintf(stderr, "dmnist: test hook: paused while writing %s\n", tmp_path);
    fflush(stderr);
    for (;;) pause();
}

/* A temp file whose writer died (SIGKILL, power loss) is never renamed and
 * never picked by resume; remove it so the folder does not fill up. The
 * writer's pid is its last suffix: only files of dead processes go. */
static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *t = strstr(de->d_name, ".dmck.tmp.");
        if (strncmp(de->d_name, "ckpt-", 5) != 0 || !t) continue;
        char *end;
        long pid = strtol(t + 10, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
}

int dm_checkpoint_write(const char *dir, const dm_ckpt_state *st, const float *params, const float *opt,
                        const float *state, int keep, char *written, size_t written_size, dm_error *err)
{
    if (st->step < 0 || st->step > DM_CKPT_MAX_STEP)
        return dm_fail(err, DM_ERR_INVALID, "%s: step %lld does not fit a checkpoint name (ckpt-<10 digits>.dmck)", dir,
                       (long long)st->step);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return dm_fail(err, DM_ERR_IO, "%s: cannot create checkpoint directory: %s", dir, strerror(errno));
    char final_path[4096], tmp_path[4200];
    snprintf(final_path, sizeof final_path, "%s/ckpt-%010lld.dmck", dir, (long long)st->step);
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp.%ld", final_path, (long)getpid());
    unsigned char h[CK_HEADER] = {0};
    memcpy(h, CK_MAGIC, 8);
    put_u32(h + 8, CK_VERSION);
    put_u32(h + 12, CK_HEADER - 16);
    put_u64(h + 16, st->config_hash);
    put_u64(h + 24, (uint64_t)st->step);
    put_u64(h + 32, (uint64_t)st->epoch);
    put_u64(h + 40, (uint64_t)st->epoch_pos);
    put_u64(h + 48, st->seed);
    put_u32(h + 56, (uint32_t)st->world_size);
    put_u64(h + 64, st->n_params);
    put_u64(h + 72, st->n_opt);
    put_u64(h + 80, st->n_state);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, h, CK_HEADER);
    crc = crc32_z(crc, (const unsigned char *)params, st->n_params * 4);
    if (st->n_opt) crc = crc32_z(crc, (const unsigned char *)opt, st->n_opt * 4);
    if (st->n_state) crc = crc32_z(crc, (const unsigned char *)state, st->n_state * 4);
    unsigned char c4[4];
    put_u32(c4, (uint32_t)crc);

    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return dm_fail(err, DM_ERR_IO, "%s: cannot create: %s", tmp_path, strerror(errno));
    size_t half = st->n_params / 2;
    int bad = write_all(fd, h, CK_HEADER) || write_all(fd, params, half * 4);
    if (!bad) pause_for_test(st->step, tmp_path);
    bad = bad || write_all(fd, params + half, (st->n_params - half) * 4) ||
        (st->n_opt && write_all(fd, opt, st->n_opt * 4)) || (st->n_state && write_all(fd, state, st->n_state * 4)) ||
        write_all(fd, c4, 4);
    const char *what = "write";
    if (!bad && fsync(fd) != 0) {
        bad = 1;
        what = "fsync";
    }
    int e = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
        what = "close";
    }
    if (bad) {
        unlink(tmp_path);
        return dm_fail(err, DM_ERR_IO, "%s: %s failed: %s", tmp_path, what, strerror(e));
    }
    if (rename(tmp_path, final_path) != 0) {
        e = errno;
        unlink(tmp_path);
        return dm_fail(err, DM_ERR_IO, "%s: rename failed: %s", final_path, strerror(e));
    }
    /* The rename is durable only once the folder is: a failure here is an
     * error (the file may vanish at a power cut), except where the file
     * system cannot sync folders at all (EINVAL). */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL)) {
        e = errno;
        if (dfd >= 0) close(dfd);
        return dm_fail(err, DM_ERR_IO, "%s: fsync of the folder after writing %s failed: %s", dir, final_path,
                       strerror(e));
    }
    close(dfd);
    if (written) snprintf(written, written_size, "%s", final_path);

    remove_stale_temps(dir);
    apply_retention(dir, st->config_hash, st->step, keep);
    return DM_OK;
}

int dm_checkpoint_dir_check(const char *dir, dm_error *err)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT) return dm_fail(err, DM_ERR_IO, "%s: checkpoint directory: %s", dir, strerror(errno));
        /* The writer creates it (one level, as mkdir does): its parent must take it. */
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", dir);
        size_t n = strlen(parent);
        while (n > 1 && parent[n - 1] == '/') parent[--n] = 0;
        char *slash = strrchr(parent, '/');
        if (!slash) snprintf(parent, sizeof parent, ".");
        else if (slash == parent) slash[1] = 0;
        else *slash = 0;
        if (stat(parent, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return dm_fail(err, DM_ERR_IO, "%s: cannot create checkpoint directory: %s does not exist", dir, parent);
        if (access(parent, W_OK | X_OK) != 0)
            return dm_fail(err, DM_ERR_IO, "%s: cannot create checkpoint directory in %s: %s", dir, parent,
                           strerror(errno));
        return DM_OK;
    }
    if (!S_ISDIR(sb.st_mode))
        return dm_fail(err, DM_ERR_IO, "%s: cannot open checkpoint directory: %s", dir, strerror(ENOTDIR));
    /* A real write, not access(): root passes access() on a read-only mount. */
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.dmnist-write-test.XXXXXX", dir);
    int fd = mkstemp(probe);
    if (fd < 0) return dm_fail(err, DM_ERR_IO, "%s: checkpoint directory is not writable: %s", dir, strerror(errno));
    close(fd);
    unlink(probe);
    return DM_OK;
}

int dm_checkpoint_latest(const char *dir, char *path, size_t size, dm_error *err)
{
    long long *steps;
    int n;
    if (list_steps(dir, NULL, &steps, &n) != 0)
        return dm_fail(err, DM_ERR_IO, "%s: cannot open checkpoint directory: %s", dir, strerror(errno));
    if (n == 0) {
        free(steps);
        return dm_fail(err, DM_ERR_IO, "%s: no checkpoint (ckpt-*.dmck) to resume from", dir);
    }
    snprintf(path, size, "%s/ckpt-%010lld.dmck", dir, steps[n - 1]);
    free(steps);
    return DM_OK;
}

int dm_checkpoint_read_all(const char *path, dm_ckpt_state *st, float **params, float **opt, float **state,
                           dm_error *err)
{
    *params = *opt = *state = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return dm_fail(err, DM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        fclose(f);
        return dm_fail(err, DM_ERR_IO, "%s: cannot stat", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        fclose(f);
        return dm_fail(err, DM_ERR_IO, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)sb.st_size;
    unsigned char h[CK_HEADER] = {0};
    if (size < 16 || fread(h, 1, 16, f) != 16) {
        fclose(f);
        return dm_fail(err, DM_ERR_FORMAT, "%s: truncated checkpoint (%llu bytes)", path, (unsigned long long)size);
    }
    if (memcmp(h, CK_MAGIC, 8) != 0) {
        fclose(f);
        return dm_fail(err, DM_ERR_FORMAT, "%s: not a dmnist checkpoint (bad magic)", path);
    }
    uint32_t version = get_u32(h + 8), rest = get_u32(h + 12);
    if (version < 1 || version > CK_VERSION) {
        fclose(f);
        return dm_fail(err, DM_ERR_FORMAT,
                       "%s: checkpoint format version %u is not supported (this dmnist "
                       "reads versions 1 to %u)",
                       path, version, CK_VERSION);
    }
    const uint32_t head = header_bytes(version);
    if (rest != head - 16) {
        fclose(f);
        return dm_fail(err, DM_ERR_FORMAT,
                       "%s: corrupt checkpoint header: it says %u header bytes follow, "
                       "version %u has %u",
                       path, rest, version, head - 16);
    }
    if (size < head + 4 || fread(h + 16, 1, head - 16, f) != head - 16) {
        fclose(f);
        return dm_fail(err, DM_ERR_FORMAT, "%s: truncated checkpoint (%llu bytes)", path, (unsigned long long)size);
    }
    st->version = version;
    st->config_hash = get_u64(h + 16);
    st->step = (int64_t)get_u64(h + 24);
    st->epoch = (int64_t)get_u64(h + 32);
    st->epoch_pos = (int64_t)get_u64(h + 40);
    st->seed = get_u64(h + 48);
    st->world_size = (int32_t)get_u32(h + 56);
    st->n_params = get_u64(h + 64);
    st->n_opt = get_u64(h + 72);
    st->n_state = version >= 2 ? get_u64(h + 80) : 0; /* version 1 had no layer state */
    /* Every field is range-checked before anything uses it: a file with a
     * valid checksum can still be crafted. */
    if (st->step < 0 || st->step > DM_CKPT_MAX_STEP || st->epoch < 0 || st->epoch > st->step || st->epoch_pos < 0 ||
        st->world_size < 1) {
        fclose(f);
        return dm_fail(err, DM_ERR_FORMAT,
                       "%s: corrupt checkpoint header: step %lld, epoch %lld, epoch position "
                       "%lld, world size %d (need 0 <= epoch <= step <= %lld, position >= 0, world size >= 1)",
                       path, (long long)st->step, (long long)st->epoch, (long long)st->epoch_pos, (int)st->world_size,
                       (long long)DM_CKPT_MAX_STEP);
    }
    /* Sizes are checked against the file before anything is allocated (each
     * count is at most size/4, so their sum cannot overflow). */
    if (st->n_params > (size / 4) || st->n_opt > (size / 4) || st->n_state > (size / 4) ||
        head + 4 * (st->n_params + st->n_opt + st->n_state) + 4 != size) {
        fclose(f);
        return dm_fail(err, DM_ERR_FORMAT,
                       "%s: truncated or padded checkpoint: header says %llu + %llu + %llu "
                       "floats, file has %llu bytes",
                       path, (unsigned long long)st->n_params, (unsigned long long)st->n_opt,
                       (unsigned long long)st->n_state, (unsigned long long)size);
    }
    float *p = malloc(st->n_params * 4 + 4), *o = malloc(st->n_opt * 4 + 4), *s = malloc(st->n_state * 4 + 4);
    unsigned char c4[4];
    if (!p || !o || !s) {
        free(p);
        free(o);
        free(s);
        fclose(f);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    if (fread(p, 4, st->n_params, f) != st->n_params || fread(o, 4, st->n_opt, f) != st->n_opt ||
        fread(s, 4, st->n_state, f) != st->n_state || fread(c4, 1, 4, f) != 4) {
        free(p);
        free(o);
        free(s);
        fclose(f);
        return dm_fail(err, DM_ERR_IO, "%s: read error", path);
    }
    fclose(f);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, h, head);
    crc = crc32_z(crc, (const unsigned char *)p, st->n_params * 4);
    crc = crc32_z(crc, (const unsigned char *)o, st->n_opt * 4);
    crc = crc32_z(crc, (const unsigned char *)s, st->n_state * 4);
    if ((uint32_t)crc != get_u32(c4)) {
        free(p);
        free(o);
        free(s);
        return dm_fail(err, DM_ERR_FORMAT, "%s: checksum mismatch: the checkpoint is corrupt", path);
    }
    *params = p;
    *opt = o;
    *state = s;
    return DM_OK;
}

int dm_checkpoint_check_position(const char *path, const dm_ckpt_state *st, int64_t train_count, dm_error *err)
{
    if (st->epoch_pos < 0 || st->epoch_pos > train_count)
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: checkpoint's epoch position %lld is outside this data set's %lld "
                       "training examples",
                       path, (long long)st->epoch_pos, (long long)train_count);
    return DM_OK;
}

int dm_checkpoint_read(const char *path, dm_ckpt_state *st, float **params, float **opt, dm_error *err)
{
    float *state;
    int rc = dm_checkpoint_read_all(path, st, params, opt, &state, err);
    free(state);
    return rc;
}

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; s && *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001B3ull;
    }
    h ^= 0xFF;
    h *= 0x100000001B3ull; /* separator */
    return h;
}

uint64_t dm_experiment_hash(const dm_experiment *x)
{
    uint64_t h = 0xCBF29CE484222325ull;
    /* The model (layers and their keys) and the optimizer type and keys define
     * what the parameter and state buffers mean; lr, batch, data do not. */
    for (int i = 0; i < x->n_layers; i++) {
        const dm_params *p = dm_param_set_params(x->layers[i].params);
        h = fnv(h, x->layers[i].lc->component->type_name);
        for (int k = 0; k < p->count; k++) {
            h = fnv(h, p->values[k].name);
            h = fnv(h, p->values[k].s);
        }
    }
    const dm_params *p = dm_param_set_params(x->opt.params);
    h = fnv(h, x->opt.lc->component->type_name);
    for (int k = 0; k < p->count; k++) {
        h = fnv(h, p->values[k].name);
        h = fnv(h, p->values[k].s);
    }
    return h;
}
