/* From a parsed INI file to a validated experiment: the core's own keys are
 * checked against tables like any plugin's, each plugin section against
 * the plugin's table, and every message names file, line and key. */
#define _GNU_SOURCE
#include "dm_core.h"
#include "launch.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#define NO_RANGE 1, 0
static const dm_param_def experiment_defs[] = {
    {"name", DM_PARAM_STRING, "dmnist", NO_RANGE, NULL, "experiment name, used in logs"},
    {"seed", DM_PARAM_INT, "42", 0, 9.2e18, NULL, "seed for initialisation, shuffling and dropout"},
    {"device", DM_PARAM_ENUM, "cpu", NO_RANGE, "cpu|cuda", "where tensors live"},
    {"backend", DM_PARAM_STRING, "", NO_RANGE, NULL,
     "comm backend: local, mpi, gloo, nccl (default: local, or nccl for cuda when started with several ranks)"},
    {"threads", DM_PARAM_INT, "0", 0, 1024, NULL, "CPU threads per rank (0 = cores / ranks on this host)"},
    {"timeout_s", DM_PARAM_FLOAT, "60", 0.1, 86400, NULL, "every collective returns within this"},
    {"plugin_path", DM_PARAM_STRING, "", NO_RANGE, NULL, "extra ':'-separated plugin folders (relative to this file)"},
    {"elastic", DM_PARAM_BOOL, "false", NO_RANGE, NULL,
     "a lost rank costs the step in flight, not the job: the others form a smaller world and go on, and "
     "new processes join at a step boundary (docs/elastic.md)"},
    {"min_ranks", DM_PARAM_INT, "1", 1, 4096, NULL, "elastic: the fewest ranks that may go on training"},
    {"max_ranks", DM_PARAM_INT, "0", 0, 4096, NULL, "elastic: the most ranks in a world (0 = no limit)"},
    {"elastic_settle_s", DM_PARAM_FLOAT, "1", 0, 3600, NULL,
     "elastic: after a failure a new world forms once nobody new arrived for this long"},
    {"elastic_check_every", DM_PARAM_INT, "1", 1, 1e9, NULL,
     "elastic: every N steps rank 0 looks for processes waiting to join"},
    DM_PARAM_END};

static const dm_param_def data_defs[] = {
    {"type", DM_PARAM_STRING, "mnist", NO_RANGE, NULL, "dataset plugin"},
    {"batch_size", DM_PARAM_INT, "64", 1, 1 << 20, NULL, "examples per step on each rank"},
    {"eval_batch_size", DM_PARAM_INT, "0", 0, 1 << 20, NULL, "examples per evaluation batch (0 = batch_size)"},
    DM_PARAM_END};

static const dm_param_def train_defs[] = {
    {"total_batches", DM_PARAM_INT, "100", 1, 9e15, NULL,
     "batches over all ranks (each of N ranks runs total/N steps)"},
    {"epochs", DM_PARAM_FLOAT, "0", 0, 1e6, NULL, "if > 0, train this many epochs instead of total_batches"},
    {"log_every", DM_PARAM_INT, "10", 0, 1e9, NULL, "log every N steps (0 = never)"},
    {"eval_every", DM_PARAM_INT, "0", 0, 1e9, NULL, "also evaluate every N steps (0 = only at the end)"},
    {"target_accuracy", DM_PARAM_FLOAT, "0", 0, 1, NULL,
     "stop at the first evaluation (eval_every) with test accuracy >= this, and say when (0 = off)"},
    {"checkpoint_dir", DM_PARAM_STRING, "", NO_RANGE, NULL, "where checkpoints go ('' = none)"},
    {"checkpoint_every", DM_PARAM_INT, "0", 0, 1e9, NULL, "checkpoint every N steps (and always at the end)"},
    {"keep_checkpoints", DM_PARAM_INT, "3", 1, 1e6, NULL, "how many recent checkpoints to keep"},
    {"fusion_mb", DM_PARAM_FLOAT, "4", 0, 1e6, NULL, "gradient bucket size in MB (0 = one allreduce per layer)"},
    {"nan_policy", DM_PARAM_ENUM, "stop", NO_RANGE, "stop|skip", "what a NaN or Inf loss does"},
    {"sync_check_every", DM_PARAM_INT, "0", 0, 1e9, NULL,
     "every N steps check that all ranks hold bitwise identical parameters (0 = off)"},
    DM_PARAM_END};

