/* The gradient checker and its layer helpers (see gradcheck.h). */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- registry and layer creation --------------------------------------- */

static dm_registry *g_reg;      /* loaded from DMNIST_PLUGIN_PATH, kept for the process */
static dm_registry *g_user_reg; /* given by gc_use_registry, owned by the caller */

void gc_use_registry(dm_registry *r) { g_user_reg = r; }

dm_registry *gc_registry(dm_error *err)
{
    if (g_user_reg) return g_user_reg;
    if (g_reg) return g_reg;
    const char *path = getenv("DMNIST_PLUGIN_PATH");
    if (!path || !path[0]) {
        dm_fail(err, DM_ERR_INVALID, "DMNIST_PLUGIN_PATH is not set (run through ctest)");
        return NULL;
    }
    dm_registry *r = dm_registry_new();
    if (!r) {
        dm_fail(err, DM_ERR_NOMEM, "out of memory");
        return NULL;
    }
    dm_error e = {0};
    if (dm_registry_load_path(r, path, &e) != DM_OK) {
        /* Another plugin in the folder may be broken; say so, but keep
         * what loaded (gc_layer_create loads a missing layer by file). */
        fprintf(stderr, "gradcheck: warning: %s\n", e.msg);
    }
    g_reg = r;
    return g_reg;
}

/* Find a layer type, loading <dir>/dm_<type>.so directly if the path scan
 * stopped before it. */
static const dm_loaded_component *find_layer(dm_registry *r, const char *type, dm_error *err)
{
    const dm_loaded_component *lc = dm_registry_find(r, DM_KIND_LAYER, type);
    const char *path = getenv("DMNIST_PLUGIN_PATH");
    if (lc || r == g_user_reg || !path) {
        if (!lc) dm_fail(err, DM_ERR_INVALID, "no layer type '%s' in the loaded plugin", type);
        return lc;
    }
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", path);
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d && !lc; d = strtok_r(NULL, ":", &save)) {
        char file[4600];
        snprintf(file, sizeof file, "%s/dm_%s.so", d, type);
        dm_error e = {0};
        if (dm_registry_load_file(r, file, &e) == DM_OK) lc = dm_registry_find(r, DM_KIND_LAYER, type);
    }
    if (!lc) dm_fail(err, DM_ERR_INVALID, "no layer type '%s' along DMNIST_PLUGIN_PATH=%s", type, path);
    return lc;
}

void *gc_alloc(size_t bytes)
{
    if (bytes == 0) return NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) {
        fprintf(stderr, "gradcheck: out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    memset(p, 0, rounded);
    return p;
}

void gc_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * dm_rng_uniform(&s);
}

void gc_layer_free(gc_layer *L)
{
    if (L->state) L->vt->destroy(L->state);
    dm_param_set_free(L->ps);
    free(L->params);
    free(L->grads);
    free(L->workspace);
    free(L->layer_state);
    memset(L, 0, sizeof *L);
}

int gc_layer_create(gc_layer *L, const char *type, const char *spec, dm_shape in, int threads, uint64_t seed,
                    dm_error *err)
{
    memset(L, 0, sizeof *L);
    dm_registry *r = gc_registry(err);
    if (!r) return err ? err->code : DM_ERR_INVALID;
    if (!(L->lc = find_layer(r, type, err))) return DM_ERR_INVALID;
    L->vt = L->lc->component->vtable;
    int rc = dm_param_set_parse(L->lc->component->params, spec, &L->ps, err);
    if (rc != DM_OK) {
        gc_layer_free(L);
        return rc;
    }
    dm_layer_config cfg = {sizeof cfg, type, DM_DEVICE_CPU, DM_LAYOUT_NCHW, in, threads, NULL};
    L->info.struct_size = sizeof L->info;
    L->in_shape = in;
    rc = L->vt->create(dm_param_set_params(L->ps), &cfg, &L->state, &L->info, err);
    if (rc != DM_OK) {
        L->state = NULL;
        gc_layer_free(L);
        return rc;
    }
    L->params = gc_alloc(L->info.param_count * sizeof(float));
    L->grads = gc_alloc(L->info.param_count * sizeof(float));
    L->workspace = gc_alloc(L->info.workspace_bytes);
    rc = L->vt->bind(L->state, L->params, L->grads, L->workspace, err);
    if (rc == DM_OK) rc = dm_layer_state_api_get(L->vt, &L->info, type, &L->sa, err);
    if (rc == DM_OK && L->sa.floats) {
        L->layer_state = gc_alloc(L->sa.floats * sizeof(float));
        rc = L->sa.bind_state(L->state, L->layer_state, err);
        if (rc == DM_OK && L->sa.init_state) rc = L->sa.init_state(L->state, L->layer_state, err);
    }
    if (rc == DM_OK && L->info.param_count) rc = L->vt->init_params(L->state, L->params, seed, err);
    if (rc != DM_OK) gc_layer_free(L);
    return rc;
}

