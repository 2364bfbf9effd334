/* dmnist-plugin-check for optimizers, datasets and comm backends: the
 * checks that make sense without a model or a second rank. */
#define _GNU_SOURCE
#include "plugin_check.h"

#include <stdarg.h>
#include <math.h>
#include <stdlib.h>

/* ---- optimizers ------------------------------------------------------------- */

#define OPT_N 1037 /* not a multiple of any vector width */
#define OPT_STEPS 100
#define OPT_LR 0.05f

/* f(p) = 1/2 sum a_i (p_i - c_i)^2, a_i in [0.5, 2]; grads = a (p - c). */
typedef struct quad {
    float a[OPT_N], c[OPT_N];
} quad;

static double quad_value(const quad *q, const float *p, float *grad)
{
    double f = 0;
    for (int i = 0; i < OPT_N; i++) {
        const double d = (double)p[i] - q->c[i];
        f += 0.5 * q->a[i] * d * d;
        if (grad) grad[i] = (float)(q->a[i] * d);
    }
    return f;
}

typedef struct opt_run {
    double f0, f1, f_end;
    float params[OPT_N];
} opt_run;

/* Create, bind and run `steps` steps at `lr` on the quadratic. Fills why
 * and returns non-zero on the first problem: 2 when create refused the
 * setting, 1 for anything else. */
static int opt_run_quad(const dm_loaded_component *lc, const char *spec, const quad *q, const float *p_start, int steps,
                        float lr, opt_run *out, char *why, size_t size)
{
    const dm_optimizer_vtable *vt = lc->component->vtable;
    dm_param_set *ps = NULL;
    dm_error err = {0};
    void *state = NULL;
    pc_buf params, grads, st;
    memset(&params, 0, sizeof params);
    memset(&grads, 0, sizeof grads);
    memset(&st, 0, sizeof st);
    int bad = 1;
    if (dm_param_set_parse(lc->component->params, spec, &ps, &err) != DM_OK) {
        snprintf(why, size, "'%s': %s", spec, err.msg);
        return 1;
    }
    dm_optimizer_config cfg = {sizeof cfg, DM_DEVICE_CPU, OPT_N, 2, NULL};
    dm_optimizer_info info = {sizeof info, 0};
    pc_now("optimizer create '%s'", spec);
    if (vt->create(dm_param_set_params(ps), &cfg, &state, &info, &err) != DM_OK) {
        snprintf(why, size, "create refused '%s': %s", spec, err.msg);
        dm_param_set_free(ps);
        return 2;
    }
    if (info.state_floats_per_param > 64) {
        snprintf(why, size, "asks for %zu state floats per parameter", info.state_floats_per_param);
        goto done;
    }
    pc_buf_alloc(&params, OPT_N * sizeof(float));
    pc_buf_alloc(&grads, OPT_N * sizeof(float));
    pc_buf_alloc(&st, OPT_N * info.state_floats_per_param * sizeof(float)); /* zeroed */
    if (vt->bind(state, st.p, &err) != DM_OK) {
        snprintf(why, size, "bind: %s", err.msg);
        goto done;
    }
    float *p = params.p, *g = grads.p;
    memcpy(p, p_start, OPT_N * sizeof(float));
    out->f0 = quad_value(q, p, g);
    float *g0 = malloc(OPT_N * sizeof(float));
    for (int t = 1; t <= steps; t++) {
        memcpy(g0, g, OPT_N * sizeof(float));
        dm_opt_step_ctx ctx = {sizeof ctx, t, lr, NULL};
        pc_now("optimizer '%s' step %d", spec, t);
        if (vt->step(state, &ctx, p, g, OPT_N, &err) != DM_OK) {
            snprintf(why, size, "'%s' step %d: %s", spec, t, err.msg);
            free(g0);
            goto done;
        }
        long nf = pc_first_nonfinite(p, OPT_N);
        const char *guard = !pc_buf_guards_ok(&params) ? "params"
            : !pc_buf_guards_ok(&grads)                ? "grads"
            : !pc_buf_guards_ok(&st)                   ? "state"
                                                       : NULL;
        if (nf >= 0 || guard || memcmp(g0, g, OPT_N * sizeof(float)) != 0) {
            if (nf >= 0) snprintf(why, size, "'%s' step %d made params[%ld] not finite", spec, t, nf);
            else if (guard) snprintf(why, size, "'%s' step %d wrote outside its %s buffer", spec, t, guard);
            else snprintf(why, size, "'%s' step %d changed the gradients (they are const)", spec, t);
            free(g0);
            goto done;
        }
        const double f = quad_value(q, p, g);
        if (t == 1) out->f1 = f;
        out->f_end = f;
    }
    free(g0);
    memcpy(out->params, p, OPT_N * sizeof(float));
    bad = 0;
done:
    vt->destroy(state);
    dm_param_set_free(ps);
    pc_buf_free(&params);
    pc_buf_free(&grads);
    pc_buf_free(&st);
    return bad;
}

