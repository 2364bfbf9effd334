/* The trainer's output on rank 0: the progress bar and the timeline
 * (--timeline). */
#define _GNU_SOURCE
#include "trainer.h"

#include <math.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

/* The bar by default: only where stdout is a terminal, and never under an
 * MPI launcher, which hands each rank a pseudo-terminal even when its own
 * output goes to a log file (the escape codes would land there). */
int tr_bar_wanted(void)
{
    static const char *launcher_env[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", NULL};
    for (int i = 0; launcher_env[i]; i++)
        if (getenv(launcher_env[i])) return 0;
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
void tr_bar_draw(trainer *t, int64_t total, int64_t step0, double t0, int force)
{
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
    printf("timeline: %s (%d rank%s; open in https://ui.perfetto.dev or chrome://tracing)\n",
           t->opts->timeline_path, t->ci.size, t->ci.size == 1 ? "" : "s");
    return DM_OK;
}

double tr_peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}
