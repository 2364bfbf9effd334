/* The host side of dm_onnx_builder: what the layer plugins describe goes
 * straight into protobuf-c's ONNX messages (generated at build time from
 * Debian's onnx.proto), which protobuf-c then encodes. Every message,
 * string and array lives in one arena, freed with the graph. */
#define _GNU_SOURCE
#include "export.h"
#include "onnx.pb-c.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- arena ------------------------------------------------------------------- */

typedef struct ex_block {
    struct ex_block *next;
    max_align_t data[];
} ex_block;

struct ex_graph {
    ex_block *arena;
    Onnx__GraphProto graph;
    size_t cap_node, cap_init, cap_output, cap_attr;
    char **names; /* every tensor defined so far */
    size_t n_names, cap_names;
    int n_float_inits;
    int opset;
    /* the layer being described */
    const char *layer, *type;
    dm_onnx_builder b;
};

static void *ar_alloc(ex_graph *g, size_t size)
{
    ex_block *b = calloc(1, sizeof *b + (size ? size : 1));
    if (!b) return NULL;
    b->next = g->arena;
    g->arena = b;
    return b->data;
}

static char *ar_strdup(ex_graph *g, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = ar_alloc(g, n);
    if (p) memcpy(p, s, n);
    return p;
}

/* Append item to a pointer array (grown by doubling inside the arena). */
static int ar_push(ex_graph *g, void ***arr, size_t *n, size_t *cap, void *item)
{
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 8;
        void **na = ar_alloc(g, nc * sizeof *na);
        if (!na) return DM_ERR_NOMEM;
        if (*n) memcpy(na, *arr, *n * sizeof *na);
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = item;
    return DM_OK;
}

/* ---- names ------------------------------------------------------------------- */

static int defined(const ex_graph *g, const char *name)
{
    for (size_t i = 0; i < g->n_names; i++)
        if (strcmp(g->names[i], name) == 0) return 1;
    return 0;
}

/* A new tensor name: refused when empty or already written. */
static int define(ex_graph *g, const char *name, dm_error *err)
{
    if (!name || !name[0]) return dm_fail(err, DM_ERR_INVALID, "a tensor needs a name");
    if (defined(g, name)) return dm_fail(err, DM_ERR_INVALID, "tensor '%s' is written twice", name);
    char *c = ar_strdup(g, name);
    if (!c || ar_push(g, (void ***)&g->names, &g->n_names, &g->cap_names, c))
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    return DM_OK;
}

/* ---- value infos ------------------------------------------------------------ */

/* A float tensor's type; dims < 0 are the free batch dimension "N". */
static Onnx__ValueInfoProto *value_info(ex_graph *g, const char *name, const int64_t *dims, int n)
{
    Onnx__ValueInfoProto *vi = ar_alloc(g, sizeof *vi);
    Onnx__TypeProto *tp = ar_alloc(g, sizeof *tp);
    Onnx__TypeProto__Tensor *tt = ar_alloc(g, sizeof *tt);
    Onnx__TensorShapeProto *sh = ar_alloc(g, sizeof *sh);
    Onnx__TensorShapeProto__Dimension **dv = ar_alloc(g, (size_t)n * sizeof *dv);
    if (!vi || !tp || !tt || !sh || !dv) return NULL;
    onnx__value_info_proto__init(vi);
    onnx__type_proto__init(tp);
    onnx__type_proto__tensor__init(tt);
    onnx__tensor_shape_proto__init(sh);
    for (int i = 0; i < n; i++) {
        Onnx__TensorShapeProto__Dimension *d = ar_alloc(g, sizeof *d);
        if (!d) return NULL;
        onnx__tensor_shape_proto__dimension__init(d);
        if (dims[i] < 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            if (!(d->dim_param = ar_strdup(g, "N"))) return NULL;
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        }
        dv[i] = d;
    }
    sh->n_dim = (size_t)n;
    sh->dim = dv;
    tt->has_elem_type = 1;
    tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    vi->type = tp;
    if (!(vi->name = ar_strdup(g, name))) return NULL;
    return vi;
}

/* ---- the builder's methods ---------------------------------------------------- */

static ex_graph *host(dm_onnx_builder *b) { return (ex_graph *)b->host; }