/* The same run with params, grads and state on the GPU; the gradient is
 * still computed here, from the parameters downloaded after each step. */
static int opt_run_cuda(const dm_loaded_component *lc, const char *spec, dm_devctx *dev, const quad *q,
                        const float *p_start, int steps, float lr, opt_run *out, char *why, size_t size)
{
    const dm_optimizer_vtable *vt = lc->component->vtable;
    dm_param_set *ps = NULL;
    dm_error err = {0};
    void *state = NULL;
    float *dp = NULL, *dg = NULL, *dst = NULL, g[OPT_N];
    int rc = dm_param_set_parse(lc->component->params, spec, &ps, &err);
    dm_optimizer_config cfg = {sizeof cfg, DM_DEVICE_CUDA, OPT_N, 2, dev->stream};
    dm_optimizer_info info = {sizeof info, 0};
    pc_now("optimizer create on cuda '%s'", spec);
    if (rc == DM_OK) rc = vt->create(dm_param_set_params(ps), &cfg, &state, &info, &err);
    if (rc != DM_OK) state = NULL;
    if (rc == DM_OK &&
        (!(dp = dm_dev_alloc(dev, OPT_N * sizeof(float), &err)) ||
         !(dg = dm_dev_alloc(dev, OPT_N * sizeof(float), &err))))
        rc = DM_ERR_NOMEM;
    if (rc == DM_OK && info.state_floats_per_param &&
        !(dst = dm_dev_alloc(dev, OPT_N * info.state_floats_per_param * sizeof(float), &err)))
        rc = DM_ERR_NOMEM;
    pc_dev_settle();
    if (rc == DM_OK) rc = vt->bind(state, dst, &err);
    memcpy(out->params, p_start, OPT_N * sizeof(float));
    if (rc == DM_OK) rc = dm_dev_upload(dev, dp, out->params, OPT_N * sizeof(float), &err);
    for (int t = 1; t <= steps && rc == DM_OK; t++) {
        quad_value(q, out->params, g);
        dm_opt_step_ctx ctx = {sizeof ctx, t, lr, dev->stream};
        pc_now("optimizer '%s' cuda step %d", spec, t);
        rc = dm_dev_upload(dev, dg, g, OPT_N * sizeof(float), &err);
        if (rc == DM_OK) rc = vt->step(state, &ctx, dp, dg, OPT_N, &err);
        if (rc == DM_OK) rc = dm_dev_download(dev, out->params, dp, OPT_N * sizeof(float), &err);
    }
    if (rc != DM_OK) snprintf(why, size, "'%.200s' on cuda: %s", spec, err.msg);
    if (state) vt->destroy(state);
    dm_dev_free(dev, dp);
    dm_dev_free(dev, dg);
    dm_dev_free(dev, dst);
    dm_param_set_free(ps);
    return rc != DM_OK;
}

