/* safetensors (https://github.com/huggingface/safetensors, "Format"):
 *   8 bytes   N, the header's length, unsigned 64-bit little-endian
 *   N bytes   a JSON object, UTF-8: for each tensor
 *               "name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}
 *             (offsets in bytes from the start of the data, end one past),
 *             and optionally "__metadata__": {string: string}; padded with
 *             spaces to a multiple of 8 bytes, as the reference writer does,
 *             so that the data that follows is aligned
 *   the rest  the tensors' bytes, row-major, little-endian, back to back in
 *             header order, no holes (the reference reader refuses gaps).
 * Names must be unique (the builder refuses a tensor written twice). */
#include "export.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A growing string. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *p, size_t len)
{
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + len + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, p, len);
    b->n += len;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *p) { sb_put(b, p, strlen(p)); }

static void sb_fmt(sbuf *b, const char *fmt, long long v1, long long v2)
{
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, fmt, v1, v2);
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void sb_json(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            sb_put(b, e, 2);
        } else if (*p < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", *p);
            sb_put(b, e, 6);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

int ex_write_safetensors(const char *path, const ex_tensor_view *t, int n, const char *const *meta, int n_meta,
                         dm_error *err)
{
    if (!little_endian())
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: safetensors is little-endian; this machine is not", path);
    sbuf h = {0};
    sb_str(&h, "{");
    if (n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json(&h, meta[2 * i]);
            sb_str(&h, ":");
            sb_json(&h, meta[2 * i + 1]);
        }
        sb_str(&h, "}");
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(t[i].name, "__metadata__") == 0) {
            free(h.s);
            return dm_fail(err, DM_ERR_INVALID, "%s: a tensor may not be called __metadata__", path);
        }
        if (n_meta > 0 || i) sb_str(&h, ",");
        sb_json(&h, t[i].name);
        sb_str(&h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < t[i].n_dims; d++) sb_fmt(&h, d ? ",%lld" : "%lld", (long long)t[i].dims[d], 0);
        uint64_t bytes = (uint64_t)t[i].count * sizeof(float);
        sb_fmt(&h, "],\"data_offsets\":[%lld,%lld]}", (long long)off, (long long)(off + bytes));
        off += bytes;
    }
    sb_str(&h, "}");
    while (!h.oom && h.n % 8) sb_str(&h, " ");
    if (h.oom) {
        free(h.s);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)h.n >> (8 * i));

    ex_file ef;
    int rc = ex_file_open(&ef, path, err);
    if (rc) {
        free(h.s);
        return rc;
    }
    int ok = fwrite(len, 1, 8, ef.f) == 8 && fwrite(h.s, 1, h.n, ef.f) == h.n;
    for (int i = 0; ok && i < n; i++) ok = fwrite(t[i].data, sizeof(float), t[i].count, ef.f) == t[i].count;
    free(h.s);
    if (!ok) {
        int e = errno;
        ex_file_abandon(&ef);
        return dm_fail(err, DM_ERR_IO, "%s: cannot write: %s", path, strerror(e));
    }
    return ex_file_commit(&ef, err);
}
