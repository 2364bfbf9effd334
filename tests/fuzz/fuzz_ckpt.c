/* Fuzz target: the checkpoint reader (dm_checkpoint_latest + read).
 *
 * Input: one flag byte, then the file. Flag bit 0 rewrites the last four
 * bytes as the right CRC-32, so inputs also get past the checksum and reach
 * the size checks and allocations behind it. Every refusal must be one
 * non-empty line; an accepted file must match its header's sizes. */
#include "fuzz_util.h"

#include <sys/stat.h>
#include <zlib.h>

#include "dm_core.h"

static volatile float sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t flags = data[0];
    data++;
    size--;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) abort();
    if (size) memcpy(buf, data, size);
    if ((flags & 1) && size >= 4) {
        uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)(size - 4));
        for (int i = 0; i < 4; i++) buf[size - 4 + i] = (uint8_t)(crc >> (8 * i));
    }
    char dir[400], path[512], latest[4096];
    snprintf(dir, sizeof dir, "%s/ck", fuzz_scratch());
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/ckpt-0000000001.dmck", dir);
    fuzz_write(path, buf, size);
    free(buf);

    dm_error err = {0};
    if (dm_checkpoint_latest(dir, latest, sizeof latest, &err) != DM_OK || strcmp(latest, path) != 0) {
        fprintf(stderr, "latest checkpoint not found: %s\n", err.msg);
        abort();
    }
    dm_ckpt_state st;
    float *p = NULL, *o = NULL, *s = NULL;
    memset(&err, 0, sizeof err);
    if (dm_checkpoint_read_all(latest, &st, &p, &o, &s, &err) == DM_OK) {
        /* Accepted: the header's sizes are the file's, and every float is there
         * (header: 80 bytes in format 1, 88 with n_state in format 2). */
        uint64_t head = st.version == 1 ? 80 : 88;
        if (st.version < 1 || st.version > 2 || (st.version == 1 && st.n_state)) abort();
        if (head + 4 * (st.n_params + st.n_opt + st.n_state) + 4 != size) abort();
        float sum = 0;
        for (uint64_t i = 0; i < st.n_params; i++) sum += p[i];
        for (uint64_t i = 0; i < st.n_opt; i++) sum += o[i];
        for (uint64_t i = 0; i < st.n_state; i++) sum += s[i];
        sink = sum; /* every float was readable (ASan checks) */
        free(p);
        free(o);
        free(s);
    } else {
        if (p || o || s) abort(); /* nothing handed out on failure */
        if (!err.msg[0] || strchr(err.msg, '\n')) { fprintf(stderr, "bad message: '%s'\n", err.msg); abort(); }
    }
    return 0;
}
