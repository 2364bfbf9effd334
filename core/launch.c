/* dmnist-run --np N: start N ranks on this machine.
 *  - backend mpi: hand over to mpirun (exec), which starts the ranks;
 *  - any other backend: fork N workers with DMNIST_RANK/DMNIST_WORLD_SIZE
 *    and a fresh file rendezvous, prefix each output line with the rank,
 *    and if one worker fails, stop the others and exit non-zero. */
#define _GNU_SOURCE
#include "launch.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

/* One launcher's variables, in the order rank, size, local rank, local size.
 * The first launcher whose rank or size is set wins: dmnist-run --np and
 * mpirun start their ranks themselves, so inside a Slurm allocation their
 * variables keep priority over the Slurm step's they inherit. */
static const struct {
    const char *name, *vars[4];
} launchers[] = {
    {"dmnist-run --np", {"DMNIST_RANK", "DMNIST_WORLD_SIZE", "DMNIST_LOCAL_RANK", "DMNIST_LOCAL_WORLD_SIZE"}},
    {"mpirun", {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                "OMPI_COMM_WORLD_LOCAL_SIZE"}},
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
    if ((*rc = env_number("SLURM_PROCID", 0, &env->rank, err)) ||
        (*rc = env_number(size_var, 1, &env->size, err)) ||
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
    if (env->size < 0)
        *rc = dm_fail(err, DM_ERR_INVALID, "environment: a Slurm job step without SLURM_NTASKS");
    else if (env->rank >= env->size)
        *rc = dm_fail(err, DM_ERR_INVALID, "environment: SLURM_PROCID=%d is not a rank of %s=%d", env->rank,
                      size_var, env->size);
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
            return dm_fail(err, DM_ERR_INVALID, "environment: %s=%d is not a rank of %s=%d", v[2],
                           env->local_rank, v[3], env->local_size);
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
    if (slurm_rdzv_dir[0]) nftw(slurm_rdzv_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
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
        return dm_fail(err, DM_ERR_IO, "Slurm rendezvous: %s exists and is not a folder of this user "
                       "(set DMNIST_RENDEZVOUS)", dir);
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
    if ((!rdzv || !rdzv[0]) && (rc = slurm_rendezvous(&env, ids->rendezvous, sizeof ids->rendezvous, err)))
        return rc;
    if (ids->rendezvous[0] && (!rdzv || !rdzv[0])) rdzv = ids->rendezvous;
    *cc = (dm_comm_config){sizeof *cc, env.rank, env.size, env.local_rank, rdzv,
                           x->timeout_s, x->device, NULL, NULL, env.local_size};
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
        int local = dm_launch_env_read(&env, &e) == DM_OK && env.local_size > 0 ? env.local_size : 1;
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = (int)(cores / (local > 0 ? local : 1));
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

static const char *backend_of(const char *config_path, const char *const *sets, int n_sets, char *buf, size_t size)
{
    dm_config *cfg = NULL;
    dm_error err = {0};
    buf[0] = 0;
    if (dm_config_load(config_path, &cfg, &err) == DM_OK) {
        for (int i = 0; i < n_sets; i++) dm_config_set(cfg, sets[i], &err);
        const dm_section *s = dm_config_section(cfg, "experiment");
        const dm_kv *b = dm_section_get(s, "backend");
        const dm_kv *d = dm_section_get(s, "device");
        if (b && b->value[0]) snprintf(buf, size, "%s", b->value);
        else snprintf(buf, size, "%s", d && strcmp(d->value, "cuda") == 0 ? "nccl" : "local");
        dm_config_free(cfg);
    }
    return buf;
}

/* argv without "--np N" / "--np=N". */
static char **strip_np(int argc, char **argv, const char *exe)
{
    char **out = calloc((size_t)argc + 1, sizeof *out);
    int k = 0;
    out[k++] = (char *)exe;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--np") == 0) { i++; continue; }
        if (strncmp(argv[i], "--np=", 5) == 0) continue;
        out[k++] = argv[i];
    }
    out[k] = NULL;
    return out;
}

/* Ctrl-C or a SIGTERM to the launcher reaches every rank: each rank sits in
 * its own process group, so the terminal's signal does not. */
static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) { stop_signal = sig; }

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* How much a rank's end says it caused the failure: 3 killed by a signal,
 * 2 failed on its own, 1 stopped because another rank failed, 0 succeeded. */
static int blame(int status)
{
    if (WIFSIGNALED(status)) return 3;
    if (!WIFEXITED(status) || WEXITSTATUS(status) == 0) return 0;
    return WEXITSTATUS(status) == DM_EXIT_PEER ? 1 : 2;
}

typedef struct worker {
    pid_t pid;
    int fd;                 /* read end of its stdout+stderr */
    char line[4096];
    size_t len;
    int done, status;
} worker;

static void flush_line(worker *w, int rank, int force)
{
    char *nl;
    while ((nl = memchr(w->line, '\n', w->len)) || (force && w->len)) {
        size_t n = nl ? (size_t)(nl - w->line) + 1 : w->len;
        printf("[rank %d] %.*s%s", rank, (int)n, w->line, nl ? "" : "\n");
        memmove(w->line, w->line + n, w->len - n);
        w->len -= n;
    }
    if (w->len == sizeof w->line) flush_line(w, rank, 1); /* over-long line */
    fflush(stdout);
}

const char *dm_launch_prog = "dmnist-run";

/* backend mpi: mpirun starts the ranks (the mpi backend reads rank and size
 * from MPI). Returns only when mpirun cannot be started. */
static int exec_mpirun(int argc, char **child_argv, int np)
{
    char nps[16];
    snprintf(nps, sizeof nps, "%d", np);
    int k = 0;
    char **mv = calloc((size_t)argc + 16, sizeof *mv);
    if (!mv) { fprintf(stderr, "%s: out of memory\n", dm_launch_prog); return 1; }
    mv[k++] = "mpirun";
    mv[k++] = "-np";
    mv[k++] = nps;
    if (getuid() == 0) mv[k++] = "--allow-run-as-root";
    mv[k++] = "--oversubscribe";
    mv[k++] = "--tag-output";
    for (char **a = child_argv; *a; a++) mv[k++] = *a;
    mv[k] = NULL;
    fflush(stdout);
    execvp("mpirun", mv);
    fprintf(stderr, "%s: --np with backend mpi needs mpirun on the PATH: %s\n", dm_launch_prog, strerror(errno));
    free(mv);
    return 2;
}

/* Fork the ranks, each in its own process group with DMNIST_* set and its
 * output on a pipe; returns how many started. */
static int start_workers(const char *exe, char **child_argv, int np, const char *rdzv, worker *w)
{
    char nps[16];
    snprintf(nps, sizeof nps, "%d", np);
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < np; r++) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0) {
            fprintf(stderr, "%s: pipe: %s\n", dm_launch_prog, strerror(errno));
            return r;
        }
        pid_t pid = fork();
        if (pid == 0) {
            char rs[16];
            snprintf(rs, sizeof rs, "%d", r);
            setenv("DMNIST_RANK", rs, 1);
            setenv("DMNIST_LOCAL_RANK", rs, 1);
            setenv("DMNIST_WORLD_SIZE", nps, 1);
            setenv("DMNIST_LOCAL_WORLD_SIZE", nps, 1);
            setenv("DMNIST_RENDEZVOUS", rdzv, 1);
            dup2(fds[1], 1);
            dup2(fds[1], 2);
            setpgid(0, 0);
            execv(exe, child_argv);
            fprintf(stderr, "exec %s failed: %s\n", exe, strerror(errno));
            _exit(127);
        }
        close(fds[1]);
        w[r].pid = pid;
        w[r].fd = fds[0];
    }
    return np;
}