void pc_check_optimizer(const pc_ctx *c, const dm_loaded_component *lc)
{
    quad *q = malloc(sizeof *q);
    float *start = malloc(OPT_N * sizeof(float));
    opt_run *r1 = malloc(sizeof *r1), *r2 = malloc(sizeof *r2);
    uint64_t rng = dm_hash64(c->seed, 0x0F7);
    for (int i = 0; i < OPT_N; i++) {
        q->a[i] = 0.5f + 1.5f * dm_rng_uniform(&rng);
        q->c[i] = 2.0f * dm_rng_uniform(&rng) - 1.0f;
        start[i] = 4.0f * dm_rng_uniform(&rng) - 2.0f;
    }
    char why[768] = "", spec[512];
    const int n = pc_discrete_setting(lc->component->params, c->user_spec, 0, spec, sizeof spec);
    double worst_ratio = 0;
    int ok = 1;
    for (int k = 0; k < n && ok; k++) {
        pc_discrete_setting(lc->component->params, c->user_spec, k, spec, sizeof spec);
        const int rc = opt_run_quad(lc, spec, q, start, OPT_STEPS, OPT_LR, r1, why, sizeof why);
        if (rc) {
            /* A setting the optimizer refuses (nesterov without momentum)
             * is fine when it says so; the defaults must work. */
            if (k > 0 && rc == 2 && why[0]) continue;
            pc_row(lc, "quadratic (cpu)", PC_FAIL, "%s", why);
            ok = 0;
        } else if (!(r1->f1 < r1->f0) || !(r1->f_end < 0.1 * r1->f0)) {
            pc_row(lc, "quadratic (cpu)", PC_FAIL,
                   "'%s': f %.4g -> %.4g after one step, %.4g after %d (lr %g): not decreasing", spec, r1->f0, r1->f1,
                   r1->f_end, OPT_STEPS, OPT_LR);
            ok = 0;
        } else {
            worst_ratio = fmax(worst_ratio, r1->f_end / r1->f0);
            if (c->verbose) printf("  '%s': f %.4g -> %.4g\n", spec, r1->f0, r1->f_end);
        }
    }
    if (ok)
        pc_row(lc, "quadratic (cpu)", PC_OK,
               "%d setting%s, %d steps at lr %g: f falls to at most "
               "%.2g of its start",
               n, n == 1 ? "" : "s", OPT_STEPS, OPT_LR, worst_ratio);

    /* The core owns the learning rate: lr = 0 must change nothing. */
    pc_discrete_setting(lc->component->params, c->user_spec, 0, spec, sizeof spec);
    if (opt_run_quad(lc, spec, q, start, 3, 0.0f, r1, why, sizeof why)) pc_row(lc, "lr = 0", PC_FAIL, "%s", why);
    else if (memcmp(r1->params, start, sizeof r1->params) != 0)
        pc_row(lc, "lr = 0", PC_FAIL, "3 steps at lr = 0 changed the parameters (use ctx->lr)");
    else pc_row(lc, "lr = 0", PC_OK, "3 steps leave the parameters unchanged");

    /* Random valid values of every key within its table's range (--settings
     * of them, from --seed; --params fixed): no quadratic to decrease (a
     * momentum of 0.99 or a fast lr decay may not, in 100 steps), but each
     * must be refused in one line or step without a non-finite value, a
     * write outside its buffers or a change to the gradients, ignore lr = 0,
     * and give the same bits twice. */
    int tried = 0, refused = 0, rbad = 0;
    for (int k = 1; k <= c->settings && !rbad; k++) {
        dm_error serr = {0};
        if (pc_setting(lc->component->params, c->user_spec, k, c->seed, spec, sizeof spec, &serr) != DM_OK) {
            pc_row(lc, "random settings", PC_SKIP, "%s", serr.msg);
            rbad = -1;
            break;
        }
        tried++;
        int rc = opt_run_quad(lc, spec, q, start, 5, OPT_LR, r1, why, sizeof why);
        if (rc == 2 && why[0]) {
            refused++;
            continue;
        }
        if (rc || opt_run_quad(lc, spec, q, start, 5, OPT_LR, r2, why, sizeof why)) {
            pc_row(lc, "random settings", PC_FAIL, "%s", why);
            rbad = 1;
        } else if (memcmp(r1->params, r2->params, sizeof r1->params) != 0) {
            pc_row(lc, "random settings", PC_FAIL, "'%s': two runs of 5 steps ended with different parameters", spec);
            rbad = 1;
        } else if (opt_run_quad(lc, spec, q, start, 2, 0.0f, r1, why, sizeof why) ||
                   memcmp(r1->params, start, sizeof r1->params) != 0) {
            pc_row(lc, "random settings", PC_FAIL, "'%s': %s", spec,
                   why[0] ? why : "2 steps at lr = 0 changed the parameters (use ctx->lr)");
            rbad = 1;
        } else if (c->verbose) {
            printf("  random setting '%s': ok\n", spec);
        }
    }
    if (!rbad)
        pc_row(lc, "random settings", PC_OK,
               "%d drawn within the table's ranges (%d refused by create): "
               "finite, deterministic, lr = 0 a no-op, buffers guarded",
               tried, refused);
    if (c->reference) pc_check_reference(c, lc);
    else
        pc_row(lc, "reference (cpu)", PC_SKIP,
               "no --reference FILE: the update rule itself is not checked "
               "(a quadratic decreases under many wrong rules)");
    pc_discrete_setting(lc->component->params, c->user_spec, 0, spec, sizeof spec);

    /* Two instances, the same steps: the same bits. */
    if (opt_run_quad(lc, spec, q, start, 20, OPT_LR, r1, why, sizeof why) ||
        opt_run_quad(lc, spec, q, start, 20, OPT_LR, r2, why, sizeof why))
        pc_row(lc, "deterministic", PC_FAIL, "%s", why);
    else if (memcmp(r1->params, r2->params, sizeof r1->params) != 0)
        pc_row(lc, "deterministic", PC_FAIL, "two runs of 20 steps ended with different parameters");
    else
        pc_row(lc, "deterministic", PC_OK,
               "two runs of 20 steps give the same bits; buffers and "
               "guards checked every step");

    const dm_optimizer_vtable *vt = lc->component->vtable;
    dm_devctx dev;
    dm_error err = {0};
    pc_now("opening the GPU");
    if (!(vt->devices & DM_DEVICE_BIT(DM_DEVICE_CUDA))) {
        pc_row(lc, "cuda vs cpu", PC_SKIP, "the optimizer has no CUDA implementation");
    } else if (dm_dev_open(&dev, DM_DEVICE_CUDA, 0, &err) != DM_OK) {
        pc_row(lc, "cuda vs cpu", PC_SKIP, "%s", err.msg);
    } else {
        /* The same 20 steps on both devices, every setting. */
        double worst = 0;
        int bad = 0;
        for (int k = 0; k < n && !bad; k++) {
            pc_discrete_setting(lc->component->params, c->user_spec, k, spec, sizeof spec);
            const int rc = opt_run_quad(lc, spec, q, start, 20, OPT_LR, r1, why, sizeof why);
            if (rc == 2 && k > 0) continue;
            if (rc || opt_run_cuda(lc, spec, &dev, q, start, 20, OPT_LR, r2, why, sizeof why)) {
                pc_row(lc, "cuda vs cpu", PC_FAIL, "%s", why);
                bad = 1;
                break;
            }
            double scale = 0, diff = 0;
            for (int i = 0; i < OPT_N; i++) {
                scale = fmax(scale, fabs(r1->params[i]));
                diff = fmax(diff, fabs((double)r1->params[i] - r2->params[i]));
            }
            const double rel = isfinite(diff) ? diff / scale : INFINITY;
            worst = fmax(worst, rel);
            if (!(rel <= 1e-4)) {
                pc_row(lc, "cuda vs cpu", PC_FAIL,
                       "'%s': after 20 steps the CUDA parameters differ "
                       "by %.3g of the largest (tolerance 1e-4)",
                       spec, rel);
                bad = 1;
            }
        }
        if (!bad)
            pc_row(lc, "cuda vs cpu", PC_OK,
                   "%d setting%s, 20 steps: parameters within %.2g of "
                   "the largest",
                   n, n == 1 ? "" : "s", worst);
        dm_dev_close(&dev);
    }
    free(q);
    free(start);
    free(r1);
    free(r2);
}

