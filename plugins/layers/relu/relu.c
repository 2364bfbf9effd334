/* ReLU layer plugin: no parameters, output shape = input shape. */
#include "relu.h"
#include "dmnist/layer_util.h"

#include <omp.h>
#include <stdlib.h>

/* ABI 1.0 sizes of the structs the host hands us. */
#define CONFIG_SIZE_1_0 (offsetof(dm_layer_config, cuda_stream) + sizeof(void *))
#define INFO_SIZE_1_0 (offsetof(dm_layer_info, is_loss) + sizeof(int))

/* Devices with an implementation in this build (relu_cuda.cu under DM_WITH_CUDA). */
#ifdef DM_WITH_CUDA
#define RELU_DEVICES (DM_DEVICE_BIT(DM_DEVICE_CPU) | DM_DEVICE_BIT(DM_DEVICE_CUDA))
#else
#define RELU_DEVICES DM_DEVICE_BIT(DM_DEVICE_CPU)
#endif

static int relu_create(const dm_params *p, const dm_layer_config *cfg, void **state,
                       dm_layer_info *info, dm_error *err)
{
    const char *name = cfg && cfg->name ? cfg->name : "relu";
    (void)p;
    if (!cfg || cfg->struct_size < CONFIG_SIZE_1_0 || !info || info->struct_size < INFO_SIZE_1_0)
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: relu: layer config/info missing or struct_size too small", name);
    if (!(RELU_DEVICES & DM_DEVICE_BIT(cfg->device)))
        return dm_fail(err, DM_ERR_UNSUPPORTED,
                       "%s: relu has no %s implementation in this build (devices: cpu)", name,
                       dm_device_str(cfg->device));
    if (cfg->layout != DM_LAYOUT_NCHW)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: relu supports only the NCHW layout", name);
    const dm_shape in = cfg->in_shape;
    if (in.n < 1 || in.c < 1 || in.h < 1 || in.w < 1)
        return dm_fail(err, DM_ERR_INVALID, "%s: bad input shape (%d, %d, %d, %d)", name, in.n,
                       in.c, in.h, in.w);

    relu_state *s = calloc(1, sizeof *s);
    if (!s)
        return dm_fail(err, DM_ERR_NOMEM, "%s: out of memory", name);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->device = cfg->device;
    s->nthreads = cfg->num_threads > 0 ? cfg->num_threads : omp_get_max_threads();
    s->shape = in;
    info->out_shape = in;
    info->param_count = 0;
    info->workspace_bytes = 0;
    info->is_loss = 0;
    *state = s;
    return DM_OK;
}

/* A tensor of this layer's per-item shape, at most the create-time batch. */
static int check_tensor(const relu_state *s, const dm_tensor *t, int n, const char *what,
                        dm_error *err)
{
    return dm_check_tensor(s->name, what, t, s->device, s->shape, n, err);
}

static int relu_forward(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out,
                        dm_error *err)
{
    relu_state *s = state;
    (void)ctx;
    int rc = check_tensor(s, in, 0, "input", err);
    if (rc == DM_OK)
        rc = check_tensor(s, out, in->shape.n, "output", err);
    if (rc != DM_OK)
        return rc;
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA)
        return relu_forward_cuda(s, ctx ? ctx->cuda_stream : NULL, dm_shape_count(in->shape),
                                 in->data, out->data, err);
#endif
    relu_forward_cpu(s, dm_shape_count(in->shape), in->data, out->data);
    return DM_OK;
}

static int relu_backward(void *state, const dm_run_ctx *ctx, const dm_tensor *in,
                         const dm_tensor *out, const dm_tensor *dout, dm_tensor *din,
                         dm_error *err)
{
    relu_state *s = state;
    (void)ctx, (void)out;
    if (!din)
        return DM_OK; /* first layer: nothing to propagate, no parameters */
    int rc = check_tensor(s, in, 0, "input", err);
    if (rc == DM_OK)
        rc = check_tensor(s, dout, in->shape.n, "dout", err);
    if (rc == DM_OK)
        rc = check_tensor(s, din, in->shape.n, "din", err);
    if (rc != DM_OK)
        return rc;
#ifdef DM_WITH_CUDA
    if (s->device == DM_DEVICE_CUDA)
        return relu_backward_cuda(s, ctx ? ctx->cuda_stream : NULL, dm_shape_count(in->shape),
                                  in->data, dout->data, din->data, err);
#endif
    relu_backward_cpu(s, dm_shape_count(in->shape), in->data, dout->data, din->data);
    return DM_OK;
}

static void relu_destroy(void *state)
{
    free(state);
}

static const dm_layer_vtable relu_vtable = {
    .struct_size = sizeof(dm_layer_vtable),
    .devices = RELU_DEVICES,
    .create = relu_create,
    .bind = dm_layer_bind_nothing,
    .init_params = dm_layer_init_nothing,
    .forward = relu_forward,
    .backward = relu_backward,
    .destroy = relu_destroy,
};

static const dm_param_def relu_params[] = {{NULL, 0, NULL, 0, 0, NULL, NULL}};

static const dm_component relu_component = {
    .struct_size = sizeof(dm_component),
    .kind = DM_KIND_LAYER,
    .type_name = "relu",
    .help = "rectified linear unit, max(x, 0), elementwise",
    .params = relu_params,
    .vtable = &relu_vtable,
};

static const dm_component *const relu_components[] = {&relu_component};

static const dm_plugin_descriptor relu_descriptor = {
    .struct_size = sizeof(dm_plugin_descriptor),
    .abi_major = DM_ABI_MAJOR,
    .abi_minor = DM_ABI_MINOR,
    .name = "relu",
    .version = "1.0.0",
    .build_signature = DM_PLUGIN_BUILD_SIGNATURE,
    .n_components = 1,
    .components = relu_components,
};

DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t host_abi_major,
                                                      uint32_t host_abi_minor)
{
    (void)host_abi_minor;
    return host_abi_major == DM_ABI_MAJOR ? &relu_descriptor : NULL;
}