static const dm_param_def optimizer_defs[] = {
    {"type", DM_PARAM_STRING, "adam", NO_RANGE, NULL, "optimizer plugin"},
    {"lr", DM_PARAM_FLOAT, "0.001", 0, 1e6, NULL, "learning rate (before scaling)"},
    {"scale_lr", DM_PARAM_BOOL, "true", NO_RANGE, NULL, "multiply lr by the number of ranks (as Horovod)"},
    {"warmup_steps", DM_PARAM_INT, "0", 0, 1e9, NULL, "linear warm-up from lr/steps to lr over N steps"},
    {"schedule", DM_PARAM_ENUM, "constant", NO_RANGE, "constant|linear|cosine",
     "lr after the warm-up: constant, or a linear or cosine decay to lr * min_lr_frac"},
    {"decay_steps", DM_PARAM_INT, "0", 0, 1e12, NULL, "steps of the decay (0 = the rest of the run)"},
    {"min_lr_frac", DM_PARAM_FLOAT, "0", 0, 1, NULL, "where the decay ends, as a fraction of lr"},
    DM_PARAM_END};

static const dm_param_def layer_defs[] = {{"type", DM_PARAM_STRING, NULL, NO_RANGE, NULL, "layer plugin"},
                                          DM_PARAM_END};

const dm_param_def *dm_core_section_defs(const char *section)
{
    if (strcmp(section, "experiment") == 0) return experiment_defs;
    if (strcmp(section, "data") == 0) return data_defs;
    if (strcmp(section, "train") == 0) return train_defs;
    if (strcmp(section, "optimizer") == 0) return optimizer_defs;
    if (strncmp(section, "layer.", 6) == 0) return layer_defs;
    if (strcmp(section, "comm") == 0) return NULL;
    return NULL;
}

static const char *known_sections[] = {"experiment", "data", "train", "optimizer", "comm", "layer.NAME"};

/* Is dir already one of the ':'-separated entries of path? */
static int path_has(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    for (const char *p = path; p && *p;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        if (len == n && strncmp(p, dir, n) == 0) return 1;
        p = colon ? colon + 1 : NULL;
    }
    return 0;
}

void dm_default_plugin_path(const char *ini_plugin_path, const char *config_dir, char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = 0;
#define APPEND(str) \
    do { \
        if (!path_has(buf, (str))) \
            off += (size_t)snprintf(buf + off, off < size ? size - off : 0, "%s%s", off ? ":" : "", (str)); \
    } while (0)
    if (ini_plugin_path && ini_plugin_path[0]) {
        /* relative entries are relative to the INI file, not the cwd; made
         * absolute here because the registry refuses relative entries */
        char abs_dir[PATH_MAX];
        if (config_dir && config_dir[0] != '/' && realpath(config_dir, abs_dir)) config_dir = abs_dir;
        char *copy = strdup(ini_plugin_path), *save = NULL;
        for (char *t = copy ? strtok_r(copy, ":", &save) : NULL; t; t = strtok_r(NULL, ":", &save)) {
            char full[PATH_MAX + 2048];
            if (t[0] == '/' || !config_dir) snprintf(full, sizeof full, "%s", t);
            else snprintf(full, sizeof full, "%s/%s", config_dir, t);
            APPEND(full);
        }
        free(copy);
    }
    /* DMNIST_PLUGIN_PATH: a relative entry is relative to the current
     * directory, as in --plugin-path (the registry would resolve it the
     * same way; made absolute here so that --dry-run prints what is used). */
    const char *env = getenv("DMNIST_PLUGIN_PATH");
    char *envcopy = env && env[0] ? strdup(env) : NULL, *esave = NULL;
    for (char *t = envcopy ? strtok_r(envcopy, ":", &esave) : NULL; t; t = strtok_r(NULL, ":", &esave)) {
        char full[PATH_MAX + 2048], cwd[PATH_MAX];
        if (t[0] == '/' || !getcwd(cwd, sizeof cwd)) snprintf(full, sizeof full, "%s", t);
        else snprintf(full, sizeof full, "%s/%s", cwd, t);
        APPEND(full);
    }
    free(envcopy);
    /* The build tree when this executable runs from it, else the install
     * prefix relative to the executable (relocatable), else the configured one. */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    int from_build = 0;
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        char build_real[PATH_MAX];
        char *bp = realpath(DMNIST_BUILD_PLUGIN_DIR "/..", build_real);
        if (bp && strcmp(bp, exe) == 0) from_build = 1;
        if (!from_build) {
            char inst[PATH_MAX + 64];
            snprintf(inst, sizeof inst, "%s/../%s", exe, DMNIST_INSTALL_PLUGIN_RELDIR);
            char real[PATH_MAX];
            if (realpath(inst, real)) APPEND(real);
        }
    }
    APPEND(from_build ? DMNIST_BUILD_PLUGIN_DIR : DMNIST_INSTALL_PLUGIN_DIR);
