/* Optimizer plugins (sgd, adam) loaded through the registry and checked
 * against updates computed here in double precision.
 *
 *   test_optimizers <case>     (cases listed in main; one ctest each)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"
#include "check.h"
#include "dm_core.h"

static dm_registry *g_reg;

/* ---- a small harness around one optimizer instance ----------------------- */

typedef struct opt {
    const dm_optimizer_vtable *vt;
    dm_param_set *ps;
    void *state;
    dm_optimizer_info info;
    float *opt_state; /* n * state_floats_per_param, zeroed like the core does */
    size_t n;
} opt;

/* Create and bind `type` with `spec` for n parameters; returns a dm_status
 * and leaves err filled on failure. */
static int opt_open(opt *o, const char *type, const char *spec, size_t n, dm_device device, int threads, dm_error *err)
{
    memset(o, 0, sizeof *o);
    const dm_loaded_component *lc = dm_registry_find(g_reg, DM_KIND_OPTIMIZER, type);
    if (!lc) return dm_fail(err, DM_ERR_INVALID, "optimizer '%s' not found in DMNIST_PLUGIN_PATH", type);
    o->vt = lc->component->vtable;
    o->n = n;
    int rc = dm_param_set_parse(lc->component->params, spec, &o->ps, err);
    if (rc != DM_OK) return rc;
    dm_optimizer_config cfg = {sizeof cfg, device, n, threads, NULL};
    o->info.struct_size = sizeof o->info;
    rc = o->vt->create(dm_param_set_params(o->ps), &cfg, &o->state, &o->info, err);
    if (rc != DM_OK) return rc;
    size_t k = o->info.state_floats_per_param;
    if (k > 0) {
        o->opt_state = calloc(n * k, sizeof(float));
        if (!o->opt_state) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    return o->vt->bind(o->state, o->opt_state, err);
}

static void opt_close(opt *o)
{
    if (o->state) o->vt->destroy(o->state);
    dm_param_set_free(o->ps);
    free(o->opt_state);
    memset(o, 0, sizeof *o);
}

static int opt_step(opt *o, int64_t t, float lr, float *p, const float *g, dm_error *err)
{
    dm_opt_step_ctx ctx = {sizeof ctx, t, lr, NULL};
    return o->vt->step(o->state, &ctx, p, g, o->n, err);
}

/* Deterministic test data in [-1, 1). */
static float rnd(uint64_t *s) { return 2.0f * dm_rng_uniform(s) - 1.0f; }

/* n random parameters from *seed, in p and in the double reference pd. */
static void random_start(float *p, double *pd, size_t n, uint64_t *seed)
{
    for (size_t i = 0; i < n; i++) pd[i] = p[i] = rnd(seed);
}

/* Step t of o with lr on n fresh random gradients g from *seed. */
static int random_step(opt *o, int t, double lr, float *p, float *g, size_t n, uint64_t *seed, dm_error *err)
{
    for (size_t i = 0; i < n; i++) g[i] = rnd(seed);
    return opt_step(o, t, (float)lr, p, g, err);
}

static int close_enough(double got, double want, double rel) { return fabs(got - want) <= rel * fmax(1.0, fabs(want)); }

/* ---- SGD against PyTorch's formulas, computed in double ----------------- */

/* Runs `steps` SGD steps of the plugin and of the double reference on n
 * parameters with fresh random gradients each step, comparing every step. */
static int sgd_compare(double lr, double mu, int nesterov, double wd, size_t n, int steps, int threads)
{
    char spec[128];
    snprintf(spec, sizeof spec, "momentum=%g nesterov=%s weight_decay=%g", mu, nesterov ? "true" : "false", wd);
    dm_error err = {0};
    opt o;
    int rc = opt_open(&o, "sgd", spec, n, DM_DEVICE_CPU, threads, &err);
    REQUIRE(rc == DM_OK, "%s", err.msg);
    REQUIRE(o.info.state_floats_per_param == (mu > 0 ? 1u : 0u), "state floats %zu for momentum %g",
            o.info.state_floats_per_param, mu);

    float *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g);
    double *pd = malloc(n * sizeof *pd), *bd = calloc(n, sizeof *bd);
    REQUIRE(p && g && pd && bd, "out of memory");
    uint64_t seed = 42;
    random_start(p, pd, n, &seed);

    for (int t = 1; t <= steps; t++) {
        rc = random_step(&o, t, lr, p, g, n, &seed, &err);
        REQUIRE(rc == DM_OK, "%s", err.msg);
        for (size_t i = 0; i < n; i++) {
            double d = g[i] + wd * pd[i];
            if (mu > 0) {
                bd[i] = mu * bd[i] + d; /* PyTorch: b_1 = d, then b = mu b + d */
                d = nesterov ? d + mu * bd[i] : bd[i];
            }
            pd[i] -= lr * d;
        }
        for (size_t i = 0; i < n; i++)
            REQUIRE(close_enough(p[i], pd[i], 1e-5), "step %d, param %zu: got %.8g, want %.8g", t, i, p[i], pd[i]);
        if (mu > 0)
            for (size_t i = 0; i < n; i++)
                REQUIRE(close_enough(o.opt_state[i], bd[i], 1e-5), "step %d, velocity %zu: got %.8g, want %.8g", t, i,
                        o.opt_state[i], bd[i]);
    }
    free(p), free(g), free(pd), free(bd);
    opt_close(&o);
    return 0;
}

