/* The trainer's numeric guard: NaN/Inf checks of the loss, the gradients
 * and the parameters (train.nan_policy), and the check that every rank
 * holds the same parameters (train.sync_check_every). */
#define _GNU_SOURCE
#include "trainer.h"
#ifdef DMNIST_CORE_CUDA
#include "dm_cuda.h"
#endif

#include <math.h>
#include <stdlib.h>

/* *finite = 1 when buf[0..n) (on the run's device) holds no NaN or Inf. CPU:
 * x * 0 is 0 for a finite x and NaN otherwise, so one sum answers (eight
 * partial sums, which the compiler turns into vector adds). A device: a
 * kernel and a one-word download (a host sync). */
static int all_finite(trainer *t, const float *buf, size_t n, int *finite, dm_error *err)
{
    if (t->dev.device == DM_DEVICE_CPU) {
        float acc[8] = {0}, sum = 0;
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) acc[k] += buf[i + k] * 0.0f;
        for (; i < n; i++) sum += buf[i] * 0.0f;
        for (int k = 0; k < 8; k++) sum += acc[k];
        *finite = sum == 0.0f;
        return DM_OK;
    }
#ifdef DMNIST_CORE_CUDA
    unsigned *flag = (unsigned *)tr_scratch(t, sizeof(unsigned), err), bad = 1;
    if (!flag) return err ? err->code : DM_ERR_NOMEM;
    int rc = dm_cuda_any_nonfinite(buf, n, flag, t->dev.stream, err);
    if (!rc) rc = dm_dev_download(&t->dev, &bad, flag, sizeof bad, err);
    *finite = bad == 0;
    return rc;
#else
    *finite = 0;
    return dm_fail(err, DM_ERR_DEVICE, "NaN/Inf check: built without CUDA");
#endif
}

/* "step N" or "steps A-B": the steps (1-based) since the last check. */
static const char *step_range(char *buf, size_t size, int64_t first, int64_t last)
{
    if (first == last) snprintf(buf, size, "step %lld", (long long)last);
    else snprintf(buf, size, "steps %lld-%lld", (long long)first, (long long)last);
    return buf;
}

/* Before a checkpoint, at each log and at the end: the parameters (and any
 * layer state) must be finite. The per-step loss check misses a NaN that a
 * relu layer (NaN -> 0) or max pooling hides from the loss but not from the
 * gradients; caught here, the run stops before such parameters reach a
 * checkpoint. Every rank holds the same parameters, so all stop together. */
int tr_check_params(trainer *t, dm_error *err)
{
    int finite = 1, state_finite = 1, rc = all_finite(t, t->m.params, t->m.param_count, &finite, err);
    if (!rc && t->m.state_count) rc = all_finite(t, t->m.state, t->m.state_count, &state_finite, err);
    if (rc || (finite && state_finite)) {
        if (!rc) t->params_checked_step = t->step;
        return rc;
    }
    char steps[64];
    step_range(steps, sizeof steps, t->params_checked_step + 1, t->step);
    if (!finite)
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: parameters are not finite (NaN or Inf) though the loss is: "
                       "training diverged (a NaN hidden from the loss by a ReLU or max pooling reaches the "
                       "gradients; train.nan_policy = skip checks them at every step)",
                       steps);
    return dm_fail(err, DM_ERR_INVALID,
                   "%s: layer state (running statistics) is not finite (NaN or Inf) "
                   "though the loss and parameters are: training diverged",
                   steps);
}

/* The running loss sum of this rank's steps since the last log (metrics[0]):
 * on the host for the CPU, one small download (a host sync) for a device. */
static int loss_sum(trainer *t, float *sum, dm_error *err)
{
    if (t->dev.device == DM_DEVICE_CPU) {
        *sum = t->m.metrics[0];
        return DM_OK;
    }
    return dm_dev_download(&t->dev, sum, t->m.metrics, sizeof(float), err);
}

static int set_loss_sum(trainer *t, float sum, dm_error *err)
{
    if (t->dev.device == DM_DEVICE_CPU) {
        t->m.metrics[0] = sum;
        return DM_OK;
    }
    return dm_dev_upload(&t->dev, t->m.metrics, &sum, sizeof(float), err);
}