#undef APPEND
}

void dm_experiment_free(dm_experiment *x)
{
    if (!x) return;
    dm_param_set_free(x->experiment_params);
    dm_param_set_free(x->train_params);
    dm_param_set_free(x->data.params);
    dm_param_set_free(x->data.core_params);
    dm_param_set_free(x->opt.params);
    dm_param_set_free(x->opt.core_params);
    dm_param_set_free(x->comm.params);
    for (int i = 0; x->layers && i < x->n_layers; i++) {
        dm_param_set_free(x->layers[i].params);
        dm_param_set_free(x->layers[i].core_params);
    }
    free(x->layers);
    dm_registry_free(x->reg);
    free(x);
}

/* Validate a section that mixes core keys (core_defs, whose `type` entry
 * gives the default type) with the keys of the plugin named by its `type`.
 * The plugin gets a param set of its own keys, inst->core_params the core's. */
static int resolve_section(dm_experiment *x, const char *section_name, dm_kind kind, const dm_param_def *core_defs,
                           dm_instance_cfg *inst, dm_error *err)
{
    static const dm_section empty = {0};
    const dm_section *s = dm_config_section(x->cfg, section_name);
    if (!s) s = &empty;
    inst->where = (dm_where){x->cfg->path, section_name, s->line};
    const char *default_type = NULL;
    for (const dm_param_def *d = core_defs; d->name; d++)
        if (strcmp(d->name, "type") == 0) default_type = d->default_value;
    const dm_kv *tkv = dm_section_get(s, "type");
    const char *type = tkv ? tkv->value : default_type;
    char loc[512];
    dm_where_format(&inst->where, tkv, loc, sizeof loc);
    if (!type || !type[0]) return dm_fail(err, DM_ERR_INVALID, "%smissing key 'type'", loc);
    inst->lc = dm_registry_find(x->reg, kind, type);
    if (!inst->lc) {
        const char *names[256];
        int n = 0;
        for (int i = 0; i < dm_registry_count(x->reg) && n < 256; i++) {
            const dm_loaded_component *c = dm_registry_at(x->reg, i);
            if (c->component->kind == kind) names[n++] = c->component->type_name;
        }
        const char *sug = dm_suggest(type, names, n);
        char hint[128] = "";
        if (sug) snprintf(hint, sizeof hint, " (did you mean '%s'?)", sug);
        const dm_loaded_component *other = dm_registry_find(x->reg, -1, type);
        if (other)
            snprintf(hint, sizeof hint, " ('%s' is a %s, not a %s)", type, dm_kind_name(other->component->kind),
                     dm_kind_name(kind));
        return dm_fail(err, DM_ERR_INVALID,
                       "%sunknown %s type '%s'%s; see dmnist-run --list-plugins "
                       "(plugin path: %s)",
                       loc, dm_kind_name(kind), type, hint, x->plugin_path);
    }
    /* Merge both tables to check every key once, with suggestions over both. */
    int nc = 0, np = 0;
    for (const dm_param_def *d = core_defs; d && d->name; d++) nc++;
    for (const dm_param_def *d = inst->lc->component->params; d && d->name; d++) np++;
    dm_param_def *all = calloc((size_t)(nc + np + 1), sizeof *all);
    dm_kv *plugin_kvs = calloc((size_t)(s->n + 1), sizeof *plugin_kvs);
    dm_kv *core_kvs = calloc((size_t)(s->n + 1), sizeof *core_kvs);
    if (!all || !plugin_kvs || !core_kvs) {
        free(all);
        free(plugin_kvs);
        free(core_kvs);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < nc; i++) all[i] = core_defs[i];
    for (int i = 0; i < np; i++) {
        all[nc + i] = inst->lc->component->params[i];
        for (int j = 0; j < nc; j++)
            if (strcmp(core_defs[j].name, all[nc + i].name) == 0) {
                int rc = dm_fail(err, DM_ERR_INVALID,
                                 "%s: plugin '%s' declares key '%s', which the core "
                                 "owns in [%s]",
                                 inst->lc->path, type, all[nc + i].name, section_name);
                free(all);
                free(plugin_kvs);
                free(core_kvs);
                return rc;
            }
    }
    dm_param_set *merged = NULL;
    int rc = dm_param_set_build(all, s->kvs, s->n, &inst->where, &merged, err);
    dm_param_set_free(merged);
    int npk = 0, nck = 0;
    for (int k = 0; rc == DM_OK && k < s->n; k++) {
        int is_core = 0;
        for (int j = 0; j < nc; j++) is_core |= strcmp(core_defs[j].name, s->kvs[k].key) == 0;
        if (is_core) core_kvs[nck++] = s->kvs[k];
        else plugin_kvs[npk++] = s->kvs[k];
    }
    if (rc == DM_OK)
        rc = dm_param_set_build(inst->lc->component->params, plugin_kvs, npk, &inst->where, &inst->params, err);
    if (rc == DM_OK) rc = dm_param_set_build(core_defs, core_kvs, nck, &inst->where, &inst->core_params, err);
    free(all);
    free(plugin_kvs);
    free(core_kvs);
    return rc;
}

