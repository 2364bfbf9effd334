/* experiment.elastic: a world that loses or gains ranks while it trains.
 *
 * Every rank holds the whole model and optimizer state, so survivors need no
 * disk. When a collective fails (a peer killed, frozen past timeout_s, cut
 * off), each survivor:
 *   1. drops its communicator (finalize closes the sockets, so ranks still
 *      waiting on this one fail at once instead of at their timeout);
 *   2. undoes the step in flight: the layer state its forward pass changed
 *      and the data cursor go back to the last completed step (the
 *      parameters and optimizer state are untouched: the update runs only
 *      after every gradient arrived);
 *   3. forms the next world with whoever arrives (elastic.h) and starts the
 *      backend in it under a new job id, "<job>.e<round>";
 *   4. takes rank 0's state: rank 0 is the member with the most steps done,
 *      so a rank whose last allreduce completed just before the peer died
 *      carries everyone forward, and no rank is behind another.
 * A process that wants in (restarted, or back after a freeze) waits in the
 * next round's folder; rank 0 looks every elastic_check_every steps and, if
 * someone waits, every rank re-forms the world with it at that boundary.
 *
 * What a world change means for the run (docs/elastic.md): the step budget
 * is global batches; what is left is divided by the new world size. The data
 * cursor is global too (a step consumes N * batch examples of the epoch's
 * permutation), so no example is skipped or seen twice within an epoch. The
 * learning rate follows the world size (scale_lr). Every change is one log
 * line and a "world" event in --metrics. */
#define _GNU_SOURCE
#include "trainer.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

static int is_comm_failure(int rc) { return rc == DM_ERR_COMM || rc == DM_ERR_TIMEOUT; }

/* Join the next round and start the backend in it; t->left_out when the
 * job ended before this process got in. *formed: the round closed with
 * this process in it (a failure after that is the new world's). */
static int form_world(trainer *t, int prev_rank, int prev_size, int *formed, dm_error *err)
{
    dm_elastic_world w;
    *formed = 0;
    int rc = dm_elastic_form(t->el, prev_rank, prev_size, t->step, &w, err);
    t->left_out = w.done;
    if (rc || w.done) return rc;
    *formed = 1;
    snprintf(t->round_job_id, sizeof t->round_job_id, "%s.e%d", t->ids.job_id[0] ? t->ids.job_id : "nojob", w.round);
    snprintf(t->round_fingerprint, sizeof t->round_fingerprint, "%016llx",
             (unsigned long long)dm_job_fingerprint(t->x, w.size, t->round_job_id));
    t->cc.rank = w.rank;
    t->cc.size = w.size;
    t->cc.local_size = w.local_size;
    t->cc.job_id = t->round_job_id;
    t->cc.fingerprint = dm_job_check_skipped() ? "" : t->round_fingerprint;
    return tr_comm_open(t, err);
}

int tr_elastic_setup(trainer *t, dm_error *err)
{
    const dm_experiment *x = t->x;
    if (t->opts && t->opts->eval_path) return tr_comm_open(t, err); /* --eval trains nothing */
    if (t->opts && t->opts->timeline_path && exit_as(t, DM_EXIT_CONFIG))
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: experiment.elastic: --timeline is not supported with it yet",
                       x->cfg->path);
    if (x->max_ranks > 0 && x->max_ranks < x->min_ranks && exit_as(t, DM_EXIT_CONFIG))
        return dm_fail(err, DM_ERR_INVALID, "%s: experiment: max_ranks = %d is below min_ranks = %d", x->cfg->path,
                       x->max_ranks, x->min_ranks);
    if (!(t->el = calloc(1, sizeof *t->el))) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int rc = dm_elastic_open(t->el, t->cc.rendezvous, t->ids.job_id, x->min_ranks, x->max_ranks, x->elastic_settle_s,
                             x->timeout_s, err);
    if (rc) {
        exit_as(t, DM_EXIT_CONFIG);
        return rc;
    }
    int formed;
    return form_world(t, t->cc.rank, t->cc.size, &formed, err);
}

int tr_state_sync(trainer *t, dm_error *err)
{
    int rc = tr_broadcast_dev(t, t->m.params, t->m.param_count * sizeof(float), err);
    if (!rc && t->n_opt) rc = tr_broadcast_dev(t, t->opt_state, t->n_opt * sizeof(float), err);
    if (!rc && t->m.state_count) rc = tr_broadcast_dev(t, t->m.state, t->m.state_count * sizeof(float), err);
    if (rc || !t->el) return rc;
    int64_t c[5] = {t->step, t->epoch, t->epoch_pos, t->budget, t->done_batches};
    dm_error e = {0};
    if (t->ci.size > 1 && (rc = tr_broadcast_host(t, c, sizeof c, &e))) return tr_comm_fail(t, err, rc, e.msg);
    t->step = c[0];
    t->epoch = c[1];
    t->epoch_pos = c[2];
    t->budget = c[3];
    t->done_batches = c[4];
    t->commit_epoch = t->epoch;
    t->commit_pos = t->epoch_pos;
    t->total_steps = t->step + (t->budget - t->done_batches) / t->ci.size;
    return DM_OK;
}

/* Drop a communicator that failed (or that a join replaces). */
static void drop_comm(trainer *t)
{
    dm_error e = {0};
    if (t->comm) t->cvt->finalize(t->comm, &e);
    t->comm = NULL;
    for (int b = 0; t->buckets && b < t->n_buckets; b++) {
        t->buckets[b].req = NULL; /* finalize freed the handles nobody waited on */
        t->buckets[b].copying = 0;
    }
    t->next_start = 0;
}

/* Back to the last completed step: the layer state the failed step's
 * forward pass changed and the data cursor; the logged sums start over. */
