/* The model: one instance per [layer.*] section, shapes propagated from the
 * dataset's item shape, all parameters in one flat buffer and all
 * gradients in another (so gradients are reduced in one call or a few
 * buckets, never one per tensor). */
#define _GNU_SOURCE
#include "dm_core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define DM_PARAM_ALIGN 16 /* floats: every layer's slice starts on 64 bytes */

static uint64_t layer_seed(uint64_t step_seed, int layer) { return dm_hash64(step_seed, (uint64_t)layer + 1); }

static size_t aligned(size_t floats) { return (floats + DM_PARAM_ALIGN - 1) / DM_PARAM_ALIGN * DM_PARAM_ALIGN; }

int dm_layer_state_api_get(const dm_layer_vtable *vt, const dm_layer_info *info, const char *type_name,
                           dm_layer_state_api *api, dm_error *err)
{
    memset(api, 0, sizeof *api);
    /* A plugin built for ABI 1.0 knows neither the methods nor info.state_floats:
     * its vtable ends at destroy, and nothing past that is read or called. */
    if (!DM_HAS_FIELD(vt, dm_layer_vtable, bind_state)) return DM_OK;
    api->bind_state = vt->bind_state;
    if (DM_HAS_FIELD(vt, dm_layer_vtable, init_state)) api->init_state = vt->init_state;
    if (DM_HAS_FIELD(info, dm_layer_info, state_floats)) api->floats = info->state_floats;
    if (api->floats && !api->bind_state)
        return dm_fail(err, DM_ERR_FORMAT,
                       "layer type '%s' asks for %zu state floats but has no bind_state "
                       "to receive them",
                       type_name, api->floats);
    return DM_OK;
}

/* Every refusal of dm_model_build goes through here: the message is
 * formatted first, while the arguments (which may point into m) are still
 * alive, and only then is the half-built model freed. */
static int model_fail(dm_model *m, dm_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int model_fail(dm_model *m, dm_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    dm_model_free(m);
    return code;
}

/* The layer's refusal of a device, shared by the build and --dry-run. */
static int layer_device_ok(const dm_instance_cfg *cfg, dm_device device, dm_error *err)
{
    const dm_layer_vtable *vt = cfg->lc->component->vtable;
    if (vt->devices & DM_DEVICE_BIT(device)) return DM_OK;
    char loc[512];
    dm_where_format(&cfg->where, NULL, loc, sizeof loc);
    return dm_fail(err, DM_ERR_UNSUPPORTED, "%slayer type '%s' has no %s implementation", loc,
                   cfg->lc->component->type_name, dm_device_name(device));
}

int dm_model_check_device(const dm_experiment *x, dm_device device, dm_error *err)
{
    for (int i = 0; i < x->n_layers; i++)
        if (layer_device_ok(&x->layers[i], device, err) != DM_OK) return err->code;
    const dm_optimizer_vtable *ovt = x->opt.lc->component->vtable;
    if (!(ovt->devices & DM_DEVICE_BIT(device)))
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: optimizer: type '%s' has no %s implementation", x->cfg->path,
                       x->opt.lc->component->type_name, dm_device_name(device));
    return DM_OK;
}