static int test_sgd_plain(void) { return sgd_compare(0.1, 0, 0, 0, 17, 5, 1); }
static int test_sgd_momentum(void) { return sgd_compare(0.05, 0.9, 0, 0, 17, 6, 1); }
static int test_sgd_nesterov(void) { return sgd_compare(0.05, 0.9, 1, 0, 17, 6, 1); }
static int test_sgd_weight_decay(void)
{
    return sgd_compare(0.1, 0, 0, 0.01, 17, 5, 1) || sgd_compare(0.05, 0.8, 0, 0.05, 17, 6, 1) ||
        sgd_compare(0.05, 0.8, 1, 0.05, 17, 6, 1);
}
/* Large enough to take the OpenMP path, with two threads. */
static int test_sgd_parallel(void) { return sgd_compare(0.05, 0.9, 1, 1e-3, 100003, 3, 2); }

/* Two steps of momentum SGD written out: b1 = g1, p1 = p0 - lr g1;
 * b2 = mu g1 + g2, p2 = p1 - lr b2 (nesterov: p2 = p1 - lr (g2 + mu b2)). */
static int test_sgd_two_steps_closed_form(void)
{
    const float lr = 0.5f, mu = 0.5f;
    for (int nesterov = 0; nesterov <= 1; nesterov++) {
        dm_error err = {0};
        opt o;
        int rc =
            opt_open(&o, "sgd", nesterov ? "momentum=0.5 nesterov=yes" : "momentum=0.5", 2, DM_DEVICE_CPU, 1, &err);
        REQUIRE(rc == DM_OK, "%s", err.msg);
        float p[2] = {1.0f, -2.0f};
        const float g1[2] = {0.25f, 1.0f}, g2[2] = {-0.5f, 2.0f};
        REQUIRE(opt_step(&o, 1, lr, p, g1, &err) == DM_OK, "%s", err.msg);
        double want1[2] = {nesterov ? 1.0 - 0.5 * (0.25 + 0.5 * 0.25) : 1.0 - 0.5 * 0.25,
                           nesterov ? -2.0 - 0.5 * (1.0 + 0.5 * 1.0) : -2.0 - 0.5 * 1.0};
        REQUIRE(p[0] == (float)want1[0] && p[1] == (float)want1[1], "step 1: %g %g, want %g %g", p[0], p[1], want1[0],
                want1[1]);
        REQUIRE(opt_step(&o, 2, lr, p, g2, &err) == DM_OK, "%s", err.msg);
        for (int i = 0; i < 2; i++) {
            double b2 = mu * g1[i] + g2[i];
            double d = nesterov ? g2[i] + mu * b2 : b2;
            REQUIRE(close_enough(p[i], want1[i] - lr * d, 1e-6), "step 2, param %d: %g, want %g", i, p[i],
                    want1[i] - lr * d);
        }
        opt_close(&o);
    }
    return 0;
}

