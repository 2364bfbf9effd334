/* leaky_relu: a dmnist layer plugin built out of tree, the worked example of
 * docs/writing-a-layer-plugin.md.
 *
 *   out = x            where x > 0
 *   out = alpha * x    elsewhere            (elementwise, any shape)
 *
 * One key, `alpha`. No parameters to learn, no workspace, CPU only. */
#include <dmnist/dmnist.h>

#include <stdlib.h>

/* dmnist_add_plugin (CMake) defines the build signature; the Makefile
 * build falls back to this one. */
#ifndef DM_PLUGIN_BUILD_SIGNATURE
#define DM_PLUGIN_BUILD_SIGNATURE "cpu"
#endif

/* What one instance ([layer.NAME] section) remembers between calls. */
typedef struct leaky_state {
    char name[64];   /* section name, for messages */
    dm_shape shape;  /* create-time input shape; n = the largest batch */
    float alpha;
} leaky_state;

static int leaky_create(const dm_params *params, const dm_layer_config *cfg, void **state,
                        dm_layer_info *info, dm_error *err)
{
    if (cfg->device != DM_DEVICE_CPU)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: leaky_relu runs on the CPU only", cfg->name);
    if (cfg->layout != DM_LAYOUT_NCHW)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: leaky_relu supports only NCHW", cfg->name);

    leaky_state *s = calloc(1, sizeof *s);
    if (!s)
        return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", cfg->name);
    snprintf(s->name, sizeof s->name, "%s", cfg->name);
    s->shape = cfg->in_shape;
    /* The core has already checked the range given in the table below. */
    s->alpha = (float)dm_param_float(params, "alpha", 0.01);

    info->out_shape = cfg->in_shape; /* elementwise: same shape out */
    info->param_count = 0;
    info->workspace_bytes = 0;
    info->is_loss = 0;
    *state = s;
    return DM_OK;
}

/* Nothing to bind or initialise: no parameters, no workspace. */
static int leaky_bind(void *state, float *params, float *grads, void *workspace, dm_error *err)
{
    (void)state, (void)params, (void)grads, (void)workspace, (void)err;
    return DM_OK;
}

static int leaky_init_params(void *state, float *params, uint64_t seed, dm_error *err)
{
    (void)state, (void)params, (void)seed, (void)err;
    return DM_OK;
}

/* A tensor must have the create-time item shape and at most its batch. */
static int check_tensor(const leaky_state *s, const dm_tensor *t, int n, const char *what,
                        dm_error *err)
{
    const dm_shape e = s->shape, g = t->shape;
    if (t->device != DM_DEVICE_CPU || g.n < 1 || g.n > e.n || (n && g.n != n) || g.c != e.c ||
        g.h != e.h || g.w != e.w)
        return dm_fail(err, DM_ERR_INVALID, "%s: %s shape (%d, %d, %d, %d) does not match "
                       "(<=%d, %d, %d, %d)", s->name, what, g.n, g.c, g.h, g.w, e.n, e.c, e.h, e.w);
    return DM_OK;
}

/* in, out: (n, c, h, w) */
static int leaky_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out,
                         dm_error *err)
{
    const leaky_state *s = state;
    (void)ctx; /* the same in training and evaluation */
    int rc = check_tensor(s, in, 0, "input", err);
    if (rc == DM_OK)
        rc = check_tensor(s, out, in->shape.n, "output", err);
    if (rc != DM_OK)
        return rc;
    const size_t count = dm_shape_count(in->shape); /* this batch only, not the largest */
    const float *x = in->data;
    float *y = out->data;
    for (size_t i = 0; i < count; i++)
        y[i] = x[i] > 0.0f ? x[i] : s->alpha * x[i];
    return DM_OK;
}

/* dL/dx = dL/dout where x > 0, alpha * dL/dout elsewhere. */
static int leaky_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in,
                          const dm_tensor *out, const dm_tensor *dout, dm_tensor *din,
                          dm_error *err)
{
    const leaky_state *s = state;
    (void)ctx, (void)out;
    if (!din)
        return DM_OK; /* first layer of the model and no parameters: nothing to write */
    int rc = check_tensor(s, in, 0, "input", err);
    if (rc == DM_OK)
        rc = check_tensor(s, dout, in->shape.n, "dout", err);
    if (rc == DM_OK)
        rc = check_tensor(s, din, in->shape.n, "din", err);
    if (rc != DM_OK)
        return rc;
    const size_t count = dm_shape_count(in->shape);
    const float *x = in->data, *dy = dout->data;
    float *dx = din->data;
    for (size_t i = 0; i < count; i++)
        dx[i] = x[i] > 0.0f ? dy[i] : s->alpha * dy[i];
    return DM_OK;
}

static void leaky_destroy(void *state)
{
    free(state);
}

/* ---- what the core sees ---------------------------------------------------- */

static const dm_layer_vtable leaky_vtable = {
    .struct_size = sizeof(dm_layer_vtable),
    .devices = DM_DEVICE_BIT(DM_DEVICE_CPU),
    .create = leaky_create,
    .bind = leaky_bind,
    .init_params = leaky_init_params,
    .forward = leaky_forward,
    .backward = leaky_backward,
    .destroy = leaky_destroy,
};

/* The keys of a [layer.NAME] section with type = leaky_relu. */
static const dm_param_def leaky_params[] = {
    {"alpha", DM_PARAM_FLOAT, "0.01", 0.0, 1.0, NULL, "slope for x <= 0 (0 gives a plain ReLU)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL}};

static const dm_component leaky_component = {
    .struct_size = sizeof(dm_component),
    .kind = DM_KIND_LAYER,
    .type_name = "leaky_relu",
    .help = "leaky rectified linear unit: x if x > 0, else alpha * x (elementwise)",
    .params = leaky_params,
    .vtable = &leaky_vtable,
};

static const dm_component *const leaky_components[] = {&leaky_component};

static const dm_plugin_descriptor leaky_descriptor = {
    .struct_size = sizeof(dm_plugin_descriptor),
    .abi_major = DM_ABI_MAJOR,
    .abi_minor = DM_ABI_MINOR,
    .name = "leaky_relu",
    .version = "1.0.0",
    .build_signature = DM_PLUGIN_BUILD_SIGNATURE,
    .n_components = 1,
    .components = leaky_components,
};

/* The one exported symbol. Refuse a host of another ABI major. */
DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t host_abi_major,
                                                      uint32_t host_abi_minor)
{
    (void)host_abi_minor;
    return host_abi_major == DM_ABI_MAJOR ? &leaky_descriptor : NULL;
}
