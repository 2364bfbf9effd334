/* dmnist-run: train an experiment described by an INI file.
 *
 *   dmnist-run [options] CONFIG.ini [TOTAL_BATCHES [BATCH_SIZE]]
 *   dmnist-run --eval CHECKPOINT [--confusion FILE.csv] [options] CONFIG.ini
 *
 * The positionals keep the seed script's command line working. Exit codes:
 * 0 success, 1 failure while running, 2 bad command line, config or plugin,
 * 3 a rank that stopped because another rank failed first (dm_core.h). */
#define _GNU_SOURCE
#include "dm_core.h"
#include "dmnist/cpu_isa.h"
#include "launch.h"
#include "main_plugins.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: dmnist-run [options] CONFIG.ini [TOTAL_BATCHES [BATCH_SIZE]]\n"
            "       dmnist-run --eval CHECKPOINT [--confusion FILE.csv] [options] CONFIG.ini\n"
            "\n"
            "Train the experiment in CONFIG.ini. TOTAL_BATCHES and BATCH_SIZE override\n"
            "train.total_batches and data.batch_size, as in the original script.\n"
            "With --eval, train nothing: evaluate CHECKPOINT (a ckpt-*.dmck file of this\n"
            "experiment) on the test set: loss, accuracy, per-class accuracy, confusion matrix.\n"
            "\n"
            "options:\n"
            "  --set SECTION.KEY=VALUE  override a key (repeatable), e.g. --set optimizer.lr=0.002\n"
            "  --np N                   start N local worker processes (gloo: own rendezvous; mpi: via mpirun)\n"
            "  --max-restarts K         with --np: start lost ranks again (experiment.elastic: they join the\n"
            "                           running job), else the failed job from its newest checkpoint; K in all\n"
            "  --nodes M --node-rank I  with --np N: this host's agent of M, its ranks I*N..I*N+N-1 of M*N, through\n"
            "                           DMNIST_RENDEZVOUS and DMNIST_JOB_ID (the same on every host)\n"
            "  --resume                 continue from the latest checkpoint in train.checkpoint_dir\n"
            "  --eval CHECKPOINT        evaluate this checkpoint on the test set (any --np), no training\n"
            "  --confusion FILE         with --eval: write the confusion matrix as CSV (scripts/plot-confusion\n"
            "                           draws it as a PNG)\n"
            "  --metrics FILE           write JSON lines: one per logged step, one per evaluation, a final one\n"
            "  --timeline FILE          write a Chrome trace (chrome://tracing, Perfetto) of every step\n"
            "  --tensorboard DIR        write TensorBoard event files into DIR (tensorboard --logdir DIR)\n"
            "  --dry-run                print the resolved configuration and a model summary, then exit\n"
            "  --list-plugins [CONFIG.ini]  list every plugin found on the search path (with CONFIG.ini's\n"
            "                           experiment.plugin_path first), and those shadowed by an earlier folder\n"
            "  --help-plugin TYPE [CONFIG.ini]  describe a plugin type's keys (or a core section: experiment,\n"
            "                           data, train, optimizer), found as CONFIG.ini's run would find it\n"
            "  --plugin-path DIRS       search these ':'-separated folders first (relative: to the current\n"
            "                           directory, as in $DMNIST_PLUGIN_PATH)\n"
            "  --progress / --no-progress  force the progress bar on or off (default: on a terminal)\n"
            "  --version, --help\n"
            "\n"
            "Plugins are searched in: --plugin-path, experiment.plugin_path, $DMNIST_PLUGIN_PATH, then the\n"
            "build tree (when run from it) or the install prefix's lib/dmnist/plugins. When two folders\n"
            "hold the same type, the first one wins.\n");
}

/* A validated value as the INI file would say it. */
static void print_value(const dm_param_value *v)
{
    switch (v->type) {
    case DM_PARAM_INT: printf("%s = %lld\n", v->name, (long long)v->i); break;
    case DM_PARAM_FLOAT: printf("%s = %g\n", v->name, v->f); break;
    case DM_PARAM_BOOL: printf("%s = %s\n", v->name, v->i ? "true" : "false"); break;
    default: printf("%s = %s\n", v->name, v->s); break;
    }
}

