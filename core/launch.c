/* dmnist-run --np N: the workers of this host. Each is forked in its own
 * process group with DMNIST_RANK/DMNIST_WORLD_SIZE and the rendezvous, its
 * output prefixed with its rank; if one fails, the others are stopped and
 * the launcher exits non-zero, or (experiment.elastic) the others go on and
 * the lost one is started again while --max-restarts allows. The job-level
 * decisions (mpirun, agents, restarts from a checkpoint) are launch_job.c's. */
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
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void dm_remove_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

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
    int fd; /* read end of its stdout+stderr */
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

/* Fork rank r in its own process group with DMNIST_* set and its output on
 * a pipe; 0 when it started. */
static int start_one(const char *exe, char **child_argv, const dm_launch_opts *o, const char *rdzv, int r, worker *wr)
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
    double peer_wait_until;  /* a DM_EXIT_PEER rank waits this long for the rank it points at */
    double term_at, kill_at; /* after a failure: SIGTERM, then SIGKILL, to the ranks left */
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
        if (!c->w[o].done) {
            kill(-c->w[o].pid, (int)stop_signal);
            kill(-c->w[o].pid, SIGCONT);
        }
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
    char how[64];
    say_end(how, sizeof how, st);
    fprintf(stderr, "%s: rank %d %s; stopping the other ranks\n", dm_launch_prog, culprit, how);
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
    if (!pfd) {
        fprintf(stderr, "%s: out of memory\n", dm_launch_prog);
        return 1;
    }
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
    for (int r = 0; r < np; r++)
        if (w[r].fd >= 0) {
            flush_line(&w[r], r, 1);
            close(w[r].fd);
        }
    free(pfd);
    if (c.failed_rank < 0 && c.forwarded) return c.exit_code;
    /* elastic: the job succeeded when a rank finished it and no rank failed on its own */
    if (c.elastic) return c.bad_exit ? c.bad_exit : c.ok > 0 ? 0 : 1;
    return c.failed_rank >= 0 ? (c.exit_code ? c.exit_code : 1) : 0;
}

int dm_run_workers(const char *exe, char **child_argv, const dm_launch_opts *o, const char *rdzv, int elastic,
                   int restarts)
{
    worker *w = calloc((size_t)o->np, sizeof *w);
    if (!w) {
        fprintf(stderr, "%s: out of memory\n", dm_launch_prog);
        return 1;
    }
    crew c = {.w = w,
              .np = o->np,
              .failed_rank = -1,
              .elastic = elastic,
              .restarts_left = restarts,
              .exe = exe,
              .rdzv = rdzv,
              .argv = child_argv,
              .opts = o};
    c.running = start_workers(exe, child_argv, o, rdzv, w);
    int rc = supervise(c);
    free(w);
    return rc;
}

int dm_launch_stopped(void) { return stop_signal != 0; }
