/* dmnist-export CHECKPOINT CONFIG.ini -o OUT [--format onnx|safetensors]
 *               [--dump-logits FILE.npy] [--set section.key=value]... [--plugin-path DIRS]
 *
 * Resolves the experiment as dmnist-run does, builds the model on the CPU,
 * reads the checkpoint (refusing one of another model), and writes the model
 * as ONNX (the graph each layer plugin describes, docs/export.md) or its
 * parameters as safetensors. --dump-logits runs the model's own forward pass
 * over the test split and writes the logits as a .npy file, the reference
 * for checking an exported model.
 *
 * Exit codes as dmnist-run's: 0 done, 1 a failure while running (checkpoint
 * unreadable or of another model, output not writable), 2 a bad command
 * line, configuration or plugin (a layer that cannot describe itself). */
#define _GNU_SOURCE
#include "export.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROG "dmnist-export"
#define EX_OPSET 13

static void usage(FILE *out)
{
    fprintf(out,
            "usage: " PROG " CHECKPOINT CONFIG.ini -o OUT [options]\n"
            "\n"
            "Write the model of CHECKPOINT (a ckpt-*.dmck file, or a checkpoint folder: its newest)\n"
            "trained with CONFIG.ini as ONNX or safetensors (docs/export.md).\n"
            "\n"
            "  -o, --output FILE        where to write the model\n"
            "  --format onnx|safetensors  ONNX graph with weights (default), or the parameters by\n"
            "                           layer and name (conv1.weight ...) in PyTorch's layout\n"
            "  --dump-logits FILE.npy   also run dmnist's own forward pass over the test split and\n"
            "                           write the logits (float32, N x classes) as a NumPy file\n"
            "  --set SECTION.KEY=VALUE  override a config key (as dmnist-run --set)\n"
            "  --plugin-path DIRS       more plugin folders (':'-separated), searched first\n"
            "  -h, --help               this text\n"
            "\n"
            "Exit status: 0 done, 1 failed while running, 2 bad command line, config or plugin.\n");
}

/* What one run holds, freed by cleanup(). */
typedef struct exporter {
    dm_config *cfg;
    dm_experiment *x;
    dm_devctx dev;
    const dm_dataset_vtable *dvt;
    void *data;
    dm_dataset_info di;
    dm_model m;
    int model_built;
    float *params, *opt, *state;
    ex_graph *g;
} exporter;

static void cleanup(exporter *e)
{
    ex_graph_free(e->g);
    free(e->params);
    free(e->opt);
    free(e->state);
    if (e->model_built) dm_model_free(&e->m);
    if (e->data) e->dvt->close(e->data);
    dm_experiment_free(e->x);
    dm_config_free(e->cfg);
}

/* A little NumPy .npy file (format 1.0): float32 little-endian, C order. */
static int write_npy(const char *path, const float *v, int64_t rows, int64_t cols, dm_error *err)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                     (long long)rows, (long long)cols);
    /* magic (6) + version (2) + length (2) + dict + padding + '\n': a multiple of 64 */
    int total = (10 + n + 1 + 63) / 64 * 64;
    int pad = total - 10 - n - 1;
    ex_file ef;
    int rc = ex_file_open(&ef, path, err);
    if (rc) return rc;
    unsigned char pre[10] = {
        0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)((total - 10) & 0xff), (unsigned char)((total - 10) >> 8)};
    int ok = fwrite(pre, 1, 10, ef.f) == 10 && fwrite(hdr, 1, (size_t)n, ef.f) == (size_t)n;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', ef.f) != EOF;
    ok = ok && fputc('\n', ef.f) != EOF;
    ok = ok && fwrite(v, sizeof(float), (size_t)(rows * cols), ef.f) == (size_t)(rows * cols);
    if (!ok) {
        int e = errno;
        ex_file_abandon(&ef);
        return dm_fail(err, DM_ERR_IO, "%s: cannot write: %s", path, strerror(e));
    }
    return ex_file_commit(&ef, err);
}

/* The model's own forward pass (core/model.c, evaluation mode) over the test
 * split; the logits are the loss layer's input. */
