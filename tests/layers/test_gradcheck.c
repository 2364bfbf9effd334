/* Gradient checks for every layer plugin, several shapes and settings each.
 *   test_gradcheck <layer>   checks that layer's cases (one ctest per layer)
 *   test_gradcheck broken    proves the checker fails deliberately broken
 *                            backward passes (tampered din or grads) */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct gc_case {
    const char *type, *spec;
    dm_shape in;
    int kinks, training, run_n;
} gc_case;

/* Batch n first; odd sizes, stride 2, 'same' padding, no bias, fused ReLU,
 * chunks that do not divide the batch, and batches smaller than the
 * create-time one. */
static const gc_case cases[] = {
    {"conv2d", "filters=3 kernel=3", {2, 2, 6, 7}, 0, 1, 0},
    {"conv2d", "filters=4 kernel=3 stride=2 padding=same", {2, 3, 7, 5}, 0, 1, 0},
    {"conv2d", "filters=3 kernel=3 stride=2", {2, 2, 8, 8}, 0, 1, 0},
    {"conv2d", "filters=2 kernel=2 bias=false", {3, 1, 5, 5}, 0, 1, 0},
    {"conv2d", "filters=3 kernel=3 activation=relu", {2, 2, 6, 6}, 1, 1, 0},
    {"conv2d", "filters=3 kernel=5 padding=same activation=relu bias=false", {2, 2, 5, 5}, 1, 1, 0},
    {"conv2d", "filters=2 kernel=2 stride=3 padding=same", {2, 2, 7, 8}, 0, 1, 0},
    {"conv2d", "filters=3 kernel=1", {2, 3, 3, 4}, 0, 1, 0},
    {"conv2d", "filters=3 kernel=3 chunk=2", {5, 2, 5, 5}, 0, 1, 0},
    {"conv2d", "filters=2 kernel=3 padding=same chunk=2 activation=relu", {5, 2, 4, 5}, 1, 1, 3},
    {"conv2d", "filters=3 kernel=3 algo=winograd", {2, 2, 6, 9}, 0, 1, 0},
    {"conv2d", "filters=2 kernel=3 padding=same bias=false algo=winograd", {2, 3, 5, 7}, 0, 1, 0},
    {"conv2d", "filters=3 kernel=3 activation=relu algo=winograd chunk=1", {3, 2, 10, 7}, 1, 1, 2},
    {"relu", "", {2, 3, 4, 5}, 1, 1, 0},
    {"relu", "", {3, 7, 1, 1}, 1, 1, 2},
    {"maxpool2d", "", {2, 3, 6, 6}, 1, 1, 0},
    {"maxpool2d", "pool=2", {2, 2, 7, 5}, 1, 1, 0},
    {"maxpool2d", "pool=3 stride=2", {2, 2, 7, 7}, 1, 1, 0},
    {"maxpool2d", "pool=2 stride=1", {1, 2, 5, 6}, 1, 1, 0},
    {"maxpool2d", "pool=3", {3, 1, 9, 7}, 1, 1, 2},
    {"dropout", "rate=0.5", {2, 3, 4, 4}, 0, 1, 0},
    {"dropout", "rate=0.25", {3, 5, 1, 1}, 0, 1, 2},
    {"dropout", "rate=0.5", {2, 3, 4, 4}, 0, 0, 0},
    {"dropout", "rate=0", {2, 2, 3, 3}, 0, 1, 0},
    {"flatten", "", {2, 3, 4, 5}, 0, 1, 0},
    {"flatten", "", {3, 2, 3, 1}, 0, 1, 2},
    {"dense", "units=5", {3, 7, 1, 1}, 0, 1, 0},
    {"dense", "units=4 bias=false", {2, 2, 3, 3}, 0, 1, 0},
    {"dense", "units=6 activation=relu", {4, 10, 1, 1}, 1, 1, 0},
    {"dense", "units=3 activation=relu", {5, 2, 2, 2}, 1, 1, 3},
    {"softmax_cross_entropy", "", {4, 10, 1, 1}, 0, 1, 0},
    {"softmax_cross_entropy", "", {3, 3, 2, 2}, 0, 1, 0},
    {"softmax_cross_entropy", "", {5, 2, 1, 1}, 0, 1, 3},
};

static int run_layer(const char *type)
{
    int ran = 0, bad = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const gc_case *c = &cases[k];
        if (strcmp(c->type, type) != 0) continue;
        ran++;
        gc_options o = {0};
        o.kinks = c->kinks;
        o.training = c->training;
        o.run_n = c->run_n;
        gc_report rep;
        dm_error err = {0};
        int rc = gc_check(c->type, c->spec, c->in, 1000 + k, &o, &rep, &err);
        const int total = rep.checked + rep.skipped;
        printf("%s %s '%s' in (%d,%d,%d,%d) run_n=%d training=%d: checked %d, skipped %d kinks, "
               "worst %.3f of tolerance\n",
               rc != DM_OK || rep.failures ? "FAIL" : "ok", c->type, c->spec, c->in.n, c->in.c, c->in.h, c->in.w,
               c->run_n, c->training, rep.checked, rep.skipped, rep.worst);
        if (rc != DM_OK) {
            printf("  error: %s\n", err.msg);
            bad++;
        } else if (rep.failures) {
            printf("  %d failures; first: %s\n", rep.failures, rep.first_failure);
            bad++;
        } else if (rep.checked == 0 || rep.skipped > 2 + total / 10) {
            printf("  too many points skipped as kinks (%d of %d)\n", rep.skipped, total);
            bad++;
        }
    }
    if (ran == 0) {
        printf("FAIL: no gradient-check cases for layer '%s'\n", type);
        return 1;
    }
    return bad ? 1 : 0;
}