static int core_only(dm_experiment *x, const char *section, dm_param_set **out, dm_error *err)
{
    static const dm_section empty = {0};
    const dm_section *s = dm_config_section(x->cfg, section);
    if (!s) s = &empty;
    dm_where w = {x->cfg->path, section, s->line};
    return dm_param_set_build(dm_core_section_defs(section), s->kvs, s->n, &w, out, err);
}

static void copy_str(char *dst, size_t size, const char *src) { snprintf(dst, size, "%s", src ? src : ""); }

/* A core key's validated value. The set holds every key of its table, the
 * defaults filled in: the tables above are the only place a default is
 * written. A name missing from the table is a bug in this file. */
static const dm_param_value *key(const dm_param_set *ps, const char *name)
{
    const dm_param_value *v = dm_param_find(dm_param_set_params(ps), name);
    if (!v) {
        fprintf(stderr, "dmnist: internal error: core key '%s' is not in its table\n", name);
        abort();
    }
    return v;
}

/* [comm]: the backend comes from experiment.backend; [comm] holds its keys.
 * Default: local, or nccl for device = cuda when a launcher started
 * several ranks (dmnist-run --np sets DMNIST_WORLD_SIZE, mpirun OMPI_*). */
static int resolve_comm(dm_experiment *x, dm_error *err)
{
    dm_config *cfg = x->cfg;
    if (!x->backend[0]) {
        dm_launch_env env;
        int rc = dm_launch_env_read(&env, err);
        if (rc) return rc;
        int world = env.size > 0 ? env.size : 1;
        copy_str(x->backend, sizeof x->backend, x->device == DM_DEVICE_CUDA && world > 1 ? "nccl" : "local");
        if ((rc = dm_param_set_replace(x->experiment_params, "backend", x->backend, err))) return rc;
    }
    static const dm_section empty = {0};
    const dm_section *s = dm_config_section(cfg, "comm");
    if (!s) s = &empty;
    x->comm.where = (dm_where){cfg->path, "comm", s->line};
    x->comm.lc = dm_registry_find(x->reg, DM_KIND_COMM, x->backend);
    if (!x->comm.lc) {
        const char *names[64];
        int n = 0;
        for (int i = 0; i < dm_registry_count(x->reg) && n < 64; i++)
            if (dm_registry_at(x->reg, i)->component->kind == DM_KIND_COMM)
                names[n++] = dm_registry_at(x->reg, i)->component->type_name;
        const char *sug = dm_suggest(x->backend, names, n);
        char hint[96] = "";
        if (sug) snprintf(hint, sizeof hint, " (did you mean '%s'?)", sug);
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: experiment: unknown backend '%s'%s; see dmnist-run "
                       "--list-plugins",
                       cfg->path, x->backend, hint);
    }
    snprintf(x->comm.name, sizeof x->comm.name, "comm");
    return dm_param_set_build(x->comm.lc->component->params, s->kvs, s->n, &x->comm.where, &x->comm.params, err);
}

