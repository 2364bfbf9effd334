/* Which job a rank belongs to: the launcher's job id and a fingerprint of
 * the config every rank of one job must share, and the start-up check that
 * all ranks of a communicator carry the same fingerprint.
 *
 * Ranks started with different models would otherwise pair up and fail
 * inside the backend (a broadcast of the weights with different sizes on
 * each side), and two jobs sharing a rendezvous could train together. The
 * check runs right after the communicator forms, before any collective whose
 * size depends on the config, and uses only fixed-size collectives, so it
 * works the same on every backend whatever the ranks were told. */
#include "dm_core.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a, 64-bit */
typedef struct fnv {
    uint64_t h;
} fnv;

static void fnv_bytes(fnv *f, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        f->h ^= b[i];
        f->h *= 0x100000001b3ULL;
    }
}

static void fnv_str(fnv *f, const char *s)
{
    fnv_bytes(f, s ? s : "", strlen(s ? s : "") + 1); /* the NUL separates fields */
}

static void fnv_u64(fnv *f, uint64_t v) { fnv_bytes(f, &v, sizeof v); }

static void fnv_double(fnv *f, double d)
{
    if (d == 0) d = 0; /* -0 == 0 */
    fnv_bytes(f, &d, sizeof d);
}

/* A component instance as validated: its type and every key with defaults
 * filled in, so "lr = 0.1" and "lr = 0.10" hash alike. */
static void fnv_instance(fnv *f, const char *what, const dm_instance_cfg *c)
{
    fnv_str(f, what);
    fnv_str(f, c->name);
    fnv_str(f, c->lc && c->lc->component ? c->lc->component->type_name : "");
    const dm_params *p = c->params ? dm_param_set_params(c->params) : NULL;
    for (int k = 0; p && k < p->count; k++) {
        const dm_param_value *v = &p->values[k];
        fnv_str(f, v->name);
        if (v->type == DM_PARAM_STRING || v->type == DM_PARAM_ENUM) fnv_str(f, v->s);
        else if (v->type == DM_PARAM_FLOAT) fnv_double(f, v->f);
        else fnv_u64(f, (uint64_t)v->i);
    }
}

int dm_job_check_skipped(void)
{
    const char *v = getenv("DMNIST_TEST_SKIP_JOB_CHECK");
    return v && v[0] == '1';
}

void dm_job_id(char *buf, size_t size)
{
    static const char *const names[] = {"DMNIST_JOB_ID", "SLURM_JOB_ID", "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid",
                                        NULL};
    const char *id = NULL;
    int which = -1;
    for (int k = 0; names[k] && !id; k++) {
        const char *v = getenv(names[k]);
        if (v && v[0]) id = v, which = k;
    }
    char raw[256] = "";
    if (id) {
        const char *step = which == 1 ? getenv("SLURM_STEP_ID") : NULL;      /* a Slurm job: its step too */
        if (which == 1 && !(step && step[0])) step = getenv("SLURM_STEPID"); /* older Slurm's spelling */
        snprintf(raw, sizeof raw, "%s%s%s", id, step && step[0] ? "." : "", step ? step : "");
    }
    if (!size) return;
    snprintf(buf, size, "%s", raw);
    dm_plain_name(buf);
}

void dm_plain_name(char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
              *s == '.' || *s == '_'))
            *s = '_';
}

uint64_t dm_job_fingerprint(const dm_experiment *x, int world_size, const char *job_id)
{
    fnv f = {0xcbf29ce484222325ULL};
    fnv_str(&f, "dmnist job 1");
    for (int i = 0; i < x->n_layers; i++) fnv_instance(&f, "layer", &x->layers[i]);
    fnv_instance(&f, "optimizer", &x->opt);
    fnv_double(&f, x->lr);
    fnv_u64(&f, (uint64_t)x->scale_lr);
    fnv_u64(&f, (uint64_t)x->schedule.kind);
    fnv_u64(&f, (uint64_t)x->schedule.warmup_steps);
    fnv_u64(&f, (uint64_t)x->schedule.decay_steps);
    fnv_double(&f, x->schedule.min_lr_frac);
    fnv_instance(&f, "data", &x->data);
    fnv_u64(&f, (uint64_t)x->batch_size);
    fnv_u64(&f, x->seed);
    fnv_u64(&f, (uint64_t)(int64_t)world_size);
    fnv_u64(&f, (uint64_t)x->total_batches);
    fnv_double(&f, x->epochs);
    fnv_u64(&f, (uint64_t)x->device);
    fnv_str(&f, job_id);
    return f.h;
}

/* The number of ranks in [0, below) whose flag is set (exact in float up to
 * 2^24 ranks). */
static int count_below(const dm_comm_vtable *vt, void *comm, int rank, int mismatch, int below, float *out,
                       dm_error *err)
{
    float v = mismatch && rank < below ? 1.0f : 0.0f;
    int rc = vt->allreduce(comm, &v, 1, DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, err);
    *out = v;
    return rc;
}

int dm_job_agree(const dm_comm_vtable *vt, void *comm, int rank, int size, uint64_t fp, dm_error *err)
{
    static const char why[] = "(different config: model, optimizer, data, seed, world size or step budget; "
                              "or another job's rank)";
    if (size <= 1 || dm_job_check_skipped()) return DM_OK;
    dm_error e = {0};
    /* 1: rank 0's fingerprint, as bytes (exact) */
    uint64_t fp0 = fp;
    int rc = vt->broadcast(comm, &fp0, sizeof fp0, 0, DM_DEVICE_CPU, NULL, &e);
    if (rc) return dm_fail(err, rc, "%s", e.msg);
    int mismatch = fp0 != fp;
    /* 2: how many differ; every rank learns it, so every rank refuses */
    float bad = 0;
    if ((rc = count_below(vt, comm, rank, mismatch, size, &bad, &e))) return dm_fail(err, rc, "%s", e.msg);
    if (bad < 0.5f) return DM_OK;
    /* 3: the lowest rank that differs (a search by halves, fixed-size sums),
     * then its fingerprint, so that the ranks agreeing with rank 0 can name it */
    int lo = 0, hi = size;
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        float n = 0;
        if ((rc = count_below(vt, comm, rank, mismatch, mid, &n, &e))) return dm_fail(err, rc, "%s", e.msg);
        if (n > 0.5f) hi = mid;
        else lo = mid;
    }
    int first = lo;
    uint64_t fp_first = fp;
    if ((rc = vt->broadcast(comm, &fp_first, sizeof fp_first, first, DM_DEVICE_CPU, NULL, &e)))
        return dm_fail(err, rc, "%s", e.msg);
    int n_bad = (int)(bad + 0.5f);
    char more[64] = "";
    if (n_bad > 1) snprintf(more, sizeof more, " and %d other rank%s", n_bad - 1, n_bad > 2 ? "s" : "");
    if (mismatch)
        return dm_fail(err, DM_ERR_INVALID, "rank %d: job fingerprint %016llx differs from rank 0's %016llx %s", rank,
                       (unsigned long long)fp, (unsigned long long)fp0, why);
    return dm_fail(err, DM_ERR_INVALID, "rank %d: job fingerprint %016llx differs from rank %d's %016llx%s %s", rank,
                   (unsigned long long)fp, first, (unsigned long long)fp_first, more, why);
}
