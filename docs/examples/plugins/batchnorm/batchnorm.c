/* batchnorm: a dmnist layer plugin with learned parameters and state,
 * built out of tree (see docs/writing-a-layer-plugin.md). Needs ABI 1.1.
 *
 * Batch normalisation per channel (Ioffe & Szegedy 2015): for images
 * (n, c, h, w) the statistics of channel k are taken over n, h and w; for
 * vectors (n, c, 1, 1) over the batch.
 *
 *   training:   y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta
 *               running = momentum * running + (1 - momentum) * batch stats
 *   evaluation: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
 *
 * Where each thing lives, and why:
 *   gamma, beta       the core's flat parameter buffer (learned, reduced over
 *                     ranks, updated by the optimizer, checkpointed);
 *                     param_count = 2c, [gamma (c) | beta (c)]
 *   mean, 1/std of the last forward
 *                     the workspace the core allocates (2c floats): backward
 *                     needs them, nothing else does
 *   running mean/var  the core's layer-state buffer (ABI 1.1): state_floats =
 *                     2c, [mean (c) | var (c)], bound by bind_state, set by
 *                     init_state. Not learned (no gradient, no optimizer),
 *                     but the core broadcasts rank 0's after every step and
 *                     checkpoints it, so every rank evaluates with the same
 *                     statistics and --resume continues them exactly. */
#include <dmnist/dmnist.h>
#include <dmnist/layer_util.h>

#include <math.h>
#include <stdlib.h>

typedef struct bn_state {
    char name[64];
    dm_shape shape; /* create-time input shape; n = the largest batch */
    float momentum, epsilon;
    int threads;        /* what the core allows this layer (cfg->num_threads) */
    float *params;      /* bound: [gamma (c) | beta (c)] */
    float *grads;       /* bound: [dgamma (c) | dbeta (c)] */
    float *saved;       /* workspace: [mean (c) | inv_std (c)] used by the last forward */
    int saved_training; /* whether the last forward used batch statistics */
    float *running;     /* bound (layer state): [mean (c) | var (c)] */
} bn_state;

static int bn_create(const dm_params *params, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                     dm_error *err)
{
    if (cfg->device != DM_DEVICE_CPU)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: batchnorm runs on the CPU only", cfg->name);
    if (cfg->layout != DM_LAYOUT_NCHW)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: batchnorm supports only NCHW", cfg->name);
    /* The running statistics live in the core's state buffer: a host whose
     * info struct has no state_floats (ABI 1.0) cannot keep them. */
    if (!DM_HAS_FIELD(info, dm_layer_info, state_floats))
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: batchnorm needs a dmnist with ABI 1.1 (layer state)", cfg->name);
    const int c = cfg->in_shape.c;

    bn_state *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", cfg->name);
    snprintf(s->name, sizeof s->name, "%s", cfg->name);
    s->shape = cfg->in_shape;
    s->momentum = (float)dm_param_float(params, "momentum", 0.9);
    s->epsilon = (float)dm_param_float(params, "epsilon", 1e-3);
    s->threads = cfg->num_threads > 0 ? cfg->num_threads : 1;

    info->out_shape = cfg->in_shape;
    info->param_count = 2 * (size_t)c;
    info->workspace_bytes = 2 * (size_t)c * sizeof(float);
    info->is_loss = 0;
    info->state_floats = 2 * (size_t)c;
    *state = s;
    return DM_OK;
}

static int bn_bind(void *state, float *params, float *grads, void *workspace, dm_error *err)
{
    bn_state *s = state;
    (void)err;
    s->params = params;
    s->grads = grads;
    s->saved = workspace;
    return DM_OK;
}

/* The core's slice of its layer-state buffer: kept, read and updated by forward. */
static int bn_bind_state(void *state, float *layer_state, dm_error *err)
{
    bn_state *s = state;
    (void)err;
    s->running = layer_state;
    return DM_OK;
}

/* Running mean 0 and variance 1 (rank 0; the other ranks receive them). */
static int bn_init_state(void *state, float *host_state, dm_error *err)
{
    const bn_state *s = state;
    (void)err;
    for (int k = 0; k < s->shape.c; k++) {
        host_state[k] = 0.0f;
        host_state[s->shape.c + k] = 1.0f;
    }
    return DM_OK;
}

/* gamma = 1, beta = 0: the layer starts as the plain normalisation. */
static int bn_init_params(void *state, float *params, uint64_t seed, dm_error *err)
{
    const bn_state *s = state;
    (void)seed, (void)err;
    for (int k = 0; k < s->shape.c; k++) {
        params[k] = 1.0f;
        params[s->shape.c + k] = 0.0f;
    }
    return DM_OK;
}

static int check_tensor(const bn_state *s, const dm_tensor *t, int n, const char *what, dm_error *err)
{
    const dm_shape e = s->shape, g = t->shape;
    if (t->device != DM_DEVICE_CPU || g.n < 1 || g.n > e.n || (n && g.n != n) || g.c != e.c || g.h != e.h || g.w != e.w)
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: %s shape (%d, %d, %d, %d) does not match "
                       "(<=%d, %d, %d, %d)",
                       s->name, what, g.n, g.c, g.h, g.w, e.n, e.c, e.h, e.w);
    return DM_OK;
}

/* in, out: (n, c, h, w); element (i, k, p) of channel k is at (i * c + k) * hw + p. */
static int bn_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    bn_state *s = state;
    int rc = check_tensor(s, in, 0, "input", err);
    if (rc == DM_OK) rc = check_tensor(s, out, in->shape.n, "output", err);
    if (rc != DM_OK) return rc;
    const int n = in->shape.n, c = s->shape.c;
    const size_t hw = (size_t)s->shape.h * s->shape.w, m = (size_t)n * hw;
    const float *x = in->data;
    float *y = out->data;
    /* Channels are independent: one per thread at a time. */