/* [layer.*] in file order, each against its plugin's table. */
static int resolve_layers(dm_experiment *x, dm_error *err)
{
    const dm_config *cfg = x->cfg;
    int rc;
    for (int i = 0; i < cfg->n; i++)
        if (strncmp(cfg->sections[i].name, "layer.", 6) == 0) x->n_layers++;
    if (x->n_layers == 0)
        return dm_fail(err, DM_ERR_INVALID, "%s: no [layer.NAME] sections: a model needs at least one layer",
                       cfg->path);
    x->layers = calloc((size_t)x->n_layers, sizeof *x->layers);
    if (!x->layers) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    for (int i = 0, k = 0; i < cfg->n; i++) {
        const char *name = cfg->sections[i].name;
        if (strncmp(name, "layer.", 6) != 0) continue;
        dm_instance_cfg *L = &x->layers[k++];
        if ((rc = resolve_section(x, name, DM_KIND_LAYER, layer_defs, L, err))) return rc;
        snprintf(L->name, sizeof L->name, "%s", name + 6);
        L->where.section = cfg->sections[i].name;
    }
    return DM_OK;
}

/* Every section is the core's, [comm] or a [layer.NAME]: one line naming an
 * unknown one, with a suggestion. */
static int check_sections(const dm_config *cfg, dm_error *err)
{
    for (int i = 0; i < cfg->n; i++) {
        const char *name = cfg->sections[i].name;
        if (dm_core_section_defs(name) || strcmp(name, "comm") == 0) {
            if (strcmp(name, "layer.") == 0)
                return dm_fail(err, DM_ERR_INVALID, "%s:%d: [layer.] needs a name, e.g. [layer.conv1]", cfg->path,
                               cfg->sections[i].line);
            continue;
        }
        const char *sug = dm_suggest(name, known_sections, 6);
        char hint[96] = "";
        if (sug) snprintf(hint, sizeof hint, " (did you mean [%s]?)", sug);
        int line = cfg->sections[i].line;
        if (line > 0) return dm_fail(err, DM_ERR_INVALID, "%s:%d: unknown section [%s]%s", cfg->path, line, name, hint);
        return dm_fail(err, DM_ERR_INVALID, "--set: unknown section '%s'%s", name, hint);
    }
    return DM_OK;
}

