/* The probe: every plugin file of a search folder is first loaded in a
 * child process, so that one that crashes, calls exit() or hangs while
 * loading costs a warning naming it instead of the run (docs/plugin-abi.md).
 * The registry (core/registry.c) then loads the accepted files itself. */
#define _GNU_SOURCE
#include "plugin_load.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *dm_plugin_phase_what(int ph)
{
    switch (ph) {
    case PH_ENTRY: return "in dm_plugin_entry";
    case PH_CHECK: return "while its descriptor was read";
    default: return "while loading (in a constructor or a library it needs)";
    }
}

/* The probe child's own exit status when it cannot report through its pipe
 * (a full disk, a fault injected in a test): the parent then loads the file
 * under the in-process guard instead of blaming the plugin. */
#define PROBE_LOST 125

static void report(int fd, const void *buf, size_t len)
{
    ssize_t w;
    while ((w = write(fd, buf, len)) < 0 && errno == EINTR)
        ;
    if (w != (ssize_t)len) _exit(PROBE_LOST);
}

void dm_plugin_phase(int fd, char ph)
{
    if (fd >= 0) {
        report(fd, &ph, 1);
    } else {
        dm_plugin_guard_what("%s", dm_plugin_phase_what(ph));
    }
}

/* In the probe child, an exit() from a plugin ends the child at once, with
 * its status, before any exit handler of the parent's could run. */
static void probe_on_exit(int status, void *arg)
{
    (void)arg;
    _exit(status);
}

/* Child: load ps[from..n) one after the other as the parent would, telling
 * through fd how far it got: per file its phases, then 'O', or 'F', the
 * reason and a NUL. A crash, exit() or hang leaves the file unfinished. */
static void probe_child(const dm_registry *r, const dm_probe *ps, int from, int n, int fd)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 1);
        dup2(null, 2);
    }
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGALRM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], SIG_DFL);
    on_exit(probe_on_exit, NULL);
    for (int i = from; i < n; i++) {
        dm_error e = {0};
        void *h = NULL;
        const dm_plugin_descriptor *d = NULL;
        if (dm_plugin_open(r, ps[i].real, fd, &h, &d, &e) == DM_OK) {
            dm_plugin_phase(fd, PH_OK);
        } else {
            char rec[sizeof e.msg + 2];
            size_t len = strnlen(e.msg, sizeof e.msg - 1);
            rec[0] = PH_FAIL;
            memcpy(rec + 1, e.msg, len);
            rec[len + 1] = 0;
            report(fd, rec, len + 2);
        }
    }
    _exit(0); /* no atexit handlers, no destructors of the parent's state */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* What a probe that neither accepted nor refused the plugin saw, as
 * "crashed (...) while loading (...)"; NULL when it finished. */
static const char *probe_failure(const dm_probe *p, double timeout_s, char *buf, size_t size)
{
    if (p->result) return NULL;
    const char *what = dm_plugin_phase_what(p->phase);
    if (p->timed_out)
        snprintf(buf, size, "did not return within %g s (DMNIST_PLUGIN_LOAD_TIMEOUT_S) %s", timeout_s, what);
    else if (WIFSIGNALED(p->status))
        snprintf(buf, size, "crashed (%s%s) %s", sigabbrev_np(WTERMSIG(p->status)) ? "SIG" : "signal",
                 sigabbrev_np(WTERMSIG(p->status)) ? sigabbrev_np(WTERMSIG(p->status)) : "", what);
    else snprintf(buf, size, "called exit(%d) %s", WEXITSTATUS(p->status), what);
    return buf;
}

/* Act on the probe's verdict on p (probed = 0: there was none), in file
 * order: load it in this process, refuse it, or skip it with a warning. */
int dm_probe_settle(dm_registry *r, const dm_probe *p, int probed, double timeout_s, dm_error *err)
{
    char why[512];
    const char *bad = probed ? probe_failure(p, timeout_s, why, sizeof why) : NULL;
    if (bad) {
        fprintf(stderr, "%s: warning: %s: %s; skipped\n", program_invocation_short_name, p->path, bad);
        return DM_OK;
    }
    if (probed && p->result == PH_FAIL) /* refused (bad ABI ...): never run it here */
        return dm_fail(err, DM_ERR_FORMAT, "%s: %s", p->path, p->msg);
    /* the real load can still refuse it: an unresolved symbol (the probe
     * binds lazily), a type name another file of this folder registered */
    return dm_plugin_load_trusted(r, p->path, p->real, &p->st, timeout_s, err);
}

/* Probe ps[0..n) in a child process, each file within timeout_s (0: no
 * limit), and settle() each as soon as its verdict is in, so this process
 * loads a file while the child goes on with the next. Files share the
 * child, so the libraries they need load once; when the child dies or
 * hangs in a file, a new one goes on after it. */
int dm_probe_all(dm_registry *r, dm_probe *ps, int n, double timeout_s, dm_error *err)
{
    int cur = 0, rc = DM_OK;
    while (cur < n) {
        int pfd[2];
        fflush(stdout);
        fflush(stderr);
        if (pipe2(pfd, O_CLOEXEC) != 0)
            return dm_fail(err, DM_ERR_IO, "cannot probe plugins: pipe: %s", strerror(errno));
        pid_t pid = fork();
        if (pid < 0) {
            close(pfd[0]);
            close(pfd[1]);
            return dm_fail(err, DM_ERR_IO, "cannot probe plugins: fork: %s", strerror(errno));
        }
        if (pid == 0) {
            close(pfd[0]);
            probe_child(r, ps, cur, n, pfd[1]);
        }
        close(pfd[1]);
        int in_msg = 0, timed_out = 0;
        double deadline = now_s() + timeout_s;
        while (rc == DM_OK) {
            int wait_ms = -1;
            if (timeout_s > 0) {
                double left = deadline - now_s();
                if (left <= 0) {
                    timed_out = 1;
                    break;
                }
                wait_ms = (int)(left * 1000) + 1;
            }
            struct pollfd pf = {pfd[0], POLLIN, 0};
            int k = poll(&pf, 1, wait_ms);
            if (k < 0 && errno == EINTR) continue;
            if (k == 0) continue; /* the deadline is checked above */
            char buf[512];
            ssize_t got = read(pfd[0], buf, sizeof buf);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            for (ssize_t j = 0; j < got && cur < n && rc == DM_OK; j++) {
                dm_probe *p = &ps[cur];
                char c = buf[j];
                if (in_msg) {
                    if (c == 0) in_msg = 0, p->result = PH_FAIL;
                    else if (p->n + 1 < sizeof p->msg) {
                        p->msg[p->n++] = c;
                        p->msg[p->n] = 0;
                    }
                } else if (c == PH_OK) {
                    p->result = PH_OK;
                } else if (c == PH_FAIL) {
                    in_msg = 1;
                } else {
                    p->phase = c;
                }
                if (p->result) {
                    rc = dm_probe_settle(r, p, 1, timeout_s, err);
                    cur++;
                    deadline = now_s() + timeout_s;
                }
            }
        }
        if (timed_out || rc != DM_OK) kill(pid, SIGKILL);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        close(pfd[0]);
        if (rc == DM_OK && cur < n) { /* it died (or hung) in ps[cur]: go on after it */
            ps[cur].status = status;
            ps[cur].timed_out = timed_out;
            if (in_msg) ps[cur].result = PH_FAIL; /* died after its message: keep it */
            int lost = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == PROBE_LOST;
            rc = dm_probe_settle(r, &ps[cur], !lost, timeout_s, err);
            cur++;
        }
        if (rc != DM_OK) break;
    }
    return rc;
}
