/* A layer plugin built the way a plugin compiled against ABI 1.0 is: with
 * its own copies of the 1.0 layouts of dm_layer_info and dm_layer_vtable
 * (what layer.h held before 1.1 appended state_floats, bind_state and
 * init_state), so the struct_size it reports is 1.0's and its descriptor
 * says ABI 1.0. tests/core/abi_growth.sh loads it, checks it and trains
 * with it on today's host.
 *
 * The layer: y = a[c] * x + b[c] per channel, params [a (c) | b (c)].
 *
 * To prove the host reads nothing past the struct_size it was given:
 *  - right after the 1.0 vtable in memory, where a 1.1 vtable has bind_state
 *    and init_state, lie two trap functions that fail the run if called;
 *  - create writes a state count into the host's info just past the 1.0
 *    fields (where 1.1 has state_floats), standing for whatever a bigger
 *    host struct holds there: the host must not take it as a request.
 *
 * Variants (-D):
 *  CLAIM_1_1        the same plugin claiming the 1.1 vtable size: the host
 *                   then does read the count and call the trap (the test's
 *                   proof that the traps are live)
 *  NO_BIND_STATE    a real 1.1 layer (today's layer.h) that asks for state
 *                   but has no bind_state: the host must refuse it
 */
#include "dmnist/dmnist.h"

#include <stdlib.h>

#ifndef TYPE_NAME
#define TYPE_NAME "abi10_affine"
#endif

/* The ABI 1.0 layouts, field for field. */
typedef struct dm_layer_info_1_0 {
    size_t struct_size;
    dm_shape out_shape;
    size_t param_count;
    size_t workspace_bytes;
    int is_loss;
} dm_layer_info_1_0;

typedef struct dm_layer_vtable_1_0 {
    size_t struct_size;
    unsigned devices;
    int (*create)(const dm_params *params, const dm_layer_config *cfg, void **state, dm_layer_info_1_0 *info,
                  dm_error *err);
    int (*bind)(void *state, float *params, float *grads, void *workspace, dm_error *err);
    int (*init_params)(void *state, float *params, uint64_t seed, dm_error *err);
    int (*forward)(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err);
    int (*backward)(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                    const dm_tensor *dout, dm_tensor *din, dm_error *err);
    void (*destroy)(void *state);
} dm_layer_vtable_1_0;

/* The copies are 1.0's sizes, and 1.1 appended right where they end. */
_Static_assert(sizeof(dm_layer_vtable_1_0) == DM_LAYER_VTABLE_SIZE_1_0, "1.0 vtable layout");
_Static_assert(offsetof(dm_layer_vtable, bind_state) == sizeof(dm_layer_vtable_1_0), "1.1 appends");
_Static_assert(offsetof(dm_layer_info, state_floats) == sizeof(dm_layer_info_1_0), "1.1 appends");

typedef struct affine {
    dm_shape shape; /* create-time input; n = largest batch */
    float *params, *grads;
} affine;

static int affine_new(const dm_layer_config *cfg, void **state, dm_error *err)
{
    if (cfg->device != DM_DEVICE_CPU) return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: CPU only", cfg->name);
    affine *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", cfg->name);
    s->shape = cfg->in_shape;
    *state = s;
    return DM_OK;
}

#ifdef NO_BIND_STATE
static int affine_create(const dm_params *params, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                         dm_error *err)
{
    (void)params;
    int rc = affine_new(cfg, state, err);
    info->out_shape = cfg->in_shape;
    info->param_count = 2 * (size_t)cfg->in_shape.c;
    info->state_floats = 4; /* but no bind_state to receive them */
    return rc;
}
#else
static int affine_create(const dm_params *params, const dm_layer_config *cfg, void **state, dm_layer_info_1_0 *info,
                         dm_error *err)
{
    (void)params;
    int rc = affine_new(cfg, state, err);
    info->out_shape = cfg->in_shape;
    info->param_count = 2 * (size_t)cfg->in_shape.c;
    info->workspace_bytes = 0;
    info->is_loss = 0;
    /* Past the 1.0 fields: the host's struct is bigger (see the header). */
    *(size_t *)((char *)info + sizeof(dm_layer_info_1_0)) = 64;
    return rc;
}
#endif

static int affine_bind(void *state, float *params, float *grads, void *workspace, dm_error *err)
{
    affine *s = state;
    (void)workspace, (void)err;
    s->params = params;
    s->grads = grads;
    return DM_OK;
}

