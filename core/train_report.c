/* The trainer's output, on rank 0: the start line, the log lines and their
 * JSON twins (--metrics), the evaluation and final lines, the progress bar;
 * and every rank's part of the timeline (--timeline). */
#define _GNU_SOURCE
#include "trainer.h"
#include "launch.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

/* User + system CPU seconds of the whole process so far (every thread). */
static double process_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
        1e-6 * (double)ru.ru_stime.tv_usec;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* The bar by default: only where stdout is a terminal, and never under an
 * MPI launcher, which hands each rank a pseudo-terminal even when its own
 * output goes to a log file (the escape codes would land there). */
static int bar_wanted(void)
{
    dm_launch_env env;
    dm_error e = {0};
    if (dm_launch_env_read(&env, &e) != DM_OK || (env.launcher && strcmp(env.launcher, "dmnist-run --np") != 0))
        return 0;
    return isatty(STDOUT_FILENO);
}

/* ---- progress bar (rank 0 on a terminal, or --progress) ------------------------ */

/* Erase the bar so that a log line takes its place; the next draw puts the
 * bar back under it. */
void tr_bar_clear(trainer *t)
{
    if (!t->bar_shown) return;
    fputs("\r\033[K", stdout);
    t->bar_shown = 0;
}

/* [#########.....]  45%  step 45/100  loss 0.4213  1234 images/s  ETA 0:00:12
 * Redrawn at most ten times a second; rates count every rank's images. */
