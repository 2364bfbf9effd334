/* dmnist-plugin-check, layers: draw settings and input shapes, then
 *  - init_params writes every parameter, the same way for the same seed
 *    (and init_state, ABI 1.1, every state float);
 *  - forward twice from the same layer state gives the same bits;
 *  - poisoned (NaN) outputs are fully written, inputs and parameters are left
 *    alone, and guard zones around every buffer stay intact, also when the
 *    batch is smaller than the create-time one;
 *  - gradients: the shared gradient checker (tools/gradcheck/gradcheck.c) on each case;
 *  - the CUDA implementation, when there is one and a GPU, against the CPU. */
#define _GNU_SOURCE
#include "gradcheck.h"
#include "plugin_check.h"

#include <math.h>
#include <stdlib.h>

#define MAX_CASES 64
#define SHAPE_TRIES 16 /* random shapes tried per setting */
#define CASES_PER_SETTING 2
#define MIN_CASES 3    /* fewer accepted cases than this is a failure */
#define MAX_COORDS 256 /* gradient points sampled per tensor */
#define CUDA_CASES 3

typedef struct lcase {
    char spec[512];
    dm_shape in; /* create-time shape */
    int run_n;   /* batch passed to forward/backward (<= in.n) */
    int training;
    size_t params;  /* param_count create reported */
    size_t state;   /* state floats (ABI 1.1) */
    int init_state; /* the layer has an init_state */
} lcase;

static void case_str(const lcase *k, char *buf, size_t size)
{
    snprintf(buf, size, "'%s' in (%d,%d,%d,%d) n=%d %s", k->spec, k->in.n, k->in.c, k->in.h, k->in.w, k->run_n,
             k->training ? "training" : "eval");
}

/* A random input shape: small images or vectors, batch 1 to 3. */
static dm_shape draw_shape(uint64_t *rng)
{
    dm_shape s;
    s.n = 1 + (int)(dm_rng_next(rng) % 3);
    if (dm_rng_next(rng) % 3 == 0) {
        s.c = 2 + (int)(dm_rng_next(rng) % 11);
        s.h = s.w = 1;
    } else {
        s.c = 1 + (int)(dm_rng_next(rng) % 3);
        s.h = 1 + (int)(dm_rng_next(rng) % 8);
        s.w = 1 + (int)(dm_rng_next(rng) % 8);
    }
    return s;
}

/* ---- one layer instance with its own buffers ---------------------------- */

typedef struct inst {
    const dm_layer_vtable *vt;
    dm_param_set *ps;
    void *state;
    dm_layer_info info;
    dm_device device;
    dm_devctx *dev;           /* CUDA only */
    pc_buf params, grads, ws; /* CPU: guarded host buffers */
    float *dparams, *dgrads;  /* CUDA: device buffers */
    void *dws;
    dm_layer_state_api sa; /* ABI 1.1 layer state */
    pc_buf lstate;         /* CPU: sa.floats, guarded */
    float *dstate;         /* CUDA */
} inst;

static void inst_free(inst *I)
{
    if (I->state) I->vt->destroy(I->state);
    dm_param_set_free(I->ps);
    pc_buf_free(&I->params);
    pc_buf_free(&I->grads);
    pc_buf_free(&I->ws);
    pc_buf_free(&I->lstate);
    if (I->dev) {
        dm_dev_free(I->dev, I->dparams);
        dm_dev_free(I->dev, I->dgrads);
        dm_dev_free(I->dev, I->dws);
        dm_dev_free(I->dev, I->dstate);
    }
    memset(I, 0, sizeof *I);
}

/* Create for `in` on the CPU (dev NULL) or on dev's GPU, and bind. Only
 * create's own refusal is returned as such; *created says whether create
 * accepted the configuration. */