#pragma omp parallel for num_threads(s->threads) schedule(static)
    for (int k = 0; k < c; k++) {
        double mean, var;
        if (ctx->training) {
            /* Two passes in double: var is a small difference of large sums otherwise. */
            double sum = 0.0, sq = 0.0;
            for (int i = 0; i < n; i++)
                for (size_t p = 0; p < hw; p++) sum += x[((size_t)i * c + k) * hw + p];
            mean = sum / (double)m;
            for (int i = 0; i < n; i++)
                for (size_t p = 0; p < hw; p++) {
                    const double d = x[((size_t)i * c + k) * hw + p] - mean;
                    sq += d * d;
                }
            var = sq / (double)m;
            /* The running variance estimates the population: unbiased. */
            const double unbiased = m > 1 ? sq / (double)(m - 1) : var;
            s->running[k] = (float)(s->momentum * s->running[k] + (1.0 - s->momentum) * mean);
            s->running[c + k] = (float)(s->momentum * s->running[c + k] + (1.0 - s->momentum) * unbiased);
        } else {
            mean = s->running[k];
            var = s->running[c + k];
        }
        const float inv_std = (float)(1.0 / sqrt(var + s->epsilon));
        const float gamma = s->params[k], beta = s->params[c + k];
        s->saved[k] = (float)mean;
        s->saved[c + k] = inv_std;
        for (int i = 0; i < n; i++)
            for (size_t p = 0; p < hw; p++) {
                const size_t j = ((size_t)i * c + k) * hw + p;
                y[j] = gamma * (float)(x[j] - mean) * inv_std + beta;
            }
    }
    s->saved_training = ctx->training != 0;
    return DM_OK;
}

/* With xhat = (x - mean) * inv_std over the m = n*h*w values of channel k:
 *   dbeta  = sum dy
 *   dgamma = sum dy * xhat
 *   dx     = gamma * inv_std * (dy - dbeta / m - xhat * dgamma / m)   (training:
 *            mean and var depend on x)
 *   dx     = gamma * inv_std * dy                                    (evaluation) */
static int bn_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                       const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    bn_state *s = state;
    (void)ctx, (void)out;
    int rc = check_tensor(s, in, 0, "input", err);
    if (rc == DM_OK) rc = check_tensor(s, dout, in->shape.n, "dout", err);
    if (rc == DM_OK && din) rc = check_tensor(s, din, in->shape.n, "din", err);
    if (rc != DM_OK) return rc;
    const int n = in->shape.n, c = s->shape.c;
    const size_t hw = (size_t)s->shape.h * s->shape.w, m = (size_t)n * hw;
    const float *x = in->data, *dy = dout->data;
#pragma omp parallel for num_threads(s->threads) schedule(static)
    for (int k = 0; k < c; k++) {
        const float mean = s->saved[k], inv_std = s->saved[c + k], gamma = s->params[k];
        double dbeta = 0.0, dgamma = 0.0;
        for (int i = 0; i < n; i++)
            for (size_t p = 0; p < hw; p++) {
                const size_t j = ((size_t)i * c + k) * hw + p;
                dbeta += dy[j];
                dgamma += dy[j] * (x[j] - mean) * inv_std;
            }
        /* Overwrite (never add to) the gradient slice: the core does not zero it. */
        s->grads[k] = (float)dgamma;
        s->grads[c + k] = (float)dbeta;
        if (!din) continue; /* first layer: only the parameter gradients */
        float *dx = din->data;
        const float a = (float)(dbeta / (double)m), b = (float)(dgamma / (double)m);
        for (int i = 0; i < n; i++)
            for (size_t p = 0; p < hw; p++) {
                const size_t j = ((size_t)i * c + k) * hw + p;
                const float xhat = (x[j] - mean) * inv_std;
                dx[j] = s->saved_training ? gamma * inv_std * (dy[j] - a - xhat * b) : gamma * inv_std * dy[j];
            }
    }
    return DM_OK;
}

static void bn_destroy(void *state) { free(state); }

/* ---- what the core sees ------------------------------------------------------ */

/* bn_vtable: bn_create, bn_bind, bn_init_params, bn_forward, bn_backward and
 * bn_destroy by name, then the two methods of ABI 1.1. */
DM_LAYER_VTABLE(bn, DM_DEVICE_BIT(DM_DEVICE_CPU), .bind_state = bn_bind_state, .init_state = bn_init_state);

static const dm_param_def bn_params[] = {
    {"momentum", DM_PARAM_FLOAT, "0.9", 0.0, 1.0, NULL,
     "running = momentum * running + (1 - momentum) * batch statistic"},
    {"epsilon", DM_PARAM_FLOAT, "0.001", 1e-9, 1.0, NULL, "added to the variance before sqrt"},
    DM_PARAM_END};

/* Layer state came with ABI 1.1: an older host (which would never bind the
 * running statistics) gets no descriptor and refuses the plugin. */
DM_PLUGIN_DEFINE_FOR_HOST(1, "batchnorm", "1.1.0", DM_PLUGIN_BUILD_SIGNATURE,
                          DM_LAYER_COMPONENT("batchnorm",
                                             "batch normalisation per channel, learned scale and shift, "
                                             "running statistics for evaluation",
                                             bn_params, &bn_vtable));