/* One section: the core's keys in its table's order (dm_core_section_defs,
 * resolved values), then the plugin's own keys as given or defaulted. */
static void print_section(const char *name, const char *table, const dm_param_set *core, const dm_instance_cfg *inst)
{
    printf("[%s]\n", name);
    const dm_params *cp = dm_param_set_params(core);
    for (const dm_param_def *d = dm_core_section_defs(table); d && d->name; d++)
        print_value(dm_param_find(cp, d->name));
    const dm_params *p = inst ? dm_param_set_params(inst->params) : NULL;
    for (int k = 0; p && k < p->count; k++) printf("%s = %s\n", p->values[k].name, p->values[k].s);
}

static void print_config(const dm_experiment *x)
{
    printf("; resolved configuration of %s (defaults filled in)\n", x->cfg->path);
    print_section("experiment", "experiment", x->experiment_params, NULL);
    printf("\n");
    print_section("data", "data", x->data.core_params, &x->data);
    printf("\n");
    print_section("optimizer", "optimizer", x->opt.core_params, &x->opt);
    printf("\n");
    print_section("comm", "comm", NULL, &x->comm);
    printf("\n");
    print_section("train", "train", x->train_params, NULL);
    for (int i = 0; i < x->n_layers; i++) {
        char name[96];
        snprintf(name, sizeof name, "layer.%s", x->layers[i].name);
        printf("\n");
        print_section(name, "layer.", x->layers[i].core_params, &x->layers[i]);
    }
    printf("\n; plugin path: %s\n\n", x->plugin_path);
}

static int dry_run(dm_experiment *x)
{
    print_config(x);
    /* The summary is built on the CPU, but the run would use x->device:
     * refuse what it would refuse, with its message and exit status. */
    dm_error derr = {0};
    if (dm_model_check_device(x, x->device, &derr)) {
        fprintf(stderr, "dmnist-run: %s\n", derr.msg);
        return 2;
    }
    /* Build the model on the CPU for the summary: shapes and counts do not
     * depend on the device. The dataset gives the input shape. */
    dm_error err = {0};
    const dm_dataset_vtable *dvt = x->data.lc->component->vtable;
    dm_dataset_config dc = {sizeof dc, x->seed, x->cfg->dir};
    dm_dataset_info di = {sizeof di, {0, 0}, {1, 1, 28, 28}, 10};
    void *ds = NULL;
    if (DM_GUARDED(x->data.lc, "open", dvt->open(dm_param_set_params(x->data.params), &dc, &ds, &di, &err))) {
        fprintf(stderr, "dmnist-run: %s\n", err.msg);
        return 1;
    }
    dvt->close(ds);
    dm_devctx dev = {DM_DEVICE_CPU, 0, NULL};
    dm_model m;
    if (dm_model_build(&m, x, &dev, di.item, x->batch_size, 1, &err)) {
        fprintf(stderr, "dmnist-run: %s\n", err.msg);
        return 2;
    }
    dm_model_summary(&m, stdout);
    dm_model_free(&m);
    return 0;
}

/* --tensorboard's "settings" text: what this command line sets, as a
 * Markdown table (a sweep's grid point is its --set values). */
static char *settings_markdown(const char *config, char **pos, int npos, const char **sets, int n_sets)
{
    char *md = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&md, &n);
    if (!m) return NULL;
    fprintf(m, "| setting | value |\n|---|---|\n| config | %s |\n", config);
    for (int i = 0; i < npos; i++) fprintf(m, "| %s | %s |\n", i ? "data.batch_size" : "train.total_batches", pos[i]);
    for (int i = 0; i < n_sets; i++) {
        const char *eq = strchr(sets[i], '=');
        if (eq) fprintf(m, "| %.*s | %s |\n", (int)(eq - sets[i]), sets[i], eq + 1);
    }
    fclose(m);
    return md;
}

