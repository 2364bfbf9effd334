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
 */
#define _GNU_SOURCE
#include "trainer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

/* ---- the loop ------------------------------------------------------------------- */

int dm_train_run(dm_experiment *x, const dm_train_opts *opts, dm_error *err)
{
    trainer t = {0};
    t.x = x;
    t.opts = opts;
    double t_start = now_s();
    int rc = tr_setup(&t, err);
    if (rc) { tr_teardown(&t); return rc; }
    int N = t.ci.size;

    int64_t per_epoch = t.di.count[DM_SPLIT_TRAIN] / ((int64_t)x->batch_size * N);
    int64_t total_steps = x->epochs > 0 ? (int64_t)ceil(x->epochs * (double)per_epoch) : x->total_batches / N;
    if (total_steps < 1) {
        tr_teardown(&t);
        return dm_fail(err, DM_ERR_INVALID, "%s: train: total_batches = %lld is fewer than the %d ranks",
                       x->cfg->path, (long long)x->total_batches, N);
    }

    if (rank0(&t)) {
        printf("dmnist %s: %s, %d rank%s (%s), device %s, %lld steps of %d x %d images, %zu parameters\n",
               DMNIST_VERSION, x->name, N, N == 1 ? "" : "s", x->backend, dm_device_name(x->device),
               (long long)total_steps, N, x->batch_size, t.m.param_count);
        fflush(stdout);
    }
    /* Identical start everywhere: rank 0 draws, everyone receives. */
    if (rank0(&t)) rc = dm_model_init_params(&t.m, x->seed, err);
    if (!rc) rc = dm_dev_sync(&t.dev, err);
    if (!rc && opts && opts->resume) rc = tr_resume(&t, err);
    if (!rc) rc = tr_broadcast_dev(&t, t.m.params, t.m.param_count * sizeof(float), err);
    if (!rc && t.n_opt) rc = tr_broadcast_dev(&t, t.opt_state, t.n_opt * sizeof(float), err);
    if (!rc && t.m.state_count) rc = tr_broadcast_dev(&t, t.m.state, t.m.state_count * sizeof(float), err);
    if (!rc) rc = dm_dev_zero(&t.dev, t.m.metrics, 2 * sizeof(float), err);
    if (rc) { tr_teardown(&t); return rc; }
    /* Opened only once the run can start: a refused checkpoint leaves no empty file. */
    if (opts && opts->metrics_path && rank0(&t)) {
        if (!(t.metrics = fopen(opts->metrics_path, "w"))) {
            rc = dm_fail(err, DM_ERR_IO, "%s: cannot open for writing: %s", opts->metrics_path, strerror(errno));
            tr_teardown(&t);
            return rc;
        }
    }

    if (opts && opts->timeline_path && (rc = tr_open_timeline(&t, err))) { tr_teardown(&t); return rc; }
    t.bar = rank0(&t) && opts && (opts->progress > 0 || (opts->progress < 0 && tr_bar_wanted()));
    t.bar_loss = -1;

    double lr_scale = x->scale_lr ? (double)N : 1.0;
    double t_log = now_s(), t_train0 = t_log;
    int64_t images_since_log = 0, step0 = t.step;
    uint64_t rank_seed = dm_hash64(x->seed, 0xD0D0ull + (uint64_t)t.ci.rank);

    t.checked_step = t.step; /* a resumed run starts checking from its step */
    t.params_checked_step = t.step;
    t.checked_loss_sum = 0;
    while (t.step < total_steps && rc == DM_OK) {
        double ta = now_s();
        dm_timeline_set_step(t.step + 1);
        if ((rc = tr_next_train_batch(&t, err))) break;
        double tb = now_s();
        uint64_t step_seed = dm_hash64(rank_seed, (uint64_t)t.step);
        /* skip must undo what the bad step's forward did to the layer state */
        if ((rc = tr_guard_backup_state(&t, err))) break;
        if ((rc = dm_model_forward(&t.m, x->batch_size, 1, step_seed, err))) break;
        double tf = now_s();
        if ((rc = dm_model_backward(&t.m, x->batch_size, step_seed, tr_backward_hook, &t, err))) break;
        double tc = now_s();
        if ((rc = tr_wait_buckets(&t, err))) break;
        /* Layer state (running statistics) was updated from each rank's own
         * batch: rank 0's wins, as with PyTorch DDP's buffers, so every rank
         * evaluates and checkpoints the same model. Before the loss check, so
         * that a skipped step leaves the ranks identical too. */
        if (N > 1 && t.m.state_count) {
            double ts = now_s();
            if ((rc = tr_broadcast_dev(&t, t.m.state, t.m.state_count * sizeof(float), err))) break;
            dm_timeline_span("comm", ts, now_s(), "layer state broadcast");
            t.comm_wait_s += now_s() - ts;
        }
        double td = now_s();
        int skipped;
        if ((rc = tr_guard_step(&t, &skipped, err))) break;
        if (skipped) continue;
        double tn = now_s(); /* after the loss check, before the update */
        double f = dm_lr_factor(&x->schedule, t.step, total_steps);
        dm_opt_step_ctx sc = {sizeof sc, t.step + 1, (float)(x->lr * lr_scale * f), t.dev.stream};
        dm_error e = {0};
        if ((rc = t.ovt->step(t.opt, &sc, t.m.params, t.m.grads, t.m.param_count, &e))) {
            rc = dm_fail(err, rc, "optimizer: step %lld: %s", (long long)t.step + 1, e.msg);
            break;
        }
        double te = now_s();
        dm_timeline_span("step", ta, te, "step %lld", (long long)t.step + 1);
        dm_timeline_span("data", ta, tb, "data");
        dm_timeline_span("forward", tb, tf, "forward");
        dm_timeline_span("backward", tf, tc, "backward");
        if (N > 1) dm_timeline_span("comm", tc, td, "allreduce wait");
        if (N > 1 && x->device == DM_DEVICE_CPU) dm_timeline_span("comm", td, tn, "loss check (allreduce)");
        dm_timeline_span("optimizer", tn, te, "optimizer");
        t.step++;
        t.t_fwd_bwd_s += tc - tb;
        images_since_log += (int64_t)x->batch_size * N;
        if (x->sync_check_every > 0 && t.step % x->sync_check_every == 0 && (rc = tr_sync_check(&t, err))) break;

        int log_now = x->log_every > 0 && (t.step % x->log_every == 0 || t.step == total_steps);
        if (log_now) {
            float mm[2];
            if ((rc = dm_dev_download(&t.dev, mm, t.m.metrics, sizeof mm, err))) break;
            if ((rc = dm_dev_zero(&t.dev, t.m.metrics, 2 * sizeof(float), err))) break;
            t.checked_loss_sum = 0;
            t.checked_step = t.step; /* the check below covers the steps since the last one */
            double elapsed = now_s() - t_log;
            /* loss sum, correct, examples, seconds, comm wait, compute: summed over ranks */
            float v[6] = {mm[0], mm[1], 0, (float)elapsed, (float)t.comm_wait_s, (float)t.t_fwd_bwd_s};
            int64_t steps_in = x->log_every > 0 ? (t.step % x->log_every ? t.step % x->log_every : x->log_every) : 1;
            v[2] = (float)(steps_in * x->batch_size);
            if ((rc = tr_allreduce_host(&t, v, 6, DM_REDUCE_SUM, err))) break;
            double loss = v[0] / v[2], acc = v[1] / v[2];
            double secs = v[3] / N, ips = images_since_log / (secs > 0 ? secs : 1e-9);
            double comm = v[4] / N, comp = v[5] / N;
            if (!isfinite(loss) && !x->nan_skip) {
                rc = dm_fail(err, DM_ERR_INVALID, "step %lld: mean loss over the last %lld steps is %f: training "
                             "diverged (lower optimizer.lr)", (long long)t.step, (long long)steps_in, loss);
                break;
            }
            if ((rc = tr_check_params(&t, err))) break;
            t.bar_loss = loss;
            if (rank0(&t)) {
                tr_bar_clear(&t);
                printf("step %6lld/%lld  epoch %lld  loss %.4f  acc %.4f  images/s %.1f  comm-wait %.1f%%  lr %.5g\n",
                       (long long)t.step, (long long)total_steps, (long long)t.epoch, loss, acc, ips,
                       secs > 0 ? 100.0 * comm / secs : 0.0, sc.lr);
                fflush(stdout);
                if (t.metrics) {
                    fprintf(t.metrics, "{\"event\":\"step\",\"step\":%lld,\"epoch\":%lld,\"loss\":%.6g,\"accuracy\":%.6g,"
                            "\"images_per_s\":%.6g,\"lr\":%.6g,\"time_s\":%.6g,\"comm_wait_s\":%.6g,\"compute_s\":%.6g}\n",
                            (long long)t.step, (long long)t.epoch, loss, acc, ips, (double)sc.lr, now_s() - t_start,
                            comm, comp);
                    fflush(t.metrics);
                }
            }
            images_since_log = 0;
            t.comm_wait_s = 0;
            t.t_fwd_bwd_s = 0;
            t_log = now_s();
        }
        if (x->eval_every > 0 && t.step % x->eval_every == 0 && t.step < total_steps) {
            double tl, ta2;
            double tev = now_s();
            if ((rc = tr_evaluate(&t, &tl, &ta2, err))) break;
            dm_timeline_span("eval", tev, now_s(), "eval");
            if (rank0(&t)) {
                tr_bar_clear(&t);
                printf("eval at step %lld: test loss %.4f  test accuracy %.4f\n", (long long)t.step, tl, ta2);
                if (t.metrics)
                    fprintf(t.metrics, "{\"event\":\"eval\",\"step\":%lld,\"test_loss\":%.6g,\"test_accuracy\":%.6g,"
                            "\"time_s\":%.6g}\n", (long long)t.step, tl, ta2, now_s() - t_start);
            }
            t_log += now_s() - tev; /* evaluation time is not training time */
        }
        if (x->checkpoint_every > 0 && t.step % x->checkpoint_every == 0 && t.step < total_steps)
            if ((rc = tr_check_params(&t, err)) || (rc = tr_save_checkpoint(&t, err))) break;
        tr_bar_draw(&t, total_steps, step0, t_train0, t.step == total_steps);
    }
    if (t.bar_shown) putchar('\n'); /* keep the finished bar */
    /* the GPU may still be working through queued steps */
    if (rc == DM_OK && x->device != DM_DEVICE_CPU) rc = dm_dev_sync(&t.dev, err);
    double train_s = now_s() - t_train0;
    dm_timeline_set_step(-1);
    double tev = now_s();
    if (rc == DM_OK) rc = tr_check_params(&t, err);
    if (rc == DM_OK) rc = tr_save_checkpoint(&t, err);
    double test_loss = 0, test_acc = 0;
    if (rc == DM_OK && rank0(&t)) {
        /* the final evaluation can take a while (seconds per 10,000 images on a CPU): say so */
        printf("evaluating on %lld test images\n", (long long)t.di.count[DM_SPLIT_TEST]);
        fflush(stdout);
    }
    if (rc == DM_OK) rc = tr_evaluate(&t, &test_loss, &test_acc, err);
    dm_timeline_span("eval", tev, now_s(), "final checkpoint and eval");
    if (rc == DM_OK && rank0(&t)) {
        int64_t steps_run = t.step - step0;
        double ips = train_s > 0 ? (double)steps_run * x->batch_size * N / train_s : 0;
        double wall = now_s() - t_start;
        printf("test loss %.4f  test accuracy %.4f (%.2f%%)  steps %lld  images/s %.1f  wall %.2f s  peak RSS %.0f MB\n",
               test_loss, test_acc, 100 * test_acc, (long long)t.step, ips, wall, tr_peak_rss_mb());
        if (t.metrics)
            fprintf(t.metrics, "{\"event\":\"final\",\"test_loss\":%.6g,\"test_accuracy\":%.6g,\"steps\":%lld,"
                    "\"images_per_s\":%.6g,\"wall_s\":%.6g,\"train_s\":%.6g,\"world_size\":%d,\"backend\":\"%s\","
                    "\"device\":\"%s\",\"batch_size\":%d,\"peak_rss_mb\":%.1f}\n",
                    test_loss, test_acc, (long long)t.step, ips, wall, train_s, N, x->backend,
                    dm_device_name(x->device), x->batch_size, tr_peak_rss_mb());
    }
    if (opts && opts->timeline_path) {
        int trc = tr_finish_timeline(&t, rc == DM_OK, err);
        if (rc == DM_OK) rc = trc;
    }
    tr_teardown(&t);
    return rc;
}