/* ---- datasets ------------------------------------------------------------------ */

#define DS_BATCH 12

typedef struct ds {
    const dm_dataset_vtable *vt;
    dm_param_set *ps;
    void *state;
    dm_dataset_info info;
} ds;

static int ds_open(ds *d, const dm_loaded_component *lc, const char *spec, dm_error *err)
{
    memset(d, 0, sizeof *d);
    d->vt = lc->component->vtable;
    int rc = dm_param_set_parse(lc->component->params, spec, &d->ps, err);
    if (rc != DM_OK) return rc;
    dm_dataset_config cfg = {sizeof cfg, 42, "."};
    d->info.struct_size = sizeof d->info;
    rc = d->vt->open(dm_param_set_params(d->ps), &cfg, &d->state, &d->info, err);
    if (rc != DM_OK) {
        d->state = NULL;
        dm_param_set_free(d->ps);
        d->ps = NULL;
    }
    return rc;
}

static void ds_close(ds *d)
{
    if (d->state) d->vt->close(d->state);
    dm_param_set_free(d->ps);
    memset(d, 0, sizeof *d);
}

/* Read idx[0..n) into guarded, poisoned buffers and check what came back. */
static int ds_read(ds *d, dm_split split, const int64_t *idx, int n, float *images, int32_t *labels, char *why,
                   size_t size)
{
    const size_t item = dm_shape_per_item(d->info.item);
    pc_buf im, lb;
    pc_buf_alloc(&im, (size_t)n * item * sizeof(float));
    pc_buf_alloc(&lb, (size_t)n * sizeof(int32_t));
    pc_buf_poison(&im);
    memset(lb.p, 0xFF, (size_t)n * sizeof(int32_t)); /* -1: not a label */
    dm_error err = {0};
    int bad = 1;
    long nf;
    pc_now("dataset read %d examples of split %d", n, (int)split);
    if (d->vt->read(d->state, split, idx, n, im.p, lb.p, &err) != DM_OK)
        snprintf(why, size, "read of %d examples from the %s split failed: %s", n,
                 split == DM_SPLIT_TRAIN ? "train" : "test", err.msg);
    else if (!pc_buf_guards_ok(&im) || !pc_buf_guards_ok(&lb))
        snprintf(why, size, "read wrote outside the images or labels of %d examples", n);
    else if ((nf = pc_first_nonfinite(im.p, (size_t)n * item)) >= 0)
        snprintf(why, size, "pixel %ld (example %ld) left unwritten (NaN) or not finite", nf, nf / (long)item);
    else {
        bad = 0;
        for (int i = 0; i < n && !bad; i++) {
            const int32_t l = ((int32_t *)lb.p)[i];
            if (l < 0 || l >= d->info.num_classes) {
                snprintf(why, size, "label %d of example %lld is outside [0, %d)", l, (long long)idx[i],
                         d->info.num_classes);
                bad = 1;
            }
        }
    }
    if (!bad) {
        memcpy(images, im.p, (size_t)n * item * sizeof(float));
        memcpy(labels, lb.p, (size_t)n * sizeof(int32_t));
    }
    pc_buf_free(&im);
    pc_buf_free(&lb);
    return bad;
}