/* What the command line asked for. */
typedef struct cli {
    const char **sets; /* --set values, in order */
    int n_sets, np, list, dry;
    int max_restarts;     /* --max-restarts (needs --np) */
    int nodes, node_rank; /* --nodes M --node-rank I (need --np); node_rank -1: not given */
    int npos;             /* positionals: CONFIG.ini [TOTAL_BATCHES [BATCH_SIZE]] */
    const char *help_type, *extra_path;
    char abs_plugin_path[8192];
    dm_train_opts topts;
} cli;

/* Options into c; returns -1 to go on, else the exit code (0 after --help
 * or --version, 2 for a bad option). */
static int parse_options(int argc, char **argv, cli *c)
{
    enum {
        OPT_SET = 256,
        OPT_DRY,
        OPT_LIST,
        OPT_HELP_PLUGIN,
        OPT_VERSION,
        OPT_METRICS,
        OPT_RESUME,
        OPT_NP,
        OPT_TIMELINE,
        OPT_PLUGIN_PATH,
        OPT_PROGRESS,
        OPT_NO_PROGRESS,
        OPT_EVAL,
        OPT_CONFUSION,
        OPT_TENSORBOARD,
        OPT_MAX_RESTARTS,
        OPT_NODES,
        OPT_NODE_RANK
    };
    static const struct option longopts[] = {{"set", required_argument, NULL, OPT_SET},
                                             {"dry-run", no_argument, NULL, OPT_DRY},
                                             {"list-plugins", no_argument, NULL, OPT_LIST},
                                             {"help-plugin", required_argument, NULL, OPT_HELP_PLUGIN},
                                             {"help", no_argument, NULL, 'h'},
                                             {"version", no_argument, NULL, OPT_VERSION},
                                             {"metrics", required_argument, NULL, OPT_METRICS},
                                             {"resume", no_argument, NULL, OPT_RESUME},
                                             {"np", required_argument, NULL, OPT_NP},
                                             {"max-restarts", required_argument, NULL, OPT_MAX_RESTARTS},
                                             {"nodes", required_argument, NULL, OPT_NODES},
                                             {"node-rank", required_argument, NULL, OPT_NODE_RANK},
                                             {"timeline", required_argument, NULL, OPT_TIMELINE},
                                             {"plugin-path", required_argument, NULL, OPT_PLUGIN_PATH},
                                             {"progress", no_argument, NULL, OPT_PROGRESS},
                                             {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
                                             {"eval", required_argument, NULL, OPT_EVAL},
                                             {"confusion", required_argument, NULL, OPT_CONFUSION},
                                             {"tensorboard", required_argument, NULL, OPT_TENSORBOARD},
                                             {NULL, 0, NULL, 0}};
    dm_train_opts *t = &c->topts;
    int o;
    opterr = 0;
    while ((o = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) { /* ":": a missing value returns ':' */
        switch (o) {
        case OPT_SET: c->sets[c->n_sets++] = optarg; break;
        case OPT_DRY: c->dry = 1; break;
        case OPT_LIST: c->list = 1; break;
        case OPT_HELP_PLUGIN: c->help_type = optarg; break;
        case 'h': usage(stdout); return 0;
        case OPT_VERSION: {
            char isa[512];
            dm_cpu_isa_describe(isa, sizeof isa); /* what the layer plugins' CPU kernels pick */
            printf("dmnist-run %s (plugin ABI %d.%d)\n%s\n", DMNIST_VERSION, DM_ABI_MAJOR, DM_ABI_MINOR, isa);
            return 0;
        }
        case OPT_METRICS: t->metrics_path = optarg; break;
        case OPT_RESUME: t->resume = 1; break;
        case OPT_NP: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 4096) {
                fprintf(stderr, "dmnist-run: --np %s: expected a number of processes from 1 to 4096\n", optarg);
                return 2;
            }
            c->np = (int)v;
            break;
        }
        case OPT_MAX_RESTARTS: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (!optarg[0] || *end || v < 0 || v > 1000) {
                fprintf(stderr, "dmnist-run: --max-restarts %s: expected a number of restarts from 0 to 1000\n",
                        optarg);
                return 2;
            }
            c->max_restarts = (int)v;
            break;
        }
        case OPT_NODES:
        case OPT_NODE_RANK: {
            char *end;
            long v = strtol(optarg, &end, 10);
            long lo = o == OPT_NODES ? 1 : 0;
            if (!optarg[0] || *end || v < lo || v > 4096) {
                fprintf(stderr, "dmnist-run: %s %s: expected a number from %ld to 4096\n",
                        o == OPT_NODES ? "--nodes" : "--node-rank", optarg, lo);
                return 2;
            }
            if (o == OPT_NODES) c->nodes = (int)v;
            else c->node_rank = (int)v;
            break;
        }
        case OPT_TIMELINE: t->timeline_path = optarg; break;
        case OPT_PLUGIN_PATH:
            if (dm_absolute_dirs(optarg, c->abs_plugin_path, sizeof c->abs_plugin_path)) {
                fprintf(stderr, "dmnist-run: --plugin-path %s: too long, or the current directory is unknown\n",
                        optarg);
                return 2;
            }
            c->extra_path = c->abs_plugin_path;
            break;
        case OPT_PROGRESS: t->progress = 1; break;
        case OPT_NO_PROGRESS: t->progress = 0; break;
        case OPT_EVAL: t->eval_path = optarg; break;
        case OPT_CONFUSION: t->confusion_path = optarg; break;
        case OPT_TENSORBOARD: t->tensorboard_dir = optarg; break;
        case ':': fprintf(stderr, "dmnist-run: option %s needs a value (see --help)\n", argv[optind - 1]); return 2;
        default: fprintf(stderr, "dmnist-run: unknown option '%s' (see --help)\n", argv[optind - 1]); return 2;
        }
    }
    c->npos = argc - optind;
    return -1;
}