static int inst_create(inst *I, const dm_loaded_component *lc, const char *spec, dm_shape in, dm_devctx *dev,
                       int *created, dm_error *err)
{
    memset(I, 0, sizeof *I);
    *created = 0;
    I->vt = lc->component->vtable;
    I->device = dev ? dev->device : DM_DEVICE_CPU;
    I->dev = dev;
    int rc = dm_param_set_parse(lc->component->params, spec, &I->ps, err);
    if (rc != DM_OK) return rc;
    dm_layer_config cfg = {sizeof cfg, "check", I->device, DM_LAYOUT_NCHW, in, 2, dev ? dev->stream : NULL};
    I->info.struct_size = sizeof I->info;
    rc = I->vt->create(dm_param_set_params(I->ps), &cfg, &I->state, &I->info, err);
    if (rc != DM_OK) {
        I->state = NULL;
        inst_free(I);
        return rc;
    }
    *created = 1;
    const size_t np = I->info.param_count;
    if (I->device == DM_DEVICE_CPU) {
        pc_buf_alloc(&I->params, np * sizeof(float));
        pc_buf_alloc(&I->grads, np * sizeof(float));
        pc_buf_alloc(&I->ws, I->info.workspace_bytes);
        rc = I->vt->bind(I->state, I->params.p, I->grads.p, I->ws.p, err);
    } else {
        if (np &&
            (!(I->dparams = dm_dev_alloc(dev, np * sizeof(float), err)) ||
             !(I->dgrads = dm_dev_alloc(dev, np * sizeof(float), err))))
            rc = DM_ERR_NOMEM;
        if (rc == DM_OK && I->info.workspace_bytes && !(I->dws = dm_dev_alloc(dev, I->info.workspace_bytes, err)))
            rc = DM_ERR_NOMEM;
        if (rc == DM_OK) rc = I->vt->bind(I->state, I->dparams, I->dgrads, I->dws, err);
    }
    /* ABI 1.1 layer state: the initial values (init_state, or zeros), bound. */
    if (rc == DM_OK) rc = dm_layer_state_api_get(I->vt, &I->info, lc->component->type_name, &I->sa, err);
    const size_t ns = I->sa.floats;
    if (rc == DM_OK && ns) {
        pc_buf_alloc(&I->lstate, ns * sizeof(float));
        if (I->sa.init_state) rc = I->sa.init_state(I->state, I->lstate.p, err);
        if (rc == DM_OK && I->device == DM_DEVICE_CPU) {
            rc = I->sa.bind_state(I->state, I->lstate.p, err);
        } else if (rc == DM_OK) {
            if (!(I->dstate = dm_dev_alloc(dev, ns * sizeof(float), err))) rc = DM_ERR_NOMEM;
            if (rc == DM_OK) rc = dm_dev_upload(dev, I->dstate, I->lstate.p, ns * sizeof(float), err);
            if (rc == DM_OK) rc = I->sa.bind_state(I->state, I->dstate, err);
        }
    }
    if (rc != DM_OK) inst_free(I);
    return rc;
}

/* ---- finding cases ---------------------------------------------------------- */

static int collect_cases(const pc_ctx *c, const dm_loaded_component *lc, lcase *cases)
{
    int n = 0, refused = 0, tried = 0;
    char bad[640] = "";
    for (int s = 0; s < c->settings && n < MAX_CASES; s++) {
        char spec[512];
        dm_error err = {0};
        if (pc_setting(lc->component->params, c->user_spec, s, c->seed, spec, sizeof spec, &err)) {
            pc_row(lc, "settings", PC_FAIL, "%s", err.msg);
            return -1;
        }
        dm_param_set *ps = NULL;
        if (dm_param_set_parse(lc->component->params, spec, &ps, &err) != DM_OK) {
            pc_row(lc, "settings", PC_FAIL, "'%s': %s", spec, err.msg);
            return -1;
        }
        dm_param_set_free(ps);
        uint64_t rng = dm_hash64(c->seed, 0x5A9E + (uint64_t)s);
        int accepted = 0;
        for (int t = 0; t < SHAPE_TRIES && accepted < CASES_PER_SETTING && n < MAX_CASES; t++) {
            lcase k = {{0}, draw_shape(&rng), 0, 1, 0, 0, 0};
            snprintf(k.spec, sizeof k.spec, "%s", spec);
            pc_now("create '%s' for (%d,%d,%d,%d)", spec, k.in.n, k.in.c, k.in.h, k.in.w);
            inst I;
            int created = 0;
            memset(&err, 0, sizeof err);
            tried++;
            int rc = inst_create(&I, lc, spec, k.in, NULL, &created, &err);
            if (!created) {
                refused++;
                /* A refusal is fine; a silent or multi-line one is not. */
                if (!bad[0] && (rc == DM_OK || !err.msg[0] || strchr(err.msg, '\n')))
                    snprintf(bad, sizeof bad, "create refused '%s' for (%d,%d,%d,%d) with %s", spec, k.in.n, k.in.c,
                             k.in.h, k.in.w,
                             rc == DM_OK       ? "status 0"
                                 : !err.msg[0] ? "an empty message"
                                               : "a message of several lines");
                continue;
            }
            if (rc != DM_OK) {
                pc_row(lc, "create/bind", PC_FAIL, "'%s' (%d,%d,%d,%d): bind failed: %s", spec, k.in.n, k.in.c, k.in.h,
                       k.in.w, err.msg);
                return -1;
            }
            k.params = I.info.param_count;
            k.state = I.sa.floats;
            k.init_state = I.sa.init_state != NULL;
            inst_free(&I);
            if (k.in.n > 1 && dm_rng_next(&rng) % 2) k.run_n = 1 + (int)(dm_rng_next(&rng) % (uint64_t)(k.in.n - 1));
            else k.run_n = k.in.n;
            k.training = n % 4 != 3; /* every fourth case in evaluation mode */
            cases[n++] = k;
            accepted++;
            if (c->verbose)
                printf("  case %d: '%s' in (%d,%d,%d,%d) n=%d\n", n, spec, k.in.n, k.in.c, k.in.h, k.in.w, k.run_n);
        }
    }
    if (bad[0]) {
        pc_row(lc, "settings and shapes", PC_FAIL, "%s (a refusal needs a one-line message)", bad);
        return -1;
    }
    if (n < MIN_CASES) {
        pc_row(lc, "settings and shapes", PC_FAIL,
               "only %d of %d random configurations accepted (need %d): give keys with --params", n, tried, MIN_CASES);
        return -1;
    }
    pc_row(lc, "settings and shapes", PC_OK, "%d cases from %d settings; %d shapes refused with a message", n,
           c->settings, refused);
    return n;
}

