/* Stochastic gradient descent with optional momentum, Nesterov momentum and
 * L2 weight decay, following PyTorch's torch.optim.SGD (dampening 0):
 *
 *   g = grad + weight_decay * p
 *   if momentum > 0:  b = momentum * b + g          (b starts at 0, so b_1 = g)
 *                     g = nesterov ? g + momentum * b : b
 *   p = p - lr * g
 *
 * The learning rate comes from the core in dm_opt_step_ctx.lr each step.
 * State: one float per parameter (the velocity b) when momentum > 0.
 */
#include <stdlib.h>

#include "dmnist/dmnist.h"
#include "dmnist/optimizer_util.h"

#define SGD_DEVICES DM_DEVICES_BUILT
#ifdef DM_WITH_CUDA
/* sgd_cuda.cu: the three update rules below as one kernel on `stream`. */
int sgd_update_cuda(float *p, const float *g, float *velocity, size_t n, float lr, float wd, float mu, int nesterov,
                    void *stream, dm_error *err);
#endif

typedef struct sgd_state {
    float momentum;
    float weight_decay;
    int nesterov;
    dm_opt_buffer buf; /* param_count, device, num_threads */
    float *velocity;   /* buf.param_count floats when momentum > 0, else NULL */
} sgd_state;

static const dm_param_def sgd_params[] = {
    {"momentum", DM_PARAM_FLOAT, "0", 0.0, 1.0, NULL, "momentum factor in [0, 1); 0 = plain SGD"},
    {"nesterov", DM_PARAM_BOOL, "false", 0, -1, NULL, "Nesterov momentum (needs momentum > 0)"},
    {"weight_decay", DM_PARAM_FLOAT, "0", 0.0, 1.0, NULL, "L2 penalty: weight_decay * param is added to the gradient"},
    DM_PARAM_END};

static int sgd_create(const dm_params *params, const dm_optimizer_config *cfg, void **state, dm_optimizer_info *info,
                      dm_error *err)
{
    DM_TRY(dm_optimizer_check_create("sgd", SGD_DEVICES, cfg, err));
    double momentum = dm_param_float(params, "momentum", 0.0);
    double weight_decay = dm_param_float(params, "weight_decay", 0.0);
    int nesterov = (int)dm_param_int(params, "nesterov", 0);

    if (!(momentum >= 0.0 && momentum < 1.0))
        return dm_fail(err, DM_ERR_INVALID, "sgd: momentum %g must be in [0, 1)", momentum);
    if (!(weight_decay >= 0.0)) return dm_fail(err, DM_ERR_INVALID, "sgd: weight_decay %g must be >= 0", weight_decay);
    if (nesterov && momentum == 0.0) return dm_fail(err, DM_ERR_INVALID, "sgd: nesterov = true needs momentum > 0");

    sgd_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "sgd: out of memory");
    s->momentum = (float)momentum;
    s->weight_decay = (float)weight_decay;
    s->nesterov = nesterov;
    s->buf = dm_opt_buffer_of(cfg);
    info->state_floats_per_param = momentum > 0.0 ? 1 : 0;
    *state = s;
    return DM_OK;
}

static int sgd_bind(void *state, float *opt_state, dm_error *err)
{
    sgd_state *s = state;
    DM_TRY(dm_opt_buffer_check_state("sgd", &s->buf, opt_state, s->momentum > 0.0f, err));
    s->velocity = s->momentum > 0.0f ? opt_state : NULL;
    return DM_OK;
}

static int sgd_step(void *state, const dm_opt_step_ctx *ctx, float *params, const float *grads, size_t n, dm_error *err)
{
    sgd_state *s = state;
    DM_TRY(dm_optimizer_check_step("sgd", n, s->buf.param_count, s->momentum > 0.0f && n > 0 && !s->velocity, err));

    const float lr = ctx->lr, wd = s->weight_decay, mu = s->momentum;
#ifdef DM_WITH_CUDA
    if (s->buf.device == DM_DEVICE_CUDA)
        return sgd_update_cuda(params, grads, s->velocity, n, lr, wd, mu, s->nesterov, ctx->cuda_stream, err);
#endif
    const int threads = dm_optimizer_threads(s->buf.num_threads);
    float *restrict p = params;
    const float *restrict g = grads;
    float *restrict b = s->velocity;

    if (mu == 0.0f) {
#pragma omp parallel for simd num_threads(threads) if (n >= DM_OPTIMIZER_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) p[i] -= lr * (g[i] + wd * p[i]);
    } else if (!s->nesterov) {
#pragma omp parallel for simd num_threads(threads) if (n >= DM_OPTIMIZER_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) {
            float d = g[i] + wd * p[i];
            b[i] = mu * b[i] + d;
            p[i] -= lr * b[i];
        }
    } else {
#pragma omp parallel for simd num_threads(threads) if (n >= DM_OPTIMIZER_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) {
            float d = g[i] + wd * p[i];
            b[i] = mu * b[i] + d;
            p[i] -= lr * (d + mu * b[i]);
        }
    }
    return DM_OK;
}

DM_OPTIMIZER_VTABLE(sgd, SGD_DEVICES);

DM_PLUGIN_DEFINE("sgd", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_OPTIMIZER_COMPONENT("sgd", "SGD with momentum, Nesterov and L2 weight decay (PyTorch's formulas)",
                                        sgd_params, &sgd_vtable));