void tr_bar_draw(trainer *t, int force)
{
    const int64_t total = t->total_steps, step0 = t->step0;
    const double t0 = t->t_train0;
    double now = now_s();
    if (!t->bar || (!force && now - t->bar_drawn < 0.1)) return;
    t->bar_drawn = now;
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    int fill = (int)(WIDTH * t->step / total);
    for (int i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = 0;
    int64_t done = t->step - step0;
    double elapsed = now - t0;
    double ips = elapsed > 0 ? (double)done * t->x->batch_size * t->ci.size / elapsed : 0;
    char loss[32] = "", eta[32] = "ETA --:--:--";
    if (t->bar_loss >= 0) snprintf(loss, sizeof loss, "  loss %.4f", t->bar_loss);
    if (done > 0) {
        long s = lround(elapsed / (double)done * (double)(total - t->step));
        snprintf(eta, sizeof eta, "ETA %ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    }
    printf("\r\033[K[%s] %3d%%  step %lld/%lld%s  %.0f images/s  %s", bar, (int)(100 * t->step / total),
           (long long)t->step, (long long)total, loss, ips, eta);
    fflush(stdout);
    t->bar_shown = 1;
}

/* ---- timeline -------------------------------------------------------------------- */

/* Every rank's trace time 0 is rank 0's wall clock now. */
int tr_open_timeline(trainer *t, dm_error *err)
{
    double origin = dm_timeline_wallclock();
    if (t->ci.size > 1) {
        dm_error e = {0};
        int rc = t->cvt->broadcast(t->comm, &origin, sizeof origin, 0, DM_DEVICE_CPU, NULL, &e);
        if (rc) return tr_comm_fail(t, err, rc, e.msg);
    }
    return dm_timeline_open(t->opts->timeline_path, t->ci.rank, t->ci.size, origin, err);
}

/* Each rank closes its part; once all have (barrier), rank 0 joins them.
 * After a failure the parts are deleted and no barrier is attempted. */
int tr_finish_timeline(trainer *t, int ok, dm_error *err)
{
    int rc = dm_timeline_close(ok, err);
    if (!ok || rc) return rc;
    if (t->ci.size > 1) {
        dm_error e = {0};
        if ((rc = t->cvt->barrier(t->comm, &e))) return tr_comm_fail(t, err, rc, e.msg);
    }
    if (!rank0(t)) return DM_OK;
    if ((rc = dm_timeline_merge(err))) return rc;
    printf("timeline: %s (%d rank%s; open in https://ui.perfetto.dev or chrome://tracing)\n", t->opts->timeline_path,
           t->ci.size, t->ci.size == 1 ? "" : "s");
    return DM_OK;
}

/* ---- log lines and metrics (rank 0) ------------------------------------------- */

void tr_report_start(const trainer *t)
{
    const dm_experiment *x = t->x;
    int N = t->ci.size;
    if (!rank0(t)) return;
    printf("dmnist %s: %s, %d rank%s (%s), device %s, %lld steps of %d x %d images, %zu parameters\n", DMNIST_VERSION,
           x->name, N, N == 1 ? "" : "s", x->backend, dm_device_name(x->device), (long long)t->total_steps, N,
           x->batch_size, t->m.param_count);
    fflush(stdout);
}

/* --tensorboard on rank 0: the event file, and the run's settings as text. */
int tr_open_tensorboard(trainer *t, dm_error *err)
{
    const dm_train_opts *opts = t->opts;
    if (!opts || !opts->tensorboard_dir || !rank0(t) || t->tb) return DM_OK;
    int rc = dm_tb_open(opts->tensorboard_dir, &t->tb, err);
    if (rc) return rc;
    if (opts->tensorboard_text) {
        char *md = NULL;
        size_t n = 0;
        FILE *m = open_memstream(&md, &n);
        if (!m) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
        fprintf(m, "%s\n\n%d rank%s (%s), device %s", opts->tensorboard_text, t->ci.size, t->ci.size == 1 ? "" : "s",
                t->x->backend, dm_device_name(t->x->device));
        fclose(m);
        dm_tb_text(t->tb, t->step, "settings", md);
        free(md);
    }
    return dm_tb_flush(t->tb, err);
}

/* The metrics file, the timeline and the bar, once the run can start. */
int tr_report_open(trainer *t, dm_error *err)
{
    const dm_train_opts *opts = t->opts;
    int rc;
    /* Opened only once the run can start: a refused checkpoint leaves no empty file.
     * The event folder first: a folder that cannot be made leaves no metrics file. */
    if ((rc = tr_open_tensorboard(t, err))) return rc;
    if (opts && opts->metrics_path && rank0(t)) {
        if (!(t->metrics = fopen(opts->metrics_path, "w")))
            return dm_fail(err, DM_ERR_IO, "%s: cannot open for writing: %s", opts->metrics_path, strerror(errno));
    }
    if (opts && opts->timeline_path && (rc = tr_open_timeline(t, err))) return rc;
    t->bar = rank0(t) && opts && (opts->progress > 0 || (opts->progress < 0 && bar_wanted()));
    t->bar_loss = -1;
    return DM_OK;
}

/* A step's spans on the timeline (c: when each phase ended). */
void tr_timeline_step(const trainer *t, const tr_step_clock *c)
{
    int N = t->ci.size;
    dm_timeline_span("step", c->start, c->end, "step %lld", (long long)t->step + 1);
    dm_timeline_span("data", c->start, c->data, "data");
    dm_timeline_span("forward", c->data, c->forward, "forward");
    dm_timeline_span("backward", c->forward, c->backward, "backward");
    if (N > 1) dm_timeline_span("comm", c->backward, c->comm, "allreduce wait");
    if (N > 1 && t->x->device == DM_DEVICE_CPU) dm_timeline_span("comm", c->comm, c->guard, "loss check (allreduce)");
    dm_timeline_span("optimizer", c->guard, c->end, "optimizer");
}

static void log_line(trainer *t, double loss, double acc, double ips, double secs, double comm, double comp)
{
    tr_bar_clear(t);
    printf("step %6lld/%lld  epoch %lld  loss %.4f  acc %.4f  images/s %.1f  comm-wait %.1f%%  lr %.5g\n",
           (long long)t->step, (long long)t->total_steps, (long long)t->epoch, loss, acc, ips,
           secs > 0 ? 100.0 * comm / secs : 0.0, t->lr);
    fflush(stdout);
    if (t->metrics) {
        fprintf(t->metrics,
                "{\"event\":\"step\",\"step\":%lld,\"epoch\":%lld,\"loss\":%.6g,\"accuracy\":%.6g,"
                "\"images_per_s\":%.6g,\"lr\":%.6g,\"time_s\":%.6g,\"comm_wait_s\":%.6g,\"compute_s\":%.6g,"
                "\"cpu_s\":%.6g}\n",
                (long long)t->step, (long long)t->epoch, loss, acc, ips, (double)t->lr, now_s() - t->t_start, comm,
                comp, process_cpu_s());
        fflush(t->metrics);
    }
    static const char *const tags[] = {"train/loss", "train/accuracy", "train/learning_rate", "train/images_per_s",
                                       "train/comm_wait_percent"};
    const double v[] = {loss, acc, t->lr, ips, secs > 0 ? 100.0 * comm / secs : 0.0};
    dm_tb_scalars(t->tb, t->step, tags, v, 5);
}

/* Every log_every steps (and at the last): the loss sum, correct count,
 * example count, elapsed time, communication wait and compute time summed
 * over ranks; the parameters checked; rank 0 prints and records. */
int tr_log_step(trainer *t, dm_error *err)
{
    const dm_experiment *x = t->x;
    const int N = t->ci.size;
    if (!(x->log_every > 0 && (t->step % x->log_every == 0 || t->step == t->total_steps))) return DM_OK;
    float mm[2];
    int rc = dm_dev_download(&t->dev, mm, t->m.metrics, sizeof mm, err);
    if (!rc) rc = dm_dev_zero(&t->dev, t->m.metrics, 2 * sizeof(float), err);
    if (rc) return rc;
    t->checked_loss_sum = 0;
    t->checked_step = t->step; /* the check below covers the steps since the last one */
    double elapsed = now_s() - t->t_log;
    /* loss sum, correct, examples, seconds, comm wait, compute: summed over ranks */
    float v[6] = {mm[0], mm[1], 0, (float)elapsed, (float)t->comm_wait_s, (float)t->t_fwd_bwd_s};
    int64_t steps_in = t->step - t->logged_step; /* since the last log, a resume or a world change */
    v[2] = (float)(steps_in * x->batch_size);
    if ((rc = tr_allreduce_host(t, v, 6, DM_REDUCE_SUM, err))) return rc;
    double loss = v[0] / v[2], acc = v[1] / v[2];
    double secs = v[3] / N, ips = t->images_since_log / (secs > 0 ? secs : 1e-9);
    double comm = v[4] / N, comp = v[5] / N;
    if (!isfinite(loss) && !x->nan_skip)
        return dm_fail(err, DM_ERR_INVALID,
                       "step %lld: mean loss over the last %lld steps is %f: training "
                       "diverged (lower optimizer.lr)",
                       (long long)t->step, (long long)steps_in, loss);
    if ((rc = tr_check_params(t, err))) return rc;
    t->bar_loss = loss;
    if (rank0(t)) log_line(t, loss, acc, ips, secs, comm, comp);
    if (rank0(t) && (rc = dm_tb_flush(t->tb, err))) return rc;
    t->images_since_log = 0;
    t->comm_wait_s = 0;
    t->t_fwd_bwd_s = 0;
    t->t_log = now_s();
    t->logged_step = t->step;
    return DM_OK;
}

void tr_report_eval(trainer *t, double loss, double acc)
{
    if (!rank0(t)) return;
    tr_bar_clear(t);
    printf("eval at step %lld: test loss %.4f  test accuracy %.4f\n", (long long)t->step, loss, acc);
    if (t->metrics)
        fprintf(t->metrics,
                "{\"event\":\"eval\",\"step\":%lld,\"test_loss\":%.6g,\"test_accuracy\":%.6g,"
                "\"time_s\":%.6g}\n",
                (long long)t->step, loss, acc, now_s() - t->t_start);
    static const char *const tags[] = {"test/loss", "test/accuracy"};
    const double v[] = {loss, acc};
    dm_tb_scalars(t->tb, t->step, tags, v, 2);
}

/* The first evaluation at or above train.target_accuracy: the time from the
 * start of dm_train_run (set-up and data loading included). */
void tr_report_target(trainer *t, double acc)
{
    if (!rank0(t)) return;
    const double elapsed = now_s() - t->t_start;
    printf("target accuracy %.4f reached at step %lld (test accuracy %.4f), %.2f s after start\n",
           t->x->target_accuracy, (long long)t->step, acc, elapsed);
    if (t->metrics)
        fprintf(t->metrics,
                "{\"event\":\"target\",\"step\":%lld,\"target_accuracy\":%.6g,"
                "\"test_accuracy\":%.6g,\"time_s\":%.6g}\n",
                (long long)t->step, t->x->target_accuracy, acc, elapsed);
}

void tr_report_final(const trainer *t, double test_loss, double test_acc, double train_s)
{
    const dm_experiment *x = t->x;
    const int N = t->ci.size;
    if (!rank0(t)) return;
    /* global batches: with experiment.elastic the world size may have changed */
    double ips = train_s > 0 ? (double)(t->done_batches - t->done0) * x->batch_size / train_s : 0;
    double wall = now_s() - t->t_start;
    printf("test loss %.4f  test accuracy %.4f (%.2f%%)  steps %lld  images/s %.1f  wall %.2f s  peak RSS %.0f MB\n",
           test_loss, test_acc, 100 * test_acc, (long long)t->step, ips, wall, peak_rss_mb());
    if (t->tb) printf("tensorboard: %s (view: tensorboard --logdir %s)\n", dm_tb_path(t->tb), t->opts->tensorboard_dir);
    if (t->metrics)
        fprintf(t->metrics,
                "{\"event\":\"final\",\"test_loss\":%.6g,\"test_accuracy\":%.6g,\"steps\":%lld,"
                "\"images_per_s\":%.6g,\"wall_s\":%.6g,\"train_s\":%.6g,\"world_size\":%d,\"backend\":\"%s\","
                "\"device\":\"%s\",\"batch_size\":%d,\"peak_rss_mb\":%.1f,\"global_batches\":%lld,"
                "\"world_changes\":%d}\n",
                test_loss, test_acc, (long long)t->step, ips, wall, train_s, N, x->backend, dm_device_name(x->device),
                x->batch_size, peak_rss_mb(), (long long)t->done_batches, t->world_changes);
    static const char *const tags[] = {"test/loss", "test/accuracy"};
    const double v[] = {test_loss, test_acc};
    dm_tb_scalars(t->tb, t->step, tags, v, 2);
}

/* ---- --eval: a checkpoint's evaluation (rank 0) -------------------------------- */

/* The confusion matrix as CSV: a header row of predicted classes, then one
 * row per true class. */
static int write_confusion_csv(const char *path, const float *cm, int classes, dm_error *err)
{
    FILE *f = fopen(path, "w");
    if (!f) return dm_fail(err, DM_ERR_IO, "%s: cannot open for writing: %s", path, strerror(errno));
    fprintf(f, "true\\predicted");
    for (int j = 0; j < classes; j++) fprintf(f, ",%d", j);
    fputc('\n', f);
    for (int i = 0; i < classes; i++) {
        fprintf(f, "%d", i);
        for (int j = 0; j < classes; j++) fprintf(f, ",%.0f", cm[(size_t)i * classes + j]);
        fputc('\n', f);
    }
    if (fclose(f) != 0) return dm_fail(err, DM_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return DM_OK;
}

/* The eval event of --metrics with the per-class accuracy and the matrix. */
static void write_eval_json(FILE *f, const trainer *t, double loss, double acc, const float *cm, int classes,
                            double secs)
{
    fprintf(f, "{\"event\":\"eval\",\"step\":%lld,\"checkpoint\":\"", (long long)t->step);
    dm_put_json_string(f, t->opts->eval_path);
    fprintf(f,
            "\",\"test_loss\":%.6g,\"test_accuracy\":%.6g,\"test_images\":%lld,\"world_size\":%d,"
            "\"eval_s\":%.6g,\"per_class_accuracy\":[",
            loss, acc, (long long)t->di.count[DM_SPLIT_TEST], t->ci.size, secs);
    for (int i = 0; i < classes; i++) {
        double row = 0;
        for (int j = 0; j < classes; j++) row += cm[(size_t)i * classes + j];
        fprintf(f, "%s%.6g", i ? "," : "", row > 0 ? cm[(size_t)i * classes + i] / row : 0.0);
    }
    fprintf(f, "],\"confusion\":[");
    for (int i = 0; i < classes; i++) {
        fprintf(f, "%s[", i ? "," : "");
        for (int j = 0; j < classes; j++) fprintf(f, "%s%.0f", j ? "," : "", cm[(size_t)i * classes + j]);
        fputc(']', f);
    }
    fprintf(f, "]}\n");
}

int tr_report_checkpoint_eval(trainer *t, double loss, double acc, const float *cm, int classes, double secs,
                              dm_error *err)
{
    if (!rank0(t)) return DM_OK;
    const dm_train_opts *o = t->opts;
    int rc;
    if ((rc = tr_open_tensorboard(t, err))) return rc;
    if (t->tb) {
        static const char *const tags[] = {"test/loss", "test/accuracy"};
        const double v[] = {loss, acc};
        dm_tb_scalars(t->tb, t->step, tags, v, 2);
        for (int i = 0; i < classes; i++) {
            char tag[48];
            const char *tp = tag;
            double row = 0;
            for (int j = 0; j < classes; j++) row += cm[(size_t)i * classes + j];
            snprintf(tag, sizeof tag, "test/accuracy_class_%d", i);
            double a = row > 0 ? cm[(size_t)i * classes + i] / row : 0.0;
            dm_tb_scalars(t->tb, t->step, &tp, &a, 1);
        }
        if ((rc = dm_tb_flush(t->tb, err))) return rc;
    }
    if (o->confusion_path && (rc = write_confusion_csv(o->confusion_path, cm, classes, err))) return rc;
    if (o->metrics_path) {
        FILE *f = fopen(o->metrics_path, "w");
        if (!f) return dm_fail(err, DM_ERR_IO, "%s: cannot open for writing: %s", o->metrics_path, strerror(errno));
        write_eval_json(f, t, loss, acc, cm, classes, secs);
        if (fclose(f) != 0) return dm_fail(err, DM_ERR_IO, "%s: write failed: %s", o->metrics_path, strerror(errno));
    }
    printf("test loss %.4f  test accuracy %.4f (%.2f%%)  %lld images, %d rank%s, %.2f s\n", loss, acc, 100 * acc,
           (long long)t->di.count[DM_SPLIT_TEST], t->ci.size, t->ci.size == 1 ? "" : "s", secs);
    printf("class  images  correct  accuracy\n");
    for (int i = 0; i < classes; i++) {
        double row = 0;
        for (int j = 0; j < classes; j++) row += cm[(size_t)i * classes + j];
        double hit = cm[(size_t)i * classes + i];
        printf("%5d  %6.0f  %7.0f  %.4f\n", i, row, hit, row > 0 ? hit / row : 0.0);
    }
    printf("confusion matrix (rows: true class, columns: predicted class)\n     ");
    for (int j = 0; j < classes; j++) printf(" %5d", j);
    putchar('\n');
    for (int i = 0; i < classes; i++) {
        printf("%5d", i);
        for (int j = 0; j < classes; j++) printf(" %5.0f", cm[(size_t)i * classes + j]);
        putchar('\n');
    }
    if (o->confusion_path)
        printf("confusion: %s (draw it: scripts/plot-confusion %s)\n", o->confusion_path, o->confusion_path);
    fflush(stdout);
    return DM_OK;
}
