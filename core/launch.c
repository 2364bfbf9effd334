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

void dm_remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
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
        dm_remove_tree(rdzv_dir);
    free(w);
    free(child_argv);
    return rc;
}
