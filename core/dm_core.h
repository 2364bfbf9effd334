/* Internal API of the dmnist core (not for plugins: they include only
 * include/dmnist/ headers). Used by dmnist-run, the tools and the tests. */
#ifndef DMNIST_CORE_H
#define DMNIST_CORE_H

#include "dmnist/dmnist.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- growing arrays (core/grow.c) --------------------------------------- */

/* Room for `need` items in the realloc'ed array *items (pass a T **) of *cap
 * items of item_size bytes: unchanged when it has them, else *cap doubled
 * (from first_cap when it is 0) until it does. 0, or -1 when out of memory
 * (the array and *cap as they were). */
int dm_grow(void *items, int *cap, int need, size_t item_size, int first_cap);

/* ---- plugin registry (core/registry.c) ---------------------------------- */

typedef struct dm_registry dm_registry;

typedef struct dm_loaded_component {
    const dm_component *component;
    const dm_plugin_descriptor *plugin;
    const char *path; /* file it came from */
    int folder;       /* search folder it came from: 1 = first; 0 = loaded by file */
} dm_loaded_component;

/* A component not registered because a folder earlier on the search path
 * has one of the same type name (that one wins). */
typedef struct dm_shadowed {
    const dm_component *component;
    const dm_plugin_descriptor *plugin;
    const char *path; /* the file whose component lost */
    const char *by;   /* the file whose component won */
} dm_shadowed;

dm_registry *dm_registry_new(void);
/* dlopen one plugin file and register its components. On any refusal the
 * library is closed, nothing of it stays registered, and err says
 * "<path>: <reason>". */
int dm_registry_load_file(dm_registry *r, const char *path, dm_error *err);
/* Load every *.so in each ':'-separated directory (missing dirs are skipped;
 * a relative one is relative to the current directory). A type that an
 * earlier directory of this or an earlier call registered is shadowed, not
 * refused (dm_registry_shadowed_at); two in one directory are refused. */
/* dirs (':'-separated) with every relative entry made absolute against the
 * current directory, as the registry reads them; -1 when out is too small
 * or the current directory is unknown. */
int dm_absolute_dirs(const char *dirs, char *out, size_t size);
int dm_registry_load_path(dm_registry *r, const char *dirs, dm_error *err);
/* kind < 0 matches any kind. NULL when absent. */
const dm_loaded_component *dm_registry_find(const dm_registry *r, int kind, const char *type_name);
int dm_registry_count(const dm_registry *r);
const dm_loaded_component *dm_registry_at(const dm_registry *r, int i);
int dm_registry_shadowed_count(const dm_registry *r);
const dm_shadowed *dm_registry_shadowed_at(const dm_registry *r, int i);
void dm_registry_free(dm_registry *r);

const char *dm_kind_name(dm_kind kind);

/* ---- plugin trust and guard (core/plugin_trust.c, core/plugin_guard.c) -- */

struct stat;
/* Walk the absolute path component by component, following symlinks
 * ourselves, and refuse it ("refused: ...") when anyone but root or us could
 * change where it leads (docs/plugin-abi.md, "Which files are trusted").
 * want_dir: the path must end at a folder (a search folder), else at a
 * regular file. Fills real (the resolved path) and *st (its lstat);
 * *missing says the failure was a missing entry. */
int dm_trust_path(const char *path, int want_dir, char *real, size_t real_size, struct stat *st, int *missing,
                  dm_error *err);
/* DMNIST_PLUGIN_LOAD_TIMEOUT_S (default 60, 0 = no limit); -1 and err if malformed. */
double dm_plugin_load_timeout_s(dm_error *err);
/* Until dm_plugin_guard_end(), a crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
 * SIGABRT), an exit() or, when timeout_s > 0, a call still running after
 * timeout_s prints "<program>: <path>: crashed (...) <what>" and exits 2.
 * what is a printf format: "in dataset 'mnist' open()". */