void pc_check_dataset(const pc_ctx *c, const dm_loaded_component *lc)
{
    char spec[512], why[768] = "";
    dm_error err = {0};
    if (pc_setting(lc->component->params, c->user_spec, 0, c->seed, spec, sizeof spec, &err)) {
        pc_row(lc, "open", PC_FAIL, "%s", err.msg);
        return;
    }
    ds d, d2;
    pc_now("dataset open '%s'", spec);
    if (ds_open(&d, lc, spec, &err) != DM_OK) {
        pc_row(lc, "open", PC_FAIL, "'%s': %s (data keys can be given with --params)", spec, err.msg);
        return;
    }
    const dm_dataset_info *in = &d.info;
    if (in->count[DM_SPLIT_TRAIN] < 1 || in->count[DM_SPLIT_TEST] < 0 || in->item.n != 1 || in->item.c < 1 ||
        in->item.h < 1 || in->item.w < 1 || in->num_classes < 2) {
        pc_row(lc, "open", PC_FAIL,
               "bad info: %lld train, %lld test, item (%d,%d,%d,%d), %d classes "
               "(want train > 0, n = 1, c/h/w > 0, classes > 1)",
               (long long)in->count[0], (long long)in->count[1], in->item.n, in->item.c, in->item.h, in->item.w,
               in->num_classes);
        ds_close(&d);
        return;
    }
    pc_row(lc, "open", PC_OK, "'%s': %lld train, %lld test, item (%d,%d,%d), %d classes", spec, (long long)in->count[0],
           (long long)in->count[1], in->item.c, in->item.h, in->item.w, in->num_classes);

    const size_t item = dm_shape_per_item(in->item);
    float *im = malloc(DS_BATCH * item * sizeof(float)), *im2 = malloc(DS_BATCH * item * sizeof(float));
    int32_t lab[DS_BATCH], lab2[DS_BATCH];
    int ok = 1, splits = 0;
    uint64_t rng = dm_hash64(c->seed, 0xDA7A);
    for (int s = 0; s < 2 && ok; s++) {
        const int64_t count = in->count[s];
        if (count < 1) continue;
        splits++;
        /* First, last and random examples; then the same ones backwards. */
        int64_t idx[DS_BATCH], rev[DS_BATCH];
        for (int i = 0; i < DS_BATCH; i++)
            idx[i] = i == 0 ? 0 : i == 1 ? count - 1 : (int64_t)(dm_rng_next(&rng) % (uint64_t)count);
        for (int i = 0; i < DS_BATCH; i++) rev[i] = idx[DS_BATCH - 1 - i];
        if (ds_read(&d, (dm_split)s, idx, DS_BATCH, im, lab, why, sizeof why) ||
            ds_read(&d, (dm_split)s, rev, DS_BATCH, im2, lab2, why, sizeof why)) {
            pc_row(lc, "read", PC_FAIL, "%s", why);
            ok = 0;
            break;
        }
        for (int i = 0; i < DS_BATCH && ok; i++) {
            const int j = DS_BATCH - 1 - i;
            if (lab[i] != lab2[j] || memcmp(im + i * item, im2 + j * item, item * sizeof(float))) {
                pc_row(lc, "random access", PC_FAIL,
                       "example %lld of the %s split reads differently "
                       "in another batch position",
                       (long long)idx[i], s ? "test" : "train");
                ok = 0;
            }
        }
    }
    if (ok) {
        pc_row(lc, "read", PC_OK, "%d examples of %d split%s: in range, finite, within their buffers", DS_BATCH, splits,
               splits == 1 ? "" : "s");
        pc_row(lc, "random access", PC_OK, "an example reads the same at any position in a batch");
        /* A second instance from the same params and seed gives the same data. */
        int64_t idx[DS_BATCH];
        for (int i = 0; i < DS_BATCH; i++) idx[i] = (int64_t)(dm_rng_next(&rng) % (uint64_t)in->count[0]);
        if (ds_read(&d, DM_SPLIT_TRAIN, idx, DS_BATCH, im, lab, why, sizeof why))
            pc_row(lc, "deterministic", PC_FAIL, "%s", why);
        else if (ds_open(&d2, lc, spec, &err) != DM_OK)
            pc_row(lc, "deterministic", PC_FAIL, "second open failed: %s", err.msg);
        else {
            if (ds_read(&d2, DM_SPLIT_TRAIN, idx, DS_BATCH, im2, lab2, why, sizeof why))
                pc_row(lc, "deterministic", PC_FAIL, "%s", why);
            else if (memcmp(lab, lab2, sizeof lab) || memcmp(im, im2, DS_BATCH * item * sizeof(float)))
                pc_row(lc, "deterministic", PC_FAIL,
                       "two opens with the same params and seed gave "
                       "different examples");
            else pc_row(lc, "deterministic", PC_OK, "two opens with the same seed read the same data");
            ds_close(&d2);
        }
    }
    free(im);
    free(im2);
    ds_close(&d);
}

