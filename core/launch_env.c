/* Where this process sits in a job: the one reader of every launcher's
 * environment (dmnist-run --np, mpirun, srun, PMI), the comm config built
 * from it, and the CPU threads per rank that follow from it. */
#define _GNU_SOURCE
#include "launch.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* One launcher's variables, in the order rank, size, local rank, local size.
 * The first launcher whose rank or size is set wins: dmnist-run --np and
 * mpirun start their ranks themselves, so inside a Slurm allocation their
 * variables keep priority over the Slurm step's they inherit. */
static const struct {
    const char *name, *vars[4];
} launchers[] = {
    {"dmnist-run --np", {"DMNIST_RANK", "DMNIST_WORLD_SIZE", "DMNIST_LOCAL_RANK", "DMNIST_LOCAL_WORLD_SIZE"}},
    {"mpirun",
     {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"}},
    {DM_LAUNCHER_SLURM, {NULL, NULL, NULL, NULL}}, /* srun: read by slurm_read */
    {"a PMI launcher", {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"}},
    {"a PMIx launcher", {"PMIX_RANK", NULL, NULL, NULL}}, /* srun --mpi=pmix: the rank only */
};

/* A variable's value as a number >= min, -1 when unset; else an error. */
static int env_number(const char *name, int min, int *out, dm_error *err)
{
    const char *v = name ? getenv(name) : NULL;
    *out = -1;
    if (!v || !v[0]) return DM_OK;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < min || n > 1 << 24)
        return dm_fail(err, DM_ERR_INVALID, "environment: %s='%s' is not a number from %d to %d", name, v, min,
                       1 << 24);
    *out = (int)n;
    return DM_OK;
}

/* The first of two variables that is set (Slurm spells some two ways). */
static const char *either(const char *a, const char *b)
{
    const char *v = getenv(a);
    return v && v[0] ? a : getenv(b) && getenv(b)[0] ? b : NULL;
}

/* Slurm's step id when this process is a task of a job step that srun
 * started (SLURM_STEP_ID, or SLURM_STEPID from older Slurm), else -1. A
 * batch script's own shell, salloc's shell and the extern or interactive
 * step have SLURM_PROCID=0 and the job's SLURM_NTASKS too, but they are no
 * rank of anything: either no step id, or one of Slurm's special ids
 * (0xfffffff0 and above: batch, extern, interactive, pending). */
long dm_slurm_step(void)
{
    const char *name = either("SLURM_STEP_ID", "SLURM_STEPID");
    if (!name || !getenv("SLURM_JOB_ID")) return -1;
    char *end;
    errno = 0;
    unsigned long long id = strtoull(getenv(name), &end, 10);
    if (errno || *end || id >= 0xfffffff0ULL) return -1;
    return (long)id;
}

/* The count for node `node` (0-based) of a Slurm tasks-per-node list such
 * as "2(x3),1" (2 on each of the first 3 nodes, then 1); -1 when the list
 * is malformed or shorter. */
int dm_slurm_tasks_on_node(const char *spec, int node)
{
    const char *p = spec;
    if (!p || !*p || node < 0) return -1;
    for (;;) {
        char *end;
        errno = 0;
        long count = strtol(p, &end, 10), times = 1;
        if (errno || end == p || count < 0 || count > 1 << 24) return -1;
        p = end;
        if (*p == '(') {
            if (p[1] != 'x') return -1;
            times = strtol(p + 2, &end, 10);
            if (errno || end == p + 2 || times < 1 || *end != ')') return -1;
            p = end + 1;
        }
        if (node < times) return (int)count;
        node -= (int)times;
        if (*p != ',') return -1; /* the list ends before that node */
        p++;
    }
}

/* A Slurm job step's tasks: rank SLURM_PROCID of SLURM_STEP_NUM_TASKS (or
 * SLURM_NTASKS, which srun sets to the step's count), local rank
 * SLURM_LOCALID, local size this node's entry (SLURM_NODEID, the node's
 * index in the step) of SLURM_STEP_TASKS_PER_NODE or SLURM_TASKS_PER_NODE,
 * else SLURM_NTASKS_PER_NODE. Returns 1 when it applies. */
static int slurm_read(dm_launch_env *env, dm_error *err, int *rc)
{
    *rc = DM_OK;
    if (dm_slurm_step() < 0 || !getenv("SLURM_PROCID")) return 0;
    const char *size_var = either("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS");
    /* MPICH's mpiexec inside a step starts ranks of its own: its PMI world
     * is then not the step's, and it wins (Open MPI's mpirun wins above). */
    int pmi_size = -1, slurm_size = -1;
    dm_error e = {0};
    if (env_number("PMI_SIZE", 1, &pmi_size, &e) == DM_OK && pmi_size > 0 &&
        env_number(size_var, 1, &slurm_size, &e) == DM_OK && slurm_size > 0 && pmi_size != slurm_size)
        return 0;
    int node = -1, nodes = -1;
    if ((*rc = env_number("SLURM_PROCID", 0, &env->rank, err)) || (*rc = env_number(size_var, 1, &env->size, err)) ||
        (*rc = env_number("SLURM_LOCALID", 0, &env->local_rank, err)) ||
        (*rc = env_number("SLURM_NODEID", 0, &node, err)) ||
        (*rc = env_number(either("SLURM_STEP_NUM_NODES", "SLURM_NNODES"), 1, &nodes, err)))
        return 1;
    const char *per_node = either("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE");
    if (per_node) {
        env->local_size = dm_slurm_tasks_on_node(getenv(per_node), node < 0 ? 0 : node);
        if (env->local_size < 1) {
            *rc = dm_fail(err, DM_ERR_INVALID, "environment: %s='%s' has no task count for node %d (SLURM_NODEID)",
                          per_node, getenv(per_node), node < 0 ? 0 : node);
            return 1;
        }
    } else if ((*rc = env_number("SLURM_NTASKS_PER_NODE", 1, &env->local_size, err))) {
        return 1;
    }
    env->nodes = nodes;
    if (env->size < 0) *rc = dm_fail(err, DM_ERR_INVALID, "environment: a Slurm job step without SLURM_NTASKS");
    else if (env->rank >= env->size)
        *rc = dm_fail(err, DM_ERR_INVALID, "environment: SLURM_PROCID=%d is not a rank of %s=%d", env->rank, size_var,
                      env->size);
    else if (env->local_rank >= 0 && env->local_size > 0 && env->local_rank >= env->local_size)
        *rc = dm_fail(err, DM_ERR_INVALID, "environment: SLURM_LOCALID=%d is not a rank of %s's %d on node %d",
                      env->local_rank, per_node ? per_node : "SLURM_NTASKS_PER_NODE", env->local_size, node);
    return 1;
}

int dm_launch_env_read(dm_launch_env *env, dm_error *err)
{
    *env = (dm_launch_env){-1, -1, -1, -1, NULL, -1};
    for (size_t k = 0; k < sizeof launchers / sizeof launchers[0]; k++) {
        const char *const *v = launchers[k].vars;
        int rc;
        if (!v[0]) {
            if (slurm_read(env, err, &rc)) {
                if (rc) return rc;
                env->launcher = launchers[k].name;
                return DM_OK;
            }
            *env = (dm_launch_env){-1, -1, -1, -1, NULL, -1};
            continue;
        }
        if (!getenv(v[0]) && !(v[1] && getenv(v[1]))) continue;
        if ((rc = env_number(v[0], 0, &env->rank, err)) || (rc = env_number(v[1], 1, &env->size, err)) ||
            (rc = env_number(v[2], 0, &env->local_rank, err)) || (rc = env_number(v[3], 1, &env->local_size, err)))
            return rc;
        if (env->rank >= 0 && env->size > 0 && env->rank >= env->size)
            return dm_fail(err, DM_ERR_INVALID, "environment: %s=%d is not a rank of %s=%d", v[0], env->rank, v[1],
                           env->size);
        if (env->local_rank >= 0 && env->local_size > 0 && env->local_rank >= env->local_size)
            return dm_fail(err, DM_ERR_INVALID, "environment: %s=%d is not a rank of %s=%d", v[2], env->local_rank,
                           v[3], env->local_size);
        env->launcher = launchers[k].name;
        return DM_OK;
    }
    return DM_OK;
}

/* The folder of a Slurm step's file rendezvous, made once per process and
 * removed at exit by the node's first task. */
static char slurm_rdzv_dir[160];
static void slurm_rdzv_remove(void)
{
    if (slurm_rdzv_dir[0]) dm_remove_tree(slurm_rdzv_dir);
}

/* Under srun on one node with no DMNIST_RENDEZVOUS: file:// of a node-local
 * folder named by job, step and restart count, so that two jobs or steps on
 * one node, or a requeued job, never meet. Several nodes share no such
 * folder: there the backend that needs a rendezvous asks for
 * DMNIST_RENDEZVOUS. */
static int slurm_rendezvous(const dm_launch_env *env, char *url, size_t size, dm_error *err)
{
    url[0] = 0;
    int one_node = env->nodes == 1 || (env->nodes < 0 && env->local_size == env->size);
    if (!env->launcher || strcmp(env->launcher, DM_LAUNCHER_SLURM) != 0 || env->size < 2 || !one_node) return DM_OK;
    char job[128];
    dm_job_id(job, sizeof job); /* SLURM_JOB_ID.SLURM_STEP_ID, unless DMNIST_JOB_ID says otherwise */
    const char *restarts = getenv("SLURM_RESTART_COUNT");
    char dir[sizeof slurm_rdzv_dir];
    snprintf(dir, sizeof dir, "/tmp/dmnist-slurm-%s%s%s", job, restarts && atoi(restarts) > 0 ? ".r" : "",
             restarts && atoi(restarts) > 0 ? restarts : "");
    struct stat st;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return dm_fail(err, DM_ERR_IO, "Slurm rendezvous: cannot create %s: %s (set DMNIST_RENDEZVOUS)", dir,
                       strerror(errno));
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid())
        return dm_fail(err, DM_ERR_IO,
                       "Slurm rendezvous: %s exists and is not a folder of this user "
                       "(set DMNIST_RENDEZVOUS)",
                       dir);
    snprintf(url, size, "file://%s", dir);
    if (env->local_rank == 0 && !slurm_rdzv_dir[0]) {
        snprintf(slurm_rdzv_dir, sizeof slurm_rdzv_dir, "%s", dir);
        atexit(slurm_rdzv_remove);
    }
    return DM_OK;
}

int dm_comm_config_init(dm_comm_config *cc, dm_comm_ids *ids, const dm_experiment *x, dm_error *err)
{
    dm_launch_env env;
    int rc = dm_launch_env_read(&env, err);
    if (rc) return rc;
    ids->rendezvous[0] = 0;
    const char *rdzv = getenv("DMNIST_RENDEZVOUS");
    if ((!rdzv || !rdzv[0]) && (rc = slurm_rendezvous(&env, ids->rendezvous, sizeof ids->rendezvous, err))) return rc;
    if (ids->rendezvous[0] && (!rdzv || !rdzv[0])) rdzv = ids->rendezvous;
    *cc = (dm_comm_config){sizeof *cc,   env.rank,  env.size, env.local_rank, rdzv,
                           x->timeout_s, x->device, NULL,     NULL,           env.local_size};
    /* the job's identity: its rendezvous names carry it, and the ranks compare it after init */
    dm_job_id(ids->job_id, sizeof ids->job_id);
    snprintf(ids->fingerprint, sizeof ids->fingerprint, "%016llx",
             (unsigned long long)dm_job_fingerprint(x, cc->size, ids->job_id));
    cc->job_id = ids->job_id;
    cc->fingerprint = dm_job_check_skipped() ? "" : ids->fingerprint;
    return DM_OK;
}

void dm_set_thread_env(const dm_config *cfg)
{
    const dm_kv *kv = dm_section_get(dm_config_section(cfg, "experiment"), "threads");
    int threads = kv ? atoi(kv->value) : 0;
    if (threads <= 0) {
        dm_launch_env env;
        dm_error e = {0};
        int known = dm_launch_env_read(&env, &e) == DM_OK;
        int local = known && env.local_size > 0 ? env.local_size : 1;
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = (int)(cores / (local > 0 ? local : 1));
        /* a Slurm task owns the CPUs it was given (--cpus-per-task), not the node's */
        const char *cpt = getenv("SLURM_CPUS_PER_TASK");
        if (known && env.launcher && strcmp(env.launcher, DM_LAUNCHER_SLURM) == 0 && cpt && atoi(cpt) > 0)
            threads = atoi(cpt);
        if (threads < 1) threads = 1;
    }
    char buf[16];
    snprintf(buf, sizeof buf, "%d", threads);
    setenv("OMP_NUM_THREADS", buf, 0);
    /* All CPU parallelism goes through OpenMP in the plugins (each task runs
     * a single-threaded sgemm): OpenBLAS's own threads would fight it. */
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    setenv("DMNIST_THREADS", buf, 1);
}