/* ---- Adam, Keras/TF form ------------------------------------------------ */

static int adam_compare_decay(double lr, double b1, double b2, double eps, double wd, double decay_rate,
                              int decay_steps, size_t n, int steps, int threads)
{
    char spec[256];
    snprintf(spec, sizeof spec,
             "beta1=%.17g beta2=%.17g epsilon=%.17g weight_decay=%g lr_decay_rate=%.17g "
             "lr_decay_steps=%d",
             b1, b2, eps, wd, decay_rate, decay_steps);
    dm_error err = {0};
    opt o;
    int rc = opt_open(&o, "adam", spec, n, DM_DEVICE_CPU, threads, &err);
    REQUIRE(rc == DM_OK, "%s", err.msg);
    REQUIRE(o.info.state_floats_per_param == 2, "adam keeps %zu floats per parameter", o.info.state_floats_per_param);

    float *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g);
    double *pd = malloc(n * sizeof *pd), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
    REQUIRE(p && g && pd && m && v, "out of memory");
    uint64_t seed = 7;
    random_start(p, pd, n, &seed);

    for (int t = 1; t <= steps; t++) {
        rc = random_step(&o, t, lr, p, g, n, &seed, &err);
        REQUIRE(rc == DM_OK, "%s", err.msg);
        double lr_t = lr * sqrt(1.0 - pow(b2, t)) / (1.0 - pow(b1, t));
        if (decay_steps > 0) /* Keras's ExponentialDecay: 1 at the first step */
            lr_t *= pow(decay_rate, (t - 1.0) / decay_steps);
        for (size_t i = 0; i < n; i++) {
            double gi = g[i] + wd * pd[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            pd[i] -= lr_t * m[i] / (sqrt(v[i]) + eps);
        }
        for (size_t i = 0; i < n; i++) {
            REQUIRE(close_enough(p[i], pd[i], 2e-5), "step %d, param %zu: got %.8g, want %.8g", t, i, p[i], pd[i]);
            /* Documented state layout: m in the first n floats, v in the next n. */
            REQUIRE(close_enough(o.opt_state[i], m[i], 1e-5), "step %d, m[%zu]: %.8g, want %.8g", t, i, o.opt_state[i],
                    m[i]);
            REQUIRE(close_enough(o.opt_state[n + i], v[i], 1e-5), "step %d, v[%zu]: %.8g, want %.8g", t, i,
                    o.opt_state[n + i], v[i]);
        }
    }
    free(p), free(g), free(pd), free(m), free(v);
    opt_close(&o);
    return 0;
}

static int adam_compare(double lr, double b1, double b2, double eps, double wd, size_t n, int steps, int threads)
{
    return adam_compare_decay(lr, b1, b2, eps, wd, 1.0, 0, n, steps, threads);
}

/* Bias correction matters most in the first steps: t = 1, 2, 3. */
static int test_adam_steps(void)
{
    return adam_compare(1e-3, 0.9, 0.999, 1e-7, 0, 19, 3, 1) || adam_compare(0.01, 0.5, 0.75, 1e-3, 0, 19, 3, 1);
}
static int test_adam_weight_decay(void) { return adam_compare(1e-2, 0.9, 0.999, 1e-7, 0.1, 19, 3, 1); }
static int test_adam_parallel(void) { return adam_compare(1e-3, 0.9, 0.999, 1e-7, 1e-4, 100003, 3, 2); }
/* Exponential lr decay: halved every 2 steps, over 6 steps (a missing or
 * off-by-one decay moves the parameters by far more than the tolerance). */