/* The positionals a training run (or --eval) takes; -1 when they fit, else 2. */
static int check_positionals(const cli *c)
{
    const dm_train_opts *t = &c->topts;
    if (c->npos < 1 || c->npos > 3) {
        fprintf(stderr,
                c->npos < 1 ? "dmnist-run: missing CONFIG.ini (see --help)\n"
                            : "dmnist-run: too many arguments: expected CONFIG.ini [TOTAL_BATCHES [BATCH_SIZE]]\n");
        return 2;
    }
    if (c->max_restarts > 0 && c->np == 0) {
        fprintf(stderr, "dmnist-run: --max-restarts needs --np N (it restarts the ranks that dmnist-run starts)\n");
        return 2;
    }
    if ((c->nodes > 0 || c->node_rank >= 0) && (c->np == 0 || c->nodes == 0 || c->node_rank < 0)) {
        fprintf(stderr, "dmnist-run: --nodes M and --node-rank I go together, with --np N (ranks on this host)\n");
        return 2;
    }
    /* --eval trains nothing: options and positionals that shape a training run are refused. */
    const char *clash = !t->eval_path ? (t->confusion_path ? "--confusion needs --eval CHECKPOINT" : NULL)
        : t->resume                   ? "--eval and --resume exclude each other"
        : t->timeline_path            ? "--timeline traces training steps: not with --eval"
        : c->npos > 1                 ? "--eval takes CONFIG.ini only (no TOTAL_BATCHES or BATCH_SIZE)"
        : !t->eval_path[0]            ? "--eval needs a checkpoint file"
                                      : NULL;
    if (clash) {
        fprintf(stderr, "dmnist-run: %s (see --help)\n", clash);
        return 2;
    }
    return -1;
}

/* The config file, then the positionals as the seed script took them, then
 * --set in order. Returns 0, or the exit code after printing why: 2 for a bad
 * file or value, 1 for running out of memory while reading them. */