void dm_plugin_guard_begin(const char *path, double timeout_s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void dm_plugin_guard_what(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void dm_plugin_guard_end(void);
/* One guarded call of a component's method (an int-returning expression):
 * DM_GUARDED(lc, "open", vt->open(...)). */
#define DM_GUARDED(lc, method, expr) \
    __extension__({ \
        dm_plugin_guard_begin((lc)->path, 0, "in %s '%s' %s()", dm_kind_name((lc)->component->kind), \
                              (lc)->component->type_name, method); \
        int dm_guarded_rc_ = (expr); \
        dm_plugin_guard_end(); \
        dm_guarded_rc_; \
    })

/* ---- parameter sets (core/params.c) ------------------------------------- */

/* An owned, validated dm_params for one component instance. */
typedef struct dm_param_set dm_param_set;

typedef struct dm_kv {
    const char *key;
    const char *value;
    int line;           /* INI line, 0 when not from a file, -1 from the command line */
    const char *origin; /* line -1: what the user typed it as ("--set", "BATCH_SIZE"; static) */
} dm_kv;

/* Where a section came from, for messages:
 * "configs/cnn.ini:14: layer.conv2: unknown key 'filter' (did you mean 'filters'?)".
 * file may be NULL (then no "file:line: " prefix); line is the section's. */
typedef struct dm_where {
    const char *file;
    const char *section;
    int line;
} dm_where;

/* Validate kvs against defs (type, range, choices; unknown keys are errors
 * with a "did you mean" suggestion; missing required keys are errors) and
 * fill defaults. Messages name the key's own line when it has one. */
int dm_param_set_build(const dm_param_def *defs, const dm_kv *kvs, int n, const dm_where *where, dm_param_set **out,
                       dm_error *err);
/* Format "file:line: section: " for kv (or the section when kv is NULL). */
void dm_where_format(const dm_where *where, const dm_kv *kv, char *buf, size_t size);
/* Convenience for tests and tools: spec is "key=value key=value" (spaces or commas). */
int dm_param_set_parse(const dm_param_def *defs, const char *spec, dm_param_set **out, dm_error *err);
/* Replace one key's value by a value derived from the others (e.g. the
 * resolved experiment.backend), validated against the same table entry. */
int dm_param_set_replace(dm_param_set *ps, const char *name, const char *text, dm_error *err);
/* A bool as the INI says it (1/true/yes/on, 0/false/no/off, any case):
 * 1 and *out set, or 0 when the text is neither. */
int dm_param_parse_bool(const char *s, int64_t *out);
const dm_params *dm_param_set_params(const dm_param_set *ps);
void dm_param_set_free(dm_param_set *ps);

/* Levenshtein-nearest name in defs, or NULL when nothing is close. */
const char *dm_suggest(const char *word, const char *const *candidates, int n);

/* ---- INI experiment files (core/config.c) ------------------------------- */

/* One [section] in file order, with its keys in file order. Keys set with
 * --set carry line -1. */
typedef struct dm_section {
    char *name;
    int line;   /* line of the [header]; 0 when made by --set */
    dm_kv *kvs; /* key/value strings owned by the config */
    int n, cap;
} dm_section;

typedef struct dm_config {
    char *path;           /* as given on the command line */
    char *dir;            /* its directory, for relative paths */
    dm_section *sections; /* in file order */
    int n, cap;
    int *order; /* section indices sorted by name (lookups) */
} dm_config;

/* An experiment file larger than this is refused (real ones are a few KB). */
#define DM_CONFIG_MAX_BYTES (1024 * 1024)

/* Parse an INI file. Errors: "<path>:<line>: <reason>", or "<path>: <strerror>". */
int dm_config_load(const char *path, dm_config **out, dm_error *err);
/* Apply "section.key=value" (the section may contain dots: the key is the
 * part after the last one). Creates the section or key when absent. */
int dm_config_set(dm_config *c, const char *assignment, dm_error *err);
/* The same for a value the user typed otherwise (a positional argument):
 * messages about it name `origin` (a static string) instead of "--set". */
int dm_config_set_as(dm_config *c, const char *assignment, const char *origin, dm_error *err);
dm_section *dm_config_section(const dm_config *c, const char *name);
const dm_kv *dm_section_get(const dm_section *s, const char *key);
void dm_config_free(dm_config *c);

/* ---- device memory (core/device.c) -------------------------------------- */

typedef struct dm_devctx {
    dm_device device;
    int ordinal;  /* CUDA device number */
    void *stream; /* cudaStream_t, NULL on CPU */
} dm_devctx;

/* Select the device (for CUDA: local_rank modulo the device count) and make
 * a stream. Without a usable GPU: one clear line, DM_ERR_DEVICE. */
int dm_dev_open(dm_devctx *d, dm_device device, int local_rank, dm_error *err);
void dm_dev_close(dm_devctx *d);
void *dm_dev_alloc(dm_devctx *d, size_t bytes, dm_error *err); /* zeroed, 64-byte aligned */
void dm_dev_free(dm_devctx *d, void *p);
int dm_dev_upload(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err);
int dm_dev_download(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err);
int dm_dev_copy(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err); /* both on the device */
int dm_dev_zero(dm_devctx *d, void *p, size_t bytes, dm_error *err);
int dm_dev_sync(dm_devctx *d, dm_error *err);
const char *dm_device_name(dm_device device);

/* Host staging (core/device.c). A host buffer the GPU copies to and from
 * directly: page-locked (cudaMallocHost) for CUDA, so an asynchronous copy
 * needs no bounce through a driver buffer and really is asynchronous;
 * 64-byte aligned malloc on the CPU. Zeroed. */
void *dm_host_alloc(dm_devctx *d, size_t bytes, dm_error *err);
void dm_host_free(dm_devctx *d, void *p);

/* A second stream beside d->stream (the compute stream), for copies that
 * should overlap compute. On the CPU it is a queue of memcpys, done at once
 * unless flagged below, and stream NULL (d->stream) is the host itself.
 * DM_STREAM_LATE_COPIES (CPU only, for tests): copies queued on the stream
 * land late, when an event after them is waited for or on the event's
 * second query, as a GPU's copy engine would, so that code ordering its
 * work by events can be checked on a machine without a GPU. */
enum { DM_STREAM_LATE_COPIES = 1 };
int dm_dev_stream_new(dm_devctx *d, unsigned flags, void **stream, dm_error *err);
void dm_dev_stream_free(dm_devctx *d, void *stream); /* waits for its work */

/* Copies queued on `stream`, returning at once: the host must not touch
 * the host side until an event recorded after the copy has completed. */
int dm_dev_download_async(dm_devctx *d, void *dst, const void *src, size_t bytes, void *stream, dm_error *err);
int dm_dev_upload_async(dm_devctx *d, void *dst, const void *src, size_t bytes, void *stream, dm_error *err);

/* Events order streams against each other and tell the host when queued
 * work is done (cudaEvent_t without timing). record: marks the work queued
 * on `stream` so far; stream_wait: later work on `stream` waits for the
 * mark (the host does not); query: *done = 1 when the marked work is
 * finished (never blocks); sync: the host waits for it. A new event counts
 * as done. */
typedef struct dm_dev_event dm_dev_event;
int dm_dev_event_new(dm_devctx *d, dm_dev_event **ev, dm_error *err);
void dm_dev_event_free(dm_devctx *d, dm_dev_event *ev);
int dm_dev_event_record(dm_devctx *d, dm_dev_event *ev, void *stream, dm_error *err);
int dm_dev_stream_wait(dm_devctx *d, void *stream, dm_dev_event *ev, dm_error *err);
int dm_dev_event_query(dm_devctx *d, dm_dev_event *ev, int *done, dm_error *err);
int dm_dev_event_sync(dm_devctx *d, dm_dev_event *ev, dm_error *err);

/* ---- experiments: a validated config (core/experiment.c) ---------------- */

/* One plugin instance as configured: which component, with which params. */
typedef struct dm_instance_cfg {
    const dm_loaded_component *lc;
    dm_param_set *params;      /* the plugin's own keys only */
    dm_param_set *core_params; /* the core's keys of the section (type, batch_size, ...), resolved */
    char name[64];             /* "conv1" for [layer.conv1], else the section */
    dm_where where;
} dm_instance_cfg;

/* The learning-rate schedule of [optimizer] (core/schedule.c). */
enum { DM_LR_CONSTANT = 0, DM_LR_LINEAR = 1, DM_LR_COSINE = 2 };
typedef struct dm_lr_schedule {
    int kind;             /* DM_LR_* */
    int64_t warmup_steps; /* linear warm-up from lr/W to lr */
    int64_t decay_steps;  /* 0: decay over the rest of the run */
    double min_lr_frac;   /* the decay ends at lr * min_lr_frac */
} dm_lr_schedule;

/* The schedule's name ("constant", "linear", "cosine") as DM_LR_*, or -1. */
int dm_lr_schedule_kind(const char *name);
/* The factor applied to the (scaled) lr at 0-based step `step` of
 * `total_steps`: in (0, 1]. */
double dm_lr_factor(const dm_lr_schedule *s, int64_t step, int64_t total_steps);

typedef struct dm_experiment {
    dm_config *cfg;
    dm_registry *reg;
    char plugin_path[4096]; /* the search path actually used */

    /* The core's keys of [experiment] and [train], validated against the
     * tables of dm_core_section_defs() and resolved (derived values such as
     * the default backend written back). The fields below are read from
     * them, and --dry-run prints them. */
    dm_param_set *experiment_params, *train_params;

    /* [experiment] */
    char name[128];
    uint64_t seed;
    dm_device device;
    char backend[64];
    int threads; /* CPU threads per rank */
    double timeout_s;
    int elastic;              /* survivors go on after a lost rank (core/elastic.c) */
    int min_ranks, max_ranks; /* elastic: bounds of the world (max 0: none) */
    double elastic_settle_s;  /* elastic: a new world forms after this long without arrivals */
    int elastic_check_every;  /* elastic: steps between looks for joiners */

    /* [data] */
    dm_instance_cfg data;
    int batch_size, eval_batch_size;

    /* [train] */
    int64_t total_batches; /* over all ranks, as the seed counts them */
    double epochs;         /* > 0: overrides total_batches */
    int log_every, eval_every;
    double target_accuracy; /* > 0: stop at the first evaluation at or above it */
    char checkpoint_dir[1024];
    int checkpoint_every, keep_checkpoints;
    double fusion_mb;
    int nan_skip;         /* 1: skip a step whose loss is not finite */
    int sync_check_every; /* > 0: compare parameter hashes over ranks every N steps */

    /* [optimizer] */
    dm_instance_cfg opt;
    double lr;
    int scale_lr;
    dm_lr_schedule schedule; /* warm-up and decay (core/schedule.c) */

    /* [comm] */
    dm_instance_cfg comm;

    /* [layer.*] in file order */
    dm_instance_cfg *layers;
    int n_layers;
} dm_experiment;

/* The core's own keys for each fixed section (for validation and --help). */
const dm_param_def *dm_core_section_defs(const char *section);

/* Load config (already parsed and overridden), find the plugins along the
 * search path and validate every section. On failure err holds one line. */
int dm_experiment_resolve(dm_config *cfg, const char *extra_plugin_path, dm_experiment **out, dm_error *err);
/* The search path dmnist-run uses: INI plugin_path, DMNIST_PLUGIN_PATH, then
 * the build tree (when running from it) or the install prefix. */
void dm_default_plugin_path(const char *ini_plugin_path, const char *config_dir, char *buf, size_t size);
void dm_experiment_free(dm_experiment *x);

/* ---- which job a rank belongs to (core/job.c) ---------------------------- */

/* The launcher's job id: DMNIST_JOB_ID (dmnist-run --np sets it), SLURM_JOB_ID
 * (with .SLURM_STEP_ID), PMIX_NAMESPACE or OMPI_MCA_ess_base_jobid, made one
 * plain name ([A-Za-z0-9._-]); "" when none is set. */
void dm_job_id(char *buf, size_t size);
/* Make s one plain path component and store key: [A-Za-z0-9._-], others '_'. */
void dm_plain_name(char *s);
/* FNV-1a over what every rank of one job must share: the layers, optimizer
 * and data (type and every validated key), seed, world size, step budget,
 * device and job id. Not the comm keys, threads or paths: those may differ. */
uint64_t dm_job_fingerprint(const dm_experiment *x, int world_size, const char *job_id);
/* Right after comm init, before any collective whose size depends on the
 * config: rank 0's fingerprint is broadcast (8 bytes), every rank compares,
 * and an allreduce tells all how many differ, so every rank refuses together
 * with one line naming both fingerprints and ranks. Fixed-size collectives
 * only. */
/* Tests only: DMNIST_TEST_SKIP_JOB_CHECK=1 turns the check off (and the
 * backends get no fingerprint), so that a test can start ranks that differ
 * on purpose (tests/distributed/sync_hash.sh: replicas that drift apart). */
int dm_job_check_skipped(void);
int dm_job_agree(const dm_comm_vtable *vt, void *comm, int rank, int size, uint64_t fp, dm_error *err);

/* ---- the model: layer instances over flat buffers (core/model.c) -------- */

/* A layer's non-learned state (ABI 1.1), as far as its plugin knows it: a
 * plugin built for 1.0 (vtable struct_size ending before bind_state) has no
 * state and no methods, whatever its info struct holds past its 1.0 end. */
typedef struct dm_layer_state_api {
    size_t floats; /* info.state_floats */
    int (*bind_state)(void *state, float *layer_state, dm_error *err);
    int (*init_state)(void *state, float *host_state, dm_error *err); /* NULL: zeros */
} dm_layer_state_api;

/* Read the state API of a created layer; a layer asking for state without a
 * bind_state is refused (DM_ERR_FORMAT, one line naming type_name). */
int dm_layer_state_api_get(const dm_layer_vtable *vt, const dm_layer_info *info, const char *type_name,
                           dm_layer_state_api *api, dm_error *err);

typedef struct dm_layer_inst {
    const dm_instance_cfg *cfg;
    const dm_layer_vtable *vt;
    void *state;
    dm_layer_info info;
    dm_layer_state_api sa;        /* ABI 1.1 state: the only way the core reaches it */
    dm_shape in_shape, out_shape; /* n = largest batch */
    size_t param_offset;          /* into the flat buffers, in floats */
    size_t state_offset;          /* into the flat state buffer, in floats */
    dm_tensor out, dout;          /* activations and their gradients */
    void *workspace;
} dm_layer_inst;

typedef struct dm_model {
    dm_devctx *dev;
    dm_layer_inst *layers;
    int n_layers;
    dm_shape in_shape;
    size_t param_count;    /* floats, with 16-float alignment padding */
    float *params, *grads; /* flat, on the device */
    size_t state_count;    /* floats of layer state (ABI 1.1), padded like params; 0 = none */
    float *state;          /* flat, on the device; NULL when state_count is 0 */
    float *metrics;        /* [loss_sum, correct] on the device */
    dm_tensor input;       /* the batch the data loader fills */
    int32_t *labels;       /* on the device */
} dm_model;

/* Whether every layer and the optimizer has an implementation for
 * `device`: the run's refusal (DM_ERR_UNSUPPORTED, "<where>layer type 'X'
 * has no cuda implementation"), for --dry-run, which builds on the CPU. */
int dm_model_check_device(const dm_experiment *x, dm_device device, dm_error *err);
/* Create every layer, propagating shapes, and lay out the flat buffers.
 * item: one example's shape (n ignored); max_batch: largest batch. */
int dm_model_build(dm_model *m, const dm_experiment *x, dm_devctx *dev, dm_shape item, int max_batch, int num_threads,
                   dm_error *err);
/* Rank 0's initial parameters, drawn from the seed, and the layers' initial
 * state (init_state, or zeros), into the device buffers. */
int dm_model_init_params(dm_model *m, uint64_t seed, dm_error *err);
/* Forward through every layer for n examples (input and labels filled). */
int dm_model_forward(dm_model *m, int n, int training, uint64_t step_seed, dm_error *err);
/* Called after each layer's backward, last layer first: lets the trainer
 * start a gradient bucket as soon as it is complete. */
typedef int (*dm_backward_hook)(void *user, int layer_index, dm_error *err);
int dm_model_backward(dm_model *m, int n, uint64_t step_seed, dm_backward_hook hook, void *user, dm_error *err);
/* Print the model summary table (--dry-run). */
void dm_model_summary(const dm_model *m, FILE *out);
void dm_model_free(dm_model *m);

/* ---- checkpoints (core/checkpoint.c; format in docs/checkpoints.md) ----- */

typedef struct dm_ckpt_state {
    uint64_t config_hash;     /* hash of everything that defines the model and optimizer */
    int64_t step;             /* optimizer updates done */
    int64_t epoch;            /* current epoch (0-based) */
    int64_t epoch_pos;        /* examples of this epoch's permutation already consumed */
    uint64_t seed;            /* experiment seed (all RNG streams derive from it and the step) */
    int32_t world_size;       /* ranks when written (informational: resume may re-shard) */
    uint64_t n_params, n_opt; /* floats */
    uint64_t n_state;         /* floats of layer state (format 2; 0 in a version-1 file) */
    uint32_t version;         /* format version of the file read (the writer ignores it) */
} dm_ckpt_state;

/* The largest step a checkpoint can hold: its file name has ten digits. */
#define DM_CKPT_MAX_STEP 9999999999LL

/* Atomically write dir/ckpt-<step>.dmck (temp file, fsync, rename, fsync dir)
 * and delete all but the newest `keep` of this experiment's own checkpoints
 * (exact names, regular files, same config hash; none of a later step).
 * Always the newest format version; a step over DM_CKPT_MAX_STEP is refused. */
int dm_checkpoint_write(const char *dir, const dm_ckpt_state *st, const float *params, const float *opt,
                        const float *state, int keep, char *written, size_t written_size, dm_error *err);
/* Read and verify one file (format 1 or 2): magic, version, sizes against
 * the file length, checksum. params/opt/state are allocated (free()). */
int dm_checkpoint_read_all(const char *path, dm_ckpt_state *st, float **params, float **opt, float **state,
                           dm_error *err);
/* The same, for readers that want only the parameters and optimizer state
 * (the layer state is verified and dropped). */
int dm_checkpoint_read(const char *path, dm_ckpt_state *st, float **params, float **opt, dm_error *err);
/* Is the file's position in the data (epoch_pos) inside a training split
 * of train_count examples? (read_all checks what needs no data set.) */
int dm_checkpoint_check_position(const char *path, const dm_ckpt_state *st, int64_t train_count, dm_error *err);
/* Can checkpoints be written into dir (or dir be created)? Checked at
 * start-up, so that a bad folder stops the run before its training. */
int dm_checkpoint_dir_check(const char *dir, dm_error *err);
/* Path of the newest ckpt-*.dmck in dir; DM_ERR_IO when none. */
int dm_checkpoint_latest(const char *dir, char *path, size_t size, dm_error *err);
/* FNV-1a over the model-defining parts of the experiment. */
uint64_t dm_experiment_hash(const dm_experiment *x);

/* ---- training (core/train*.c) ------------------------------------------- */

/* dmnist-run's exit codes: 0 success, 1 a failure while running, 2 a bad
 * command line, config or plugin, 3 this rank stopped because another rank
 * failed first (its message says why; the launcher blames that rank). */
#define DM_EXIT_FAILURE 1
#define DM_EXIT_CONFIG 2
#define DM_EXIT_PEER 3

typedef struct dm_train_opts {
    const char *metrics_path;     /* --metrics FILE (JSON lines), or NULL */
    const char *timeline_path;    /* --timeline FILE (Chrome trace), or NULL */
    int resume;                   /* --resume: continue from checkpoint_dir's latest */
    int dry_run;                  /* --dry-run: print config + model summary, no training */
    int progress;                 /* -1 auto (a terminal), 0 plain lines, 1 bar */
    int *exit_code;               /* out, may be NULL: on failure, DM_EXIT_CONFIG when the experiment itself
                                  * is refused (as --dry-run would), DM_EXIT_PEER when this rank stops only
                                  * because another one failed first; left alone otherwise (exit 1) */
    const char *eval_path;        /* --eval CHECKPOINT: evaluate it (dm_eval_run), or NULL */
    const char *confusion_path;   /* --confusion FILE.csv (with --eval), or NULL */
    const char *tensorboard_dir;  /* --tensorboard DIR: event files (rank 0), or NULL */
    const char *tensorboard_text; /* Markdown for its "settings" text (the command line), or NULL */
} dm_train_opts;

/* Run an experiment end to end. Returns DM_OK or fills err. */
int dm_train_run(dm_experiment *x, const dm_train_opts *opts, dm_error *err);
/* --eval: read opts->eval_path (checked as --resume checks its file), then
 * evaluate it on the test set over every rank: loss, accuracy, per-class
 * accuracy and the confusion matrix; no training step. core/train_eval.c */
int dm_eval_run(dm_experiment *x, const dm_train_opts *opts, dm_error *err);

/* ---- timeline: a Chrome trace of every step (core/timeline.c) ----------- */

/* One recorder per process (a process is one rank). Each rank streams its
 * events into "FILE.rank<R>.part"; after a barrier rank 0 joins the parts
 * into FILE. Times are dm_timeline_clock() seconds (CLOCK_MONOTONIC, like
 * the trainer's). Every call is a no-op while no timeline is open, so hot
 * paths call them unconditionally. origin: the dm_timeline_wallclock()
 * value that every rank's trace time 0 stands for (rank 0's, broadcast). */
int dm_timeline_open(const char *path, int rank, int world_size, double origin, dm_error *err);
int dm_timeline_on(void);
double dm_timeline_clock(void);
double dm_timeline_wallclock(void); /* CLOCK_REALTIME seconds */
/* args.step of the events that follow (< 0: none). */
void dm_timeline_set_step(int64_t step);
/* A span from t0 to t1 on the rank's track; the name is printf-formatted. */
void dm_timeline_span(const char *cat, double t0, double t1, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Work in flight from t0 to t1 (an allreduce between start and wait), drawn
 * on its own track; id tells overlapping ones apart. */
void dm_timeline_async(const char *cat, uint64_t id, double t0, double t1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Close this rank's part (keep = 0: delete it, the run failed). */
int dm_timeline_close(int keep, dm_error *err);
/* Rank 0, after every rank closed its part: write FILE, delete the parts. */
int dm_timeline_merge(dm_error *err);
/* ---- --tensorboard: TensorBoard event files (core/tensorboard.c) -------- */

/* One event file in DIR (created with its parents), named as TensorBoard
 * names its own: events.out.tfevents.<time>.<host>.<pid>.dmnist. Writes
 * only buffer; dm_tb_flush reports the first failed write (one line). A
 * build without protobuf-c refuses dm_tb_open with DM_ERR_UNSUPPORTED. */
typedef struct dm_tb dm_tb;
int dm_tb_open(const char *dir, dm_tb **tb, dm_error *err);
const char *dm_tb_path(const dm_tb *tb);
/* n scalars (simple_value) at one step; tb NULL: nothing. */
void dm_tb_scalars(dm_tb *tb, int64_t step, const char *const *tags, const double *values, int n);
/* A text value (TensorBoard's text plugin shows it as Markdown). */
void dm_tb_text(dm_tb *tb, int64_t step, const char *tag, const char *markdown);
int dm_tb_flush(dm_tb *tb, dm_error *err);
int dm_tb_close(dm_tb *tb, dm_error *err);
/* CRC-32C (Castagnoli), as TFRecord frames use it. */
uint32_t dm_crc32c(const void *data, size_t n);

/* A JSON string's body: quotes, backslashes and control characters escaped. */
void dm_put_json_string(FILE *f, const char *s);

#ifdef __cplusplus
}
#endif
#endif