/* The supervisor's state over the running ranks. */
typedef struct crew {
    worker *w;
    int np, running;
    int failed_rank, exit_code, forwarded;
    double peer_wait_until;      /* a DM_EXIT_PEER rank waits this long for the rank it points at */
    double term_at, kill_at;     /* after a failure: SIGTERM, then SIGKILL, to the ranks left */
} crew;

/* Ctrl-C or SIGTERM to the launcher: pass it on to every rank. */
static void forward_stop_signal(crew *c)
{
    c->forwarded = 1;
    fprintf(stderr, "%s: signal %d: stopping all %d ranks\n", dm_launch_prog, (int)stop_signal, c->np);
    for (int o = 0; o < c->np; o++)
        if (!c->w[o].done) { kill(-c->w[o].pid, (int)stop_signal); kill(-c->w[o].pid, SIGCONT); }
    c->kill_at = mono_now() + 5;
    c->term_at = c->kill_at; /* SIGKILL whatever is left after 5 s */
    if (c->failed_rank < 0) c->exit_code = 128 + (int)stop_signal;
}

/* Copy each rank's output, prefixed, for up to 200 ms. */
static void relay_output(crew *c, struct pollfd *pfd)
{
    for (int r = 0; r < c->np; r++) pfd[r] = (struct pollfd){c->w[r].fd, POLLIN, 0};
    poll(pfd, (nfds_t)c->np, 200);
    for (int r = 0; r < c->np; r++) {
        worker *w = &c->w[r];
        if (w->fd < 0 || !(pfd[r].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t got = read(w->fd, w->line + w->len, sizeof w->line - w->len);
        if (got > 0) {
            w->len += (size_t)got;
            flush_line(w, r, 0);
        } else {
            flush_line(w, r, 1);
            close(w->fd);
            w->fd = -1;
        }
    }
}

/* Reap every rank that ended, then blame one: a rank killed by a signal
 * before one that failed, since a peer's death usually makes the others
 * fail a moment later, and both may be reaped together; a rank that says it
 * stopped only because another failed (DM_EXIT_PEER) last, and only after a
 * grace for the one it means. */
static void reap_and_blame(crew *c)
{
    for (int r = 0; r < c->np; r++) {
        int st;
        if (!c->w[r].done && waitpid(c->w[r].pid, &st, WNOHANG) == c->w[r].pid) {
            c->w[r].done = 1;
            c->w[r].status = st;
            c->running--;
        }
    }
    int culprit = -1;
    for (int r = 0; r < c->np; r++)
        if (c->w[r].done && blame(c->w[r].status) > (culprit < 0 ? 0 : blame(c->w[culprit].status))) culprit = r;
    if (culprit >= 0 && blame(c->w[culprit].status) == 1) {
        double now = mono_now();
        if (c->peer_wait_until == 0) c->peer_wait_until = now + 2;
        if (now < c->peer_wait_until && c->running > 0) culprit = -1;
    }
    if (culprit < 0 || c->failed_rank >= 0 || c->forwarded) return;
    int st = c->w[culprit].status;
    c->failed_rank = culprit;
    c->exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    if (WIFSIGNALED(st))
        fprintf(stderr, "%s: rank %d was killed by signal %d; stopping the other ranks\n", dm_launch_prog, culprit,
                WTERMSIG(st));
    else
        fprintf(stderr, "%s: rank %d failed (exit %d); stopping the other ranks\n", dm_launch_prog, culprit,
                WEXITSTATUS(st));
    /* A short grace first: the others usually fail at once too (a refused
     * checkpoint, a lost peer) and their own line says why. */
    double now = mono_now();
    c->term_at = now + 2;
    c->kill_at = now + 7;
}

/* Until every rank has ended: relay output, pass on signals, blame the
 * first failure and stop the rest. Returns the launcher's exit code. */
static int supervise(worker *w, int np)
{
    crew c = {w, np, np, -1, 0, 0, 0, 0, 0};
    struct pollfd *pfd = calloc((size_t)(np ? np : 1), sizeof *pfd);
    if (!pfd) { fprintf(stderr, "%s: out of memory\n", dm_launch_prog); return 1; }
    struct sigaction sa = {0};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    while (c.running > 0) {
        if (stop_signal && !c.forwarded) forward_stop_signal(&c);
        relay_output(&c, pfd);
        reap_and_blame(&c);
        double now = mono_now();
        if (c.term_at > 0 && now > c.term_at)
            for (int o = 0; o < np; o++)
                if (!w[o].done) {
                    kill(-w[o].pid, now > c.kill_at ? SIGKILL : SIGTERM);
                    kill(-w[o].pid, SIGCONT); /* a stopped rank must see its SIGTERM now */
                }
    }
    for (int r = 0; r < np; r++) if (w[r].fd >= 0) { flush_line(&w[r], r, 1); close(w[r].fd); }
    free(pfd);
    if (c.failed_rank < 0 && c.forwarded) return c.exit_code;
    return c.failed_rank >= 0 ? (c.exit_code ? c.exit_code : 1) : 0;
}

int dm_launch(int argc, char **argv, int np, const char *config_path, const char *const *sets, int n_sets)
{
    char backend[64];
    backend_of(config_path, sets, n_sets, backend, sizeof backend);
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) { fprintf(stderr, "%s: --np: cannot find own executable\n", dm_launch_prog); return 2; }
    exe[n] = 0;
    char **child_argv = strip_np(argc, argv, exe);
    /* One id for this job's ranks: it keys their rendezvous and their job
     * fingerprint, so two jobs sharing a rendezvous never pair up. */
    char job_id[64];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(job_id, sizeof job_id, "run-%ld-%lx%09ld", (long)getpid(), (unsigned long)now.tv_sec, now.tv_nsec);
    setenv("DMNIST_JOB_ID", job_id, 0);

    int rc;
    char rdzv_dir[] = "/tmp/dmnist-rdzv-XXXXXX";
    worker *w = NULL;
    if (strcmp(backend, "mpi") == 0) {
        rc = exec_mpirun(argc, child_argv, np);
    } else if (strcmp(backend, "local") == 0 && np > 1) {
        fprintf(stderr, "%s: --np %d needs a multi-process backend (set experiment.backend = gloo or mpi, "
                "or --set experiment.backend=gloo)\n", dm_launch_prog, np);
        rc = 2;
    } else if (!mkdtemp(rdzv_dir)) {
        fprintf(stderr, "%s: --np: cannot create a rendezvous directory: %s\n", dm_launch_prog, strerror(errno));
        rc = 1;
    } else if (!(w = calloc((size_t)np, sizeof *w))) {
        fprintf(stderr, "%s: out of memory\n", dm_launch_prog);
        rc = 1;
    } else {
        char rdzv[256];
        snprintf(rdzv, sizeof rdzv, "file://%s", rdzv_dir);
        rc = supervise(w, start_workers(exe, child_argv, np, rdzv, w));
    }
    if (strncmp(rdzv_dir, "/tmp/dmnist-rdzv-XXXXXX", sizeof rdzv_dir) != 0)
        nftw(rdzv_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(w);
    free(child_argv);
    return rc;
}