static int test_adam_lr_decay(void) { return adam_compare_decay(1e-2, 0.9, 0.999, 1e-7, 0, 0.5, 2, 19, 6, 1); }

/* With the defaults, Adam's first step moves each parameter by lr * sign(g)
 * (m / sqrt(v) = g / |g| after bias correction), whatever |g| is. */
static int test_adam_first_step_is_lr(void)
{
    dm_error err = {0};
    opt o;
    int rc = opt_open(&o, "adam", "", 4, DM_DEVICE_CPU, 1, &err);
    REQUIRE(rc == DM_OK, "%s", err.msg);
    float p[4] = {0, 0, 0, 0};
    const float g[4] = {1e-3f, -5.0f, 200.0f, -0.1f};
    REQUIRE(opt_step(&o, 1, 0.01f, p, g, &err) == DM_OK, "%s", err.msg);
    for (int i = 0; i < 4; i++)
        REQUIRE(close_enough(p[i], g[i] > 0 ? -0.01 : 0.01, 1e-3), "param %d moved to %g", i, p[i]);
    opt_close(&o);
    return 0;
}

/* ---- convergence on a quadratic ----------------------------------------- */

/* f(p) = 1/2 sum a_i (p_i - c_i)^2 with curvatures a_i in [0.5, 2]. */
static double quad_loss(const float *p, const double *a, const double *c, size_t n)
{
    double f = 0;
    for (size_t i = 0; i < n; i++) f += 0.5 * a[i] * (p[i] - c[i]) * (p[i] - c[i]);
    return f;
}

/* The loss must fall by `factor` within `steps`; lr decays as lr0/sqrt(t)
 * when decay != 0 (the core's job in a real run). */
static int quad_converges(const char *type, const char *spec, float lr0, int decay, int steps, double factor)
{
    enum { N = 64 };
    double a[N], c[N];
    float p[N], g[N];
    uint64_t seed = 3;
    for (int i = 0; i < N; i++) {
        a[i] = 0.5 + 0.75 * (rnd(&seed) + 1.0);
        c[i] = 3.0 * rnd(&seed);
        p[i] = 0.0f;
    }
    dm_error err = {0};
    opt o;
    int rc = opt_open(&o, type, spec, N, DM_DEVICE_CPU, 1, &err);
    REQUIRE(rc == DM_OK, "%s", err.msg);
    double f0 = quad_loss(p, a, c, N);
    for (int t = 1; t <= steps; t++) {
        for (int i = 0; i < N; i++) g[i] = (float)(a[i] * (p[i] - c[i]));
        float lr = decay ? lr0 / sqrtf((float)t) : lr0;
        REQUIRE(opt_step(&o, t, lr, p, g, &err) == DM_OK, "%s", err.msg);
    }
    double f = quad_loss(p, a, c, N);
    printf("%s (%s): loss %.3g -> %.3g after %d steps\n", type, spec, f0, f, steps);
    REQUIRE(f < f0 / factor, "%s did not converge: loss %g -> %g", type, f0, f);
    opt_close(&o);
    return 0;
}

static int test_quadratic(void)
{
    return quad_converges("sgd", "", 0.5f, 0, 200, 1e8) || quad_converges("sgd", "momentum=0.9", 0.1f, 0, 300, 1e8) ||
        quad_converges("sgd", "momentum=0.9 nesterov=true", 0.1f, 0, 300, 1e8) ||
        quad_converges("adam", "", 0.1f, 1, 2000, 1e6);
}

/* ---- refusals ------------------------------------------------------------ */

static int expect_refusal(const char *type, const char *spec, dm_device dev, int want_code, const char *want_text)
{
    dm_error err = {0};
    opt o;
    int rc = opt_open(&o, type, spec, 8, dev, 1, &err);
    REQUIRE(rc == want_code, "%s '%s': got status %d (%s), want %d", type, spec, rc, err.msg, want_code);
    REQUIRE(strstr(err.msg, want_text), "%s '%s': message '%s' lacks '%s'", type, spec, err.msg, want_text);
    REQUIRE(!strchr(err.msg, '\n'), "message has a newline: '%s'", err.msg);
    opt_close(&o);
    return 0;
}