/* ---- gradients --------------------------------------------------------------- */

static void check_gradients(const pc_ctx *c, const dm_loaded_component *lc, const lcase *cases, int n)
{
    int points = 0, skipped = 0;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const lcase *k = &cases[i];
        char what[640];
        case_str(k, what, sizeof what);
        pc_now("gradient check %s", what);
        gc_options o = {0};
        o.training = k->training;
        o.run_n = k->run_n;
        o.max_coords = MAX_COORDS;
        gc_report rep;
        dm_error err = {0};
        const uint64_t seed = dm_hash64(c->seed, 0x6C + (uint64_t)i);
        int rc = gc_check(lc->component->type_name, k->spec, k->in, seed, &o, &rep, &err);
        if (rc == DM_OK && rep.failures) {
            /* Maybe a kink (ReLU at 0, a max changing hands) lies within a
             * step of some point: check again skipping the points where L
             * is visibly not linear, as the layer tests do for such layers.
             * A wrong gradient still fails wherever L is smooth. */
            o.kinks = 1;
            rc = gc_check(lc->component->type_name, k->spec, k->in, seed, &o, &rep, &err);
        }
        const int total = rep.checked + rep.skipped;
        if (c->verbose)
            printf("  gradient %s: checked %d, skipped %d, worst %.3f\n", what, rep.checked, rep.skipped, rep.worst);
        if (rc != DM_OK) {
            pc_row(lc, "gradient (cpu)", PC_FAIL, "%s: %s", what, err.msg);
            return;
        }
        if (rep.failures) {
            pc_row(lc, "gradient (cpu)", PC_FAIL, "%s: %d of %d points wrong, first %s", what, rep.failures,
                   rep.checked, rep.first_failure);
            return;
        }
        if (rep.skipped > 2 + total / 10) {
            pc_row(lc, "gradient (cpu)", PC_FAIL, "%s: %d of %d points look like kinks even at 100x smaller steps",
                   what, rep.skipped, total);
            return;
        }
        points += rep.checked;
        skipped += rep.skipped;
        if (rep.worst > worst) worst = rep.worst;
    }
    pc_row(lc, "gradient (cpu)", PC_OK, "%d cases, %d points, %d kinks skipped, worst %.2f of tolerance", n, points,
           skipped, worst);
}

/* ---- init, determinism, poisoned and guarded buffers ---------------------------- */

/* Everything a forward/backward pair reads and writes, guarded. */
typedef struct io {
    dm_shape is, os; /* n = the run batch */
    pc_buf in, out, out2, dout, din, labels, metrics;
    float *grads1; /* grads of the first backward */
} io;

static void io_free(io *b)
{
    pc_buf *all[] = {&b->in, &b->out, &b->out2, &b->dout, &b->din, &b->labels, &b->metrics};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pc_buf_free(all[i]);
    free(b->grads1);
}

/* 1 when p and q hold the same bytes. */
static int same(const void *p, const void *q, size_t bytes) { return bytes == 0 || memcmp(p, q, bytes) == 0; }

/* First guarded buffer whose guard zone was written, or NULL. */
static const char *broken_guard(const inst *I, const io *b)
{
    const pc_buf *bufs[] = {&b->in,      &b->out,    &b->dout,  &b->din, &b->labels,
                            &b->metrics, &I->params, &I->grads, &I->ws,  &I->lstate};
    static const char *names[] = {"in",      "out",    "dout",  "din",       "labels",
                                  "metrics", "params", "grads", "workspace", "layer state"};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]->raw && !pc_buf_guards_ok(bufs[i])) return names[i];
    return NULL;
}

