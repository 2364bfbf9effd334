/* Adam in the Keras/TensorFlow form, where the bias correction is folded
 * into the step size and epsilon is added to sqrt(v) uncorrected:
 *
 *   g    = grad + weight_decay * p               (L2, as PyTorch's Adam; not AdamW)
 *   m    = beta1 * m + (1 - beta1) * g
 *   v    = beta2 * v + (1 - beta2) * g^2
 *   lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)  (t = ctx->step, 1-based)
 *   (times lr_decay_rate^((t - 1) / lr_decay_steps) when lr_decay_steps > 0:
 *    Keras's ExponentialDecay, applied on top of the core's lr and warm-up)
 *   p    = p - lr_t * m / (sqrt(v) + epsilon)
 *
 * State: 2 floats per parameter, m in the first n floats and v in the next n,
 * zeroed by the core before step 1.
 */
#include <math.h>
#include <stdlib.h>

#include "dmnist/dmnist.h"
#include "dmnist/optimizer_util.h"

#define ADAM_DEVICES DM_DEVICES_BUILT
/* adam_cuda.cu: adam_update_cpu's update as one fused kernel on `stream`
 * (defined only with DM_WITH_CUDA; DM_CPU_OR_CUDA calls it there alone). */
int adam_update_cuda(float *p, const float *g, float *m, float *v, size_t n, float lr_t, float b1, float b2, float eps,
                     float wd, void *stream, dm_error *err);

typedef struct adam_state {
    float beta1, beta2, epsilon, weight_decay;
    double decay_rate;   /* lr multiplied by decay_rate^((step - 1) / decay_steps) */
    int64_t decay_steps; /* 0: constant lr */
    dm_opt_buffer buf;   /* param_count, device, num_threads */
    float *m;            /* buf.param_count floats */
    float *v;            /* buf.param_count floats, right after m */
} adam_state;

static const dm_param_def adam_params[] = {
    {"beta1", DM_PARAM_FLOAT, "0.9", 0.0, 1.0, NULL, "decay of the first moment, in [0, 1)"},
    {"beta2", DM_PARAM_FLOAT, "0.999", 0.0, 1.0, NULL, "decay of the second moment, in [0, 1)"},
    {"epsilon", DM_PARAM_FLOAT, "1e-7", 0.0, 1.0, NULL, "added to sqrt(v) (Keras/TF default 1e-7)"},
    {"weight_decay", DM_PARAM_FLOAT, "0", 0.0, 1.0, NULL, "L2 penalty: weight_decay * param is added to the gradient"},
    {"lr_decay_rate", DM_PARAM_FLOAT, "1", 0.0, 1.0, NULL,
     "exponential lr decay: lr * rate^((step - 1) / lr_decay_steps), in (0, 1]"},
    {"lr_decay_steps", DM_PARAM_INT, "0", 0, 9e15, NULL,
     "steps over which the lr shrinks by lr_decay_rate (0 = no decay)"},
    DM_PARAM_END};

static int adam_create(const dm_params *params, const dm_optimizer_config *cfg, void **state, dm_optimizer_info *info,
                       dm_error *err)
{
    DM_TRY(dm_optimizer_check_create("adam", ADAM_DEVICES, cfg, err));
    double beta1 = dm_param_float(params, "beta1", 0.9);
    double beta2 = dm_param_float(params, "beta2", 0.999);
    double epsilon = dm_param_float(params, "epsilon", 1e-7);
    double weight_decay = dm_param_float(params, "weight_decay", 0.0);
    double decay_rate = dm_param_float(params, "lr_decay_rate", 1.0);
    int64_t decay_steps = dm_param_int(params, "lr_decay_steps", 0);

    if (!(beta1 >= 0.0 && beta1 < 1.0)) return dm_fail(err, DM_ERR_INVALID, "adam: beta1 %g must be in [0, 1)", beta1);
    if (!(beta2 >= 0.0 && beta2 < 1.0)) return dm_fail(err, DM_ERR_INVALID, "adam: beta2 %g must be in [0, 1)", beta2);
    if (!(epsilon >= 0.0)) return dm_fail(err, DM_ERR_INVALID, "adam: epsilon %g must be >= 0", epsilon);
    if (!(weight_decay >= 0.0)) return dm_fail(err, DM_ERR_INVALID, "adam: weight_decay %g must be >= 0", weight_decay);
    if (!(decay_rate > 0.0 && decay_rate <= 1.0))
        return dm_fail(err, DM_ERR_INVALID, "adam: lr_decay_rate %g must be in (0, 1]", decay_rate);
    if (decay_steps < 0)
        return dm_fail(err, DM_ERR_INVALID, "adam: lr_decay_steps %lld must be >= 0", (long long)decay_steps);

    adam_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "adam: out of memory");
    s->beta1 = (float)beta1;
    s->beta2 = (float)beta2;
    s->epsilon = (float)epsilon;
    s->weight_decay = (float)weight_decay;
    s->decay_rate = decay_rate;
    s->decay_steps = decay_steps;
    s->buf = dm_opt_buffer_of(cfg);
    info->state_floats_per_param = 2;
    *state = s;
    return DM_OK;
}

static int adam_bind(void *state, float *opt_state, dm_error *err)
{
    adam_state *s = state;
    DM_TRY(dm_opt_buffer_check_state("adam", &s->buf, opt_state, 1, err));
    s->m = opt_state;
    s->v = opt_state ? opt_state + s->buf.param_count : NULL;
    return DM_OK;
}

/* The CPU update over n floats; lr_t already holds the bias correction.
 * A CUDA twin (adam_cuda.cu, under DM_WITH_CUDA) takes the same arguments
 * plus the stream, and adam_step picks one by device. */
static void adam_update_cpu(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                            float lr_t, float b1, float b2, float eps, float wd, int threads)
{
#pragma omp parallel for simd num_threads(threads) if (n >= DM_OPTIMIZER_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + wd * p[i];
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] -= lr_t * m[i] / (sqrtf(v[i]) + eps);
    }
}

static int adam_step(void *state, const dm_opt_step_ctx *ctx, float *params, const float *grads, size_t n,
                     dm_error *err)
{
    adam_state *s = state;
    DM_TRY(dm_optimizer_check_step("adam", n, s->buf.param_count, n > 0 && !s->m, err));
    if (ctx->step < 1) return dm_fail(err, DM_ERR_INVALID, "adam: step number %lld must be >= 1", (long long)ctx->step);

    /* Bias correction in double: beta2^t stays accurate for large t. */
    double t = (double)ctx->step;
    double lr_t = (double)ctx->lr * sqrt(1.0 - pow((double)s->beta2, t)) / (1.0 - pow((double)s->beta1, t));
    if (s->decay_steps > 0) lr_t *= pow(s->decay_rate, (t - 1.0) / (double)s->decay_steps);
    return DM_CPU_OR_CUDA(s->buf.device,
                          adam_update_cpu(params, grads, s->m, s->v, n, (float)lr_t, s->beta1, s->beta2, s->epsilon,
                                          s->weight_decay, dm_optimizer_threads(s->buf.num_threads)),
                          adam_update_cuda(params, grads, s->m, s->v, n, (float)lr_t, s->beta1, s->beta2, s->epsilon,
                                           s->weight_decay, ctx->cuda_stream, err));
}

DM_OPTIMIZER_VTABLE(adam, ADAM_DEVICES);

DM_PLUGIN_DEFINE("adam", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_OPTIMIZER_COMPONENT("adam", "Adam, Keras/TF form (bias correction in the step size, epsilon 1e-7)",
                                        adam_params, &adam_vtable));
