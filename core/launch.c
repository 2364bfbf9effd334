/* dmnist-run --np N: start N ranks on this machine.
 *  - backend mpi: hand over to mpirun (exec), which starts the ranks;
 *  - any other backend: fork N workers with DMNIST_RANK/DMNIST_WORLD_SIZE
 *    and a fresh file rendezvous, prefix each output line with the rank,
 *    and if one worker fails, stop the others and exit non-zero.
 * --max-restarts K (docs/elastic.md): with experiment.elastic a lost worker
 * never stops the others; it is started again (K times in all) and joins
 * the running job. Without it, a failed job is started again from its
 * newest checkpoint (mpi too: mpirun is then run, not exec'ed). */
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

void dm_remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

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
    j->elastic = e && (strcmp(e->value, "true") == 0 || strcmp(e->value, "1") == 0 || strcmp(e->value, "yes") == 0 ||
                       strcmp(e->value, "on") == 0);
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
 * from MPI). exec'ed: returns only when mpirun cannot be started; else
 * run: returns its exit code. */
static int mpirun(int argc, char **child_argv, int np, int exec)
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

/* Fork rank r in its own process group with DMNIST_* set and its output on
 * a pipe; 0 when it started. */
static int start_one(const char *exe, char **child_argv, const dm_launch_opts *o, const char *rdzv, int r,
                     worker *wr)
{
    char nps[16], world[16];
    snprintf(nps, sizeof nps, "%d", o->np);
    snprintf(world, sizeof world, "%d", o->np * (o->nodes > 0 ? o->nodes : 1));
    fflush(stdout);
    fflush(stderr);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        fprintf(stderr, "%s: pipe: %s\n", dm_launch_prog, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", dm_launch_prog, strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        char rs[16], global[16];
        snprintf(rs, sizeof rs, "%d", r);
        snprintf(global, sizeof global, "%d", o->node_rank * o->np + r);
        setenv("DMNIST_RANK", global, 1);
        setenv("DMNIST_LOCAL_RANK", rs, 1);
        setenv("DMNIST_WORLD_SIZE", world, 1);
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
    *wr = (worker){.pid = pid, .fd = fds[0]};
    return 0;
}

/* Start local ranks 0..np-1; returns how many started. */
static int start_workers(const char *exe, char **child_argv, const dm_launch_opts *o, const char *rdzv, worker *w)
{
    for (int r = 0; r < o->np; r++)
        if (start_one(exe, child_argv, o, rdzv, r, &w[r]) != 0) return r;
    return o->np;
}

/* The supervisor's state over the running ranks. */
typedef struct crew {
    worker *w;
    int np, running;
    int failed_rank, exit_code, forwarded;
    double peer_wait_until;      /* a DM_EXIT_PEER rank waits this long for the rank it points at */
    double term_at, kill_at;     /* after a failure: SIGTERM, then SIGKILL, to the ranks left */
    /* experiment.elastic: lost ranks are started again, the others go on */
    int elastic, restarts_left, restarts_used, ok, bad_exit;
    const char *exe, *rdzv;
    char **argv;
    const dm_launch_opts *opts;
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

/* Copy what a rank that ended still had on its pipe, then close it. */
static void drain(worker *w, int r)
{
    if (w->fd < 0) return;
    ssize_t got;
    while ((got = read(w->fd, w->line + w->len, sizeof w->line - w->len)) > 0) {
        w->len += (size_t)got;
        flush_line(w, r, 0);
    }
    flush_line(w, r, 1);
    close(w->fd);
    w->fd = -1;
}

static void say_end(char *buf, size_t size, int st)
{
    if (WIFSIGNALED(st)) snprintf(buf, size, "was killed by signal %d", WTERMSIG(st));
    else snprintf(buf, size, "failed (exit %d)", WEXITSTATUS(st));
}

/* experiment.elastic: a rank that ends badly is started again while
 * restarts are left (it joins the running job as a newcomer); the others
 * never stop for it. */
static void elastic_reap(crew *c)
{
    for (int r = 0; r < c->np; r++) {
        worker *w = &c->w[r];
        int st;
        if (w->done || waitpid(w->pid, &st, WNOHANG) != w->pid) continue;
        if (blame(st) == 0) {
            w->done = 1;
            c->running--;
            c->ok++;
            continue;
        }
        char how[64];
        say_end(how, sizeof how, st);
        drain(w, r);
        if (c->restarts_left > 0 && !c->forwarded) {
            c->restarts_left--;
            c->restarts_used++;
            fprintf(stderr, "%s: rank %d %s; starting it again (restart %d, %d left): it joins the running job\n",
                    dm_launch_prog, r, how, c->restarts_used, c->restarts_left);
            if (start_one(c->exe, c->argv, c->opts, c->rdzv, r, w) == 0) continue;
        } else {
            fprintf(stderr, "%s: rank %d %s; the others go on without it (experiment.elastic)\n", dm_launch_prog, r,
                    how);
        }
        w->done = 1;
        w->status = st;
        c->running--;
        if (WIFEXITED(st) && !c->bad_exit) c->bad_exit = WEXITSTATUS(st);
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
static int supervise(crew c)
{
    worker *w = c.w;
    const int np = c.np;
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
        if (c.elastic) elastic_reap(&c);
        else reap_and_blame(&c);
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
    /* elastic: the job succeeded when a rank finished it and no rank failed on its own */
    if (c.elastic) return c.bad_exit ? c.bad_exit : c.ok > 0 ? 0 : 1;
    return c.failed_rank >= 0 ? (c.exit_code ? c.exit_code : 1) : 0;
}

/* One attempt at the job (mpi: through mpirun, exec'ed when it is the only
 * attempt). restarts: lost ranks started again in process (elastic). With
 * --nodes this process is one host's agent: its ranks join the others'
 * through the rendezvous the environment names. */
static int run_job(int argc, char **child_argv, const dm_launch_opts *o, const char *exe, const job_cfg *j,
                   int in_process, int restarts, int only_attempt)
{
    const int np = o->np;
    if (strcmp(j->backend, "mpi") == 0) return mpirun(argc, child_argv, np, only_attempt);
    if (strcmp(j->backend, "local") == 0 && np * (o->nodes > 0 ? o->nodes : 1) > 1) {
        fprintf(stderr, "%s: --np %d needs a multi-process backend (set experiment.backend = gloo or mpi, "
                "or --set experiment.backend=gloo)\n", dm_launch_prog, np);
        return 2;
    }
    char rdzv_dir[] = "/tmp/dmnist-rdzv-XXXXXX";
    const char *shared = o->nodes > 0 ? getenv("DMNIST_RENDEZVOUS") : NULL;
    if (!shared && !mkdtemp(rdzv_dir)) {
        fprintf(stderr, "%s: --np: cannot create a rendezvous directory: %s\n", dm_launch_prog, strerror(errno));
        return 1;
    }
    worker *w = calloc((size_t)np, sizeof *w);
    int rc = 1;
    if (!w) {
        fprintf(stderr, "%s: out of memory\n", dm_launch_prog);
    } else {
        char rdzv[256];
        snprintf(rdzv, sizeof rdzv, "%s%s", shared ? "" : "file://", shared ? shared : rdzv_dir);
        crew c = {.w = w, .np = np, .failed_rank = -1, .elastic = in_process, .restarts_left = restarts,
                  .exe = exe, .rdzv = rdzv, .argv = child_argv, .opts = o};
        c.running = start_workers(exe, child_argv, o, rdzv, w);
        rc = supervise(c);
    }
    if (!shared) dm_remove_tree(rdzv_dir);
    free(w);
    return rc;
}

/* --nodes M --node-rank I: what an agent needs from its host's environment. */
static int agent_refused(const dm_launch_opts *o, const job_cfg *j)
{
    const char *why = NULL;
    const char *rdzv = getenv("DMNIST_RENDEZVOUS"), *job = getenv("DMNIST_JOB_ID");
    if (o->node_rank < 0 || o->node_rank >= o->nodes) why = "--node-rank must be from 0 to --nodes - 1";
    else if (strcmp(j->backend, "mpi") == 0) why = "backend mpi: start the ranks of several hosts with mpirun and a hostfile";
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
        fprintf(stderr, "%s: --max-restarts: %s starts a failed job again from its newest checkpoint: set "
                "train.checkpoint_dir\n", dm_launch_prog,
                j.elastic ? "backend mpi cannot re-form its ranks in process, so it" : "without experiment.elastic "
                "it");
        return 2;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) { fprintf(stderr, "%s: --np: cannot find own executable\n", dm_launch_prog); return 2; }
    exe[n] = 0;
    char **child_argv = strip_np(argc, argv, exe);
    if (!child_argv) { fprintf(stderr, "%s: out of memory\n", dm_launch_prog); return 1; }
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
        if (rc == 0 || rc == 2 || in_process || attempt >= max_restarts || stop_signal) break;
        char ckpt[4096];
        dm_error e = {0};
        int have = dm_checkpoint_latest(j.checkpoint_dir, ckpt, sizeof ckpt, &e) == DM_OK;
        if (have) add_resume(child_argv);
        fprintf(stderr, "%s: the job failed (exit %d); starting it again %s%s (restart %d of %d)\n", dm_launch_prog,
                rc, have ? "from " : "from the start: no checkpoint in ", have ? ckpt : j.checkpoint_dir,
                attempt + 1, max_restarts);
    }
    free(child_argv);
    return rc;
}