/* Run one case through init, forward twice, backward with and without din.
 * Fills `why` (and returns the check's name) on the first problem. */
static const char *buffer_case(const pc_ctx *c, const dm_loaded_component *lc, const lcase *k, int index, char *why,
                               size_t size)
{
    inst I;
    io b;
    memset(&b, 0, sizeof b);
    dm_error err = {0};
    int created = 0;
    const char *check = NULL;
    if (inst_create(&I, lc, k->spec, k->in, NULL, &created, &err) != DM_OK) {
        snprintf(why, size, "create/bind: %s", err.msg);
        return "buffers";
    }
    const size_t np = I.info.param_count;
    const uint64_t seed = dm_hash64(c->seed, 0xB0F + (uint64_t)index);
    const int is_loss = I.info.is_loss;

    /* init_params: every parameter written, the same for the same seed. */
    pc_now("init_params '%s'", k->spec);
    pc_buf h1, h2;
    pc_buf_alloc(&h1, np * sizeof(float));
    pc_buf_alloc(&h2, np * sizeof(float));
    pc_buf_poison(&h1);
    pc_buf_poison(&h2);
    long bad;
    if (np) {
        if (I.vt->init_params(I.state, h1.p, seed, &err) != DM_OK ||
            I.vt->init_params(I.state, h2.p, seed, &err) != DM_OK) {
            snprintf(why, size, "init_params failed: %s", err.msg);
            check = "init_params";
        } else if ((bad = pc_first_nonfinite(h1.p, np)) >= 0) {
            snprintf(why, size, "params[%ld] of %zu not written (still NaN) or not finite", bad, np);
            check = "init_params";
        } else if (!pc_buf_guards_ok(&h1)) {
            snprintf(why, size, "wrote outside its %zu params", np);
            check = "init_params";
        } else if (!same(h1.p, h2.p, np * sizeof(float))) {
            snprintf(why, size, "two calls with the same seed gave different parameters");
            check = "init_params";
        }
    }
    pc_buf_free(&h1);
    pc_buf_free(&h2);
    /* init_state (ABI 1.1): the same checks on the state it fills. */
    const size_t ns = I.sa.floats;
    if (!check && ns && I.sa.init_state) {
        pc_buf_alloc(&h1, ns * sizeof(float));
        pc_buf_alloc(&h2, ns * sizeof(float));
        pc_buf_poison(&h1);
        pc_buf_poison(&h2);
        check = "init_state";
        if (I.sa.init_state(I.state, h1.p, &err) != DM_OK || I.sa.init_state(I.state, h2.p, &err) != DM_OK)
            snprintf(why, size, "init_state failed: %s", err.msg);
        else if ((bad = pc_first_nonfinite(h1.p, ns)) >= 0)
            snprintf(why, size, "state[%ld] of %zu not written (still NaN) or not finite", bad, ns);
        else if (!pc_buf_guards_ok(&h1)) snprintf(why, size, "wrote outside its %zu state floats", ns);
        else if (!same(h1.p, h2.p, ns * sizeof(float))) snprintf(why, size, "two calls gave different initial states");
        else check = NULL;
        pc_buf_free(&h1);
        pc_buf_free(&h2);
    }
    if (check) {
        inst_free(&I);
        return check;
    }

    /* Inputs like the gradient checker's; random parameters so that no
     * unit is dead by construction. */
    const int n = k->run_n;
    b.is = k->in;
    b.is.n = n;
    b.os = I.info.out_shape;
    b.os.n = n;
    const size_t n_in = dm_shape_count(b.is), n_out = dm_shape_count(b.os);
    pc_buf_alloc(&b.in, n_in * sizeof(float));
    pc_buf_alloc(&b.out, n_out * sizeof(float));
    pc_buf_alloc(&b.out2, n_out * sizeof(float));
    pc_buf_alloc(&b.dout, n_out * sizeof(float));
    pc_buf_alloc(&b.din, n_in * sizeof(float));
    pc_buf_alloc(&b.labels, (size_t)n * sizeof(int32_t));
    pc_buf_alloc(&b.metrics, 2 * sizeof(float));
    b.grads1 = malloc((np ? np : 1) * sizeof(float));
    gc_fill_uniform(b.in.p, n_in, 0.1f, 1.0f, seed ^ 1);
    for (size_t i = 0; i < n_in; i += 2) ((float *)b.in.p)[i] = -((float *)b.in.p)[i];
    gc_fill_uniform(I.params.p, np, -0.5f, 0.5f, seed ^ 2);
    gc_fill_uniform(b.dout.p, n_out, -1.0f, 1.0f, seed ^ 3);
    const int classes = (int)dm_shape_per_item(b.os);
    uint64_t ls = seed ^ 4;
    for (int i = 0; i < n; i++)
        ((int32_t *)b.labels.p)[i] = (int32_t)(dm_rng_next(&ls) % (uint64_t)(classes > 0 ? classes : 1));
    float *metrics = b.metrics.p;

    /* Copies to prove inputs are left alone. */
    float *in0 = malloc(n_in * sizeof(float)), *p0 = malloc((np ? np : 1) * sizeof(float));
    float *dout0 = malloc(n_out * sizeof(float));
    memcpy(in0, b.in.p, n_in * sizeof(float));
    if (np) /* params.p is NULL for a layer without parameters */
        memcpy(p0, I.params.p, np * sizeof(float));
    memcpy(dout0, b.dout.p, n_out * sizeof(float));

    dm_run_ctx ctx = {sizeof ctx, k->training, dm_hash64(seed, 5), b.labels.p, metrics, NULL};
    dm_tensor tin = {b.in.p, DM_DEVICE_CPU, DM_LAYOUT_NCHW, b.is};
    dm_tensor tout = {b.out.p, DM_DEVICE_CPU, DM_LAYOUT_NCHW, b.os};
    dm_tensor tout2 = {b.out2.p, DM_DEVICE_CPU, DM_LAYOUT_NCHW, b.os};
    dm_tensor tdout = {b.dout.p, DM_DEVICE_CPU, DM_LAYOUT_NCHW, b.os};
    dm_tensor tdin = {b.din.p, DM_DEVICE_CPU, DM_LAYOUT_NCHW, b.is};
    const char *g;
    float m1[2];
    /* A training forward may update the layer state: the second forward
     * starts from the same state as the first and must leave the same. */
    float *st0 = malloc((ns ? ns : 1) * sizeof(float)), *st1 = malloc((ns ? ns : 1) * sizeof(float));
    if (ns) memcpy(st0, I.lstate.p, ns * sizeof(float));

#define FAIL_WITH(name, ...) \
    do { \
        snprintf(why, size, __VA_ARGS__); \
        check = name; \
        goto done; \
    } while (0)

    /* forward, twice: every output written, the same bits both times,
     * metrics accumulated (+=) by loss layers. */
    pc_now("forward '%s' n=%d", k->spec, n);
    pc_buf_poison(&b.out);
    pc_buf_poison(&b.out2);
    metrics[0] = 5.0f;
    metrics[1] = 7.0f;
    if (I.vt->forward(I.state, &ctx, &tin, &tout, &err) != DM_OK) FAIL_WITH("buffers", "forward failed: %s", err.msg);
    m1[0] = metrics[0] - 5.0f;
    m1[1] = metrics[1] - 7.0f;
    if (ns) {
        memcpy(st1, I.lstate.p, ns * sizeof(float));
        memcpy(I.lstate.p, st0, ns * sizeof(float));
    }
    if ((bad = pc_first_nonfinite(b.out.p, n_out)) >= 0)
        FAIL_WITH("buffers", "forward left out[%ld] of %zu unwritten (NaN) or not finite", bad, n_out);
    if ((g = broken_guard(&I, &b))) FAIL_WITH("buffers", "forward wrote outside '%s'", g);
    if (!same(in0, b.in.p, n_in * sizeof(float)) || !same(p0, I.params.p, np * sizeof(float)))
        FAIL_WITH("buffers", "forward changed its input or the parameters");
    if (is_loss && (!isfinite(m1[0]) || !isfinite(m1[1]) || m1[1] < 0 || m1[1] > n || m1[1] != floorf(m1[1])))
        FAIL_WITH("buffers",
                  "loss metrics not accumulated as [0] += loss sum, [1] += correct "
                  "(from 5, 7 to %g, %g for n=%d)",
                  metrics[0], metrics[1], n);
    metrics[0] = 5.0f;
    metrics[1] = 7.0f;
    if (I.vt->forward(I.state, &ctx, &tin, &tout2, &err) != DM_OK)
        FAIL_WITH("deterministic", "second forward failed: %s", err.msg);
    if (!same(b.out.p, b.out2.p, n_out * sizeof(float)))
        FAIL_WITH("deterministic", "two forward calls on the same input gave different outputs");
    if (!same(st1, I.lstate.p, ns * sizeof(float)))
        FAIL_WITH("deterministic", "two forward calls from the same layer state left different states");
    if (is_loss && (metrics[0] - 5.0f != m1[0] || metrics[1] - 7.0f != m1[1]))
        FAIL_WITH("deterministic", "two forward calls gave different loss metrics");

    /* backward: din and every gradient written, nothing else. */
    pc_now("backward '%s' n=%d", k->spec, n);
    pc_buf_poison(&b.din);
    pc_buf_poison(&I.grads);
    if (I.vt->backward(I.state, &ctx, &tin, &tout, is_loss ? NULL : &tdout, &tdin, &err) != DM_OK)
        FAIL_WITH("buffers", "backward failed: %s", err.msg);
    if ((bad = pc_first_nonfinite(b.din.p, n_in)) >= 0)
        FAIL_WITH("buffers", "backward left din[%ld] of %zu unwritten (NaN) or not finite", bad, n_in);
    if ((bad = pc_first_nonfinite(I.grads.p, np)) >= 0)
        FAIL_WITH("buffers",
                  "backward left grads[%ld] of %zu NaN or not finite (unwritten, or "
                  "added to instead of overwritten)",
                  bad, np);
    if ((g = broken_guard(&I, &b))) FAIL_WITH("buffers", "backward wrote outside '%s'", g);
    if (!same(in0, b.in.p, n_in * sizeof(float)) || !same(p0, I.params.p, np * sizeof(float)) ||
        !same(dout0, b.dout.p, n_out * sizeof(float)) || !same(b.out.p, b.out2.p, n_out * sizeof(float)))
        FAIL_WITH("buffers", "backward changed in, out, dout or the parameters");
    if (np) memcpy(b.grads1, I.grads.p, np * sizeof(float));

    /* As the first layer (din NULL): the same gradients, nothing else. */
    if (!is_loss && np) {
        pc_now("backward '%s' n=%d with din = NULL", k->spec, n);
        pc_buf_poison(&I.grads);
        if (I.vt->backward(I.state, &ctx, &tin, &tout, &tdout, NULL, &err) != DM_OK)
            FAIL_WITH("buffers", "backward with din = NULL (first layer) failed: %s", err.msg);
        double scale = 0;
        for (size_t i = 0; i < np; i++) scale = fmax(scale, fabs(b.grads1[i]));
        for (size_t i = 0; i < np; i++) {
            const float v = ((float *)I.grads.p)[i];
            if (!(fabs(v - b.grads1[i]) <= 1e-5 * scale))
                FAIL_WITH("buffers", "backward with din = NULL gave grads[%zu] = %g, with din %g", i, v, b.grads1[i]);
        }
        if ((g = broken_guard(&I, &b))) FAIL_WITH("buffers", "backward with din = NULL wrote outside '%s'", g);
    }
#undef FAIL_WITH
done:
    free(in0);
    free(p0);
    free(dout0);
    free(st0);
    free(st1);
    io_free(&b);
    inst_free(&I);
    return check;
}

