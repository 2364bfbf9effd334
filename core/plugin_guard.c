/* A guard around calls into a plugin (loading it, its create/open/init):
 * while armed, a crash, an exit() or a hang names the plugin file in one
 * line and ends the process with status 2, instead of a bare "Segmentation
 * fault", a silent exit 0 or a run that never ends.
 *
 * The messages are formatted when the guard is armed; the handlers only
 * write() them (async-signal-safe) and _exit(). */
#define _GNU_SOURCE
#include "dm_core.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/time.h>
#include <unistd.h>

static const int g_sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
#define N_SIGS ((int)(sizeof g_sigs / sizeof g_sigs[0]))

static volatile sig_atomic_t g_active;
static char g_head[4200]; /* "dmnist-run: /path/to/plugin.so: " */
static char g_what[512];  /* "while loading (in a constructor)" */
static size_t g_head_len, g_what_len;
static double g_timeout_s;
static struct sigaction g_old[N_SIGS], g_old_alrm;
static struct itimerval g_old_timer;
static stack_t g_old_stack;
static char g_stack[64 * 1024] __attribute__((aligned(16)));
static int g_atexit_set;

static void say(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t k = write(2, s, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return;
        s += k;
        n -= (size_t)k;
    }
}
#define SAY(lit) say(lit, sizeof(lit) - 1)
#define DIE(lit) die_named(lit, sizeof(lit) - 1)

static void die_named(const char *event, size_t n)
{
    say(g_head, g_head_len);
    say(event, n);
    say(g_what, g_what_len);
    SAY("\n");
    _exit(2);
}

static void on_crash(int sig)
{
    switch (sig) {
    case SIGSEGV: DIE("crashed (SIGSEGV, invalid memory access) "); break;
    case SIGBUS: DIE("crashed (SIGBUS, bus error) "); break;
    case SIGILL: DIE("crashed (SIGILL, illegal instruction) "); break;
    case SIGFPE: DIE("crashed (SIGFPE, arithmetic error) "); break;
    default: DIE("aborted (SIGABRT) "); break;
    }
}

static void on_alarm(int sig)
{
    (void)sig;
    char num[32];
    int n = 0;
    unsigned long s = (unsigned long)(g_timeout_s + 0.5);
    char rev[24];
    int k = 0;
    do {
        rev[k++] = (char)('0' + s % 10);
        s /= 10;
    } while (s && k < 20);
    while (k) num[n++] = rev[--k];
    say(g_head, g_head_len);
    SAY("did not return within ");
    say(num, (size_t)n);
    SAY(" s (DMNIST_PLUGIN_LOAD_TIMEOUT_S) ");
    say(g_what, g_what_len);
    SAY("\n");
    _exit(2);
}

/* Not a signal handler: snprintf is fine here. */
static void on_exit_hook(int status, void *arg)
{
    (void)arg;
    if (!g_active) return;
    char event[48];
    int n = snprintf(event, sizeof event, "called exit(%d) ", status);
    die_named(event, n > 0 ? (size_t)n : 0);
}

double dm_plugin_load_timeout_s(dm_error *err)
{
    const char *v = getenv("DMNIST_PLUGIN_LOAD_TIMEOUT_S");
    if (!v || !v[0]) return 60; /* generous: cuBLAS alone takes seconds to load on a busy or slow machine */
    char *end = NULL;
    errno = 0;
    double s = strtod(v, &end);
    if (errno || end == v || *end || !(s >= 0) || s > 86400) {
        dm_fail(err, DM_ERR_INVALID,
                "DMNIST_PLUGIN_LOAD_TIMEOUT_S='%s': want seconds in [0, 86400] "
                "(0: no limit)",
                v);
        return -1;
    }
    return s;
}

void dm_plugin_guard_what(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(g_what, sizeof g_what, fmt, ap);
    va_end(ap);
    g_what_len = n < 0 ? 0 : (size_t)n < sizeof g_what ? (size_t)n : sizeof g_what - 1;
}

void dm_plugin_guard_begin(const char *path, double timeout_s, const char *fmt, ...)
{
    if (g_active) dm_plugin_guard_end();
    int n = snprintf(g_head, sizeof g_head, "%s: %s: ", program_invocation_short_name, path);
    g_head_len = n < 0 ? 0 : (size_t)n < sizeof g_head ? (size_t)n : sizeof g_head - 1;
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(g_what, sizeof g_what, fmt, ap);
    va_end(ap);
    g_what_len = n < 0 ? 0 : (size_t)n < sizeof g_what ? (size_t)n : sizeof g_what - 1;
    if (!g_atexit_set) g_atexit_set = on_exit(on_exit_hook, NULL) == 0;

    /* an alternate stack, so a stack overflow in the plugin still reaches us */
    stack_t ss = {.ss_sp = g_stack, .ss_size = sizeof g_stack, .ss_flags = 0};
    sigaltstack(&ss, &g_old_stack);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_ONSTACK;
    sigfillset(&sa.sa_mask);
    for (int i = 0; i < N_SIGS; i++) sigaction(g_sigs[i], &sa, &g_old[i]);
    g_timeout_s = timeout_s;
    if (timeout_s > 0) {
        sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, &g_old_alrm);
        struct itimerval it = {{0, 0},
                               {(time_t)timeout_s, (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)}};
        if (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0) it.it_value.tv_usec = 1;
        setitimer(ITIMER_REAL, &it, &g_old_timer);
    }
    g_active = 1;
}

void dm_plugin_guard_end(void)
{
    if (!g_active) return;
    g_active = 0;
    /* Put back what was there, unless the plugin installed a handler of its
     * own meanwhile (MPI_Init does): that one stays. */
    struct sigaction now;
    if (g_timeout_s > 0) {
        setitimer(ITIMER_REAL, &g_old_timer, NULL);
        if (sigaction(SIGALRM, NULL, &now) == 0 && now.sa_handler == on_alarm) sigaction(SIGALRM, &g_old_alrm, NULL);
    }
    for (int i = 0; i < N_SIGS; i++)
        if (sigaction(g_sigs[i], NULL, &now) == 0 && now.sa_handler == on_crash) sigaction(g_sigs[i], &g_old[i], NULL);
    /* keep a stack someone else installed; drop ours */
    if (!(g_old_stack.ss_flags & SS_DISABLE)) sigaltstack(&g_old_stack, NULL);
    else {
        stack_t off = {.ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE};
        sigaltstack(&off, NULL);
    }
}
