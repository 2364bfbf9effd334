/* The learning-rate schedule. The core owns the learning rate (optimizers
 * receive it in dm_opt_step_ctx.lr), so one schedule serves every optimizer
 * plugin, shows up in the progress line and the metrics, and survives a
 * resume: it depends only on the step number and the run's length.
 *
 *   step s (0-based) of T, warm-up W, decay over D steps (D = T - W unless
 *   decay_steps is set), p = clamp((s - W) / D, 0, 1), m = min_lr_frac:
 *     s < W     : (s + 1) / W                      (linear warm-up)
 *     constant  : 1
 *     linear    : 1 - (1 - m) p
 *     cosine    : m + (1 - m) (1 + cos(pi p)) / 2
 *   A warm-up followed by a linear or cosine decay to 0 is the "one-cycle"
 *   recipe. */
#include "dm_core.h"

#include <math.h>
#include <string.h>

int dm_lr_schedule_kind(const char *name)
{
    if (strcmp(name, "constant") == 0) return DM_LR_CONSTANT;
    if (strcmp(name, "linear") == 0) return DM_LR_LINEAR;
    if (strcmp(name, "cosine") == 0) return DM_LR_COSINE;
    return -1;
}

double dm_lr_factor(const dm_lr_schedule *s, int64_t step, int64_t total_steps)
{
    if (s->warmup_steps > 0 && step < s->warmup_steps) return (double)(step + 1) / (double)s->warmup_steps;
    if (s->kind == DM_LR_CONSTANT) return 1.0;
    int64_t d = s->decay_steps > 0 ? s->decay_steps : total_steps - s->warmup_steps;
    double p = d > 0 ? (double)(step - s->warmup_steps) / (double)d : 1.0;
    if (p < 0) p = 0;
    if (p > 1) p = 1;
    double m = s->min_lr_frac;
    if (s->kind == DM_LR_LINEAR) return 1.0 - (1.0 - m) * p;
    return m + (1.0 - m) * 0.5 * (1.0 + cos(M_PI * p));
}