/* nan_policy = skip must undo what the bad step's forward did to the layer
 * state, and so must an elastic world that loses a rank mid-step: keep a
 * copy of it from before the step. */
int tr_guard_backup_state(trainer *t, dm_error *err)
{
    if ((!t->x->nan_skip && !t->el) || !t->m.state_count) return DM_OK;
    if (!t->state_backup && !(t->state_backup = dm_dev_alloc(&t->dev, t->m.state_count * sizeof(float), err)))
        return err ? err->code : DM_ERR_NOMEM;
    return dm_dev_copy(&t->dev, t->state_backup, t->m.state, t->m.state_count * sizeof(float), err);
}

int tr_guard_restore_state(trainer *t, dm_error *err)
{
    if (!t->state_backup) return DM_OK;
    return dm_dev_copy(&t->dev, t->m.state, t->state_backup, t->m.state_count * sizeof(float), err);
}

/* NaN/Inf check, before the update. CPU: every step (the loss is on the
 * host). CUDA: every step with nan_policy = skip (one host sync per step),
 * else before each checkpoint and at each log, which sync anyway: a
 * checkpoint never holds what a bad step did. With skip the gradients are
 * checked too (check_params covers them otherwise). Ranks decide together:
 * a skip or stop on one rank alone would leave the others applying its NaN
 * gradients or waiting for it. *skipped: the step was dropped (nan_policy =
 * skip) and counted as done. */
int tr_guard_step(trainer *t, int *skipped, dm_error *err)
{
    const dm_experiment *x = t->x;
    *skipped = 0;
    int ckpt_due = x->checkpoint_every > 0 && (t->step + 1) % x->checkpoint_every == 0;
    if (!(x->device == DM_DEVICE_CPU || x->nan_skip || ckpt_due)) return DM_OK;
    float sum;
    int rc = loss_sum(t, &sum, err);
    if (rc) return rc;
    float window_loss = sum - t->checked_loss_sum; /* steps checked_step+1 .. step+1 */
    /* skip: the gradients too (already reduced, so the same on every
     * rank): a step whose loss is finite can still carry a NaN */
    int grads_ok = 1;
    if (x->nan_skip && (rc = all_finite(t, t->m.grads, t->m.param_count, &grads_ok, err))) return rc;
    float bad_ranks = isfinite(window_loss) && grads_ok ? 0.0f : 1.0f;
    if (t->ci.size > 1 && (rc = tr_allreduce_host(t, &bad_ranks, 1, DM_REDUCE_SUM, err))) return rc;
    if (bad_ranks == 0) {
        t->checked_loss_sum = sum;
        t->checked_step = t->step + 1;
        return DM_OK;
    }
    char where[128], steps[64];
    if (!isfinite(window_loss)) snprintf(where, sizeof where, "is %f on rank %d", (double)window_loss, t->ci.rank);
    else if (!grads_ok) snprintf(where, sizeof where, "is finite but the gradients are not (NaN or Inf)");
    else snprintf(where, sizeof where, "is not finite on %d other rank%s", (int)bad_ranks, bad_ranks > 1 ? "s" : "");
    /* more than one step only on CUDA without skip */
    step_range(steps, sizeof steps, t->checked_step + 1, t->step + 1);
    if (!x->nan_skip)
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: loss %s: training diverged "
                       "(lower optimizer.lr, or set train.nan_policy = skip)",
                       steps, where);
    if (rank0(t)) printf("%s: loss %s, step skipped (nan_policy = skip)\n", steps, where);
    if ((rc = set_loss_sum(t, t->checked_loss_sum, err))) return rc;
    if ((rc = tr_guard_restore_state(t, err))) return rc;
    t->step++;
    t->checked_step = t->step;
    *skipped = 1;
    return DM_OK;
}

/* ---- parameter-sync check (train.sync_check_every) -------------------------- */

/* FNV-1a, 64-bit, over the bytes of buf: cheap, and any changed bit changes
 * the hash. tests/common/ckpt_tool.c (`hash`) computes the same over a checkpoint. */
