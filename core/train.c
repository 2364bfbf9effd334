/* The training loop, with the seed's semantics:
 *  - total_batches counts batches over all ranks; each of N ranks runs
 *    total_batches / N steps of its own batch_size (or `epochs` epochs);
 *  - rank 0 draws the initial parameters; they, the optimizer state and the
 *    layers' state (ABI 1.1: running statistics) are broadcast, so every
 *    rank starts identical; the layer state, which each rank's forward
 *    updates from its own batch, is broadcast again after every step;
 *  - each epoch is one permutation of the training set drawn from the seed;
 *    a step consumes N*batch examples of it, rank r taking the r-th slice;
 *  - gradients are averaged over ranks in buckets, each started as soon as
 *    the backward pass has produced it; the optimizer waits for all;
 *  - the learning rate is lr * N (scale_lr) times the schedule's factor
 *    (warm-up, then constant or a linear or cosine decay: schedule.c);
 *  - logged loss, accuracy and images/s, and the test evaluation, are
 *    combined over ranks before rank 0 prints them.
 * This file is the loop; its parts live in train_*.c, named for what they
 * do (see trainer.h).
 */
#define _GNU_SOURCE
#include "trainer.h"

#include <math.h>

/* Steps from total_batches (over all ranks) or from epochs. */
static int count_steps(trainer *t, dm_error *err)
{
    const dm_experiment *x = t->x;
    int N = t->ci.size;
    int64_t per_epoch = t->di.count[DM_SPLIT_TRAIN] / ((int64_t)x->batch_size * N);
    t->total_steps = x->epochs > 0 ? (int64_t)ceil(x->epochs * (double)per_epoch) : x->total_batches / N;
    t->budget = t->total_steps * N;
    if (t->total_steps < 1)
        return dm_fail(err, DM_ERR_INVALID, "%s: train: total_batches = %lld is fewer than the %d ranks", x->cfg->path,
                       (long long)x->total_batches, N);
    return DM_OK;
}

/* Identical start everywhere: rank 0 draws (or, --resume, reads a
 * checkpoint), everyone receives. Then the outputs open. A process that
 * joins a running elastic job takes the running state instead. */
static int start(trainer *t, dm_error *err)
{
    const dm_experiment *x = t->x;
    const int joining = t->el && t->el->round > 0;
    tr_report_start(t);
    int rc = rank0(t) && !joining ? dm_model_init_params(&t->m, x->seed, err) : DM_OK;
    if (!rc) rc = dm_dev_sync(&t->dev, err);
    if (!rc && t->opts && t->opts->resume && !joining) rc = tr_resume(t, err);
    t->done_batches = t->step * t->ci.size;
    t->commit_epoch = t->epoch;
    t->commit_pos = t->epoch_pos;
    if (!rc) rc = tr_state_sync(t, err);
    t->done0 = t->done_batches;
    tr_open_data_trace(t);
    if (!rc) rc = dm_dev_zero(&t->dev, t->m.metrics, 2 * sizeof(float), err);
    if (!rc) rc = tr_report_open(t, err);
    if (rc) return rc;
    t->lr_scale = x->scale_lr ? (double)t->ci.size : 1.0;
    t->t_log = t->t_train0 = now_s();
    t->step0 = t->logged_step = t->step;
    t->rank_seed = dm_hash64(x->seed, 0xD0D0ull + (uint64_t)t->ci.rank);
    t->checked_step = t->step; /* a resumed run starts checking from its step */
    t->params_checked_step = t->step;
    t->checked_loss_sum = 0;
    return DM_OK;
}

/* The optimizer's pass over the flat buffers, at this step's learning rate:
 * lr, times the ranks (scale_lr), times the schedule's factor. */
