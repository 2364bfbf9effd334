/* ckpt_tool: look inside dmnist checkpoints from test scripts, through the
 * core's own reader (dm_checkpoint_read_all), so every check also exercises it.
 *
 *   ckpt_tool info FILE          header fields, FNV-1a hashes of the parameter,
 *                                optimizer and layer-state bytes, and how many
 *                                of those floats are NaN or Inf, one per line
 *   ckpt_tool same A B           exit 0 when the parameters, optimizer state
 *                                and layer state are identical bit for bit,
 *                                else 1 and the first differing float
 *   ckpt_tool latest DIR         the file --resume would pick
 *   ckpt_tool v1 IN OUT          write IN again in format version 1 (as a
 *                                dmnist before layer state wrote it), with
 *                                this file's own writer; version 1 has no
 *                                room for layer state, which is dropped
 *   ckpt_tool hash FILE          the FNV-1a 64-bit hash of the parameter bytes
 *                                (info's params_fnv), computed here apart from
 *                                the trainer's train.sync_check_every code
 *   ckpt_tool diff A B           "max_abs <x> rel_l2 <y> n <count> ..." for the
 *                                parameters of A against B (rel_l2 = |A - B| / |B|)
 *   ckpt_tool within A B MAX_ABS REL_L2
 *                                as diff, but exit 1 unless both are within
 *                                the bounds
 *   ckpt_tool set FILE FIELD VALUE
 *                                overwrite one header field (step, epoch,
 *                                epoch_pos, seed, world_size) with any signed
 *                                value, unchecked, and recompute the CRC: a
 *                                crafted file whose checksum is valid
 *   ckpt_tool beyond A B MAX_ABS REL_L2
 *                                as diff, but exit 1 unless A and B differ by
 *                                more than either bound (a control: the
 *                                tolerance must tell trajectories apart)
 *
 * A file the reader refuses prints its one-line message and exits 1 (info,
 * latest, v1) or 2 (same, hash, diff, within, beyond). A bad command line
 * exits 2. */
#include "dm_core.h"

#include <math.h>
#include <stdlib.h>
#include <zlib.h>