/* Returns 1 when every case passed. */
static int check_buffers(const pc_ctx *c, const dm_loaded_component *lc, const lcase *cases, int n)
{
    int smaller = 0;
    size_t params = 0, state = 0;
    int init_state = 0;
    for (int i = 0; i < n; i++) {
        char why[768], what[640];
        const char *check = buffer_case(c, lc, &cases[i], i, why, sizeof why);
        if (check) {
            case_str(&cases[i], what, sizeof what);
            pc_row(lc, check, PC_FAIL, "%s: %s", what, why);
            return 0;
        }
        smaller += cases[i].run_n < cases[i].in.n;
        params += cases[i].params;
        state += cases[i].state;
        init_state |= cases[i].init_state;
    }
    pc_row(lc, "init_params", PC_OK, "%s",
           params ? "writes every parameter, same seed gives the same values" : "no parameters in any case");
    if (state)
        pc_row(lc, "init_state", PC_OK, "%s",
               init_state ? "writes every state float, the same values each time"
                          : "no init_state: the state starts at zero");
    pc_row(lc, "deterministic", PC_OK, "forward twice gives the same bits (%d cases)", n);
    pc_row(lc, "buffers", PC_OK,
           "outputs fully written, inputs untouched, guards intact (%d cases, %d smaller batches)", n, smaller);
    return 1;
}