static int load_config(const cli *c, char *const *pos, dm_config **out)
{
    dm_error err = {0};
    dm_config *cfg = NULL;
    int rc = dm_config_load(pos[0], &cfg, &err);
    char buf[64];
    for (int i = 1; !rc && i < c->npos; i++) {
        const char *v = pos[i], *what = i == 1 ? "TOTAL_BATCHES" : "BATCH_SIZE";
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (!v[0] || *end || x < 1 || errno == ERANGE) {
            fprintf(stderr, "dmnist-run: %s '%s' must be a positive integer%s\n", what, v,
                    errno == ERANGE ? " (this one is too large)" : "");
            dm_config_free(cfg);
            return 2;
        }
        snprintf(buf, sizeof buf, i == 1 ? "train.total_batches=%lld" : "data.batch_size=%lld", x);
        rc = dm_config_set_as(cfg, buf, what, &err); /* later messages name the positional, not a --set */
    }
    for (int i = 0; !rc && i < c->n_sets; i++) rc = dm_config_set(cfg, c->sets[i], &err);
    if (rc) {
        fprintf(stderr, "dmnist-run: %s\n", err.msg);
        dm_config_free(cfg);
        return err.code == DM_ERR_NOMEM ? 1 : 2;
    }
    *out = cfg;
    return 0;
}

int main(int argc, char **argv)
{
    static cli c = {.topts = {NULL, NULL, 0, 0, -1, NULL, NULL, NULL, NULL, NULL}, .node_rank = -1};
    if (!(c.sets = calloc((size_t)argc + 1, sizeof *c.sets))) {
        fprintf(stderr, "dmnist-run: out of memory\n");
        return 1;
    }
    int rc = parse_options(argc, argv, &c);
    if (rc < 0 && (c.list || c.help_type)) {
        if (c.npos > 1) {
            fprintf(stderr, "dmnist-run: too many arguments: %s takes at most CONFIG.ini\n",
                    c.list ? "--list-plugins" : "--help-plugin TYPE");
            rc = 2;
        } else {
            const char *config = c.npos == 1 ? argv[optind] : NULL;
            rc = c.list ? dm_cli_list_plugins(c.extra_path, config)
                        : dm_cli_help_plugin(c.help_type, c.extra_path, config);
        }
    }
    if (rc < 0) rc = check_positionals(&c);
    if (rc < 0 && c.np > 0) { /* the launcher re-executes this program N times (or mpirun does) */
        dm_launch_opts lo = {c.np, c.max_restarts, c.nodes, c.nodes > 0 ? c.node_rank : 0};
        rc = dm_launch(argc, argv, &lo, argv[optind], (const char *const *)c.sets, c.n_sets);
    }
    dm_config *cfg = NULL;
    if (rc < 0 && (rc = load_config(&c, argv + optind, &cfg)) == 0) rc = -1;
    char *tb_text = NULL;
    if (rc < 0 && c.topts.tensorboard_dir)
        c.topts.tensorboard_text = tb_text =
            settings_markdown(argv[optind], argv + optind + 1, c.npos - 1, c.sets, c.n_sets);
    free(c.sets);
    if (rc >= 0) return rc;

    dm_set_thread_env(cfg);
    dm_error err = {0};
    dm_experiment *x = NULL;
    if (dm_experiment_resolve(cfg, c.extra_path, &x, &err)) {
        fprintf(stderr, "dmnist-run: %s\n", err.msg);
        rc = err.code == DM_ERR_NOMEM ? 1 : 2; /* out of memory is a failure while running */
    } else if (c.dry) {
        rc = dry_run(x);
    } else {
        int code = DM_EXIT_FAILURE;
        c.topts.exit_code = &code;
        rc = (c.topts.eval_path ? dm_eval_run(x, &c.topts, &err) : dm_train_run(x, &c.topts, &err)) ? code : 0;
        if (rc) fprintf(stderr, "dmnist-run: %s\n", err.msg);
    }
    dm_experiment_free(x);
    dm_config_free(cfg);
    free(tb_text);
    return rc;
}