static int dump_logits(exporter *e, const char *path, int batch, dm_error *err)
{
    dm_model *m = &e->m;
    const dm_tensor *logits_t = m->n_layers >= 2 ? &m->layers[m->n_layers - 2].out : &m->input;
    const int64_t total = e->di.count[DM_SPLIT_TEST];
    const size_t classes = dm_shape_per_item(logits_t->shape);
    if (total < 1) return dm_fail(err, DM_ERR_INVALID, "%s: data: the test split is empty", e->x->cfg->path);
    float *all = malloc((size_t)total * classes * sizeof(float));
    int64_t *idx = malloc((size_t)batch * sizeof *idx);
    if (!all || !idx) {
        free(all);
        free(idx);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    int rc = DM_OK;
    double correct = 0;
    for (int64_t i = 0; i < total && rc == DM_OK; i += batch) {
        int n = (int)(total - i < batch ? total - i : batch);
        for (int k = 0; k < n; k++) idx[k] = i + k;
        dm_error de = {0};
        /* CPU: the model's buffers are host memory */
        if ((rc = e->dvt->read(e->data, DM_SPLIT_TEST, idx, n, m->input.data, m->labels, &de))) {
            dm_fail(err, rc, "data: %s", de.msg);
            break;
        }
        if ((rc = dm_dev_zero(&e->dev, m->metrics, 2 * sizeof(float), err))) break;
        if ((rc = dm_model_forward(m, n, 0, 0, err))) break;
        memcpy(all + (size_t)i * classes, logits_t->data, (size_t)n * classes * sizeof(float));
        correct += m->metrics[1];
    }
    free(idx);
    if (rc == DM_OK) rc = write_npy(path, all, total, (int64_t)classes, err);
    free(all);
    if (rc == DM_OK)
        printf("%s: dmnist test accuracy %.4f (%lld images); logits (%lld x %zu) in %s\n", PROG,
               correct / (double)total, (long long)total, (long long)total, classes, path);
    return rc;
}

int main(int argc, char **argv)
{
    enum { OPT_FORMAT = 256, OPT_DUMP, OPT_SET, OPT_PLUGIN_PATH };
    static const struct option longopts[] = {{"output", required_argument, NULL, 'o'},
                                             {"format", required_argument, NULL, OPT_FORMAT},
                                             {"dump-logits", required_argument, NULL, OPT_DUMP},
                                             {"set", required_argument, NULL, OPT_SET},
                                             {"plugin-path", required_argument, NULL, OPT_PLUGIN_PATH},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    if (!sets) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    int n_sets = 0, safetensors = 0, c;
    const char *out_path = NULL, *dump_path = NULL, *extra_path = NULL;
    static char abs_plugin_path[8192];
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ho:", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out_path = optarg; break;
        case OPT_FORMAT:
            if (strcmp(optarg, "onnx") == 0) {
                safetensors = 0;
            } else if (strcmp(optarg, "safetensors") == 0) {
                safetensors = 1;
            } else {
                fprintf(stderr, PROG ": --format %s: expected onnx or safetensors\n", optarg);
                free(sets);
                return 2;
            }
            break;
        case OPT_DUMP: dump_path = optarg; break;
        case OPT_SET: sets[n_sets++] = optarg; break;
        case OPT_PLUGIN_PATH:
            if (dm_absolute_dirs(optarg, abs_plugin_path, sizeof abs_plugin_path)) {
                fprintf(stderr, PROG ": --plugin-path %s: too long, or the current directory is unknown\n", optarg);
                free(sets);
                return 2;
            }
            extra_path = abs_plugin_path;
            break;
        case 'h':
            usage(stdout);
            free(sets);
            return 0;
        case ':':
            fprintf(stderr, PROG ": option %s needs a value (see --help)\n", argv[optind - 1]);
            free(sets);
            return 2;
        default:
            fprintf(stderr, PROG ": unknown option '%s' (see --help)\n", argv[optind - 1]);
            free(sets);
            return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr,
                argc - optind < 2 ? PROG ": expected CHECKPOINT CONFIG.ini (see --help)\n"
                                  : PROG ": too many arguments: expected CHECKPOINT CONFIG.ini\n");
        free(sets);
        return 2;
    }
    if (!out_path && !dump_path) {
        fprintf(stderr, PROG ": nothing to write: give -o FILE (or --dump-logits FILE)\n");
        free(sets);
        return 2;
    }
    const char *ckpt_arg = argv[optind], *config_path = argv[optind + 1];

    exporter e = {0};
    dm_error err = {0};
#define CONFIG_STATUS (err.code == DM_ERR_NOMEM ? 1 : 2)
    if (dm_config_load(config_path, &e.cfg, &err)) {
        fprintf(stderr, PROG ": %s\n", err.msg);
        free(sets);
        return CONFIG_STATUS;
    }
    for (int i = 0; i < n_sets; i++)
        if (dm_config_set(e.cfg, sets[i], &err)) {
            fprintf(stderr, PROG ": %s\n", err.msg);
            free(sets);
            cleanup(&e);
            return CONFIG_STATUS;
        }
    free(sets);
    /* as dmnist-run: OpenMP's threads only, each task a single-threaded sgemm */
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    if (dm_experiment_resolve(e.cfg, extra_path, &e.x, &err)) {
        fprintf(stderr, PROG ": %s\n", err.msg);
        int st = CONFIG_STATUS;
        cleanup(&e);
        return st;
    }
#undef CONFIG_STATUS
    dm_experiment *x = e.x;
    int status = 2;

    /* The dataset gives the input shape (and the test split for --dump-logits). */
    e.dvt = x->data.lc->component->vtable;
    dm_dataset_config dc = {sizeof dc, x->seed, x->cfg->dir};
    e.di.struct_size = sizeof e.di;
    int rc =
        DM_GUARDED(x->data.lc, "open", e.dvt->open(dm_param_set_params(x->data.params), &dc, &e.data, &e.di, &err));
    if (rc) {
        e.data = NULL;
        fprintf(stderr, PROG ": %s\n", err.msg);
        cleanup(&e);
        return 1;
    }
    /* The model on the CPU whatever the config's device: a checkpoint is the same on both. */
    e.dev = (dm_devctx){DM_DEVICE_CPU, 0, NULL};
    int batch = x->eval_batch_size > 0 ? x->eval_batch_size : x->batch_size;
    if ((rc = dm_model_build(&e.m, x, &e.dev, e.di.item, batch, x->threads, &err))) {
        fprintf(stderr, PROG ": %s\n", err.msg);
        cleanup(&e);
        return rc == DM_ERR_NOMEM ? 1 : 2;
    }
    e.model_built = 1;
    /* Refuse a layer that cannot describe itself before reading anything big. */
    if (out_path)
        for (int i = 0; i < e.m.n_layers; i++)
            if (!ex_layer_has_onnx(&e.m.layers[i])) {
                const dm_layer_inst *L = &e.m.layers[i];
                fprintf(stderr,
                        PROG ": %s: layer.%s: layer type '%s' (%s) has no ONNX description (the optional "
                             "onnx method of ABI 1.3): it cannot be exported\n",
                        x->cfg->path, L->cfg->name, L->cfg->lc->component->type_name, L->cfg->lc->path);
                cleanup(&e);
                return 2;
            }

    /* The checkpoint: this model's, by config hash and sizes (as --resume checks). */
    status = 1;
    char ckpt[4096];
    struct stat sb;
    if (stat(ckpt_arg, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if (dm_checkpoint_latest(ckpt_arg, ckpt, sizeof ckpt, &err)) goto fail;
    } else {
        snprintf(ckpt, sizeof ckpt, "%s", ckpt_arg);
    }
    dm_ckpt_state st;
    if (dm_checkpoint_read_all(ckpt, &st, &e.params, &e.opt, &e.state, &err)) goto fail;
    uint64_t hash = dm_experiment_hash(x);
    if (st.config_hash != hash) {
        dm_fail(&err, DM_ERR_INVALID,
                "%s: checkpoint was written for a different model or optimizer (config hash "
                "%016llx, %s %016llx)",
                ckpt, (unsigned long long)st.config_hash, x->cfg->path, (unsigned long long)hash);
        goto fail;
    }
    if (st.n_params != e.m.param_count || st.n_state != e.m.state_count) {
        dm_fail(&err, DM_ERR_INVALID,
                "%s: checkpoint holds %llu parameters and %llu layer-state floats, the model "
                "of %s needs %zu and %zu",
                ckpt, (unsigned long long)st.n_params, (unsigned long long)st.n_state, x->cfg->path, e.m.param_count,
                e.m.state_count);
        goto fail;
    }
    if ((rc = dm_dev_upload(&e.dev, e.m.params, e.params, e.m.param_count * sizeof(float), &err))) goto fail;
    if (e.m.state_count && (rc = dm_dev_upload(&e.dev, e.m.state, e.state, e.m.state_count * sizeof(float), &err)))
        goto fail;

    if (out_path) {
        if (!(e.g = ex_graph_new(x->name, e.di.item, EX_OPSET, &err))) goto fail;
        if ((rc = ex_graph_add_model(e.g, &e.m, e.params, e.state, &err))) {
            if (rc == DM_ERR_UNSUPPORTED || rc == DM_ERR_INVALID)
                status = 2; /* the config describes no exportable model */
            goto fail;
        }
        char step[32], hashs[32];
        snprintf(step, sizeof step, "%lld", (long long)st.step);
        snprintf(hashs, sizeof hashs, "%016llx", (unsigned long long)st.config_hash);
        if (safetensors) {
            ex_tensor_view *tv = NULL;
            int nt = 0;
            if ((rc = ex_graph_float_tensors(e.g, &tv, &nt, &err))) goto fail;
            const char *meta[] = {"format",      "pt",    "producer", "dmnist " DMNIST_VERSION,
                                  "experiment",  x->name, "step",     step,
                                  "config_hash", hashs};
            rc = ex_write_safetensors(out_path, tv, nt, meta, 5, &err);
            free(tv);
            if (rc) goto fail;
        } else {
            char doc[8192];
            snprintf(doc, sizeof doc,
                     "dmnist %s: experiment %s, %s at step %s (config hash %s); input: what the "
                     "dataset gives (N, C, H, W); outputs: logits, probabilities",
                     DMNIST_VERSION, x->name, ckpt, step, hashs);
            if ((rc = ex_graph_write_onnx(e.g, out_path, doc, &err))) goto fail;
        }
        printf("%s: %s (step %lld) -> %s (%s)\n", PROG, ckpt, (long long)st.step, out_path,
               safetensors ? "safetensors" : "ONNX, opset 13");
    }
    if (dump_path && dump_logits(&e, dump_path, batch, &err)) goto fail;
    cleanup(&e);
    return 0;

fail:
    fprintf(stderr, PROG ": %s\n", err.msg);
    cleanup(&e);
    return status;
}
