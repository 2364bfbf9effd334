/* ckpt_tool: look inside dmnist checkpoints from test scripts, through the
 * core's own reader (dm_checkpoint_read), so every check also exercises it.
 *
 *   ckpt_tool info FILE          header fields, FNV-1a hashes of the parameter
 *                                and optimizer bytes, and how many of those
 *                                floats are NaN or Inf, one per line
 *   ckpt_tool same A B           exit 0 when the parameters and optimizer
 *                                state are identical bit for bit, else 1 and
 *                                the first differing float
 *   ckpt_tool latest DIR         the file --resume would pick
 *
 * A file the reader refuses prints its one-line message and exits 1. */
#include "dm_core.h"

#include <math.h>
#include <stdlib.h>

static uint64_t fnv_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001B3ull; }
    return h;
}

static uint64_t count_nonfinite(const float *x, uint64_t n)
{
    uint64_t bad = 0;
    for (uint64_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    return bad;
}

static int read_or_say(const char *path, dm_ckpt_state *st, float **p, float **o)
{
    dm_error err = {0};
    if (dm_checkpoint_read(path, st, p, o, &err) != DM_OK) {
        fprintf(stderr, "ckpt_tool: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int info(const char *path)
{
    dm_ckpt_state st;
    float *p, *o;
    if (read_or_say(path, &st, &p, &o)) return 1;
    printf("config_hash=%016llx\nstep=%lld\nepoch=%lld\nepoch_pos=%lld\nseed=%llu\nworld_size=%d\n"
           "n_params=%llu\nn_opt=%llu\nparams_fnv=%016llx\nopt_fnv=%016llx\nnonfinite=%llu\n",
           (unsigned long long)st.config_hash, (long long)st.step, (long long)st.epoch,
           (long long)st.epoch_pos, (unsigned long long)st.seed, st.world_size,
           (unsigned long long)st.n_params, (unsigned long long)st.n_opt,
           (unsigned long long)fnv_bytes(p, st.n_params * 4), (unsigned long long)fnv_bytes(o, st.n_opt * 4),
           (unsigned long long)(count_nonfinite(p, st.n_params) + count_nonfinite(o, st.n_opt)));
    free(p);
    free(o);
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
    float *pa, *oa, *pb, *ob;
    if (read_or_say(a, &sa, &pa, &oa)) return 2;
    if (read_or_say(b, &sb, &pb, &ob)) { free(pa); free(oa); return 2; }
    int rc = 0;
    if (sa.n_params != sb.n_params || sa.n_opt != sb.n_opt) {
        printf("different sizes: %llu+%llu vs %llu+%llu floats\n", (unsigned long long)sa.n_params,
               (unsigned long long)sa.n_opt, (unsigned long long)sb.n_params, (unsigned long long)sb.n_opt);
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
        if (sa.step != sb.step || sa.epoch != sb.epoch || sa.epoch_pos != sb.epoch_pos) {
            printf("positions differ: step/epoch/pos %lld/%lld/%lld vs %lld/%lld/%lld\n", (long long)sa.step,
                   (long long)sa.epoch, (long long)sa.epoch_pos, (long long)sb.step, (long long)sb.epoch,
                   (long long)sb.epoch_pos);
            rc = 1;
        }
    }
    if (rc == 0)
        printf("identical: %llu parameters and %llu optimizer floats\n", (unsigned long long)sa.n_params,
               (unsigned long long)sa.n_opt);
    free(pa); free(oa); free(pb); free(ob);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "info") == 0) return info(argv[2]);
    if (argc == 4 && strcmp(argv[1], "same") == 0) return same(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "latest") == 0) {
        char path[4096];
        dm_error err = {0};
        if (dm_checkpoint_latest(argv[2], path, sizeof path, &err) != DM_OK) {
            fprintf(stderr, "ckpt_tool: %s\n", err.msg);
            return 1;
        }
        printf("%s\n", path);
        return 0;
    }
    fprintf(stderr, "usage: ckpt_tool info FILE | same A B | latest DIR\n");
    return 2;
}