static uint64_t fnv1a64(const void *buf, size_t bytes)
{
    const unsigned char *p = buf;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* FNV-1a of n floats of a device buffer (downloaded first off the CPU). */
static int hash_dev(trainer *t, const float *buf, size_t n, uint64_t *out, dm_error *err)
{
    size_t bytes = n * sizeof(float);
    if (t->dev.device == DM_DEVICE_CPU) {
        *out = fnv1a64(buf, bytes);
        return DM_OK;
    }
    float *h = malloc(bytes ? bytes : 1);
    if (!h) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int rc = dm_dev_download(&t->dev, h, buf, bytes, err);
    *out = fnv1a64(h, bytes);
    free(h);
    return rc;
}

/* Every rank hashes its parameters (and its layer state, when the model has
 * any) and the hashes are gathered with one allreduce: rank r writes each
 * hash as four 16-bit pieces (exact in float) into its own slots of a
 * zeroed vector [4 x K x N], so the sum holds every rank's hashes. All ranks
 * then compare with rank 0's and, on a difference, stop together with the
 * same message: a lone failing rank would leave the others waiting for it
 * until the timeout. */
int tr_sync_check(trainer *t, dm_error *err)
{
    int N = t->ci.size;
    const int K = t->m.state_count ? 2 : 1; /* hash 0: parameters; hash 1: layer state */
    uint64_t mine[2] = {0, 0};
    int rc = hash_dev(t, t->m.params, t->m.param_count, &mine[0], err);
    if (!rc && K > 1) rc = hash_dev(t, t->m.state, t->m.state_count, &mine[1], err);
    if (rc) return rc;
    float *v = calloc((size_t)N * K * 4, sizeof(float));
    uint64_t *hash = calloc((size_t)N * K, sizeof(uint64_t));
    if (!v || !hash) {
        free(v);
        free(hash);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    for (int j = 0; j < K; j++)
        for (int k = 0; k < 4; k++) v[4 * (K * t->ci.rank + j) + k] = (float)((mine[j] >> (16 * k)) & 0xFFFF);
    rc = N > 1 ? tr_allreduce_host(t, v, (size_t)N * K * 4, DM_REDUCE_SUM, err) : DM_OK;
    for (int r = 0; r < N && rc == DM_OK; r++)
        for (int j = 0; j < K; j++)
            for (int k = 0; k < 4; k++) hash[K * r + j] |= (uint64_t)v[4 * (K * r + j) + k] << (16 * k);
    for (int j = 0; j < K && rc == DM_OK; j++) {
        char bad[256] = "";
        int n_bad = 0;
        for (int r = 0; r < N; r++) {
            if (hash[K * r + j] != hash[j] && n_bad++ < 4) {
                size_t len = strlen(bad);
                snprintf(bad + len, sizeof bad - len, "%srank %d has %016llx", n_bad > 1 ? ", " : "", r,
                         (unsigned long long)hash[K * r + j]);
            }
        }
        if (n_bad)
            rc = dm_fail(err, DM_ERR_INTERNAL,
                         "step %lld: %s between ranks (train.sync_check_every): rank 0 "
                         "has hash %016llx, %s%s",
                         (long long)t->step, j ? "layer state differs" : "parameters differ",
                         (unsigned long long)hash[j], bad, n_bad > 4 ? ", ..." : "");
    }
    if (rc == DM_OK && rank0(t)) {
        char state[64] = "", state_json[64] = "";
        if (K > 1) {
            snprintf(state, sizeof state, ", layer state hash %016llx", (unsigned long long)hash[1]);
            snprintf(state_json, sizeof state_json, ",\"state_hash\":\"%016llx\"", (unsigned long long)hash[1]);
        }
        tr_bar_clear(t);
        printf("sync-check step %lld: parameter hash %016llx on all %d rank%s%s\n", (long long)t->step,
               (unsigned long long)hash[0], N, N == 1 ? "" : "s", state);
        if (t->metrics)
            fprintf(t->metrics, "{\"event\":\"sync_check\",\"step\":%lld,\"hash\":\"%016llx\",\"ranks\":%d%s}\n",
                    (long long)t->step, (unsigned long long)hash[0], N, state_json);
    }
    free(v);
    free(hash);
    return rc;
}
