/* Compare the parameters of dmnist checkpoints (tests/distributed).
 *
 *   ckpt_compare hash FILE
 *       print the FNV-1a 64-bit hash of FILE's parameter bytes, computed
 *       here independently of the trainer's train.sync_check_every code;
 *   ckpt_compare diff A B
 *       print "max_abs <x> rel_l2 <y> n <count>" for the parameters of A
 *       against B (rel_l2 = |A - B| / |B|), exit 0;
 *   ckpt_compare within A B MAX_ABS REL_L2
 *       as diff, but exit 1 unless both are within the bounds;
 *   ckpt_compare beyond A B MAX_ABS REL_L2
 *       as diff, but exit 1 unless A and B differ by more than either bound
 *       (a control: the tolerance must be able to tell trajectories apart).
 *
 * Files are read with the core's dm_checkpoint_read, which checks magic,
 * sizes and checksum. Exit 2 on a bad command line or file.
 */
#include "dm_core.h"

#include <math.h>
#include <stdlib.h>

static uint64_t fnv1a64(const void *buf, size_t bytes)
{
    const unsigned char *p = buf;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static float *load(const char *path, dm_ckpt_state *st)
{
    float *params = NULL, *opt = NULL;
    dm_error err = {0};
    if (dm_checkpoint_read(path, st, &params, &opt, &err) != DM_OK) {
        fprintf(stderr, "ckpt_compare: %s\n", err.msg);
        return NULL;
    }
    free(opt);
    return params;
}

static int usage(void)
{
    fprintf(stderr, "usage: ckpt_compare hash FILE | diff A B | within A B MAX_ABS REL_L2 | "
                    "beyond A B MAX_ABS REL_L2\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "hash") == 0) {
        dm_ckpt_state st;
        float *p = load(argv[2], &st);
        if (!p) return 2;
        printf("%016llx\n", (unsigned long long)fnv1a64(p, st.n_params * sizeof(float)));
        free(p);
        return 0;
    }
    int within = argc == 6 && strcmp(argv[1], "within") == 0;
    int beyond = argc == 6 && strcmp(argv[1], "beyond") == 0;
    if (!(argc == 4 && strcmp(argv[1], "diff") == 0) && !within && !beyond) return usage();
    double max_abs_bound = 0, rel_bound = 0;
    if (within || beyond) {
        char *e1, *e2;
        max_abs_bound = strtod(argv[4], &e1);
        rel_bound = strtod(argv[5], &e2);
        if (*e1 || *e2 || max_abs_bound < 0 || rel_bound < 0) return usage();
    }
    dm_ckpt_state sa, sb;
    float *a = load(argv[2], &sa), *b = load(argv[3], &sb);
    if (!a || !b) { free(a); free(b); return 2; }
    if (sa.n_params != sb.n_params) {
        fprintf(stderr, "ckpt_compare: %s holds %llu parameters, %s %llu\n", argv[2],
                (unsigned long long)sa.n_params, argv[3], (unsigned long long)sb.n_params);
        free(a); free(b);
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
    printf("max_abs %.3g rel_l2 %.3g n %llu (steps %lld and %lld)\n", max_abs, rel,
           (unsigned long long)sa.n_params, (long long)sa.step, (long long)sb.step);
    free(a);
    free(b);
    if (within) return max_abs <= max_abs_bound && rel <= rel_bound ? 0 : 1;
    if (beyond) return max_abs > max_abs_bound || rel > rel_bound ? 0 : 1;
    return 0;
}