/* ---- CUDA against CPU ----------------------------------------------------------- */

/* max |a - b| relative to max |ref|; NaN when anything is not finite. */
static double rel_diff(const float *ref, const float *x, size_t n)
{
    double scale = 0, diff = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(ref[i]) || !isfinite(x[i])) return NAN;
        scale = fmax(scale, fabs(ref[i]));
        diff = fmax(diff, fabs((double)ref[i] - x[i]));
    }
    return scale > 0 ? diff / scale : diff;
}

#define CUDA_TOL 5e-3 /* of the tensor's largest value: TF32 and reordered sums */

static int cuda_case(const pc_ctx *c, const dm_loaded_component *lc, const lcase *k, int index, dm_devctx *dev,
                     double *worst, char *why, size_t size)
{
    inst C, G;
    dm_error err = {0};
    int created = 0, rc;
    if ((rc = inst_create(&C, lc, k->spec, k->in, NULL, &created, &err)) != DM_OK) {
        snprintf(why, size, "cpu create: %s", err.msg);
        return rc;
    }
    if ((rc = inst_create(&G, lc, k->spec, k->in, dev, &created, &err)) != DM_OK) {
        snprintf(why, size, "cuda create/bind: %s", err.msg);
        inst_free(&C);
        return rc;
    }
    const uint64_t seed = dm_hash64(c->seed, 0xC0DA + (uint64_t)index);
    const int n = k->run_n, is_loss = C.info.is_loss;
    dm_shape is = k->in, os = C.info.out_shape;
    is.n = os.n = n;
    const size_t n_in = dm_shape_count(is), n_out = dm_shape_count(os), np = C.info.param_count;
    /* host side: [in | dout | out | din | grads] twice (cpu, cuda results) */
    float *x = malloc(n_in * sizeof(float)), *dy = malloc(n_out * sizeof(float));
    float *y[2] = {malloc(n_out * sizeof(float)), malloc(n_out * sizeof(float))};
    float *dx[2] = {malloc(n_in * sizeof(float)), malloc(n_in * sizeof(float))};
    float *gr[2] = {malloc((np + 1) * sizeof(float)), malloc((np + 1) * sizeof(float))};
    float met[2][2] = {{0, 0}, {0, 0}};
    const size_t ns = C.sa.floats; /* gst: the CUDA instance's layer state after the step */
    float *gst = malloc((ns ? ns : 1) * sizeof(float));
    int32_t *lab = malloc((size_t)n * sizeof(int32_t));
    gc_fill_uniform(x, n_in, -1.0f, 1.0f, seed ^ 1);
    gc_fill_uniform(dy, n_out, -1.0f, 1.0f, seed ^ 2);
    gc_fill_uniform(C.params.p, np, -0.5f, 0.5f, seed ^ 3);
    uint64_t ls = seed ^ 4;
    const int classes = (int)dm_shape_per_item(os);
    for (int i = 0; i < n; i++) lab[i] = (int32_t)(dm_rng_next(&ls) % (uint64_t)(classes > 0 ? classes : 1));

    /* device copies */
    float *gx = dm_dev_alloc(dev, n_in * sizeof(float), &err);
    float *gy = dm_dev_alloc(dev, n_out * sizeof(float), &err);
    float *gdy = dm_dev_alloc(dev, n_out * sizeof(float), &err);
    float *gdx = dm_dev_alloc(dev, n_in * sizeof(float), &err);
    float *gmet = dm_dev_alloc(dev, 2 * sizeof(float), &err);
    int32_t *glab = dm_dev_alloc(dev, (size_t)n * sizeof(int32_t), &err);
    rc = gx && gy && gdy && gdx && gmet && glab ? DM_OK : DM_ERR_NOMEM;
    pc_dev_settle();
    if (rc == DM_OK) rc = dm_dev_upload(dev, gx, x, n_in * sizeof(float), &err);
    if (rc == DM_OK) rc = dm_dev_upload(dev, gdy, dy, n_out * sizeof(float), &err);
    if (rc == DM_OK) rc = dm_dev_upload(dev, glab, lab, (size_t)n * sizeof(int32_t), &err);
    if (rc == DM_OK && np) rc = dm_dev_upload(dev, G.dparams, C.params.p, np * sizeof(float), &err);
    if (rc != DM_OK) snprintf(why, size, "device buffers: %s", err.msg);

    const uint64_t step_seed = dm_hash64(seed, 5);
    for (int side = 0; side < 2 && rc == DM_OK; side++) {
        inst *I = side ? &G : &C;
        dm_device d = side ? DM_DEVICE_CUDA : DM_DEVICE_CPU;
        dm_run_ctx ctx = {sizeof ctx,        k->training,          step_seed,
                          side ? glab : lab, side ? gmet : met[0], side ? dev->stream : NULL};
        dm_tensor tin = {side ? gx : x, d, DM_LAYOUT_NCHW, is};
        dm_tensor tout = {side ? gy : y[0], d, DM_LAYOUT_NCHW, os};
        dm_tensor tdout = {side ? gdy : dy, d, DM_LAYOUT_NCHW, os};
        dm_tensor tdin = {side ? gdx : dx[0], d, DM_LAYOUT_NCHW, is};
        pc_now("%s forward/backward '%s'", side ? "cuda" : "cpu", k->spec);
        rc = I->vt->forward(I->state, &ctx, &tin, &tout, &err);
        if (rc == DM_OK) rc = I->vt->backward(I->state, &ctx, &tin, &tout, is_loss ? NULL : &tdout, &tdin, &err);
        if (rc == DM_OK && side) {
            rc = dm_dev_download(dev, y[1], gy, n_out * sizeof(float), &err);
            if (rc == DM_OK) rc = dm_dev_download(dev, dx[1], gdx, n_in * sizeof(float), &err);
            if (rc == DM_OK && np) rc = dm_dev_download(dev, gr[1], G.dgrads, np * sizeof(float), &err);
            if (rc == DM_OK) rc = dm_dev_download(dev, met[1], gmet, 2 * sizeof(float), &err);
            if (rc == DM_OK && ns) rc = dm_dev_download(dev, gst, G.dstate, ns * sizeof(float), &err);
        } else if (rc == DM_OK && np) {
            memcpy(gr[0], C.grads.p, np * sizeof(float));
        }
        if (rc != DM_OK) snprintf(why, size, "%s: %s", side ? "cuda" : "cpu", err.msg);
    }
    if (rc == DM_OK) {
        const double e[5] = {rel_diff(y[0], y[1], n_out), rel_diff(dx[0], dx[1], n_in),
                             np ? rel_diff(gr[0], gr[1], np) : 0.0, is_loss ? rel_diff(met[0], met[1], 2) : 0.0,
                             ns ? rel_diff(C.lstate.p, gst, ns) : 0.0};
        static const char *names[5] = {"out", "din", "grads", "metrics", "layer state"};
        for (int i = 0; i < 5 && rc == DM_OK; i++) {
            if (!(e[i] <= CUDA_TOL)) {
                snprintf(why, size, "%s differs by %.3g of its largest value (tolerance %g)", names[i], e[i], CUDA_TOL);
                rc = DM_ERR_INTERNAL;
            }
            if (e[i] > *worst) *worst = e[i];
        }
    }
    dm_dev_free(dev, gx);
    dm_dev_free(dev, gy);
    dm_dev_free(dev, gdy);
    dm_dev_free(dev, gdx);
    dm_dev_free(dev, gmet);
    dm_dev_free(dev, glab);
    free(x);
    free(dy);
    free(lab);
    free(gst);
    for (int i = 0; i < 2; i++) {
        free(y[i]);
        free(dx[i]);
        free(gr[i]);
    }
    inst_free(&G);
    inst_free(&C);
    return rc;
}