static int test_refusals(void)
{
    if (expect_refusal("sgd", "momentum=1", DM_DEVICE_CPU, DM_ERR_INVALID, "momentum") ||
        expect_refusal("sgd", "momentum=-0.5", DM_DEVICE_CPU, DM_ERR_INVALID, "momentum") ||
        expect_refusal("sgd", "nesterov=true", DM_DEVICE_CPU, DM_ERR_INVALID, "nesterov") ||
        expect_refusal("sgd", "weight_decay=-1", DM_DEVICE_CPU, DM_ERR_INVALID, "weight_decay") ||
        expect_refusal("sgd", "lr=0.1", DM_DEVICE_CPU, DM_ERR_INVALID, "lr") ||
        expect_refusal("adam", "beta1=1", DM_DEVICE_CPU, DM_ERR_INVALID, "beta1") ||
        expect_refusal("adam", "beta2=1.5", DM_DEVICE_CPU, DM_ERR_INVALID, "beta2") ||
        expect_refusal("adam", "lr_decay_rate=0", DM_DEVICE_CPU, DM_ERR_INVALID, "lr_decay_rate") ||
        (!(((const dm_optimizer_vtable *)dm_registry_find(g_reg, DM_KIND_OPTIMIZER, "adam")->component->vtable)
               ->devices &
           DM_DEVICE_BIT(DM_DEVICE_CUDA)) && /* a CUDA build has it (tests/cuda) */
         expect_refusal("adam", "", DM_DEVICE_CUDA, DM_ERR_UNSUPPORTED, "CPU")))
        return 1;

    /* A step with the wrong length is refused, not run past the buffers. */
    dm_error err = {0};
    opt o;
    REQUIRE(opt_open(&o, "adam", "", 8, DM_DEVICE_CPU, 1, &err) == DM_OK, "%s", err.msg);
    float p[16] = {0}, g[16] = {0};
    dm_opt_step_ctx ctx = {sizeof ctx, 1, 0.1f, NULL};
    int rc = o.vt->step(o.state, &ctx, p, g, 16, &err);
    REQUIRE(rc == DM_ERR_INVALID, "step with n = 16 for 8 params gave %d", rc);
    ctx.step = 0;
    rc = o.vt->step(o.state, &ctx, p, g, 8, &err);
    REQUIRE(rc == DM_ERR_INVALID, "adam step 0 gave %d", rc);
    opt_close(&o);
    return 0;
}

/* ---- driver --------------------------------------------------------------- */

static const test_case cases[] = {
    {"sgd_plain", test_sgd_plain},
    {"sgd_momentum", test_sgd_momentum},
    {"sgd_nesterov", test_sgd_nesterov},
    {"sgd_weight_decay", test_sgd_weight_decay},
    {"sgd_parallel", test_sgd_parallel},
    {"sgd_two_steps_closed_form", test_sgd_two_steps_closed_form},
    {"adam_steps", test_adam_steps},
    {"adam_weight_decay", test_adam_weight_decay},
    {"adam_parallel", test_adam_parallel},
    {"adam_lr_decay", test_adam_lr_decay},
    {"adam_first_step_is_lr", test_adam_first_step_is_lr},
    {"quadratic", test_quadratic},
    {"refusals", test_refusals},
};

int main(int argc, char **argv)
{
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    if (argc != 2) {
        test_usage(argv[0], cases, n_cases);
        return 2;
    }
    if (!(g_reg = test_load_plugins())) return 1;
    const test_case *tc = test_find(argv[1], cases, n_cases);
    int rc = tc ? tc->fn() : 2;
    if (!tc) fprintf(stderr, "unknown case '%s'\n", argv[1]);
    dm_registry_free(g_reg);
    return rc;
}