static int undo_step(trainer *t, dm_error *err)
{
    int rc = DM_OK;
    if (t->in_step) rc = tr_guard_restore_state(t, err);
    t->in_step = 0;
    t->epoch = t->commit_epoch;
    t->epoch_pos = t->commit_pos;
    if (!rc) rc = dm_dev_zero(&t->dev, t->m.metrics, 2 * sizeof(float), err);
    return rc;
}

/* What follows from the new world: learning rate, dropout stream, output
 * duties (the new rank 0 appends to --metrics), the log counters. */
static int adopt_world(trainer *t, dm_error *err)
{
    const dm_experiment *x = t->x;
    if (t->di.count[DM_SPLIT_TRAIN] < (int64_t)x->batch_size * t->ci.size)
        return dm_fail(err, DM_ERR_INVALID,
                       "experiment.elastic: %lld training examples are fewer than one global "
                       "batch of the new world (%d ranks x %d)",
                       (long long)t->di.count[DM_SPLIT_TRAIN], t->ci.size, x->batch_size);
    t->lr_scale = x->scale_lr ? (double)t->ci.size : 1.0;
    t->rank_seed = dm_hash64(x->seed, 0xD0D0ull + (uint64_t)t->ci.rank);
    t->checked_step = t->params_checked_step = t->logged_step = t->step;
    t->checked_loss_sum = 0;
    t->images_since_log = 0;
    t->t_fwd_bwd_s = t->comm_wait_s = 0;
    t->t_log = now_s();
    const char *path = t->opts ? t->opts->metrics_path : NULL;
    if (rank0(t) && path && !t->metrics && !(t->metrics = fopen(path, "a")))
        return dm_fail(err, DM_ERR_IO, "%s: cannot open for appending: %s", path, strerror(errno));
    if (!rank0(t) && t->metrics) {
        fclose(t->metrics);
        t->metrics = NULL;
    }
    if (!rank0(t)) t->bar = 0;
    return DM_OK;
}

static void report(trainer *t, const char *reason, const char *why, int old_size, double t_seen)
{
    t->world_changes++;
    if (!rank0(t)) return;
    double secs = now_s() - t_seen;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    tr_bar_clear(t);
    printf("elastic: world %d -> %d ranks at step %lld (%s%s%s); %lld steps left; %.2f s to form it%s\n", old_size,
           t->ci.size, (long long)t->step, reason, why[0] ? ": " : "", why, (long long)(t->total_steps - t->step), secs,
           t->x->scale_lr ? ", lr follows the world size" : "");
    fflush(stdout);
    if (t->metrics) {
        fprintf(t->metrics,
                "{\"event\":\"world\",\"reason\":\"%s\",\"round\":%d,\"step\":%lld,\"from\":%d,\"to\":%d,"
                "\"form_s\":%.6g,\"time_s\":%.6g,\"wall_s\":%.6f}\n",
                reason, t->el->round, (long long)t->step, old_size, t->ci.size, secs, now_s() - t->t_start,
                (double)wall.tv_sec + 1e-9 * (double)wall.tv_nsec);
        fflush(t->metrics);
    }
}

/* Re-form from the world (rank, size) this process was in, then sync and
 * adopt. A new world that fails while forming (a member lost meanwhile)
 * is re-formed again, a bounded number of times. */
static int reform(trainer *t, int rank, int size, dm_error *err)
{
    for (int tries = 0;; tries++) {
        int formed;
        int rc = form_world(t, rank, size, &formed, err);
        if (rc == DM_OK && t->left_out) { /* the job ended without this process */
            t->total_steps = t->step;
            return DM_OK;
        }
        if (rc == DM_OK) rc = tr_state_sync(t, err);
        if (rc == DM_OK) return adopt_world(t, err);
        if (!formed || !is_comm_failure(rc) || tries >= 8) return rc;
        rank = t->cc.rank; /* the world just formed (ci is not filled when init failed) */
        size = t->cc.size;
        drop_comm(t);
    }
}

int tr_elastic_recover(trainer *t, int rc, dm_error *err)
{
    if (!t->el || t->left_out || !is_comm_failure(rc)) return rc;
    double t_seen = now_s();
    char why[sizeof err->msg];
    snprintf(why, sizeof why, "%s", err && err->msg[0] ? err->msg : "a collective failed");
    int rank = t->ci.rank, size = t->ci.size;
    drop_comm(t);
    if ((rc = undo_step(t, err))) return rc;
    if ((rc = reform(t, rank, size, err))) return rc;
    if (!t->left_out) report(t, "lost a rank", why, size, t_seen);
    return DM_OK;
}

int tr_elastic_boundary(trainer *t, dm_error *err)
{
    const dm_experiment *x = t->x;
    if (!t->el || t->step % x->elastic_check_every != 0 || t->step >= t->total_steps) return DM_OK;
    int32_t flag = rank0(t) && (x->max_ranks == 0 || t->ci.size < x->max_ranks) && dm_elastic_waiting(t->el);
    dm_error e = {0};
    int rc;
    if (t->ci.size > 1 && (rc = tr_broadcast_host(t, &flag, sizeof flag, &e))) return tr_comm_fail(t, err, rc, e.msg);
    if (!flag) return DM_OK;
    double t_seen = now_s();
    int rank = t->ci.rank, size = t->ci.size;
    drop_comm(t);
    if ((rc = reform(t, rank, size, err))) return rc;
    if (!t->left_out) report(t, "a rank joined", "", size, t_seen);
    return DM_OK;
}

void tr_elastic_finish(trainer *t)
{
    if (t->el && !t->left_out && rank0(t)) dm_elastic_finish(t->el);
}