static int update(trainer *t, dm_error *err)
{
    double f = dm_lr_factor(&t->x->schedule, t->step, t->total_steps);
    dm_opt_step_ctx sc = {sizeof sc, t->step + 1, (float)(t->x->lr * t->lr_scale * f), t->dev.stream};
    t->lr = sc.lr;
    dm_error e = {0};
    int rc = t->ovt->step(t->opt, &sc, t->m.params, t->m.grads, t->m.param_count, &e);
    if (rc) return dm_fail(err, rc, "optimizer: step %lld: %s", (long long)t->step + 1, e.msg);
    return DM_OK;
}

/* One step: this rank's batch, forward, backward (each gradient bucket's
 * allreduce starts as soon as backward has produced it), wait for the
 * buckets, the NaN/Inf guard, update. *skipped: the guard dropped the step. */
static int train_step(trainer *t, int *skipped, dm_error *err)
{
    const int b = t->x->batch_size;
    tr_step_clock c = {.start = now_s()};
    dm_timeline_set_step(t->step + 1);
    int rc = tr_next_train_batch(t, err);
    if (rc) return rc;
    c.data = now_s();
    t->in_step = 1;
    uint64_t step_seed = dm_hash64(t->rank_seed, (uint64_t)t->step);
    if ((rc = tr_guard_backup_state(t, err))) return rc;
    if ((rc = dm_model_forward(&t->m, b, 1, step_seed, err))) return rc;
    c.forward = now_s();
    if ((rc = dm_model_backward(&t->m, b, step_seed, tr_backward_hook, t, err))) return rc;
    c.backward = now_s();
    if ((rc = tr_wait_buckets(t, err))) return rc;
    if ((rc = tr_sync_layer_state(t, err))) return rc;
    c.comm = now_s();
    if ((rc = tr_guard_step(t, skipped, err))) return rc;
    if (*skipped) {
        t->in_step = 0;
        t->commit_epoch = t->epoch;
        t->commit_pos = t->epoch_pos;
        return DM_OK;
    }
    c.guard = now_s(); /* after the loss check, before the update */
    if ((rc = update(t, err))) return rc;
    c.end = now_s();
    tr_timeline_step(t, &c);
    t->step++;
    t->done_batches += t->ci.size;
    t->in_step = 0; /* committed: a failure from here on keeps this step */
    tr_trace_data(t);
    t->commit_epoch = t->epoch;
    t->commit_pos = t->epoch_pos;
    t->t_fwd_bwd_s += c.backward - c.data;
    t->images_since_log += (int64_t)b * t->ci.size;
    return DM_OK;
}

static int every(int64_t step, int n) { return n > 0 && step % n == 0; }

/* A test evaluation every eval_every steps (the last step's is finish()'s). */
static int maybe_eval(trainer *t, dm_error *err)
{
    if (!every(t->step, t->x->eval_every) || t->step >= t->total_steps) return DM_OK;
    double loss, acc, t0 = now_s();
    int rc = tr_evaluate(t, &loss, &acc, NULL, err);
    if (rc) return rc;
    dm_timeline_span("eval", t0, now_s(), "eval");
    tr_report_eval(t, loss, acc);
    t->t_log += now_s() - t0; /* evaluation time is not training time */
    /* every rank sees the same (allreduced) accuracy, so all stop together */
    if (t->x->target_accuracy > 0 && acc >= t->x->target_accuracy) {
        t->target_reached = 1;
        t->target_loss = loss;
        t->target_acc = acc;
        tr_report_target(t, acc);
    }
    return DM_OK;
}

static int maybe_checkpoint(trainer *t, dm_error *err)
{
    if (!every(t->step, t->x->checkpoint_every) || t->step >= t->total_steps) return DM_OK;
    int rc = tr_check_params(t, err);
    return rc ? rc : tr_save_checkpoint(t, err);
}

/* The step boundary: sync check, log, evaluation, checkpoint, the bar,
 * and (elastic) newcomers let in. */