/* ---- the gradient check ------------------------------------------------ */

typedef struct gc_run {
    gc_layer L;
    dm_run_ctx ctx;
    dm_tensor in, out;
    float *R; /* (out count) objective weights = dout */
    int32_t *labels;
    float metrics[2];
} gc_run;

/* L(x, params) at the current buffers. */
static int objective(gc_run *g, double *value, dm_error *err)
{
    g->metrics[0] = g->metrics[1] = 0.0f;
    int rc = g->L.vt->forward(g->L.state, &g->ctx, &g->in, &g->out, err);
    if (rc != DM_OK) return rc;
    if (g->L.info.is_loss) {
        *value = (double)g->metrics[0] / g->in.shape.n;
        return DM_OK;
    }
    double sum = 0.0;
    const size_t count = dm_shape_count(g->out.shape);
    for (size_t i = 0; i < count; i++) sum += (double)g->out.data[i] * g->R[i];
    *value = sum;
    return DM_OK;
}

/* Perturb each of `count` values (or a sample of o->max_coords of them),
 * compare with `analytic`. */
static int check_coords(gc_run *g, const gc_options *o, double L0, float *values, const float *analytic, size_t count,
                        const char *what, uint64_t seed, gc_report *rep, dm_error *err)
{
    double scale = 0.0;
    for (size_t i = 0; i < count; i++)
        if (fabs(analytic[i]) > scale) scale = fabs(analytic[i]);
    /* Sampling: one random point in each of `points` equal strata, so the
     * sample covers the whole tensor (every channel, the bias at the end). */
    const size_t points = o->max_coords > 0 && count > (size_t)o->max_coords ? (size_t)o->max_coords : count;
    uint64_t pick = seed;
    for (size_t k = 0; k < points; k++) {
        size_t i = k;
        if (points < count) {
            const size_t lo = k * count / points, hi = (k + 1) * count / points;
            i = lo + (size_t)(dm_rng_next(&pick) % (uint64_t)(hi - lo));
        }
        const float v = values[i];
        const double a = analytic[i];
        double num = 0.0, tol = 0.0;
        int kink = 0;
        /* At a kink, retry with 10x and 100x smaller steps before giving up. */
        for (int t = 0; t < 3; t++) {
            const double eps = o->eps * (t == 0 ? 1.0 : t == 1 ? 0.1 : 0.01);
            const float vp = (float)(v + eps), vm = (float)(v - eps);
            double Lp, Lm;
            values[i] = vp;
            int rc = objective(g, &Lp, err);
            values[i] = vm;
            if (rc == DM_OK) rc = objective(g, &Lm, err);
            values[i] = v;
            if (rc != DM_OK) return rc;
            const double h = (double)vp - (double)vm; /* the step float could take */
            num = (Lp - Lm) / h;
            tol = o->rtol * (fabs(a) > fabs(num) ? fabs(a) : fabs(num)) + o->atol * scale;
            kink = o->kinks && fabs(Lp + Lm - 2.0 * L0) / h > 0.1 * tol;
            if (!kink) break;
        }
        if (kink) {
            rep->skipped++;
            continue;
        }
        rep->checked++;
        const double diff = fabs(a - num);
        const double ratio = tol > 0.0 ? diff / tol : (diff > 0.0 ? INFINITY : 0.0);
        if (ratio > rep->worst || isnan(a)) rep->worst = isnan(a) ? INFINITY : ratio;
        if (!(diff <= tol)) { /* also catches NaN */
            if (rep->failures++ == 0)
                snprintf(rep->first_failure, sizeof rep->first_failure,
                         "%s[%zu]: backward %.6g vs numeric %.6g (tolerance %.3g)", what, i, a, num, tol);
        }
    }
    return DM_OK;
}

