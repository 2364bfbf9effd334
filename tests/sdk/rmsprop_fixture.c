/* RMSprop (PyTorch's form, no momentum), for the --reference tests of
 * dmnist-plugin-check:
 *
 *   v = rho * v + (1 - rho) * g^2        (v starts at 0: the core zeroes it)
 *   p = p - lr * g / (sqrt(v) + epsilon)
 *
 * Built a second time with -DBROKEN_RMSPROP, which drops the (1 - rho)
 * factor: a rule that still decreases a quadratic (so the checker's
 * quadratic passes it) but takes steps sqrt(1 / (1 - rho)) times too small.
 * Only the reference mode can tell the two apart. */
#include <dmnist/dmnist.h>
#include <dmnist/optimizer_util.h>

#include <math.h>
#include <stdlib.h>

typedef struct rms_state {
    float rho, eps;
    size_t n;
    float *v;
} rms_state;

static const dm_param_def rms_params[] = {{"rho", DM_PARAM_FLOAT, "0.9", 0.0, 0.999, NULL, "decay of the mean square"},
                                          {"epsilon", DM_PARAM_FLOAT, "1e-8", 0.0, 1.0, NULL, "added to sqrt(v)"},
                                          DM_PARAM_END};

static int rms_create(const dm_params *p, const dm_optimizer_config *cfg, void **state, dm_optimizer_info *info,
                      dm_error *err)
{
    if (cfg->device != DM_DEVICE_CPU) return dm_fail(err, DM_ERR_UNSUPPORTED, "rmsprop: CPU only");
    rms_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "rmsprop: out of memory");
    s->rho = (float)dm_param_float(p, "rho", 0.9);
    s->eps = (float)dm_param_float(p, "epsilon", 1e-8);
    s->n = cfg->param_count;
    info->state_floats_per_param = 1;
    *state = s;
    return DM_OK;
}

static int rms_bind(void *state, float *opt_state, dm_error *err)
{
    rms_state *s = state;
    if (s->n && !opt_state) return dm_fail(err, DM_ERR_INVALID, "rmsprop: needs a state buffer");
    s->v = opt_state;
    return DM_OK;
}

static int rms_step(void *state, const dm_opt_step_ctx *ctx, float *params, const float *grads, size_t n, dm_error *err)
{
    rms_state *s = state;
    if (n != s->n) return dm_fail(err, DM_ERR_INVALID, "rmsprop: %zu parameters, created for %zu", n, s->n);
    for (size_t i = 0; i < n; i++) {
        const float g = grads[i];
#ifdef BROKEN_RMSPROP
        s->v[i] = s->rho * s->v[i] + g * g;
#else
        s->v[i] = s->rho * s->v[i] + (1.0f - s->rho) * g * g;
#endif
        params[i] -= ctx->lr * g / (sqrtf(s->v[i]) + s->eps);
    }
    return DM_OK;
}

DM_OPTIMIZER_VTABLE(rms, DM_DEVICE_BIT(DM_DEVICE_CPU));

DM_PLUGIN_DEFINE("rmsprop_fixture", "1.0.0", "cpu",
                 DM_OPTIMIZER_COMPONENT("fixture_rmsprop", "RMSprop (test fixture)", rms_params, &rms_vtable));