static int after_step(trainer *t, dm_error *err)
{
    int rc = every(t->step, t->x->sync_check_every) ? tr_sync_check(t, err) : DM_OK;
    if (!rc) rc = tr_log_step(t, err);
    if (!rc) rc = maybe_eval(t, err);
    if (!rc && t->target_reached) return DM_OK; /* train.target_accuracy: the run ends here */
    if (!rc) rc = maybe_checkpoint(t, err);
    if (!rc) tr_bar_draw(t, t->step == t->total_steps);
    if (!rc) rc = tr_elastic_boundary(t, err);
    return rc;
}

/* After the last step (or a failure, rc): the final checkpoint and
 * evaluation, the summary, the timeline. */
static int finish(trainer *t, int rc, dm_error *err)
{
    if (rc == DM_OK && t->left_out) { /* elastic: the job finished in a world without this process */
        printf("elastic: the job finished without this process (it lost its place at step %lld)\n", (long long)t->step);
        return DM_OK;
    }
    if (rc == DM_OK) tr_elastic_finish(t);
    if (t->bar_shown) putchar('\n'); /* keep the finished bar */
    /* the GPU may still be working through queued steps */
    if (rc == DM_OK && t->x->device != DM_DEVICE_CPU) rc = dm_dev_sync(&t->dev, err);
    double train_s = now_s() - t->t_train0;
    dm_timeline_set_step(-1);
    double t0 = now_s();
    if (rc == DM_OK) rc = tr_check_params(t, err);
    if (rc == DM_OK) rc = tr_save_checkpoint(t, err);
    double test_loss = 0, test_acc = 0;
    if (rc == DM_OK && rank0(t) && !t->target_reached) {
        /* the final evaluation can take a while (seconds per 10,000 images on a CPU): say so */
        printf("evaluating on %lld test images\n", (long long)t->di.count[DM_SPLIT_TEST]);
        fflush(stdout);
    }
    if (rc == DM_OK && t->target_reached) { /* evaluated at this step already */
        test_loss = t->target_loss;
        test_acc = t->target_acc;
    } else if (rc == DM_OK) {
        rc = tr_evaluate(t, &test_loss, &test_acc, NULL, err);
        /* the last step's evaluation is this one: it can reach the target too */
        if (rc == DM_OK && t->x->target_accuracy > 0 && test_acc >= t->x->target_accuracy)
            tr_report_target(t, test_acc);
    }
    dm_timeline_span("eval", t0, now_s(), "final checkpoint and eval");
    if (rc == DM_OK) tr_report_final(t, test_loss, test_acc, train_s);
    if (t->tb) {
        int brc = dm_tb_close(t->tb, rc == DM_OK ? err : &(dm_error){0});
        t->tb = NULL;
        if (rc == DM_OK) rc = brc;
    }
    if (t->opts && t->opts->timeline_path) {
        int trc = tr_finish_timeline(t, rc == DM_OK, err);
        if (rc == DM_OK) rc = trc;
    }
    return rc;
}

/* ---- the loop ------------------------------------------------------------------- */

int dm_train_run(dm_experiment *x, const dm_train_opts *opts, dm_error *err)
{
    trainer t = {.x = x, .opts = opts, .t_start = now_s()};
    int rc = tr_setup(&t, err);
    if (!rc && t.left_out) { /* elastic: the job ended before this process got in */
        printf("elastic: job %s already finished; nothing to join\n", t.ids.job_id);
        tr_teardown(&t);
        return DM_OK;
    }
    if (!rc) rc = count_steps(&t, err);
    if (!rc) rc = start(&t, err);
    if (rc) {
        tr_teardown(&t);
        return rc;
    }
    while (rc == DM_OK && t.step < t.total_steps) {
        int skipped = 0;
        rc = train_step(&t, &skipped, err);
        if (!rc && !skipped) rc = after_step(&t, err);
        if (rc) rc = tr_elastic_recover(&t, rc, err); /* DM_OK: a new world goes on */
        if (t.target_reached) break;                  /* finish() saves the checkpoint */
    }
    rc = finish(&t, rc, err);
    tr_teardown(&t);
    return rc;
}