static void check_cuda(const pc_ctx *c, const dm_loaded_component *lc, const lcase *cases, int n)
{
    const dm_layer_vtable *vt = lc->component->vtable;
    if (!(vt->devices & DM_DEVICE_BIT(DM_DEVICE_CUDA))) {
        pc_row(lc, "cuda vs cpu", PC_SKIP, "the layer has no CUDA implementation");
        return;
    }
    dm_devctx dev;
    dm_error err = {0};
    pc_now("opening the GPU");
    if (dm_dev_open(&dev, DM_DEVICE_CUDA, 0, &err) != DM_OK) {
        pc_row(lc, "cuda vs cpu", PC_SKIP, "%s", err.msg);
        return;
    }
    double worst = 0;
    int ran = 0;
    for (int i = 0; i < n && ran < CUDA_CASES; i++, ran++) {
        char why[768] = "", what[640];
        if (cuda_case(c, lc, &cases[i], i, &dev, &worst, why, sizeof why) != DM_OK) {
            case_str(&cases[i], what, sizeof what);
            pc_row(lc, "cuda vs cpu", PC_FAIL, "%s: %s", what, why);
            dm_dev_close(&dev);
            return;
        }
    }
    dm_dev_close(&dev);
    pc_row(lc, "cuda vs cpu", PC_OK, "%d cases, out/din/grads within %.2g of their largest value", ran, worst);
}

void pc_check_layer(const pc_ctx *c, const dm_loaded_component *lc)
{
    lcase *cases = calloc(MAX_CASES, sizeof *cases);
    if (!cases) {
        pc_row(lc, "settings and shapes", PC_FAIL, "out of memory");
        return;
    }
    gc_use_registry(c->reg);
    int n = collect_cases(c, lc, cases);
    if (n > 0) {
        /* Guarded buffers first: a stray write is then reported as such,
         * not as a crash inside the gradient checker's plain buffers. */
        if (check_buffers(c, lc, cases, n)) check_gradients(c, lc, cases, n);
        else pc_row(lc, "gradient (cpu)", PC_SKIP, "not run: an earlier check failed");
        check_cuda(c, lc, cases, n);
    }
    free(cases);
}