int dm_model_build(dm_model *m, const dm_experiment *x, dm_devctx *dev, dm_shape item, int max_batch, int num_threads,
                   dm_error *err)
{
    memset(m, 0, sizeof *m);
    m->dev = dev;
    m->n_layers = x->n_layers;
    m->layers = calloc((size_t)x->n_layers, sizeof *m->layers);
    if (!m->layers) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    dm_shape shape = {max_batch, item.c, item.h, item.w};
    m->in_shape = shape;
    size_t offset = 0, state_offset = 0;
    int rc;
    for (int i = 0; i < x->n_layers; i++) {
        dm_layer_inst *L = &m->layers[i];
        L->cfg = &x->layers[i];
        L->vt = L->cfg->lc->component->vtable;
        char loc[512];
        dm_where_format(&L->cfg->where, NULL, loc, sizeof loc);
        const char *type = L->cfg->lc->component->type_name; /* owned by the registry, not m */
        if ((rc = layer_device_ok(L->cfg, dev->device, err)) != DM_OK) {
            dm_model_free(m);
            return rc;
        }
        dm_layer_config lc = {sizeof lc, L->cfg->name, dev->device, DM_LAYOUT_NCHW, shape, num_threads, dev->stream};
        L->info.struct_size = sizeof L->info;
        dm_error e = {0};
        if ((rc = DM_GUARDED(L->cfg->lc, "create",
                             L->vt->create(dm_param_set_params(L->cfg->params), &lc, &L->state, &L->info, &e)))) {
            L->state = NULL;
            return model_fail(m, err, rc, "%s%s", loc, e.msg);
        }
        if ((rc = dm_layer_state_api_get(L->vt, &L->info, type, &L->sa, &e)))
            return model_fail(m, err, rc, "%s%s", loc, e.msg);
        if (L->info.is_loss && i != x->n_layers - 1)
            return model_fail(m, err, DM_ERR_INVALID, "%sloss layer '%s' must be the last layer", loc, type);
        L->in_shape = shape;
        L->out_shape = L->info.out_shape;
        L->param_offset = offset;
        offset += aligned(L->info.param_count);
        L->state_offset = state_offset;
        state_offset += aligned(L->sa.floats);
        shape = L->out_shape;
    }
    if (!m->layers[x->n_layers - 1].info.is_loss)
        return model_fail(m, err, DM_ERR_INVALID,
                          "%s: the last layer must be a loss layer (for example "
                          "type = softmax_cross_entropy)",
                          x->cfg->path);
    m->param_count = offset;
    size_t nb = (offset ? offset : 1) * sizeof(float);
    if (!(m->params = dm_dev_alloc(dev, nb, err)) || !(m->grads = dm_dev_alloc(dev, nb, err)) ||
        !(m->metrics = dm_dev_alloc(dev, 2 * sizeof(float), err)) ||
        !(m->labels = dm_dev_alloc(dev, (size_t)max_batch * sizeof(int32_t), err)) ||
        !(m->input.data = dm_dev_alloc(dev, dm_shape_count(m->in_shape) * sizeof(float), err))) {
        dm_model_free(m);
        return err ? err->code : DM_ERR_NOMEM;
    }
    m->state_count = state_offset;
    if (m->state_count && !(m->state = dm_dev_alloc(dev, m->state_count * sizeof(float), err))) {
        dm_model_free(m);
        return err ? err->code : DM_ERR_NOMEM;
    }
    m->input = (dm_tensor){m->input.data, dev->device, DM_LAYOUT_NCHW, m->in_shape};
    for (int i = 0; i < m->n_layers; i++) {
        dm_layer_inst *L = &m->layers[i];
        size_t bytes = dm_shape_count(L->out_shape) * sizeof(float);
        L->out = (dm_tensor){dm_dev_alloc(dev, bytes, err), dev->device, DM_LAYOUT_NCHW, L->out_shape};
        L->dout = (dm_tensor){dm_dev_alloc(dev, bytes, err), dev->device, DM_LAYOUT_NCHW, L->out_shape};
        if (L->info.workspace_bytes) L->workspace = dm_dev_alloc(dev, L->info.workspace_bytes, err);
        if (!L->out.data || !L->dout.data || (L->info.workspace_bytes && !L->workspace)) {
            dm_model_free(m);
            return err ? err->code : DM_ERR_NOMEM;
        }
        float *p = L->info.param_count ? m->params + L->param_offset : NULL;
        float *g = L->info.param_count ? m->grads + L->param_offset : NULL;
        dm_error e = {0};
        rc = L->vt->bind(L->state, p, g, L->workspace, &e);
        if (!rc && L->sa.floats) rc = L->sa.bind_state(L->state, m->state + L->state_offset, &e);
        if (rc) {
            char loc[512];
            dm_where_format(&L->cfg->where, NULL, loc, sizeof loc);
            return model_fail(m, err, rc, "%s%s", loc, e.msg);
        }
    }
    return DM_OK;
}

int dm_model_init_params(dm_model *m, uint64_t seed, dm_error *err)
{
    float *host = calloc(m->param_count ? m->param_count : 1, sizeof(float));
    if (!host) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int rc = DM_OK;
    for (int i = 0; i < m->n_layers && rc == DM_OK; i++) {
        dm_layer_inst *L = &m->layers[i];
        if (!L->info.param_count) continue;
        dm_error e = {0};
        /* Each layer draws from its own stream, so adding a layer does not
         * change the initial weights of the others. */
        rc = L->vt->init_params(L->state, host + L->param_offset, dm_hash64(seed, 0x1A17 + (uint64_t)i), &e);
        if (rc) dm_fail(err, rc, "layer.%s: init_params: %s", L->cfg->name, e.msg);
    }
    if (rc == DM_OK) rc = dm_dev_upload(m->dev, m->params, host, m->param_count * sizeof(float), err);
    free(host);
    if (rc != DM_OK || !m->state_count) return rc;

    /* Layer state (ABI 1.1): init_state's values, zeros where there is none. */
    host = calloc(m->state_count, sizeof(float));
    if (!host) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    for (int i = 0; i < m->n_layers && rc == DM_OK; i++) {
        dm_layer_inst *L = &m->layers[i];
        if (!L->sa.floats || !L->sa.init_state) continue;
        dm_error e = {0};
        rc = L->sa.init_state(L->state, host + L->state_offset, &e);
        if (rc) dm_fail(err, rc, "layer.%s: init_state: %s", L->cfg->name, e.msg);
    }
    if (rc == DM_OK) rc = dm_dev_upload(m->dev, m->state, host, m->state_count * sizeof(float), err);
    free(host);
    return rc;
}