int dm_experiment_resolve(dm_config *cfg, const char *extra_plugin_path, dm_experiment **out, dm_error *err)
{
    *out = NULL;
    int rc = check_sections(cfg, err);
    if (rc) return rc;

    dm_experiment *x = calloc(1, sizeof *x);
    if (!x) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    x->cfg = cfg;
    rc = core_only(x, "experiment", &x->experiment_params, err);
    if (rc != DM_OK) {
        dm_experiment_free(x);
        return rc;
    }
    const dm_param_set *ps = x->experiment_params;
    copy_str(x->name, sizeof x->name, key(ps, "name")->s);
    x->seed = (uint64_t)key(ps, "seed")->i;
    x->device = strcmp(key(ps, "device")->s, "cuda") == 0 ? DM_DEVICE_CUDA : DM_DEVICE_CPU;
    copy_str(x->backend, sizeof x->backend, key(ps, "backend")->s);
    x->threads = (int)key(ps, "threads")->i;
    x->timeout_s = key(ps, "timeout_s")->f;
    x->elastic = (int)key(ps, "elastic")->i;
    x->min_ranks = (int)key(ps, "min_ranks")->i;
    x->max_ranks = (int)key(ps, "max_ranks")->i;
    x->elastic_settle_s = key(ps, "elastic_settle_s")->f;
    x->elastic_check_every = (int)key(ps, "elastic_check_every")->i;

    char path[4096];
    dm_default_plugin_path(key(ps, "plugin_path")->s, cfg->dir, path, sizeof path);
    int len = snprintf(x->plugin_path, sizeof x->plugin_path, "%s%s%s", extra_plugin_path ? extra_plugin_path : "",
                       extra_plugin_path && extra_plugin_path[0] ? ":" : "", path);
    if (len < 0 || (size_t)len >= sizeof x->plugin_path) {
        dm_experiment_free(x);
        return dm_fail(err, DM_ERR_INVALID, "plugin search path too long (%d characters)", len);
    }
    x->reg = dm_registry_new();
    if (!x->reg) {
        dm_experiment_free(x);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    if ((rc = dm_registry_load_path(x->reg, x->plugin_path, err)) != DM_OK) {
        dm_experiment_free(x);
        return rc;
    }

    /* [data]; eval_batch_size = 0 means batch_size */
    if ((rc = resolve_section(x, "data", DM_KIND_DATASET, data_defs, &x->data, err))) goto fail;
    ps = x->data.core_params;
    x->batch_size = (int)key(ps, "batch_size")->i;
    x->eval_batch_size = (int)key(ps, "eval_batch_size")->i;
    if (x->eval_batch_size <= 0) {
        char text[32];
        snprintf(text, sizeof text, "%d", x->batch_size);
        if ((rc = dm_param_set_replace(x->data.core_params, "eval_batch_size", text, err))) goto fail;
        x->eval_batch_size = x->batch_size;
    }
    snprintf(x->data.name, sizeof x->data.name, "data");

    /* [train] */
    if ((rc = core_only(x, "train", &x->train_params, err))) goto fail;
    ps = x->train_params;
    x->total_batches = key(ps, "total_batches")->i;
    x->epochs = key(ps, "epochs")->f;
    x->log_every = (int)key(ps, "log_every")->i;
    x->eval_every = (int)key(ps, "eval_every")->i;
    x->target_accuracy = key(ps, "target_accuracy")->f;
    if (x->target_accuracy > 0 && x->eval_every <= 0) {
        rc = dm_fail(err, DM_ERR_INVALID,
                     "%s: train.target_accuracy needs train.eval_every > 0 "
                     "(the evaluations it is checked at)",
                     cfg->path);
        goto fail;
    }
    copy_str(x->checkpoint_dir, sizeof x->checkpoint_dir, key(ps, "checkpoint_dir")->s);
    x->checkpoint_every = (int)key(ps, "checkpoint_every")->i;
    x->keep_checkpoints = (int)key(ps, "keep_checkpoints")->i;
    x->fusion_mb = key(ps, "fusion_mb")->f;
    x->nan_skip = strcmp(key(ps, "nan_policy")->s, "skip") == 0;
    x->sync_check_every = (int)key(ps, "sync_check_every")->i;

    /* [optimizer] */
    if ((rc = resolve_section(x, "optimizer", DM_KIND_OPTIMIZER, optimizer_defs, &x->opt, err))) goto fail;
    ps = x->opt.core_params;
    x->lr = key(ps, "lr")->f;
    x->scale_lr = (int)key(ps, "scale_lr")->i;
    x->schedule.warmup_steps = key(ps, "warmup_steps")->i;
    x->schedule.kind = dm_lr_schedule_kind(key(ps, "schedule")->s);
    x->schedule.decay_steps = key(ps, "decay_steps")->i;
    x->schedule.min_lr_frac = key(ps, "min_lr_frac")->f;
    snprintf(x->opt.name, sizeof x->opt.name, "optimizer");

    if ((rc = resolve_comm(x, err))) goto fail;

    if ((rc = resolve_layers(x, err))) goto fail;
    *out = x;
    return DM_OK;
fail:
    dm_experiment_free(x);
    return rc;
}
