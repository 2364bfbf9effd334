/* dmnist layer components.
 *
 * Lifecycle (the core calls, in this order, from one thread per instance):
 *   create      -> once, with validated params and the input shape; returns the
 *                  output shape, how many parameters the layer owns and how much
 *                  scratch it needs. Allocates nothing on the device yet if it
 *                  can avoid it.
 *   bind        -> once, after the core has laid out the flat parameter and
 *                  gradient buffers: the layer gets its slices (NULL if it has
 *                  no parameters) and a workspace of the size it asked for.
 *   bind_state  -> (ABI 1.1+, only for a layer that asked for state_floats)
 *                  once, after bind: the layer's slice of the core's state
 *                  buffer, which it keeps and uses in forward/backward.
 *   init_params -> once on rank 0 (others receive a broadcast): fill the
 *                  parameter slice from the seed (a host buffer, always CPU).
 *   init_state  -> (ABI 1.1+, optional) once on rank 0, like init_params:
 *                  the initial state values (a host buffer); NULL = zeros.
 *   forward/backward -> many times, any order forward..backward per step.
 *   onnx        -> (ABI 1.3+, optional) dmnist-export only, after bind: the
 *                  layer at inference as ONNX nodes (dmnist/onnx.h).
 *   destroy     -> once; frees what create allocated. Never frees buffers
 *                  the core gave it.
 *
 * Buffers: the core allocates every activation, gradient, parameter,
 * workspace and (ABI 1.1+) state buffer, on the instance's device. A layer never keeps pointers
 * to `in`, `out` or `dout` between calls.
 */
#ifndef DMNIST_LAYER_H
#define DMNIST_LAYER_H

#include "dmnist/abi.h"
#include "dmnist/onnx.h"
#include "dmnist/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the core tells a layer at create time. */
typedef struct dm_layer_config {
    size_t struct_size;
    const char *name; /* section name, e.g. "conv1", for messages */
    dm_device device;
    dm_layout layout;  /* layout of activations the core will pass */
    dm_shape in_shape; /* n = largest batch the layer will see */
    int num_threads;   /* CPU threads the layer may use (OpenMP); 0 = OpenMP's default */
    void *cuda_stream; /* cudaStream_t for DM_DEVICE_CUDA, else NULL */
} dm_layer_config;

/* What a layer tells the core at create time. */
typedef struct dm_layer_info {
    size_t struct_size;
    dm_shape out_shape;     /* n = in_shape.n */
    size_t param_count;     /* floats in its slice of the flat parameter buffer */
    size_t workspace_bytes; /* scratch the core allocates and passes to bind */
    int is_loss;            /* 1: final loss layer; forward reads ctx->labels */
    /* ABI 1.1+ (write it only when DM_HAS_FIELD(info, dm_layer_info, state_floats):
     * a 1.0 host's struct ends before it) */
    size_t state_floats; /* floats of non-learned state (running statistics) the
                                core keeps for the layer: not reduced, not updated
                                by the optimizer, but broadcast from rank 0 and
                                checkpointed; needs bind_state */
} dm_layer_info;

/* Per-call context. */
typedef struct dm_run_ctx {
    size_t struct_size;
    int training;          /* 0 = evaluation (dropout is the identity) */
    uint64_t seed;         /* differs per step, layer and rank; backward gets the
                                same seed as its matching forward */
    const int32_t *labels; /* loss layers: n labels on the layer's device */
    float *metrics;        /* loss layers: [0] += sum of losses, [1] += correct
                                predictions, on the layer's device */
    void *cuda_stream;     /* cudaStream_t, or NULL */
} dm_run_ctx;

typedef struct dm_layer_vtable {
    size_t struct_size;
    unsigned devices; /* DM_DEVICE_BIT(DM_DEVICE_CPU) | ... */

    int (*create)(const dm_params *params, const dm_layer_config *cfg, void **state, dm_layer_info *info,
                  dm_error *err);

    /* params/grads: param_count floats each (NULL when 0); workspace:
     * workspace_bytes (NULL when 0). All on the instance's device. */
    int (*bind)(void *state, float *params, float *grads, void *workspace, dm_error *err);

    /* Fill `params` (a host buffer of param_count floats) from `seed`,
     * Keras-style: Glorot-uniform weights, zero biases. */
    int (*init_params)(void *state, float *params, uint64_t seed, dm_error *err);

    /* out = f(in). in->shape.n may be smaller than the create-time batch. */
    int (*forward)(void *state, const dm_run_ctx *ctx, const dm_tensor *in, dm_tensor *out, dm_error *err);

    /* Given dout = dL/dout, write din = dL/din (din is NULL for the first
     * layer: skip it) and OVERWRITE the bound gradient slice with dL/dparams.
     * `in` and `out` are the tensors of the matching forward call.
     * Loss layers ignore dout (it is NULL) and start the chain from labels;
     * they scale by 1/n so gradients are means over the batch. */
    int (*backward)(void *state, const dm_run_ctx *ctx, const dm_tensor *in, const dm_tensor *out,
                    const dm_tensor *dout, dm_tensor *din, dm_error *err);

    void (*destroy)(void *state);

    /* ABI 1.1+. The core calls these only when the vtable's struct_size
     * covers them and they are not NULL; a plugin built for 1.0 has neither. */

    /* layer_state: the layer's state_floats floats of the core's flat state
     * buffer, on the instance's device; called once, after bind, only when
     * state_floats > 0. The layer keeps the pointer and reads and updates the
     * state in forward/backward. Between steps the core may overwrite it
     * (rank 0's values after every training step, a checkpoint's on
     * --resume), so keep nothing derived from it across calls. */
    int (*bind_state)(void *state, float *layer_state, dm_error *err);

    /* Fill host_state (state_floats floats, a host buffer) with the initial
     * values; called once on rank 0, like init_params (the other ranks
     * receive a broadcast). NULL: the state starts at zero. */
    int (*init_state)(void *state, float *host_state, dm_error *err);

    /* ABI 1.3+. Optional; the host calls it only when the vtable's
     * struct_size covers it and it is not NULL. */

    /* Describe the layer at inference (training = 0) as ONNX nodes and
     * initializers through b (dmnist/onnx.h): dmnist-export, after create
     * and bind, on a CPU instance. NULL: the layer cannot be exported to
     * ONNX or safetensors, and the exporter refuses it by name. */
    int (*onnx)(void *state, dm_onnx_builder *b, dm_error *err);
    /* Later minor versions: append new methods here. */
} dm_layer_vtable;

/* ABI 1.0 sizes: the smallest struct_size the host accepts for a layer
 * vtable, and the smallest a plugin should accept for the config and info
 * the host hands to create (every field a 1.0 host fills). */
#define DM_LAYER_VTABLE_SIZE_1_0 (offsetof(dm_layer_vtable, destroy) + sizeof(void *))
#define DM_LAYER_CONFIG_SIZE_1_0 (offsetof(dm_layer_config, cuda_stream) + sizeof(void *))
#define DM_LAYER_INFO_SIZE_1_0 (offsetof(dm_layer_info, is_loss) + sizeof(int))

#ifdef __cplusplus
}
#endif
#endif