/* ---- comm backends --------------------------------------------------------------- */

#define COMM_N 1037
#define COMM_INFLIGHT 3

/* The row of one group of comm checks: FAIL with the first failure the
 * group wrote into why, else OK with the detail ok_fmt; why is then
 * cleared for the next group. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
comm_row(const dm_loaded_component *lc, const char *check, char *why, const char *ok_fmt, ...)
{
    char ok[256];
    va_list ap;
    va_start(ap, ok_fmt);
    vsnprintf(ok, sizeof ok, ok_fmt, ap);
    va_end(ap);
    pc_row(lc, check, why[0] ? PC_FAIL : PC_OK, "%s", why[0] ? why : ok);
    why[0] = 0;
}

void pc_check_comm(const pc_ctx *c, const dm_loaded_component *lc)
{
    const dm_comm_vtable *vt = lc->component->vtable;
    char spec[512], dir[512], rdzv[600];
    dm_error err = {0};
    if (pc_setting(lc->component->params, c->user_spec, 0, c->seed, spec, sizeof spec, &err)) {
        pc_row(lc, "init (world 1)", PC_FAIL, "%s", err.msg);
        return;
    }
    dm_param_set *ps = NULL;
    if (dm_param_set_parse(lc->component->params, spec, &ps, &err) != DM_OK) {
        pc_row(lc, "init (world 1)", PC_FAIL, "'%s': %s", spec, err.msg);
        return;
    }
    if (pc_tmpdir(dir, sizeof dir) != 0) {
        pc_row(lc, "init (world 1)", PC_FAIL, "cannot make a rendezvous directory under /tmp");
        dm_param_set_free(ps);
        return;
    }
    snprintf(rdzv, sizeof rdzv, "file://%s", dir);
    dm_comm_config cfg = {sizeof cfg, 0, 1, 0, rdzv, 30.0, DM_DEVICE_CPU, NULL, NULL, 1};
    dm_comm_info info = {sizeof info, -1, -1, -1};
    void *state = NULL;
    pc_now("comm init '%s' (world 1, rendezvous %s)", spec, rdzv);
    if (vt->init(dm_param_set_params(ps), &cfg, &state, &info, &err) != DM_OK) {
        pc_row(lc, "init (world 1)", PC_FAIL, "'%s': %s (backend keys can be given with --params)", spec, err.msg);
        dm_param_set_free(ps);
        pc_rmtree(dir);
        return;
    }
    if (info.rank != 0 || info.size != 1)
        pc_row(lc, "init (world 1)", PC_FAIL, "info says rank %d of %d, want 0 of 1", info.rank, info.size);
    else pc_row(lc, "init (world 1)", PC_OK, "rank 0 of 1");

    /* World size 1: sum and mean of one rank are the buffer itself, bit for bit. */
    pc_buf buf[COMM_INFLIGHT];
    float *want = malloc(COMM_N * sizeof(float));
    uint64_t seed = dm_hash64(c->seed, 0xC033);
    for (int i = 0; i < COMM_INFLIGHT; i++) {
        pc_buf_alloc(&buf[i], COMM_N * sizeof(float));
        uint64_t s = seed + (uint64_t)i;
        for (int j = 0; j < COMM_N; j++) ((float *)buf[i].p)[j] = 2.0f * dm_rng_uniform(&s) - 1.0f;
    }
    char why[768] = "";