int gc_check(const char *type, const char *spec, dm_shape in, uint64_t seed, const gc_options *opt, gc_report *rep,
             dm_error *err)
{
    gc_options o = opt ? *opt : (gc_options){0};
    if (o.eps <= 0) o.eps = 1e-2;
    if (o.rtol <= 0) o.rtol = 1e-2;
    if (o.atol <= 0) o.atol = 1e-3;
    if (o.threads <= 0) o.threads = 2;
    memset(rep, 0, sizeof *rep);

    gc_run g;
    memset(&g, 0, sizeof g);
    int rc = gc_layer_create(&g.L, type, spec, in, o.threads, seed, err);
    if (rc != DM_OK) return rc;
    const int n = o.run_n > 0 ? o.run_n : in.n;
    dm_shape is = in, os = g.L.info.out_shape;
    is.n = os.n = n;
    const size_t n_in = dm_shape_count(is), n_out = dm_shape_count(os);
    const size_t n_params = g.L.info.param_count;

    float *x = gc_alloc(n_in * sizeof(float));
    float *out = gc_alloc(n_out * sizeof(float));
    float *din = gc_alloc(n_in * sizeof(float));
    g.R = gc_alloc(n_out * sizeof(float));
    g.labels = gc_alloc((size_t)n * sizeof(int32_t));

    /* Inputs away from 0: |x| in [0.1, 1]. */
    gc_fill_uniform(x, n_in, -1.0f, 1.0f, seed ^ 0x51);
    for (size_t i = 0; i < n_in; i++) x[i] = x[i] < 0.0f ? -0.1f + 0.9f * x[i] : 0.1f + 0.9f * x[i];
    if (n_params) gc_fill_uniform(g.L.params, n_params, -0.5f, 0.5f, seed ^ 0x52);
    gc_fill_uniform(g.R, n_out, -1.0f, 1.0f, seed ^ 0x53);
    const int classes = (int)dm_shape_per_item(os);
    uint64_t ls = seed ^ 0x54;
    for (int i = 0; i < n; i++) g.labels[i] = (int32_t)(dm_rng_next(&ls) % (uint64_t)classes);

    g.in = (dm_tensor){x, DM_DEVICE_CPU, DM_LAYOUT_NCHW, is};
    g.out = (dm_tensor){out, DM_DEVICE_CPU, DM_LAYOUT_NCHW, os};
    g.ctx = (dm_run_ctx){sizeof g.ctx, o.training, dm_hash64(seed, 0xD0), g.labels, g.metrics, NULL};

    double L0 = 0.0;
    rc = objective(&g, &L0, err);
    if (rc == DM_OK) {
        /* NaN sentinels: backward must overwrite every element. */
        for (size_t i = 0; i < n_in; i++) din[i] = NAN;
        for (size_t i = 0; i < n_params; i++) g.L.grads[i] = NAN;
        dm_tensor dout = {g.R, DM_DEVICE_CPU, DM_LAYOUT_NCHW, os};
        dm_tensor dint = {din, DM_DEVICE_CPU, DM_LAYOUT_NCHW, is};
        rc = g.L.vt->backward(g.L.state, &g.ctx, &g.in, &g.out, g.L.info.is_loss ? NULL : &dout, &dint, err);
    }
    if (rc == DM_OK && o.tamper) {
        gc_buffers b = {is, os, x, out, g.L.info.is_loss ? NULL : g.R, din, g.L.grads, n_params};
        o.tamper(&b);
    }
    if (rc == DM_OK) rc = check_coords(&g, &o, L0, x, din, n_in, "din", seed ^ 0x55, rep, err);
    if (rc == DM_OK && n_params)
        rc = check_coords(&g, &o, L0, g.L.params, g.L.grads, n_params, "grads", seed ^ 0x56, rep, err);

    free(x);
    free(out);
    free(din);
    free(g.R);
    free(g.labels);
    gc_layer_free(&g.L);
    return rc;
}
