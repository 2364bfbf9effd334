/* dmnist-export: the model of a checkpoint as ONNX or safetensors.
 * export.c is the command line (experiment, model, checkpoint, --dump-logits);
 * graph.c the host side of dm_onnx_builder (dmnist/onnx.h), which collects
 * what the layer plugins describe into protobuf-c's ONNX messages and writes
 * the .onnx file; safetensors.c writes the same initializers as safetensors. */
#ifndef DM_EXPORT_H
#define DM_EXPORT_H

#include "dm_core.h"

/* The graph being built: opaque outside graph.c. */
typedef struct ex_graph ex_graph;

/* An empty graph whose input is "input" of shape (N, item.c, item.h, item.w). */
ex_graph *ex_graph_new(const char *name, dm_shape item, int opset, dm_error *err);
void ex_graph_free(ex_graph *g);

/* Whether layer L's plugin describes itself (ABI 1.3 onnx method). */
int ex_layer_has_onnx(const dm_layer_inst *L);

/* Let every layer of m add its nodes, in order; params/state are host copies
 * of the model's flat buffers. The last layer's output is the graph output
 * "logits". On failure err names the layer. */
int ex_graph_add_model(ex_graph *g, const dm_model *m, const float *params, const float *state, dm_error *err);

/* Write the graph as an ONNX model (protobuf-c), atomically (temp file and
 * rename). doc: a line for the model's doc_string. */
int ex_graph_write_onnx(const ex_graph *g, const char *path, const char *doc, dm_error *err);

/* The float initializers in the order they were added (safetensors.c). */
typedef struct ex_tensor_view {
    const char *name;
    const int64_t *dims;
    int n_dims;
    const float *data;
    size_t count;
} ex_tensor_view;
int ex_graph_float_tensors(const ex_graph *g, ex_tensor_view **out, int *n, dm_error *err);

/* Write tensors as safetensors (F32, little-endian), atomically. meta: pairs
 * of strings (key, value), n_meta pairs, into "__metadata__". */
int ex_write_safetensors(const char *path, const ex_tensor_view *t, int n, const char *const *meta, int n_meta,
                         dm_error *err);

/* Atomic file writing shared by both formats: open "<path>.tmp.<pid>",
 * then commit (fsync, close, rename) or abandon (close, unlink). */
typedef struct ex_file {
    FILE *f;
    char path[4096], tmp[4200];
} ex_file;
int ex_file_open(ex_file *ef, const char *path, dm_error *err);
int ex_file_commit(ex_file *ef, dm_error *err);
void ex_file_abandon(ex_file *ef);

#endif
