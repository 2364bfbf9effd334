/* dmnist ONNX builder (ABI 1.3): how a layer plugin describes itself as
 * ONNX nodes, without knowing protobuf.
 *
 * dmnist-export calls a layer's optional `onnx` method (dm_layer_vtable,
 * ABI 1.3+) once, after create and bind, with a builder for that layer:
 *
 *   static int relu_onnx(void *state, dm_onnx_builder *b, dm_error *err)
 *   {
 *       const char *in[] = {b->input}, *out[] = {b->output};
 *       return b->add_node(b, "Relu", in, 1, out, 1, err);
 *   }
 *
 * The contract:
 *  - The layer reads the tensor named b->input and its last node writes the
 *    tensor named b->output. Names of its own tensors (intermediate results,
 *    weights) start with its section name and a dot: "conv1.weight",
 *    "conv1.conv" (b->layer is "conv1"); a graph output added with add_output
 *    is named for users instead ("probabilities"). Names are copied: pass
 *    temporaries. A tensor written twice is refused.
 *  - Tensor ranks: b->in_rank is the rank of the input in the graph (4:
 *    (N, C, H, W), or 2: (N, F) after a flatten or dense); the layer sets
 *    b->out_rank when its output's rank differs (the host sets it to in_rank
 *    before the call). dmnist's 4-D shapes are in b->in_shape / out_shape
 *    (n = the batch the layer was created for; the graph's batch is free).
 *  - Weights: b->params is a host copy of the layer's parameter slice
 *    (param_count floats, NULL when 0) and b->layer_state of its state
 *    (ABI 1.1 state_floats, NULL when 0). add_initializer stores a float
 *    tensor under a name, in PyTorch's layout for the matching torch.nn
 *    module and named as its state_dict would name it after the layer's
 *    prefix ("conv1.weight" (out, in, kh, kw), "dense1.weight" (out, in),
 *    "bn.running_mean"): dmnist-export --format safetensors writes exactly
 *    these tensors. Integer inputs an operator needs (a Reshape's shape)
 *    go through add_constant, which safetensors leaves out.
 *  - Attributes apply to the node added last.
 *  - Every method returns a dm_status and fills err with one line on
 *    failure; the host owns everything it stores. The plugin returns
 *    DM_ERR_UNSUPPORTED (with a reason) for a configuration it cannot
 *    describe; a layer without an onnx method is refused by name.
 *  - The graph uses the default ONNX domain at opset b->opset (13 or newer):
 *    describe nodes valid at that opset.
 *
 * Like every ABI struct, the builder starts with struct_size and only grows
 * at the end; check DM_HAS_FIELD before using a member a later minor added.
 */
#ifndef DMNIST_ONNX_H
#define DMNIST_ONNX_H

#include "dmnist/abi.h"
#include "dmnist/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dm_onnx_builder dm_onnx_builder;

struct dm_onnx_builder {
    size_t struct_size;

    /* This layer (set by the host before each call). */
    const char *layer;  /* section name, "conv1": prefix of the layer's own names */
    const char *input;  /* the tensor the layer reads */
    const char *output; /* the tensor its last node must write */
    int in_rank;        /* 4 (N, C, H, W) or 2 (N, F) */
    int out_rank;       /* in: in_rank; the layer sets it when its output's rank differs */
    dm_shape in_shape, out_shape;
    const float *params; /* host copy of the parameter slice, or NULL */
    size_t param_count;
    const float *layer_state; /* host copy of the layer state (ABI 1.1), or NULL */
    size_t state_floats;
    int opset; /* ONNX opset of the default domain (13 or newer) */

    /* Add a node of operator op_type (default ONNX domain) reading inputs[0..n_inputs)
     * and writing outputs[0..n_outputs). An empty string "" is an omitted
     * optional input. */
    int (*add_node)(dm_onnx_builder *b, const char *op_type, const char *const *inputs, int n_inputs,
                    const char *const *outputs, int n_outputs, dm_error *err);
    /* Attributes of the node added last. */
    int (*attr_int)(dm_onnx_builder *b, const char *name, int64_t value, dm_error *err);
    int (*attr_ints)(dm_onnx_builder *b, const char *name, const int64_t *values, int n, dm_error *err);
    int (*attr_float)(dm_onnx_builder *b, const char *name, float value, dm_error *err);
    int (*attr_string)(dm_onnx_builder *b, const char *name, const char *value, dm_error *err);
    /* A float32 tensor of the layer's weights or state: dims[0..n_dims), data
     * (row-major, prod(dims) floats) is copied. Exported to safetensors too. */
    int (*add_initializer)(dm_onnx_builder *b, const char *name, const int64_t *dims, int n_dims, const float *data,
                           dm_error *err);
    /* An int64 constant tensor (shapes, axes): ONNX only. */
    int (*add_constant)(dm_onnx_builder *b, const char *name, const int64_t *dims, int n_dims, const int64_t *data,
                        dm_error *err);
    /* One more float graph output besides the model's (the loss layer's
     * probabilities); dims -1 = the free batch dimension. */
    int (*add_output)(dm_onnx_builder *b, const char *name, const int64_t *dims, int n_dims, dm_error *err);

    void *host; /* the host's own state: plugins leave it alone */
    /* Later minor versions append here. */
};

/* "<layer>.<suffix>" into buf: a name of the layer's own. */
static inline const char *dm_onnx_name(const dm_onnx_builder *b, const char *suffix, char *buf, size_t size)
{
    snprintf(buf, size, "%s.%s", b->layer, suffix);
    return buf;
}

/* One node op from tensor `in` to tensor `out`. */
static inline int dm_onnx_unary(dm_onnx_builder *b, const char *op, const char *in, const char *out, dm_error *err)
{
    const char *i[1], *o[1];
    i[0] = in;
    o[0] = out;
    return b->add_node(b, op, i, 1, o, 1, err);
}

#ifdef __cplusplus
}
#endif
#endif /* DMNIST_ONNX_H */