/* --timeline: one span per layer call. On a GPU the span must end when the
 * layer's kernels do, so wait for the device (only while recording). */
static void trace_layer(dm_model *m, const char *what, double t0, const dm_layer_inst *L)
{
    if (!dm_timeline_on()) return;
    if (m->dev->device != DM_DEVICE_CPU) {
        dm_error e = {0};
        dm_dev_sync(m->dev, &e); /* a failure shows up in the next checked call */
    }
    dm_timeline_span(what, t0, dm_timeline_clock(), "%s %s", what, L->cfg->name);
}

static dm_tensor with_n(dm_tensor t, int n)
{
    t.shape.n = n;
    return t;
}

int dm_model_forward(dm_model *m, int n, int training, uint64_t step_seed, dm_error *err)
{
    dm_tensor in = with_n(m->input, n);
    for (int i = 0; i < m->n_layers; i++) {
        dm_layer_inst *L = &m->layers[i];
        dm_run_ctx ctx = {sizeof ctx, training, layer_seed(step_seed, i), m->labels, m->metrics, m->dev->stream};
        dm_tensor out = with_n(L->out, n);
        dm_error e = {0};
        double t0 = dm_timeline_clock();
        int rc = L->vt->forward(L->state, &ctx, &in, &out, &e);
        if (rc) return dm_fail(err, rc, "layer.%s: forward: %s", L->cfg->name, e.msg);
        trace_layer(m, training ? "forward" : "eval", t0, L);
        in = out;
    }
    return DM_OK;
}

int dm_model_backward(dm_model *m, int n, uint64_t step_seed, dm_backward_hook hook, void *user, dm_error *err)
{
    for (int i = m->n_layers - 1; i >= 0; i--) {
        dm_layer_inst *L = &m->layers[i];
        dm_run_ctx ctx = {sizeof ctx, 1, layer_seed(step_seed, i), m->labels, m->metrics, m->dev->stream};
        dm_tensor in = with_n(i ? m->layers[i - 1].out : m->input, n);
        dm_tensor out = with_n(L->out, n);
        dm_tensor dout = with_n(L->dout, n);
        dm_tensor din = i ? with_n(m->layers[i - 1].dout, n) : (dm_tensor){0};
        dm_error e = {0};
        double t0 = dm_timeline_clock();
        int rc = L->vt->backward(L->state, &ctx, &in, &out, L->info.is_loss ? NULL : &dout, i ? &din : NULL, &e);
        if (rc) return dm_fail(err, rc, "layer.%s: backward: %s", L->cfg->name, e.msg);
        trace_layer(m, "backward", t0, L);
        if (hook && (rc = hook(user, i, err))) return rc;
    }
    return DM_OK;
}

void dm_model_summary(const dm_model *m, FILE *out)
{
    fprintf(out, "%-16s %-24s %-20s %12s\n", "layer", "type", "output shape", "params");
    fprintf(out, "%-16s %-24s %-20s %12s\n", "input", "-", "", "0");
    char shape[64];
    snprintf(shape, sizeof shape, "(%d, %d, %d)", m->in_shape.c, m->in_shape.h, m->in_shape.w);
    size_t total = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const dm_layer_inst *L = &m->layers[i];
        snprintf(shape, sizeof shape, "(%d, %d, %d)", L->out_shape.c, L->out_shape.h, L->out_shape.w);
        fprintf(out, "%-16s %-24s %-20s %12zu\n", L->cfg->name, L->cfg->lc->component->type_name, shape,
                L->info.param_count);
        total += L->info.param_count;
    }
    fprintf(out, "total parameters: %zu (%.1f MB of float32; flat buffer %zu floats)\n", total, (double)total * 4 / 1e6,
            m->param_count);
    if (m->state_count)
        fprintf(out, "layer state: %zu floats (flat buffer, broadcast from rank 0 and checkpointed)\n", m->state_count);
}

void dm_model_free(dm_model *m)
{
    if (!m || !m->layers) return;
    for (int i = 0; i < m->n_layers; i++) {
        dm_layer_inst *L = &m->layers[i];
        if (L->state && L->vt->destroy) L->vt->destroy(L->state);
        dm_dev_free(m->dev, L->out.data);
        dm_dev_free(m->dev, L->dout.data);
        dm_dev_free(m->dev, L->workspace);
    }
    free(m->layers);
    dm_dev_free(m->dev, m->params);
    dm_dev_free(m->dev, m->grads);
    dm_dev_free(m->dev, m->state);
    dm_dev_free(m->dev, m->metrics);
    dm_dev_free(m->dev, m->labels);
    dm_dev_free(m->dev, m->input.data);
    memset(m, 0, sizeof *m);
}