static uint64_t fnv_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static uint64_t count_nonfinite(const float *x, uint64_t n)
{
    uint64_t bad = 0;
    for (uint64_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    return bad;
}

static int read_or_say(const char *path, dm_ckpt_state *st, float **p, float **o, float **s)
{
    dm_error err = {0};
    if (dm_checkpoint_read_all(path, st, p, o, s, &err) != DM_OK) {
        fprintf(stderr, "ckpt_tool: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* The parameters alone, or NULL after saying why. */
static float *read_params(const char *path, dm_ckpt_state *st)
{
    float *p, *o, *s;
    if (read_or_say(path, st, &p, &o, &s)) return NULL;
    free(o);
    free(s);
    return p;
}

static int info(const char *path)
{
    dm_ckpt_state st;
    float *p, *o, *s;
    if (read_or_say(path, &st, &p, &o, &s)) return 1;
    printf("version=%u\nconfig_hash=%016llx\nstep=%lld\nepoch=%lld\nepoch_pos=%lld\nseed=%llu\nworld_size=%d\n"
           "n_params=%llu\nn_opt=%llu\nn_state=%llu\nparams_fnv=%016llx\nopt_fnv=%016llx\nstate_fnv=%016llx\n"
           "nonfinite=%llu\n",
           st.version, (unsigned long long)st.config_hash, (long long)st.step, (long long)st.epoch,
           (long long)st.epoch_pos, (unsigned long long)st.seed, st.world_size, (unsigned long long)st.n_params,
           (unsigned long long)st.n_opt, (unsigned long long)st.n_state,
           (unsigned long long)fnv_bytes(p, st.n_params * 4), (unsigned long long)fnv_bytes(o, st.n_opt * 4),
           (unsigned long long)fnv_bytes(s, st.n_state * 4),
           (unsigned long long)(count_nonfinite(p, st.n_params) + count_nonfinite(o, st.n_opt) +
                                count_nonfinite(s, st.n_state)));
    free(p);
    free(o);
    free(s);
    return 0;
}

static int hash(const char *path)
{
    dm_ckpt_state st;
    float *p = read_params(path, &st);
    if (!p) return 2;
    printf("%016llx\n", (unsigned long long)fnv_bytes(p, st.n_params * sizeof(float)));
    free(p);
    return 0;
}

/* First index where the two float arrays differ bit for bit, or -1. */
static long long first_diff(const float *a, const float *b, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) return (long long)i;
    return -1;
}

static int same(const char *a, const char *b)
{
    dm_ckpt_state sa, sb;
    float *pa, *oa, *sta, *pb, *ob, *stb;
    if (read_or_say(a, &sa, &pa, &oa, &sta)) return 2;
    if (read_or_say(b, &sb, &pb, &ob, &stb)) {
        free(pa);
        free(oa);
        free(sta);
        return 2;
    }
    int rc = 0;
    if (sa.n_params != sb.n_params || sa.n_opt != sb.n_opt || sa.n_state != sb.n_state) {
        printf("different sizes: %llu+%llu+%llu vs %llu+%llu+%llu floats\n", (unsigned long long)sa.n_params,
               (unsigned long long)sa.n_opt, (unsigned long long)sa.n_state, (unsigned long long)sb.n_params,
               (unsigned long long)sb.n_opt, (unsigned long long)sb.n_state);
        rc = 1;
    } else {
        long long d = first_diff(pa, pb, sa.n_params);
        if (d >= 0) {
            printf("parameter %lld differs: %.9g vs %.9g\n", d, (double)pa[d], (double)pb[d]);
            rc = 1;
        }
        d = first_diff(oa, ob, sa.n_opt);
        if (d >= 0) {
            printf("optimizer state %lld differs: %.9g vs %.9g\n", d, (double)oa[d], (double)ob[d]);
            rc = 1;
        }
        d = first_diff(sta, stb, sa.n_state);
        if (d >= 0) {
            printf("layer state %lld differs: %.9g vs %.9g\n", d, (double)sta[d], (double)stb[d]);
            rc = 1;
        }
        if (sa.step != sb.step || sa.epoch != sb.epoch || sa.epoch_pos != sb.epoch_pos) {
            printf("positions differ: step/epoch/pos %lld/%lld/%lld vs %lld/%lld/%lld\n", (long long)sa.step,
                   (long long)sa.epoch, (long long)sa.epoch_pos, (long long)sb.step, (long long)sb.epoch,
                   (long long)sb.epoch_pos);
            rc = 1;
        }
    }
    if (rc == 0)
        printf("identical: %llu parameters, %llu optimizer floats and %llu layer-state floats\n",
               (unsigned long long)sa.n_params, (unsigned long long)sa.n_opt, (unsigned long long)sa.n_state);
    free(pa);
    free(oa);
    free(sta);
    free(pb);
    free(ob);
    free(stb);
    return rc;
}

/* diff / within / beyond: how far A's parameters are from B's. With bounds
 * (within > 0: must be inside; within < 0: must be outside), exit 1 when not. */
static int diff(const char *pa, const char *pb, int within, double max_abs_bound, double rel_bound)
{
    dm_ckpt_state sa, sb;
    float *a = read_params(pa, &sa), *b = read_params(pb, &sb);
    if (!a || !b) {
        free(a);
        free(b);
        return 2;
    }
    if (sa.n_params != sb.n_params) {
        fprintf(stderr, "ckpt_tool: %s holds %llu parameters, %s %llu\n", pa, (unsigned long long)sa.n_params, pb,
                (unsigned long long)sb.n_params);
        free(a);
        free(b);
        return 2;
    }
    /* double sums: 10^5..10^6 squared differences */
    double max_abs = 0, d2 = 0, b2 = 0;
    for (uint64_t i = 0; i < sa.n_params; i++) {
        double d = (double)a[i] - (double)b[i];
        if (!isfinite(d)) d = INFINITY;
        if (fabs(d) > max_abs) max_abs = fabs(d);
        d2 += d * d;
        b2 += (double)b[i] * (double)b[i];
    }
    double rel = b2 > 0 ? sqrt(d2 / b2) : sqrt(d2);
    printf("max_abs %.3g rel_l2 %.3g n %llu (steps %lld and %lld)\n", max_abs, rel, (unsigned long long)sa.n_params,
           (long long)sa.step, (long long)sb.step);
    free(a);
    free(b);
    if (within > 0) return max_abs <= max_abs_bound && rel <= rel_bound ? 0 : 1;
    if (within < 0) return max_abs > max_abs_bound || rel > rel_bound ? 0 : 1;
    return 0;
}

static void put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Format version 1, byte by byte as docs/checkpoints.md describes it. */
static int write_v1(const char *in, const char *out)
{
    dm_ckpt_state st;
    float *p, *o, *s;
    if (read_or_say(in, &st, &p, &o, &s)) return 1;
    unsigned char h[80] = {0};
    memcpy(h, "DMNISTCK", 8);
    put_le(h + 8, 1, 4);
    put_le(h + 12, 64, 4);
    put_le(h + 16, st.config_hash, 8);
    put_le(h + 24, (uint64_t)st.step, 8);
    put_le(h + 32, (uint64_t)st.epoch, 8);
    put_le(h + 40, (uint64_t)st.epoch_pos, 8);
    put_le(h + 48, st.seed, 8);
    put_le(h + 56, (uint32_t)st.world_size, 4);
    put_le(h + 64, st.n_params, 8);
    put_le(h + 72, st.n_opt, 8);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, h, sizeof h);
    crc = crc32_z(crc, (const unsigned char *)p, st.n_params * 4);
    crc = crc32_z(crc, (const unsigned char *)o, st.n_opt * 4);
    unsigned char c4[4];
    put_le(c4, (uint32_t)crc, 4);
    FILE *f = fopen(out, "wb");
    int bad = !f || fwrite(h, 1, sizeof h, f) != sizeof h || fwrite(p, 4, st.n_params, f) != st.n_params ||
        fwrite(o, 4, st.n_opt, f) != st.n_opt || fwrite(c4, 1, 4, f) != 4;
    if (f && fclose(f) != 0) bad = 1;
    if (bad) fprintf(stderr, "ckpt_tool: %s: cannot write\n", out);
    else printf("wrote %s (format 1, %llu layer-state floats dropped)\n", out, (unsigned long long)st.n_state);
    free(p);
    free(o);
    free(s);
    return bad;
}

/* set: the raw bytes, one field replaced, the CRC made right again. */
static int set_field(const char *path, const char *field, const char *value)
{
    static const struct {
        const char *name;
        int offset, bytes;
    } fields[] = {{"step", 24, 8}, {"epoch", 32, 8}, {"epoch_pos", 40, 8}, {"seed", 48, 8}, {"world_size", 56, 4}};
    int k = -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(field, fields[i].name) == 0) k = i;
    char *end;
    long long v = strtoll(value, &end, 10);
    if (k < 0 || !value[0] || *end) {
        fprintf(stderr, "ckpt_tool: set: bad field or value\n");
        return 2;
    }
    FILE *f = fopen(path, "r+b");
    if (!f) {
        fprintf(stderr, "ckpt_tool: %s: cannot open\n", path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    unsigned char *b = size >= 92 ? malloc((size_t)size) : NULL;
    int bad = !b || fseek(f, 0, SEEK_SET) != 0 || fread(b, 1, (size_t)size, f) != (size_t)size;
    if (!bad) {
        put_le(b + fields[k].offset, (uint64_t)v, fields[k].bytes);
        put_le(b + size - 4, (uint32_t)crc32(crc32(0L, Z_NULL, 0), b, (uInt)(size - 4)), 4);
        bad = fseek(f, 0, SEEK_SET) != 0 || fwrite(b, 1, (size_t)size, f) != (size_t)size;
    }
    if (fclose(f) != 0) bad = 1;
    free(b);
    if (bad) fprintf(stderr, "ckpt_tool: %s: cannot rewrite\n", path);
    return bad;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (argc == 3 && strcmp(cmd, "info") == 0) return info(argv[2]);
    if (argc == 4 && strcmp(cmd, "same") == 0) return same(argv[2], argv[3]);
    if (argc == 4 && strcmp(cmd, "v1") == 0) return write_v1(argv[2], argv[3]);
    if (argc == 3 && strcmp(cmd, "hash") == 0) return hash(argv[2]);
    if (argc == 5 && strcmp(cmd, "set") == 0) return set_field(argv[2], argv[3], argv[4]);
    if (argc == 4 && strcmp(cmd, "diff") == 0) return diff(argv[2], argv[3], 0, 0, 0);
    if (argc == 6 && (strcmp(cmd, "within") == 0 || strcmp(cmd, "beyond") == 0)) {
        char *e1, *e2;
        double max_abs = strtod(argv[4], &e1), rel = strtod(argv[5], &e2);
        if (!*e1 && !*e2 && max_abs >= 0 && rel >= 0)
            return diff(argv[2], argv[3], cmd[0] == 'w' ? 1 : -1, max_abs, rel);
    }
    if (argc == 3 && strcmp(cmd, "latest") == 0) {
        char path[4096];
        dm_error err = {0};
        if (dm_checkpoint_latest(argv[2], path, sizeof path, &err) != DM_OK) {
            fprintf(stderr, "ckpt_tool: %s\n", err.msg);
            return 1;
        }
        printf("%s\n", path);
        return 0;
    }
    fprintf(stderr,
            "usage: ckpt_tool info FILE | same A B | latest DIR | v1 IN OUT | hash FILE | diff A B |\n"
            "                 set FILE FIELD VALUE |\n"
            "                 within A B MAX_ABS REL_L2 | beyond A B MAX_ABS REL_L2\n");
    return 2;
}