/* a = 1, b = 0: the identity to start with. */
static int affine_init(void *state, float *params, uint64_t seed, dm_error *err)
{
    const affine *s = state;
    (void)seed, (void)err;
    for (int k = 0; k < s->shape.c; k++) {
        params[k] = 1.0f;
        params[s->shape.c + k] = 0.0f;
    }
    return DM_OK;
}

/* in, out: (n, c, h, w) */
static int affine_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err)
{
    const affine *s = state;
    (void)ctx, (void)err;
    const int n = in->shape.n, c = s->shape.c;
    const size_t hw = (size_t)s->shape.h * s->shape.w;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < c; k++)
            for (size_t p = 0; p < hw; p++) {
                const size_t j = ((size_t)i * c + k) * hw + p;
                out->data[j] = s->params[k] * in->data[j] + s->params[c + k];
            }
    return DM_OK;
}

/* da = sum dy * x, db = sum dy, dx = a * dy (overwriting the gradients). */
static int affine_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                           const dm_tensor *dout, dm_tensor *din, dm_error *err)
{
    const affine *s = state;
    (void)ctx, (void)out, (void)err;
    const int n = in->shape.n, c = s->shape.c;
    const size_t hw = (size_t)s->shape.h * s->shape.w;
    for (int k = 0; k < c; k++) {
        double da = 0.0, db = 0.0;
        for (int i = 0; i < n; i++)
            for (size_t p = 0; p < hw; p++) {
                const size_t j = ((size_t)i * c + k) * hw + p;
                da += (double)dout->data[j] * in->data[j];
                db += dout->data[j];
                if (din) din->data[j] = s->params[k] * dout->data[j];
            }
        s->grads[k] = (float)da;
        s->grads[c + k] = (float)db;
    }
    return DM_OK;
}

static void affine_destroy(void *state) { free(state); }

#ifdef NO_BIND_STATE
static const dm_layer_vtable vtable = {
    .struct_size = sizeof(dm_layer_vtable),
    .devices = DM_DEVICE_BIT(DM_DEVICE_CPU),
    .create = affine_create,
    .bind = affine_bind,
    .init_params = affine_init,
    .forward = affine_forward,
    .backward = affine_backward,
    .destroy = affine_destroy,
    .bind_state = NULL, /* asks for 4 state floats anyway */
};
#define VTABLE_PTR (&vtable)
#define ABI_MINOR DM_ABI_MINOR
#else
static int trap_bind_state(void *state, float *layer_state, dm_error *err)
{
    (void)state, (void)layer_state;
    return dm_fail(err, DM_ERR_INTERNAL, "trap: the host called bind_state past the vtable's struct_size");
}
static int trap_init_state(void *state, float *host_state, dm_error *err)
{
    (void)state, (void)host_state;
    return dm_fail(err, DM_ERR_INTERNAL, "trap: the host called init_state past the vtable's struct_size");
}

/* The 1.0 vtable, followed in memory by the traps (where 1.1 keeps its new methods). */
static const struct {
    dm_layer_vtable_1_0 v;
    int (*after_bind_state)(void *, float *, dm_error *);
    int (*after_init_state)(void *, float *, dm_error *);
} vtable = {
    {
#ifdef CLAIM_1_1
        .struct_size = sizeof(dm_layer_vtable),
#else
        .struct_size = sizeof(dm_layer_vtable_1_0),
#endif
        .devices = DM_DEVICE_BIT(DM_DEVICE_CPU),
        .create = affine_create,
        .bind = affine_bind,
        .init_params = affine_init,
        .forward = affine_forward,
        .backward = affine_backward,
        .destroy = affine_destroy,
    },
    trap_bind_state,
    trap_init_state,
};
#define VTABLE_PTR (&vtable.v)
#define ABI_MINOR 0
#endif

static const dm_component component = {
    .struct_size = sizeof(dm_component),
    .kind = DM_KIND_LAYER,
    .type_name = TYPE_NAME,
    .help = "y = a * x + b per channel (a layer plugin with ABI 1.0's struct layouts)",
    .params = NULL,
    .vtable = VTABLE_PTR,
};
static const dm_component *const components[] = {&component};

static const dm_plugin_descriptor descriptor = {
    .struct_size = sizeof(dm_plugin_descriptor),
    .abi_major = 1,
    .abi_minor = ABI_MINOR,
    .name = TYPE_NAME,
    .version = "1.0.0",
    .build_signature = "cpu",
    .n_components = 1,
    .components = components,
};

DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t host_abi_major, uint32_t host_abi_minor)
{
    (void)host_abi_minor;
    return host_abi_major == 1 ? &descriptor : NULL;
}
