/* The core's learning-rate schedule (core/schedule.c) against values worked
 * out by hand, and the [optimizer] keys that select it. */
#include "dm_core.h"

#include <math.h>

static int failures = 0;
#define NEAR(got, want) \
    do { \
        double g_ = (got), w_ = (want); \
        if (!(fabs(g_ - w_) <= 1e-12)) { \
            fprintf(stderr, "FAIL %s:%d: %s = %.15g, want %.15g\n", __FILE__, __LINE__, #got, g_, w_); \
            failures++; \
        } \
    } while (0)

int main(void)
{
    /* constant with a 4-step warm-up: 1/4, 2/4, 3/4, then 1 */
    dm_lr_schedule c = {DM_LR_CONSTANT, 4, 0, 0};
    NEAR(dm_lr_factor(&c, 0, 100), 0.25);
    NEAR(dm_lr_factor(&c, 2, 100), 0.75);
    NEAR(dm_lr_factor(&c, 3, 100), 1.0);
    NEAR(dm_lr_factor(&c, 99, 100), 1.0);

    /* linear over the 10 steps after a 10-step warm-up, down to 0.1 */
    dm_lr_schedule l = {DM_LR_LINEAR, 10, 0, 0.1};
    NEAR(dm_lr_factor(&l, 9, 20), 1.0);  /* last warm-up step */
    NEAR(dm_lr_factor(&l, 10, 20), 1.0); /* p = 0 */
    NEAR(dm_lr_factor(&l, 15, 20), 1.0 - 0.9 * 0.5);
    NEAR(dm_lr_factor(&l, 19, 20), 1.0 - 0.9 * 0.9);
    NEAR(dm_lr_factor(&l, 25, 20), 0.1); /* past the end: held at the floor */

    /* cosine to 0 without warm-up: 1 at the start, 1/2 halfway, 0 at p = 1 */
    dm_lr_schedule k = {DM_LR_COSINE, 0, 0, 0};
    NEAR(dm_lr_factor(&k, 0, 8), 1.0);
    NEAR(dm_lr_factor(&k, 4, 8), 0.5);
    NEAR(dm_lr_factor(&k, 2, 8), 0.5 * (1 + cos(M_PI / 4)));
    NEAR(dm_lr_factor(&k, 8, 8), 0.0);

    /* an explicit decay_steps shorter than the run, then held */
    dm_lr_schedule d = {DM_LR_COSINE, 0, 4, 0.25};
    NEAR(dm_lr_factor(&d, 2, 100), 0.25 + 0.75 * 0.5);
    NEAR(dm_lr_factor(&d, 4, 100), 0.25);
    NEAR(dm_lr_factor(&d, 50, 100), 0.25);

    /* a run no longer than its warm-up: no division by zero */
    dm_lr_schedule w = {DM_LR_LINEAR, 10, 0, 0};
    NEAR(dm_lr_factor(&w, 9, 10), 1.0);
    NEAR(dm_lr_factor(&w, 10, 10), 0.0);

    if (dm_lr_schedule_kind("cosine") != DM_LR_COSINE || dm_lr_schedule_kind("linear") != DM_LR_LINEAR ||
        dm_lr_schedule_kind("constant") != DM_LR_CONSTANT || dm_lr_schedule_kind("step") != -1) {
        fprintf(stderr, "FAIL: dm_lr_schedule_kind\n");
        failures++;
    }
    if (failures) return 1;
    printf("ok: lr schedule\n");
    return 0;
}
