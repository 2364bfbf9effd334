/* The trainer's private state and the functions its files share: the loop
 * (train.c), communication and gradient buckets (train_comm.c), batches and
 * evaluation (train_data.c), the numeric guard (train_guard.c), progress,
 * metrics and timeline output (train_report.c), checkpoints
 * (train_ckpt.c), set-up and tear-down (train_setup.c). Not installed; the
 * tr_ prefix keeps these names apart from the public dm_ ones. */
#ifndef DMNIST_TRAINER_H
#define DMNIST_TRAINER_H

#include "dm_core.h"
#include "elastic.h"
#include "launch.h"

#include <time.h>

typedef struct bucket {
    size_t lo, hi;   /* float range of the flat gradient buffer */
    int first_layer; /* lowest layer index in it: start after its backward */
    dm_comm_request *req;
    double t_start; /* when it was started (for --timeline) */
    /* host staging (trainer.stage) */
    dm_dev_event *copied; /* its copy to the host mirror has landed */
    int copying;          /* copy queued, allreduce not started yet */
    double t_copy;        /* when the copy was queued (for --timeline) */
} bucket;

typedef struct trainer {
    dm_experiment *x;
    const dm_train_opts *opts;
    dm_devctx dev;
    int dev_open;

    const dm_comm_vtable *cvt;
    void *comm;
    dm_comm_info ci;
    dm_comm_config cc; /* what the backend was started with (this world's) */
    dm_comm_ids ids;   /* its strings: the launcher's job id, the rendezvous */

    /* experiment.elastic (train_elastic.c); el is NULL otherwise */
    dm_elastic *el;
    int in_step;                      /* a step is in flight: a failure now undoes it */
    int64_t commit_epoch, commit_pos; /* the data cursor after the last completed step */
    int64_t budget;                   /* global batches to train: a world change re-divides what is left */
    int64_t done_batches;             /* global batches trained */
    int64_t done0;                    /* ... when this process started training */
    FILE *data_trace;                 /* DMNIST_TEST_TRACE_DATA: the examples of each completed step */
    int world_changes;
    int left_out;           /* the job ended (or went on) without this process */
    char round_job_id[160]; /* "<job>.e<round>": this world's id for the backend */
    char round_fingerprint[17];

    const dm_dataset_vtable *dvt;
    void *data;
    dm_dataset_info di;

    dm_model m;
    int model_built;

    const dm_optimizer_vtable *ovt;
    void *opt;
    dm_optimizer_info oi;
    float *opt_state;
    size_t n_opt;

    float *h_images;
    int32_t *h_labels;
    int64_t *idx;
    int64_t *perm;
    int64_t perm_epoch;
    /* device = cuda: every example on the GPU, uploaded once (NULL when it
     * did not fit: then batches are copied from the host each step) */
    float *d_images[2]; /* by dm_split: (count, item) */
    int32_t *d_labels[2];
    int64_t *d_perm;     /* this epoch's permutation */
    float *d_scratch;    /* staging for device-only backends (nccl) */
    float *state_backup; /* nan_policy = skip: the layer state before the step */
    size_t d_scratch_n;
    int64_t epoch, epoch_pos;
    int64_t step;        /* optimizer updates done */
    int64_t total_steps; /* this rank's steps in the run */
    int64_t logged_step; /* the step of the last log line (or start, or world change) */
    int64_t step0;       /* the step the run started from (> 0 when resumed) */
    uint64_t rank_seed;  /* this rank's dropout stream */
    double lr_scale;     /* the ranks (scale_lr) or 1 */
    float lr;            /* the last update's learning rate */

    bucket *buckets;
    int n_buckets;
    /* Host staging, for a backend that takes host memory only (mpi, gloo)
     * with device = cuda; see train_comm.c. */
    int stage;                      /* device buffers go through h_mirror */
    float *h_mirror;                /* pinned host twin of the gradient buffer */
    size_t h_mirror_n;              /* its floats (param_count) */
    void *copy_stream;              /* device<->host copies, beside dev.stream */
    dm_dev_event *computed;         /* compute stream: the work queued so far */
    dm_dev_event *copies;           /* copy stream: the copies queued so far */
    int next_start;                 /* staged: next bucket to start its allreduce */
    double comm_wait_s;             /* since last log */
    float checked_loss_sum;         /* metrics[0] at the last NaN/Inf check */
    int64_t checked_step;           /* the step of that check */
    int64_t params_checked_step;    /* parameters last seen finite after this step */
    double t_fwd_bwd_s;             /* forward + backward time since last log */
    int64_t images_since_log;       /* over all ranks */
    double t_start;                 /* dm_train_run began */
    double t_train0;                /* the first step began */
    double t_log;                   /* the last log line (evaluations not counted) */
    int target_reached;             /* an evaluation reached train.target_accuracy: stop */
    double target_loss, target_acc; /* that evaluation's results */
    FILE *metrics;
    dm_tb *tb; /* --tensorboard (rank 0) */

    int bar;          /* rank 0 draws a progress bar */
    int bar_shown;    /* the bar is on the terminal's last line */
    double bar_drawn; /* when it was last redrawn */
    double bar_loss;  /* last logged loss, < 0 before the first */
} trainer;

