/* A plugin with one small, correct component of each kind, compiled once
 * as is and once per defect (-DBROKEN_<DEFECT>), so the tests can prove that
 * dmnist-plugin-check passes a good plugin and names each defect:
 *
 *   fixture_scale  (layer)      y = w[k] * x + b[k] per channel; w, b learned
 *   fixture_sgd    (optimizer)  p -= lr * g
 *   fixture_data   (dataset)    example i: pixels i/count, label i % classes
 *   fixture_comm   (comm)       world size 1: collectives are the identity
 *
 * These modules are built into the test folder, never into the plugin
 * folder dmnist-run searches. */
#include <dmnist/dmnist.h>

#include <stdlib.h>

/* ---- layer: per-channel scale and shift --------------------------------- */

typedef struct scale_state {
    dm_shape shape;
    float *w, *dw; /* bound: [w (c) | b (c)] and their gradients */
    int calls;
} scale_state;

static int scale_create(const dm_params *p, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                        dm_error *err)
{
    (void)p;
#ifdef BROKEN_EXIT
    exit(3); /* a plugin must return an error, never exit */
#endif
    if (cfg->device != DM_DEVICE_CPU) return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: CPU only", cfg->name);
    scale_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    s->shape = cfg->in_shape;
    info->out_shape = cfg->in_shape;
    info->param_count = 2 * (size_t)cfg->in_shape.c;
    info->workspace_bytes = 0;
    info->is_loss = 0;
    *state = s;
    return DM_OK;
}

static int scale_bind(void *state, float *params, float *grads, void *ws, dm_error *err)
{
    scale_state *s = state;
    (void)ws, (void)err;
    s->w = params;
    s->dw = grads;
    return DM_OK;
}

static int scale_init(void *state, float *params, uint64_t seed, dm_error *err)
{
    const scale_state *s = state;
    (void)err;
    int count = 2 * s->shape.c;
#ifdef BROKEN_INIT_UNWRITTEN
    count--; /* the last bias is never written */
#endif
    for (int i = 0; i < count; i++) params[i] = i < s->shape.c ? 0.5f + dm_rng_uniform(&seed) : 0.0f;
    return DM_OK;
}

static int scale_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    scale_state *s = state;
    (void)ctx, (void)err;
    const int c = s->shape.c, hw = s->shape.h * s->shape.w;
    int n = in->shape.n;
#ifdef BROKEN_WHOLE_BATCH
    n = s->shape.n; /* writes the create-time batch, past a smaller one */
#endif
#ifdef BROKEN_HANG
    for (volatile int spin = 1; spin;)
        ;
#endif
#ifdef BROKEN_CRASH
    if (in->shape.n >= 1) *(volatile int *)(uintptr_t)(in->shape.n - 1) = 1; /* NULL for n = 1 */
#endif
    float noise = 0.0f;
#ifdef BROKEN_NONDETERMINISTIC
    noise = 1e-3f * (float)(s->calls % 2);
#endif
    s->calls++;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < c; k++)
            for (int p = 0; p < hw; p++) {
                const size_t j = ((size_t)i * c + k) * hw + p;
                out->data[j] = s->w[k] * in->data[j] + s->w[c + k] + noise;
            }
    return DM_OK;
}

static int scale_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                          const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    scale_state *s = state;
    (void)ctx, (void)out, (void)err;
    const int c = s->shape.c, hw = s->shape.h * s->shape.w, n = in->shape.n;
    for (int k = 0; k < c; k++) {
        double dw = 0, db = 0;
        for (int i = 0; i < n; i++)
            for (int p = 0; p < hw; p++) {
                const size_t j = ((size_t)i * c + k) * hw + p;
                dw += dout->data[j] * in->data[j];
                db += dout->data[j];
                if (din) din->data[j] = s->w[k] * dout->data[j];
#ifdef BROKEN_DIN_3PCT
                if (din && j == 0) din->data[j] *= 1.03f;
#endif
            }
#ifdef BROKEN_GRADS_ACCUMULATE
        s->dw[k] += (float)dw;
#else
        s->dw[k] = (float)dw;
#endif
#ifndef BROKEN_BIAS_GRAD_UNWRITTEN
        s->dw[c + k] = (float)db;
#endif
    }