/* ---- deliberately broken backward passes ------------------------------- */

static size_t largest(const float *v, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (fabsf(v[i]) > fabsf(v[best])) best = i;
    return best;
}

static void din_largest_3pct(const gc_buffers *b) { b->din[largest(b->din, dm_shape_count(b->in_shape))] *= 1.03f; }
static void grads_largest_3pct(const gc_buffers *b) { b->grads[largest(b->grads, b->n_params)] *= 1.03f; }
static void grads_swap_first_two(const gc_buffers *b)
{
    float t = b->grads[0];
    b->grads[0] = b->grads[1];
    b->grads[1] = t;
}
static void grads_accumulated(const gc_buffers *b)
{
    for (size_t i = 0; i < b->n_params; i++) b->grads[i] *= 2.0f; /* as if added to a previous identical step */
}
static void din_not_masked(const gc_buffers *b)
{
    memcpy(b->din, b->dout, dm_shape_count(b->in_shape) * sizeof(float));
}
static void din_shifted(const gc_buffers *b)
{
    const size_t n = dm_shape_count(b->in_shape);
    memmove(b->din + 1, b->din, (n - 1) * sizeof(float));
    b->din[0] = 0.0f;
}
static void din_times_n(const gc_buffers *b)
{
    const size_t n = dm_shape_count(b->in_shape);
    for (size_t i = 0; i < n; i++) b->din[i] *= (float)b->in_shape.n;
}
static void din_one_unwritten(const gc_buffers *b) { b->din[dm_shape_count(b->in_shape) / 2] = NAN; }
static void din_zero(const gc_buffers *b) { memset(b->din, 0, dm_shape_count(b->in_shape) * sizeof(float)); }

typedef struct broken_case {
    gc_case c;
    void (*tamper)(const gc_buffers *b);
    const char *what;
} broken_case;

static const broken_case broken[] = {
    {{"conv2d", "filters=3 kernel=3", {2, 2, 6, 7}, 0, 1, 0}, din_largest_3pct, "one din element 3% off"},
    {{"conv2d", "filters=3 kernel=3 activation=relu", {2, 2, 6, 6}, 1, 1, 0},
     grads_largest_3pct,
     "one weight gradient 3% off"},
    {{"conv2d", "filters=4 kernel=3 stride=2 padding=same", {2, 3, 7, 5}, 0, 1, 0},
     grads_accumulated,
     "gradients accumulated instead of overwritten"},
    {{"dense", "units=5", {3, 7, 1, 1}, 0, 1, 0}, grads_swap_first_two, "two weight gradients swapped"},
    {{"dense", "units=6 activation=relu", {4, 10, 1, 1}, 1, 1, 0}, din_largest_3pct, "one din element 3% off"},
    {{"relu", "", {2, 3, 4, 5}, 1, 1, 0}, din_not_masked, "mask forgotten"},
    {{"maxpool2d", "", {2, 3, 6, 6}, 1, 1, 0}, din_shifted, "gradient routed to a neighbour"},
    {{"dropout", "rate=0.5", {2, 3, 4, 4}, 0, 1, 0}, din_not_masked, "mask forgotten"},
    {{"softmax_cross_entropy", "", {4, 10, 1, 1}, 0, 1, 0}, din_times_n, "1/n forgotten"},
    {{"flatten", "", {2, 3, 4, 5}, 0, 1, 0}, din_one_unwritten, "one din element never written"},
    {{"flatten", "", {2, 3, 4, 5}, 0, 1, 0}, din_zero, "din left at zero"},
};

static int run_broken(void)
{
    int bad = 0;
    for (size_t k = 0; k < sizeof broken / sizeof broken[0]; k++) {
        const broken_case *b = &broken[k];
        gc_options o = {0};
        o.kinks = b->c.kinks;
        o.training = b->c.training;
        o.tamper = b->tamper;
        gc_report rep;
        dm_error err = {0};
        int rc = gc_check(b->c.type, b->c.spec, b->c.in, 1000 + k, &o, &rep, &err);
        if (rc != DM_OK) {
            printf("FAIL %s (%s): check did not run: %s\n", b->c.type, b->what, err.msg);
            bad++;
        } else if (rep.failures == 0) {
            printf("FAIL %s '%s' with %s: the checker did not notice (checked %d, skipped %d, "
                   "worst %.3f)\n",
                   b->c.type, b->c.spec, b->what, rep.checked, rep.skipped, rep.worst);
            bad++;
        } else {
            printf("ok   %s '%s' with %s: caught, %d failures, e.g. %s\n", b->c.type, b->c.spec, b->what, rep.failures,
                   rep.first_failure);
        }
    }
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s <layer type>|broken\n", argv[0]);
        return 2;
    }
    return strcmp(argv[1], "broken") == 0 ? run_broken() : run_layer(argv[1]);
}