/* When each phase of a step ended (now_s()), for the timeline. */
typedef struct tr_step_clock {
    double start, data, forward, backward, comm, guard, end;
} tr_step_clock;

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int rank0(const trainer *t) { return t->ci.rank == 0; }

/* Say which exit code this run's failure deserves (dm_train_opts.exit_code). */
static inline int exit_as(const trainer *t, int code)
{
    if (t->opts && t->opts->exit_code) *t->opts->exit_code = code;
    return 1;
}

/* ---- train_comm.c: collectives, gradient buckets, host staging ------------ */

/* One line for a backend's error: its own message already starts with the
 * backend's name ("gloo: rank 0: ...") or gets it added here. */
int tr_comm_fail(const trainer *t, dm_error *err, int rc, const char *msg);
/* A device buffer of at least `bytes` (staging for device-only backends). */
float *tr_scratch(trainer *t, size_t bytes, dm_error *err);
int tr_allreduce_host(trainer *t, float *buf, size_t n, dm_reduce_op op, dm_error *err);
int tr_broadcast_host(trainer *t, void *buf, size_t bytes, dm_error *e);
int tr_broadcast_dev(trainer *t, void *buf, size_t bytes, dm_error *err);
int tr_build_buckets(trainer *t, dm_error *err);
int tr_setup_staging(trainer *t, dm_error *err);
/* dm_model_backward's hook: starts each bucket its layer completes. */
int tr_backward_hook(void *user, int layer, dm_error *err);
int tr_wait_buckets(trainer *t, dm_error *err);
/* Layer state (running statistics) from rank 0 to every rank. */
int tr_sync_layer_state(trainer *t, dm_error *err);

/* ---- train_data.c: batches, the permutation, dataset upload, evaluation --- */

int tr_upload_dataset(trainer *t, dm_error *err);
void tr_open_data_trace(trainer *t);
void tr_trace_data(trainer *t);
int tr_next_train_batch(trainer *t, dm_error *err);
/* Test loss and accuracy over every rank (identical on any number of ranks);
 * confusion: NULL, or classes x classes floats to fill (rows: true class). */
int tr_evaluate(trainer *t, double *loss, double *acc, float *confusion, dm_error *err);

/* ---- train_guard.c: NaN/Inf policy, parameter checks, the sync check ----- */

int tr_guard_backup_state(trainer *t, dm_error *err);
/* Put back the layer state tr_guard_backup_state kept (none kept: nothing). */
int tr_guard_restore_state(trainer *t, dm_error *err);
int tr_guard_step(trainer *t, int *skipped, dm_error *err);
int tr_check_params(trainer *t, dm_error *err);
int tr_sync_check(trainer *t, dm_error *err);

/* ---- train_report.c: start line, log lines, metrics, bar, timeline -------- */

void tr_report_start(const trainer *t);
void tr_report_target(trainer *t, double acc);
int tr_report_open(trainer *t, dm_error *err);
int tr_open_tensorboard(trainer *t, dm_error *err);
void tr_timeline_step(const trainer *t, const tr_step_clock *c);
int tr_log_step(trainer *t, dm_error *err);
void tr_report_eval(trainer *t, double loss, double acc);
void tr_report_final(const trainer *t, double test_loss, double test_acc, double train_s);
/* --eval's report: the lines, --confusion's CSV and --metrics' eval event. */
int tr_report_checkpoint_eval(trainer *t, double loss, double acc, const float *cm, int classes, double secs,
                              dm_error *err);
void tr_bar_clear(trainer *t);
void tr_bar_draw(trainer *t, int force);
int tr_open_timeline(trainer *t, dm_error *err);
int tr_finish_timeline(trainer *t, int ok, dm_error *err);

/* ---- train_ckpt.c: save and resume ------------------------------------------ */

int tr_save_checkpoint(trainer *t, dm_error *err);
int tr_resume(trainer *t, dm_error *err);

/* ---- train_elastic.c: a world that loses or gains ranks ------------------ */

/* Set up: form the first world (elastic.h) and start the backend in it. */
int tr_elastic_setup(trainer *t, dm_error *err);
/* Everything a rank needs to go on from rank 0's state: parameters,
 * optimizer state, layer state and (elastic) the step counters. */
int tr_state_sync(trainer *t, dm_error *err);
/* At a step boundary: rank 0 says whether someone waits to join, and if so
 * every rank re-forms the world with them. */
int tr_elastic_boundary(trainer *t, dm_error *err);
/* After a failure rc: DM_OK when the survivors formed a new world and
 * agreed on the state (the step in flight undone), else rc. */
int tr_elastic_recover(trainer *t, int rc, dm_error *err);
/* The run ended: processes waiting to join are told. */
void tr_elastic_finish(trainer *t);

/* ---- train_setup.c ---------------------------------------------------------- */

/* Start the backend with t->cc and check every rank runs the same job. */
int tr_comm_open(trainer *t, dm_error *err);
int tr_setup(trainer *t, dm_error *err);
void tr_teardown(trainer *t);

#endif