#ifdef BROKEN_WRITE_PAST_DIN
    if (din) din->data[dm_shape_count(in->shape)] = 0.0f; /* one float past the end */
#endif
#ifdef BROKEN_CHANGES_INPUT
    ((float *)in->data)[0] = 0.0f;
#endif
    return DM_OK;
}

static void scale_destroy(void *state) { free(state); }

static const dm_layer_vtable scale_vtable = {.struct_size = sizeof(dm_layer_vtable),
                                             .devices = DM_DEVICE_BIT(DM_DEVICE_CPU),
                                             .create = scale_create,
                                             .bind = scale_bind,
                                             .init_params = scale_init,
                                             .forward = scale_forward,
                                             .backward = scale_backward,
                                             .destroy = scale_destroy};

static const dm_param_def scale_params[] = {
#ifdef BROKEN_DEFAULT_OUT_OF_RANGE
    {"gain", DM_PARAM_FLOAT, "5", 0.0, 1.0, NULL, "unused"},
#elif defined(BROKEN_NO_HELP)
    {"gain", DM_PARAM_FLOAT, "0.5", 0.0, 1.0, NULL, NULL},
#elif defined(BROKEN_ENUM_DEFAULT)
    {"mode", DM_PARAM_ENUM, "fast", 0, -1, "exact|rough", "unused"},
#else
    {"gain", DM_PARAM_FLOAT, "0.5", 0.0, 1.0, NULL, "unused; here to be drawn at random"},
    {"mode", DM_PARAM_ENUM, "exact", 0, -1, "exact|rough", "unused; here to be drawn at random"},
#endif
    DM_PARAM_END};

/* ---- optimizer: plain SGD --------------------------------------------------- */

static int sgd_create(const dm_params *p, const dm_optimizer_config *cfg, void **state, dm_optimizer_info *info,
                      dm_error *err)
{
    (void)p, (void)cfg;
    info->state_floats_per_param = 0;
    *state = malloc(1);
    return *state ? DM_OK : dm_fail(err, DM_ERR_NOMEM, "out of memory");
}

static int sgd_bind(void *state, float *opt_state, dm_error *err)
{
    (void)state, (void)opt_state, (void)err;
    return DM_OK;
}

static int sgd_step(void *state, const dm_opt_step_ctx *ctx, float *params, const float *grads, size_t n, dm_error *err)
{
    (void)state, (void)err;
    float lr = ctx->lr;
#ifdef BROKEN_IGNORES_LR
    lr = 0.05f; /* its own rate instead of the core's */
#endif
#ifdef BROKEN_ASCENT
    lr = -lr;
#endif
    for (size_t i = 0; i < n; i++) params[i] -= lr * grads[i];
#ifdef BROKEN_CLEARS_GRADS
    memset((float *)grads, 0, n * sizeof(float));
#endif
    return DM_OK;
}

static const dm_optimizer_vtable sgd_vtable = {
    sizeof(dm_optimizer_vtable), DM_DEVICE_BIT(DM_DEVICE_CPU), sgd_create, sgd_bind, sgd_step, free};

/* ---- dataset: a counting pattern ------------------------------------------------ */

#define DATA_COUNT 100
#define DATA_CLASSES 4

static int data_open(const dm_params *p, const dm_dataset_config *cfg, void **state, dm_dataset_info *info,
                     dm_error *err)
{
    (void)p, (void)cfg;
    info->count[DM_SPLIT_TRAIN] = DATA_COUNT;
    info->count[DM_SPLIT_TEST] = DATA_COUNT / 4;
    info->item = (dm_shape){1, 1, 3, 3};
    info->num_classes = DATA_CLASSES;
    *state = malloc(1);
    return *state ? DM_OK : dm_fail(err, DM_ERR_NOMEM, "out of memory");
}

