/* --tensorboard DIR: TensorBoard event files.
 *
 * An event file is a sequence of TFRecords, each
 *
 *   uint64 length, uint32 masked CRC32C of those 8 bytes,
 *   `length` bytes of data, uint32 masked CRC32C of the data
 *
 * (little-endian), the data being a serialized tensorboard.Event: first one
 * holding file_version "brain.Event:2", then one per step with a Summary of
 * scalar values (simple_value) or a text value (the text plugin's scalar
 * string tensor). The protobuf encoding is protobuf-c's, from
 * core/proto/tensorboard_event.proto (a field-for-field subset of
 * TensorBoard's own schema) compiled by protoc-c at build time.
 *
 * CRC32C (Castagnoli) is a small table here: Debian 12 packages no C
 * library for it (no libcrc32c; zlib's crc32 is the other polynomial), and
 * the records are a few hundred bytes a log line, so speed does not matter.
 */
#define _GNU_SOURCE
#include "dm_core.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- CRC32C ------------------------------------------------------------------ */

static uint32_t crc32c_table[256];

static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1; /* reflected 0x1EDC6F41 */
        crc32c_table[i] = c;
    }
}

uint32_t dm_crc32c(const void *data, size_t n)
{
    if (!crc32c_table[1]) crc32c_init();
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc32c_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

#ifdef DMNIST_HAVE_TENSORBOARD
#include "tensorboard_event.pb-c.h"

struct dm_tb {
    FILE *f;
    char path[4200];
    int failed; /* a write failed: errno_at_fail says why */
    int errno_at_fail;
};

/* TFRecord's masking, so that a CRC of data holding CRCs stays useful. */
static uint32_t masked_crc(const void *data, size_t n)
{
    uint32_t c = dm_crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

/* ---- records ----------------------------------------------------------------- */

static void put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void write_event(dm_tb *tb, const Tensorboard__Event *ev)
{
    if (tb->failed) return;
    size_t n = tensorboard__event__get_packed_size(ev);
    unsigned char *buf = malloc(n + 16);
    if (!buf) {
        tb->failed = 1;
        tb->errno_at_fail = ENOMEM;
        return;
    }
    unsigned char *data = buf + 12;
    tensorboard__event__pack(ev, data);
    put_le(buf, n, 8);
    put_le(buf + 8, masked_crc(buf, 8), 4);
    put_le(data + n, masked_crc(data, n), 4);
    if (fwrite(buf, 1, n + 16, tb->f) != n + 16) {
        tb->failed = 1;
        tb->errno_at_fail = errno ? errno : EIO;
    }
    free(buf);
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* mkdir -p */
static int make_dirs(const char *dir)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
    struct stat sb;
    if (stat(p, &sb) != 0) return -1;
    if (!S_ISDIR(sb.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int dm_tb_open(const char *dir, dm_tb **out, dm_error *err)
{
    *out = NULL;
    if (make_dirs(dir) != 0)
        return dm_fail(err, DM_ERR_IO, "%s: cannot create the TensorBoard folder: %s", dir, strerror(errno));
    dm_tb *tb = calloc(1, sizeof *tb);
    if (!tb) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    /* TensorBoard's own naming: "tfevents" is what its loader looks for;
     * time, host and pid keep two runs' files apart in one folder. */
    snprintf(tb->path, sizeof tb->path, "%s/events.out.tfevents.%lld.%s.%ld.dmnist", dir, (long long)time(NULL), host,
             (long)getpid());
    if (!(tb->f = fopen(tb->path, "wbx"))) {
        int e = errno;
        free(tb);
        return dm_fail(err, DM_ERR_IO, "%s: cannot create: %s", dir, strerror(e));
    }
    Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
    ev.wall_time = wall_now();
    ev.what_case = TENSORBOARD__EVENT__WHAT_FILE_VERSION;
    ev.file_version = "brain.Event:2";
    write_event(tb, &ev);
    *out = tb;
    return dm_tb_flush(tb, err);
}

const char *dm_tb_path(const dm_tb *tb) { return tb ? tb->path : ""; }

/* One Summary event of n values at step. */
static void write_summary(dm_tb *tb, int64_t step, Tensorboard__Summary__Value **values, size_t n)
{
    Tensorboard__Summary s = TENSORBOARD__SUMMARY__INIT;
    s.n_value = n;
    s.value = values;
    Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
    ev.wall_time = wall_now();
    ev.step = step;
    ev.what_case = TENSORBOARD__EVENT__WHAT_SUMMARY;
    ev.summary = &s;
    write_event(tb, &ev);
}

void dm_tb_scalars(dm_tb *tb, int64_t step, const char *const *tags, const double *values, int n)
{
    if (!tb || n <= 0) return;
    Tensorboard__Summary__Value *v = calloc((size_t)n, sizeof *v);
    Tensorboard__Summary__Value **pv = calloc((size_t)n, sizeof *pv);
    if (!v || !pv) {
        free(v);
        free(pv);
        tb->failed = 1;
        tb->errno_at_fail = ENOMEM;
        return;
    }
    for (int i = 0; i < n; i++) {
        tensorboard__summary__value__init(&v[i]);
        v[i].tag = (char *)tags[i];
        v[i].value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
        v[i].simple_value = (float)values[i];
        pv[i] = &v[i];
    }
    write_summary(tb, step, pv, (size_t)n);
    free(v);
    free(pv);
}

void dm_tb_text(dm_tb *tb, int64_t step, const char *tag, const char *markdown)
{
    if (!tb) return;
    Tensorboard__TensorShapeProto shape = TENSORBOARD__TENSOR_SHAPE_PROTO__INIT; /* a scalar */
    ProtobufCBinaryData str = {strlen(markdown), (uint8_t *)markdown};
    Tensorboard__TensorProto t = TENSORBOARD__TENSOR_PROTO__INIT;
    t.dtype = TENSORBOARD__DATA_TYPE__DT_STRING;
    t.tensor_shape = &shape;
    t.n_string_val = 1;
    t.string_val = &str;
    Tensorboard__SummaryMetadata__PluginData pd = TENSORBOARD__SUMMARY_METADATA__PLUGIN_DATA__INIT;
    pd.plugin_name = "text";
    Tensorboard__SummaryMetadata md = TENSORBOARD__SUMMARY_METADATA__INIT;
    md.plugin_data = &pd;
    Tensorboard__Summary__Value v = TENSORBOARD__SUMMARY__VALUE__INIT;
    v.tag = (char *)tag;
    v.metadata = &md;
    v.value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_TENSOR;
    v.tensor = &t;
    Tensorboard__Summary__Value *pv = &v;
    write_summary(tb, step, &pv, 1);
}

int dm_tb_flush(dm_tb *tb, dm_error *err)
{
    if (!tb) return DM_OK;
    if (!tb->failed && fflush(tb->f) != 0) {
        tb->failed = 1;
        tb->errno_at_fail = errno;
    }
    if (tb->failed) return dm_fail(err, DM_ERR_IO, "%s: write failed: %s", tb->path, strerror(tb->errno_at_fail));
    return DM_OK;
}

int dm_tb_close(dm_tb *tb, dm_error *err)
{
    if (!tb) return DM_OK;
    int rc = dm_tb_flush(tb, err);
    if (fclose(tb->f) != 0 && rc == DM_OK)
        rc = dm_fail(err, DM_ERR_IO, "%s: write failed: %s", tb->path, strerror(errno));
    free(tb);
    return rc;
}

#else /* built without protobuf-c */

int dm_tb_open(const char *dir, dm_tb **out, dm_error *err)
{
    *out = NULL;
    return dm_fail(err, DM_ERR_UNSUPPORTED,
                   "--tensorboard %s: this dmnist-run was built without protobuf-c "
                   "(Debian: libprotobuf-c-dev protobuf-c-compiler; scripts/install-deps.sh)",
                   dir);
}
const char *dm_tb_path(const dm_tb *tb)
{
    (void)tb;
    return "";
}
void dm_tb_scalars(dm_tb *tb, int64_t step, const char *const *tags, const double *values, int n)
{
    (void)tb, (void)step, (void)tags, (void)values, (void)n;
}
void dm_tb_text(dm_tb *tb, int64_t step, const char *tag, const char *markdown)
{
    (void)tb, (void)step, (void)tag, (void)markdown;
}
int dm_tb_flush(dm_tb *tb, dm_error *err)
{
    (void)tb, (void)err;
    return DM_OK;
}
int dm_tb_close(dm_tb *tb, dm_error *err)
{
    (void)tb, (void)err;
    return DM_OK;
}

#endif
