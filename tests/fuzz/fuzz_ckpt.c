/* Fuzz target: the checkpoint reader (dm_checkpoint_latest + read).
 *
 * Input: one flag byte, then the file. Flag bit 0 rewrites the last four
 * bytes as the right CRC-32, so inputs also get past the checksum and reach
 * the size checks and allocations behind it. Flag bit 1 is the
 * structure-aware mode: the input is not the file but the header's field
 * values (step, epoch, epoch position, world size, small float counts),
 * from which a well-formed file with the right sizes and CRC is built, so
 * every input reaches the range checks on the fields (and
 * dm_checkpoint_check_position against a 100-example data set).
 * Every refusal must be one non-empty line; an accepted file must match its
 * header's sizes and hold only fields a resume can use. */
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
    uint8_t *buf;
    if (flags & 2) {
        /* step, epoch, epoch_pos (8 bytes each), world size (4), then one byte
         * each for n_params, n_opt, n_state (0..15 floats); missing bytes are 0. */
        uint8_t f[31] = {0};
        memcpy(f, data, size < sizeof f ? size : sizeof f);
        uint64_t np = f[28] & 15, no = f[29] & 15, ns = f[30] & 15;
        size = 88 + 4 * (np + no + ns) + 4;
        buf = calloc(1, size);
        if (!buf) abort();
        memcpy(buf, "DMNISTCK", 8);
        buf[8] = 2;
        buf[12] = 72;
        memcpy(buf + 24, f, 28); /* step, epoch, epoch_pos, world size: little-endian as given */
        buf[64] = (uint8_t)np;
        buf[72] = (uint8_t)no;
        buf[80] = (uint8_t)ns;
        flags |= 1; /* and the right CRC */
    } else {
        buf = malloc(size ? size : 1);
        if (!buf) abort();
        if (size) memcpy(buf, data, size);
    }
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
        /* No field a resume uses may be out of range once accepted. */
        if (st.step < 0 || st.step > DM_CKPT_MAX_STEP || st.epoch < 0 || st.epoch > st.step || st.epoch_pos < 0 ||
            st.world_size < 1) {
            fprintf(stderr, "accepted impossible fields: step %lld epoch %lld pos %lld world %d\n", (long long)st.step,
                    (long long)st.epoch, (long long)st.epoch_pos, (int)st.world_size);
            abort();
        }
        memset(&err, 0, sizeof err);
        int pos_ok = dm_checkpoint_check_position(latest, &st, 100, &err) == DM_OK;
        if (pos_ok != (st.epoch_pos <= 100) || (!pos_ok && (!err.msg[0] || strchr(err.msg, '\n')))) abort();
        free(p);
        free(o);
        free(s);
    } else {
        if (p || o || s) abort(); /* nothing handed out on failure */
        if (!err.msg[0] || strchr(err.msg, '\n')) {
            fprintf(stderr, "bad message: '%s'\n", err.msg);
            abort();
        }
    }
    return 0;
}
