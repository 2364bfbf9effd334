/* dmnist-run --np N: the job-level decisions of the launcher (launch.c
 * supervises the workers): what the experiment says (backend, elastic,
 * checkpoints), mpirun for backend mpi, one host's agent of several
 * (--nodes), and --max-restarts: a failed job started again from its newest
 * checkpoint, unless experiment.elastic restarts lost ranks in process. */
#define _GNU_SOURCE
#include "launch.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* What the launcher needs of the experiment (the ranks validate the rest). */
typedef struct job_cfg {
    char backend[64];
    int elastic;
    char checkpoint_dir[1024];
} job_cfg;

static void read_job_cfg(const char *config_path, const char *const *sets, int n_sets, job_cfg *j)
{
    dm_config *cfg = NULL;
    dm_error err = {0};
    memset(j, 0, sizeof *j);
    if (dm_config_load(config_path, &cfg, &err) != DM_OK) return;
    for (int i = 0; i < n_sets; i++) dm_config_set(cfg, sets[i], &err);
    const dm_section *s = dm_config_section(cfg, "experiment");
    const dm_kv *b = dm_section_get(s, "backend");
    const dm_kv *d = dm_section_get(s, "device");
    const dm_kv *e = dm_section_get(s, "elastic");
    const dm_kv *c = dm_section_get(dm_config_section(cfg, "train"), "checkpoint_dir");
    if (b && b->value[0]) snprintf(j->backend, sizeof j->backend, "%s", b->value);
    else snprintf(j->backend, sizeof j->backend, "%s", d && strcmp(d->value, "cuda") == 0 ? "nccl" : "local");
    int64_t on = 0;
    j->elastic = e && dm_param_parse_bool(e->value, &on) && on; /* as the ranks will read it */
    if (c) snprintf(j->checkpoint_dir, sizeof j->checkpoint_dir, "%s", c->value);
    dm_config_free(cfg);
}

/* argv without the launcher's own options (--np N, --max-restarts K,
 * --nodes M, --node-rank I; each also as --opt=V),
 * with room for a "--resume" at the end. */
static char **strip_np(int argc, char **argv, const char *exe)
{
    char **out = calloc((size_t)argc + 2, sizeof *out);
    int k = 0;
    out[k++] = (char *)exe;
    for (int i = 1; i < argc; i++) {
        static const char *const ours[] = {"--np", "--max-restarts", "--nodes", "--node-rank"};
        int skip = 0;
        for (size_t k = 0; k < sizeof ours / sizeof *ours && !skip; k++) {
            size_t n = strlen(ours[k]);
            if (strcmp(argv[i], ours[k]) == 0) skip = 2; /* the option and its value */
            else if (strncmp(argv[i], ours[k], n) == 0 && argv[i][n] == '=') skip = 1;
        }
        if (skip) {
            i += skip - 1;
            continue;
        }
        out[k++] = argv[i];
    }
    out[k] = NULL;
    return out;
}

/* Add --resume to argv (room was left for it) unless it is there. */
static void add_resume(char **argv)
{
    int k = 0;
    for (; argv[k]; k++)
        if (strcmp(argv[k], "--resume") == 0) return;
    argv[k] = "--resume";
    argv[k + 1] = NULL;
}

/* backend mpi: mpirun starts the ranks (the mpi backend reads rank and size
 * from MPI). exec'ed: returns only when mpirun cannot be started; else
 * run: returns its exit code. */