static int data_read(void *state, dm_split split, const int64_t *idx, int n, float *images, int32_t *labels,
                     dm_error *err)
{
    (void)state, (void)split, (void)err;
    for (int i = 0; i < n; i++) {
        for (int p = 0; p < 9; p++) images[i * 9 + p] = (float)idx[i] / DATA_COUNT;
        labels[i] = (int32_t)(idx[i] % DATA_CLASSES);
#ifdef BROKEN_LABEL_RANGE
        if (idx[i] == DATA_COUNT - 1) labels[i] = DATA_CLASSES; /* one past the last class */
#endif
#ifdef BROKEN_POSITION
        images[i * 9] += (float)i; /* depends on where in the batch it lands */
#endif
    }
    return DM_OK;
}

static const dm_dataset_vtable data_vtable = {sizeof(dm_dataset_vtable), data_open, data_read, free};

/* ---- comm: one rank ----------------------------------------------------------------- */

static int comm_init(const dm_params *p, const dm_comm_config *cfg, void **state, dm_comm_info *info, dm_error *err)
{
    (void)p, (void)cfg;
    info->rank = 0;
    info->size = 1;
    info->local_rank = 0;
    *state = malloc(1);
    return *state ? DM_OK : dm_fail(err, DM_ERR_NOMEM, "out of memory");
}

static int comm_allreduce(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *stream,
                          dm_error *err)
{
    (void)state, (void)device, (void)stream, (void)err;
#ifdef BROKEN_AVG
    if (op == DM_REDUCE_AVG) /* divides by 2 ranks in a world of 1 */
        for (size_t i = 0; i < n; i++) buf[i] *= 0.5f;
#else
    (void)buf, (void)n, (void)op;
#endif
    return DM_OK;
}

static int comm_start(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *stream,
                      dm_comm_request **req, dm_error *err)
{
    *req = NULL; /* done at once */
    return comm_allreduce(state, buf, n, op, device, stream, err);
}

static int comm_wait(void *state, dm_comm_request *req, dm_error *err)
{
    (void)state, (void)req, (void)err;
    return DM_OK;
}

static int comm_broadcast(void *state, void *buf, size_t bytes, int root, dm_device device, void *stream, dm_error *err)
{
    (void)state, (void)buf, (void)bytes, (void)root, (void)device, (void)stream, (void)err;
    return DM_OK;
}

static int comm_barrier(void *state, dm_error *err)
{
    (void)state, (void)err;
    return DM_OK;
}

static int comm_finalize(void *state, dm_error *err)
{
    (void)err;
    free(state);
    return DM_OK;
}

static const dm_comm_vtable comm_vtable = {sizeof(dm_comm_vtable),
                                           DM_DEVICE_BIT(DM_DEVICE_CPU),
                                           comm_init,
                                           comm_allreduce,
                                           comm_start,
                                           comm_wait,
                                           comm_broadcast,
                                           comm_barrier,
                                           comm_finalize};

/* ---- descriptor -------------------------------------------------------------------------- */

DM_PLUGIN_DEFINE("fixture", "1.0.0", "cpu",
                 DM_LAYER_COMPONENT("fixture_scale", "per-channel scale and shift (test fixture)", scale_params,
                                    &scale_vtable),
                 DM_OPTIMIZER_COMPONENT("fixture_sgd", "plain SGD (test fixture)", NULL, &sgd_vtable),
                 DM_DATASET_COMPONENT("fixture_data", "a counting pattern (test fixture)", NULL, &data_vtable),
                 DM_COMM_COMPONENT("fixture_comm", "world size 1 (test fixture)", NULL, &comm_vtable));