static int b_add_node(dm_onnx_builder *b, const char *op_type, const char *const *inputs, int n_inputs,
                      const char *const *outputs, int n_outputs, dm_error *err)
{
    ex_graph *g = host(b);
    if (!op_type || !op_type[0]) return dm_fail(err, DM_ERR_INVALID, "a node needs an operator");
    if (n_inputs < 0 || n_outputs < 1 || (n_inputs && !inputs) || !outputs)
        return dm_fail(err, DM_ERR_INVALID, "%s node: needs inputs and at least one output", op_type);
    Onnx__NodeProto *nd = ar_alloc(g, sizeof *nd);
    char **in = ar_alloc(g, (size_t)(n_inputs ? n_inputs : 1) * sizeof *in);
    char **out = ar_alloc(g, (size_t)n_outputs * sizeof *out);
    if (!nd || !in || !out) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    onnx__node_proto__init(nd);
    for (int i = 0; i < n_inputs; i++) {
        if (!inputs[i]) return dm_fail(err, DM_ERR_INVALID, "%s node: input %d is NULL", op_type, i);
        if (inputs[i][0] && !defined(g, inputs[i]))
            return dm_fail(err, DM_ERR_INVALID, "%s node reads tensor '%s', which nothing wrote before it", op_type,
                           inputs[i]);
        if (!(in[i] = ar_strdup(g, inputs[i]))) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_outputs; i++) {
        int rc = define(g, outputs[i], err);
        if (rc) return rc;
        if (!(out[i] = ar_strdup(g, outputs[i]))) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    /* node name: "<layer>/<op>", "<layer>/<op>_1" for a second one */
    char name[256];
    snprintf(name, sizeof name, "%s/%s", g->layer, op_type);
    for (int k = 1;; k++) {
        int taken = 0;
        for (size_t i = 0; i < g->graph.n_node && !taken; i++) taken = strcmp(g->graph.node[i]->name, name) == 0;
        if (!taken) break;
        snprintf(name, sizeof name, "%s/%s_%d", g->layer, op_type, k);
    }
    nd->n_input = (size_t)n_inputs;
    nd->input = in;
    nd->n_output = (size_t)n_outputs;
    nd->output = out;
    if (!(nd->op_type = ar_strdup(g, op_type)) || !(nd->name = ar_strdup(g, name)) ||
        ar_push(g, (void ***)&g->graph.node, &g->graph.n_node, &g->cap_node, nd))
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    g->cap_attr = 0;
    return DM_OK;
}

/* A new attribute on the node added last. */
static Onnx__AttributeProto *new_attr(dm_onnx_builder *b, const char *name, Onnx__AttributeProto__AttributeType type,
                                      dm_error *err)
{
    ex_graph *g = host(b);
    if (!g->graph.n_node) {
        dm_fail(err, DM_ERR_INVALID, "attribute '%s' before any node", name ? name : "");
        return NULL;
    }
    if (!name || !name[0]) {
        dm_fail(err, DM_ERR_INVALID, "an attribute needs a name");
        return NULL;
    }
    Onnx__NodeProto *nd = g->graph.node[g->graph.n_node - 1];
    for (size_t i = 0; i < nd->n_attribute; i++)
        if (strcmp(nd->attribute[i]->name, name) == 0) {
            dm_fail(err, DM_ERR_INVALID, "%s node: attribute '%s' set twice", nd->op_type, name);
            return NULL;
        }
    Onnx__AttributeProto *a = ar_alloc(g, sizeof *a);
    if (a) onnx__attribute_proto__init(a);
    if (!a || !(a->name = ar_strdup(g, name)) ||
        ar_push(g, (void ***)&nd->attribute, &nd->n_attribute, &g->cap_attr, a)) {
        dm_fail(err, DM_ERR_NOMEM, "out of memory");
        return NULL;
    }
    a->has_type = 1;
    a->type = type;
    return a;
}

static int b_attr_int(dm_onnx_builder *b, const char *name, int64_t value, dm_error *err)
{
    Onnx__AttributeProto *a = new_attr(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT, err);
    if (!a) return err ? err->code : DM_ERR_INVALID;
    a->has_i = 1;
    a->i = value;
    return DM_OK;
}

static int b_attr_ints(dm_onnx_builder *b, const char *name, const int64_t *values, int n, dm_error *err)
{
    if (n < 0 || (n && !values)) return dm_fail(err, DM_ERR_INVALID, "attribute '%s': bad values", name);
    Onnx__AttributeProto *a = new_attr(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS, err);
    if (!a) return err ? err->code : DM_ERR_INVALID;
    if (!(a->ints = ar_alloc(host(b), (size_t)n * sizeof *a->ints))) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    if (n) memcpy(a->ints, values, (size_t)n * sizeof *a->ints);
    a->n_ints = (size_t)n;
    return DM_OK;
}

static int b_attr_float(dm_onnx_builder *b, const char *name, float value, dm_error *err)
{
    Onnx__AttributeProto *a = new_attr(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT, err);
    if (!a) return err ? err->code : DM_ERR_INVALID;
    a->has_f = 1;
    a->f = value;
    return DM_OK;
}

static int b_attr_string(dm_onnx_builder *b, const char *name, const char *value, dm_error *err)
{
    if (!value) return dm_fail(err, DM_ERR_INVALID, "attribute '%s': NULL string", name);
    Onnx__AttributeProto *a = new_attr(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING, err);
    if (!a) return err ? err->code : DM_ERR_INVALID;
    char *s = ar_strdup(host(b), value);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    a->has_s = 1;
    a->s.data = (uint8_t *)s;
    a->s.len = strlen(s);
    return DM_OK;
}

/* An initializer: float (weights, exported to safetensors too) or int64. */
static int add_tensor(dm_onnx_builder *b, const char *name, const int64_t *dims, int n_dims, const float *f,
                      const int64_t *i64, dm_error *err)
{
    ex_graph *g = host(b);
    if (n_dims < 0 || n_dims > 8 || (n_dims && !dims))
        return dm_fail(err, DM_ERR_INVALID, "tensor '%s': %d dimensions (0 to 8)", name ? name : "", n_dims);
    size_t count = 1;
    for (int i = 0; i < n_dims; i++) {
        if (dims[i] < 0 || dims[i] > (int64_t)1 << 40)
            return dm_fail(err, DM_ERR_INVALID, "tensor '%s': dimension %d is %lld", name ? name : "", i,
                           (long long)dims[i]);
        count *= (size_t)dims[i];
    }
    if (count && !f && !i64) return dm_fail(err, DM_ERR_INVALID, "tensor '%s': no data", name ? name : "");
    int rc = define(g, name, err);
    if (rc) return rc;
    Onnx__TensorProto *t = ar_alloc(g, sizeof *t);
    int64_t *d = ar_alloc(g, (size_t)(n_dims ? n_dims : 1) * sizeof *d);
    void *data = ar_alloc(g, count * (f ? sizeof(float) : sizeof(int64_t)));
    if (!t || !d || !data) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    onnx__tensor_proto__init(t);
    if (n_dims) memcpy(d, dims, (size_t)n_dims * sizeof *d);
    if (count) memcpy(data, f ? (const void *)f : (const void *)i64, count * (f ? sizeof(float) : sizeof(int64_t)));
    t->n_dims = (size_t)n_dims;
    t->dims = d;
    t->has_data_type = 1;
    if (f) {
        t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
        t->n_float_data = count;
        t->float_data = data;
        g->n_float_inits++;
    } else {
        t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
        t->n_int64_data = count;
        t->int64_data = data;
    }
    if (!(t->name = ar_strdup(g, name)) ||
        ar_push(g, (void ***)&g->graph.initializer, &g->graph.n_initializer, &g->cap_init, t))
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    return DM_OK;
}

static int b_add_initializer(dm_onnx_builder *b, const char *name, const int64_t *dims, int n_dims, const float *data,
                             dm_error *err)
{
    static const float none[1] = {0};
    return add_tensor(b, name, dims, n_dims, data ? data : none, NULL, err);
}

static int b_add_constant(dm_onnx_builder *b, const char *name, const int64_t *dims, int n_dims, const int64_t *data,
                          dm_error *err)
{
    static const int64_t none[1] = {0};
    return add_tensor(b, name, dims, n_dims, NULL, data ? data : none, err);
}

static int b_add_output(dm_onnx_builder *b, const char *name, const int64_t *dims, int n_dims, dm_error *err)
{
    ex_graph *g = host(b);
    if (!name || !defined(g, name))
        return dm_fail(err, DM_ERR_INVALID, "graph output '%s' is not a tensor the layer wrote", name ? name : "");
    if (n_dims < 0 || n_dims > 8 || (n_dims && !dims))
        return dm_fail(err, DM_ERR_INVALID, "graph output '%s': %d dimensions (0 to 8)", name, n_dims);
    for (size_t i = 0; i < g->graph.n_output; i++)
        if (strcmp(g->graph.output[i]->name, name) == 0)
            return dm_fail(err, DM_ERR_INVALID, "graph output '%s' added twice", name);
    Onnx__ValueInfoProto *vi = value_info(g, name, dims, n_dims);
    if (!vi || ar_push(g, (void ***)&g->graph.output, &g->graph.n_output, &g->cap_output, vi))
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    return DM_OK;
}

/* ---- the graph ---------------------------------------------------------------- */

ex_graph *ex_graph_new(const char *name, dm_shape item, int opset, dm_error *err)
{
    ex_graph *g = calloc(1, sizeof *g);
    if (!g) {
        dm_fail(err, DM_ERR_NOMEM, "out of memory");
        return NULL;
    }
    onnx__graph_proto__init(&g->graph);
    g->opset = opset;
    const int64_t dims[4] = {-1, item.c, item.h, item.w};
    Onnx__ValueInfoProto *in = value_info(g, "input", dims, 4);
    if (!in || !(g->graph.name = ar_strdup(g, name && name[0] ? name : "dmnist")) ||
        !(g->graph.input = ar_alloc(g, sizeof *g->graph.input)) || define(g, "input", err)) {
        ex_graph_free(g);
        if (err && !err->code) dm_fail(err, DM_ERR_NOMEM, "out of memory");
        return NULL;
    }
    g->graph.input[0] = in;
    g->graph.n_input = 1;
    return g;
}

void ex_graph_free(ex_graph *g)
{
    if (!g) return;
    for (ex_block *b = g->arena, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(g);
}

int ex_layer_has_onnx(const dm_layer_inst *L)
{
    return DM_HAS_FIELD(L->vt, dm_layer_vtable, onnx) && L->vt->onnx != NULL;
}

int ex_graph_add_model(ex_graph *g, const dm_model *m, const float *params, const float *state, dm_error *err)
{
    char prev[160] = "input", out[160];
    int rank = 4;
    dm_shape shape = m->in_shape;
    for (int i = 0; i < m->n_layers; i++) {
        const dm_layer_inst *L = &m->layers[i];
        const char *type = L->cfg->lc->component->type_name;
        if (!ex_layer_has_onnx(L))
            return dm_fail(err, DM_ERR_UNSUPPORTED,
                           "layer.%s: layer type '%s' (%s) has no ONNX description "
                           "(the optional onnx method of ABI 1.3): it cannot be exported",
                           L->cfg->name, type, L->cfg->lc->path);
        /* every layer's output "<layer>.output"; the last one's is the model's */
        if (i == m->n_layers - 1) snprintf(out, sizeof out, "logits");
        else snprintf(out, sizeof out, "%s.output", L->cfg->name);
        dm_onnx_builder *b = &g->b;
        memset(b, 0, sizeof *b);
        b->struct_size = sizeof *b;
        b->layer = L->cfg->name;
        b->input = prev;
        b->output = out;
        b->in_rank = rank;
        b->out_rank = rank;
        b->in_shape = shape;
        b->out_shape = L->out_shape;
        b->params = L->info.param_count ? params + L->param_offset : NULL;
        b->param_count = L->info.param_count;
        b->layer_state = L->sa.floats && state ? state + L->state_offset : NULL;
        b->state_floats = L->sa.floats;
        b->opset = g->opset;
        b->add_node = b_add_node;
        b->attr_int = b_attr_int;
        b->attr_ints = b_attr_ints;
        b->attr_float = b_attr_float;
        b->attr_string = b_attr_string;
        b->add_initializer = b_add_initializer;
        b->add_constant = b_add_constant;
        b->add_output = b_add_output;
        b->host = g;
        g->layer = L->cfg->name;
        g->type = type;
        dm_error e = {0};
        int rc = DM_GUARDED(L->cfg->lc, "onnx", L->vt->onnx(L->state, b, &e));
        if (rc) return dm_fail(err, rc, "layer.%s: onnx: %s", L->cfg->name, e.msg[0] ? e.msg : "failed");
        if (!defined(g, out))
            return dm_fail(err, DM_ERR_INTERNAL,
                           "layer.%s: onnx: layer type '%s' did not write its output "
                           "tensor '%s'",
                           L->cfg->name, type, out);
        if (b->out_rank != 2 && b->out_rank != 4)
            return dm_fail(err, DM_ERR_INTERNAL, "layer.%s: onnx: output rank %d (2 or 4)", L->cfg->name, b->out_rank);
        rank = b->out_rank;
        shape = L->out_shape;
        snprintf(prev, sizeof prev, "%s", out);
    }
    /* the model's output first, then what layers added (probabilities) */
    int64_t dims[4] = {-1, shape.c, shape.h, shape.w};
    if (rank == 2) dims[1] = (int64_t)shape.c * shape.h * shape.w;
    Onnx__ValueInfoProto *vi = value_info(g, "logits", dims, rank);
    if (!vi || ar_push(g, (void ***)&g->graph.output, &g->graph.n_output, &g->cap_output, vi))
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    memmove(g->graph.output + 1, g->graph.output, (g->graph.n_output - 1) * sizeof *g->graph.output);
    g->graph.output[0] = vi;
    return DM_OK;
}

int ex_graph_float_tensors(const ex_graph *g, ex_tensor_view **out, int *n, dm_error *err)
{
    *out = calloc((size_t)(g->n_float_inits ? g->n_float_inits : 1), sizeof **out);
    if (!*out) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int k = 0;
    for (size_t i = 0; i < g->graph.n_initializer; i++) {
        const Onnx__TensorProto *t = g->graph.initializer[i];
        if (t->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) continue;
        (*out)[k++] = (ex_tensor_view){t->name, t->dims, (int)t->n_dims, t->float_data, t->n_float_data};
    }
    *n = k;
    return DM_OK;
}

/* ---- writing ------------------------------------------------------------------- */

int ex_file_open(ex_file *ef, const char *path, dm_error *err)
{
    memset(ef, 0, sizeof *ef);
    snprintf(ef->path, sizeof ef->path, "%s", path);
    snprintf(ef->tmp, sizeof ef->tmp, "%s.tmp.%ld", path, (long)getpid());
    if (!(ef->f = fopen(ef->tmp, "wb"))) return dm_fail(err, DM_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    return DM_OK;
}

int ex_file_commit(ex_file *ef, dm_error *err)
{
    int bad = fflush(ef->f) != 0 || ferror(ef->f) || fsync(fileno(ef->f)) != 0;
    int e = errno;
    if (fclose(ef->f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    ef->f = NULL;
    if (!bad && rename(ef->tmp, ef->path) != 0) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(ef->tmp);
        return dm_fail(err, DM_ERR_IO, "%s: cannot write: %s", ef->path, strerror(e));
    }
    return DM_OK;
}

void ex_file_abandon(ex_file *ef)
{
    if (ef->f) fclose(ef->f);
    ef->f = NULL;
    unlink(ef->tmp);
}

int ex_graph_write_onnx(const ex_graph *g, const char *path, const char *doc, dm_error *err)
{
    Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT;
    opset.domain = (char *)"";
    opset.has_version = 1;
    opset.version = g->opset;
    Onnx__OperatorSetIdProto *opsets[1] = {&opset};
    Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
    model.has_ir_version = 1;
    model.ir_version = 8; /* ONNX 1.10+: every runtime of the last years reads it; opset 13 needs 7+ */
    model.n_opset_import = 1;
    model.opset_import = opsets;
    model.producer_name = (char *)"dmnist";
    model.producer_version = (char *)DMNIST_VERSION;
    model.doc_string = (char *)(doc ? doc : "");
    model.graph = (Onnx__GraphProto *)&g->graph;

    size_t size = onnx__model_proto__get_packed_size(&model);
    /* protobuf's own limit: one message of at most 2 GiB */
    if (size > 0x7fffffffu)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: the model needs %zu bytes, over ONNX's 2 GiB", path, size);
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return dm_fail(err, DM_ERR_NOMEM, "out of memory (%zu bytes for the ONNX model)", size);
    size_t packed = onnx__model_proto__pack(&model, buf);
    if (packed != size) {
        free(buf);
        return dm_fail(err, DM_ERR_INTERNAL, "%s: protobuf-c packed %zu of %zu bytes", path, packed, size);
    }
    ex_file ef;
    int rc = ex_file_open(&ef, path, err);
    if (rc == DM_OK) {
        if (fwrite(buf, 1, size, ef.f) != size) {
            int e = errno;
            ex_file_abandon(&ef);
            rc = dm_fail(err, DM_ERR_IO, "%s: cannot write: %s", path, strerror(e));
        } else {
            rc = ex_file_commit(&ef, err);
        }
    }
    free(buf);
    return rc;
}