static int mpirun(int argc, char **child_argv, int np, int exec)
{
    char nps[16];
    snprintf(nps, sizeof nps, "%d", np);
    int k = 0;
    char **mv = calloc((size_t)argc + 16, sizeof *mv);
    if (!mv) {
        fprintf(stderr, "%s: out of memory\n", dm_launch_prog);
        return 1;
    }
    mv[k++] = "mpirun";
    mv[k++] = "-np";
    mv[k++] = nps;
    if (getuid() == 0) mv[k++] = "--allow-run-as-root";
    mv[k++] = "--oversubscribe";
    mv[k++] = "--tag-output";
    for (char **a = child_argv; *a; a++) mv[k++] = *a;
    mv[k] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = exec ? 0 : fork();
    if (pid == 0) {
        execvp("mpirun", mv);
        fprintf(stderr, "%s: --np with backend mpi needs mpirun on the PATH: %s\n", dm_launch_prog, strerror(errno));
        if (!exec) _exit(127);
    }
    free(mv);
    int st = 0;
    if (exec || pid < 0 || waitpid(pid, &st, 0) != pid) return 2;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* One attempt at the job (mpi: through mpirun, exec'ed when it is the only
 * attempt). restarts: lost ranks started again in process (elastic). With
 * --nodes this process is one host's agent: its ranks join the others'
 * through the rendezvous the environment names. */
static int run_job(int argc, char **child_argv, const dm_launch_opts *o, const char *exe, const job_cfg *j,
                   int in_process, int restarts, int only_attempt)
{
    if (strcmp(j->backend, "mpi") == 0) return mpirun(argc, child_argv, o->np, only_attempt);
    if (strcmp(j->backend, "local") == 0 && o->np * (o->nodes > 0 ? o->nodes : 1) > 1) {
        fprintf(stderr,
                "%s: --np %d needs a multi-process backend (set experiment.backend = gloo or mpi, "
                "or --set experiment.backend=gloo)\n",
                dm_launch_prog, o->np);
        return 2;
    }
    char rdzv_dir[] = "/tmp/dmnist-rdzv-XXXXXX";
    const char *shared = o->nodes > 0 ? getenv("DMNIST_RENDEZVOUS") : NULL;
    if (!shared && !mkdtemp(rdzv_dir)) {
        fprintf(stderr, "%s: --np: cannot create a rendezvous directory: %s\n", dm_launch_prog, strerror(errno));
        return 1;
    }
    char rdzv[256];
    snprintf(rdzv, sizeof rdzv, "%s%s", shared ? "" : "file://", shared ? shared : rdzv_dir);
    int rc = dm_run_workers(exe, child_argv, o, rdzv, in_process, restarts);
    if (!shared) dm_remove_tree(rdzv_dir);
    return rc;
}

/* --nodes M --node-rank I: what an agent needs from its host's environment. */
static int agent_refused(const dm_launch_opts *o, const job_cfg *j)
{
    const char *why = NULL;
    const char *rdzv = getenv("DMNIST_RENDEZVOUS"), *job = getenv("DMNIST_JOB_ID");
    if (o->node_rank < 0 || o->node_rank >= o->nodes) why = "--node-rank must be from 0 to --nodes - 1";
    else if (strcmp(j->backend, "mpi") == 0)
        why = "backend mpi: start the ranks of several hosts with mpirun and a hostfile";
    else if (!rdzv || !rdzv[0]) why = "export DMNIST_RENDEZVOUS: a rendezvous every host sees (file:///shared/folder)";
    else if (!job || !job[0]) why = "export DMNIST_JOB_ID: one id for the job, the same on every host";
    else if (o->max_restarts > 0 && !j->elastic)
        why = "--max-restarts with --nodes needs experiment.elastic (each agent restarts its own ranks, which join the "
              "running job)";
    if (why) fprintf(stderr, "%s: --nodes %d --node-rank %d: %s\n", dm_launch_prog, o->nodes, o->node_rank, why);
    return why != NULL;
}

int dm_launch(int argc, char **argv, const dm_launch_opts *o, const char *config_path, const char *const *sets,
              int n_sets)
{
    const int max_restarts = o->max_restarts;
    job_cfg j;
    read_job_cfg(config_path, sets, n_sets, &j);
    if (o->nodes > 0 && agent_refused(o, &j)) return 2;
    /* mpi has no fault-tolerant communicators: its ranks never re-form in process */
    const int in_process = j.elastic && strcmp(j.backend, "mpi") != 0;
    if (max_restarts > 0 && !in_process && !j.checkpoint_dir[0]) {
        fprintf(stderr,
                "%s: --max-restarts: %s starts a failed job again from its newest checkpoint: set "
                "train.checkpoint_dir\n",
                dm_launch_prog,
                j.elastic ? "backend mpi cannot re-form its ranks in process, so it"
                          : "without experiment.elastic "
                            "it");
        return 2;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        fprintf(stderr, "%s: --np: cannot find own executable\n", dm_launch_prog);
        return 2;
    }
    exe[n] = 0;
    char **child_argv = strip_np(argc, argv, exe);
    if (!child_argv) {
        fprintf(stderr, "%s: out of memory\n", dm_launch_prog);
        return 1;
    }
    /* One id for this job's ranks: it keys their rendezvous and their job
     * fingerprint, so two jobs sharing a rendezvous never pair up. Each
     * attempt of a restarted job gets its own. */
    char base[64], job_id[96];
    const char *given = getenv("DMNIST_JOB_ID");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (given && given[0]) snprintf(base, sizeof base, "%s", given);
    else snprintf(base, sizeof base, "run-%ld-%lx%09ld", (long)getpid(), (unsigned long)now.tv_sec, now.tv_nsec);
    int rc = 1;
    for (int attempt = 0;; attempt++) {
        snprintf(job_id, sizeof job_id, attempt ? "%s.a%d" : "%s", base, attempt);
        setenv("DMNIST_JOB_ID", job_id, 1);
        rc = run_job(argc, child_argv, o, exe, &j, in_process, in_process ? max_restarts : 0, max_restarts == 0);
        if (rc == 0 || rc == 2 || in_process || attempt >= max_restarts || dm_launch_stopped()) break;
        char ckpt[4096];
        dm_error e = {0};
        int have = dm_checkpoint_latest(j.checkpoint_dir, ckpt, sizeof ckpt, &e) == DM_OK;
        if (have) add_resume(child_argv);
        fprintf(stderr, "%s: the job failed (exit %d); starting it again %s%s (restart %d of %d)\n", dm_launch_prog, rc,
                have ? "from " : "from the start: no checkpoint in ", have ? ckpt : j.checkpoint_dir, attempt + 1,
                max_restarts);
    }
    free(child_argv);
    return rc;
}