#define COMM_FAIL(...) \
    do { \
        if (!why[0]) snprintf(why, sizeof why, __VA_ARGS__); \
    } while (0)
    for (int op = 0; op < 2 && !why[0]; op++) {
        memcpy(want, buf[0].p, COMM_N * sizeof(float));
        pc_now("comm allreduce %s", op ? "avg" : "sum");
        if (vt->allreduce(state, buf[0].p, COMM_N, op ? DM_REDUCE_AVG : DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, &err) !=
            DM_OK)
            COMM_FAIL("allreduce %s: %s", op ? "avg" : "sum", err.msg);
        else if (memcmp(want, buf[0].p, COMM_N * sizeof(float)) || !pc_buf_guards_ok(&buf[0]))
            COMM_FAIL("allreduce %s over one rank changed the buffer or wrote outside it", op ? "avg" : "sum");
    }
    comm_row(lc, "allreduce", why, "sum and avg of %d floats: in place, unchanged, within bounds", COMM_N);

    dm_comm_request *req[COMM_INFLIGHT] = {0};
    float *copies = malloc(COMM_INFLIGHT * COMM_N * sizeof(float));
    int started = 0;
    for (int i = 0; i < COMM_INFLIGHT; i++) memcpy(copies + i * COMM_N, buf[i].p, COMM_N * sizeof(float));
    for (int i = 0; i < COMM_INFLIGHT; i++) {
        pc_now("comm allreduce_start %d", i);
        if (vt->allreduce_start(state, buf[i].p, COMM_N, DM_REDUCE_AVG, DM_DEVICE_CPU, NULL, &req[i], &err) != DM_OK) {
            COMM_FAIL("allreduce_start %d: %s", i, err.msg);
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) {
        pc_now("comm wait %d", i);
        if (vt->wait(state, req[i], &err) != DM_OK) COMM_FAIL("wait %d: %s", i, err.msg);
        else if (memcmp(copies + i * COMM_N, buf[i].p, COMM_N * sizeof(float)) || !pc_buf_guards_ok(&buf[i]))
            COMM_FAIL("handle %d of %d in flight: the buffer changed or was written outside", i, COMM_INFLIGHT);
    }
    comm_row(lc, "allreduce_start/wait", why, "%d handles in flight, waited in order", COMM_INFLIGHT);

    memcpy(want, buf[1].p, COMM_N * sizeof(float));
    pc_now("comm broadcast");
    if (vt->broadcast(state, buf[1].p, 1001, 0, DM_DEVICE_CPU, NULL, &err) != DM_OK)
        COMM_FAIL("broadcast: %s", err.msg);
    else if (memcmp(want, buf[1].p, COMM_N * sizeof(float)) || !pc_buf_guards_ok(&buf[1]))
        COMM_FAIL("broadcast of 1001 bytes from rank 0 changed the buffer or wrote outside it");
    pc_now("comm barrier");
    if (!why[0] && vt->barrier(state, &err) != DM_OK) COMM_FAIL("barrier: %s", err.msg);
    comm_row(lc, "broadcast/barrier", why, "an odd byte count, unchanged; barrier returns");
#undef COMM_FAIL

    pc_now("comm finalize");
    if (vt->finalize(state, &err) != DM_OK) pc_row(lc, "finalize", PC_FAIL, "%s", err.msg);
    else pc_row(lc, "finalize", PC_OK, "returns DM_OK");
    for (int i = 0; i < COMM_INFLIGHT; i++) pc_buf_free(&buf[i]);
    free(want);
    free(copies);
    dm_param_set_free(ps);
    pc_rmtree(dir);
}
