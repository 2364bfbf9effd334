/* Elastic membership over the job's file rendezvous (elastic.h says how a
 * round works; docs/elastic.md what a user sees). */
#define _GNU_SOURCE
#include "elastic.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_MEMBERS 4096
#define HEARTBEAT_S 0.2 /* how often a process touches hb.<id> */
#define STALE_S 1.0     /* a heartbeat this old: the process is gone or frozen */

typedef struct member {
    char id[128];
    char host[64];
    int prev; /* rank in the previous world, -1 for a newcomer */
    long pid;
    int64_t step;
} member;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The heartbeat: a thread of its own, so a rank blocked in a collective
 * still shows it is alive; a killed or stopped process stops at once. */
static char hb_path[1300];
static void *heartbeat(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = open(hb_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            futimens(fd, NULL);
            close(fd);
        }
        usleep((useconds_t)(HEARTBEAT_S * 1e6));
    }
    return NULL;
}

static int start_heartbeat(const dm_elastic *e)
{
    static int started;
    if (started) return 0;
    snprintf(hb_path, sizeof hb_path, "%s/hb.%s", e->dir, e->id);
    pthread_t th;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &a, heartbeat, NULL);
    pthread_attr_destroy(&a);
    started = rc == 0;
    return rc;
}

/* The member's heartbeat is fresh. */
static int alive(const dm_elastic *e, const char *id)
{
    char p[1300];
    struct stat st;
    snprintf(p, sizeof p, "%s/hb.%s", e->dir, id);
    if (stat(p, &st) != 0) return 0;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double age = (double)(now.tv_sec - st.st_mtim.tv_sec) + 1e-9 * (double)(now.tv_nsec - st.st_mtim.tv_nsec);
    return age < STALE_S;
}

int dm_elastic_open(dm_elastic *e, const char *rendezvous, const char *job_id, int min_ranks, int max_ranks,
                    double settle_s, double timeout_s, dm_error *err)
{
    memset(e, 0, sizeof *e);
    if (!rendezvous || strncmp(rendezvous, "file://", 7) != 0 || !rendezvous[7])
        return dm_fail(err, DM_ERR_INVALID,
                       "experiment.elastic: needs a file:// rendezvous (DMNIST_RENDEZVOUS=file:///FOLDER, a folder "
                       "every rank sees; dmnist-run --np makes one), not '%s'",
                       rendezvous ? rendezvous : "");
    char job[128];
    snprintf(job, sizeof job, "%s", job_id && job_id[0] ? job_id : "nojob"); /* dm_job_id's: plain */
    int n = snprintf(e->dir, sizeof e->dir, "%s/elastic.%s", rendezvous + 7, job);
    if (n < 0 || (size_t)n >= sizeof e->dir)
        return dm_fail(err, DM_ERR_INVALID, "experiment.elastic: rendezvous folder name too long");
    struct stat st;
    if (mkdir(e->dir, 0700) != 0 && errno != EEXIST)
        return dm_fail(err, DM_ERR_IO, "experiment.elastic: cannot create %s: %s", e->dir, strerror(errno));
    if (lstat(e->dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 022))
        return dm_fail(err, DM_ERR_IO, "experiment.elastic: %s is not a folder of this user that only it can write",
                       e->dir);
    if (gethostname(e->host, sizeof e->host - 1) != 0 || !e->host[0]) snprintf(e->host, sizeof e->host, "host");
    dm_plain_name(e->host);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(e->id, sizeof e->id, "%s.%ld.%lx", e->host, (long)getpid(),
             (unsigned long)(ts.tv_nsec ^ ((unsigned long)ts.tv_sec << 20)));
    e->min_ranks = min_ranks < 1 ? 1 : min_ranks;
    e->max_ranks = max_ranks;
    e->settle_s = settle_s;
    e->timeout_s = timeout_s;
    e->round = -1;
    if (start_heartbeat(e) != 0)
        return dm_fail(err, DM_ERR_INTERNAL, "experiment.elastic: cannot start the heartbeat thread");
    return DM_OK;
}

void dm_elastic_close(dm_elastic *e)
{
    free(e->world);
    e->world = NULL;
    e->n_world = 0;
}

static void round_dir(const dm_elastic *e, int round, char *buf, size_t size)
{
    snprintf(buf, size, "%s/r%d", e->dir, round);
}

static int file_exists(const char *dir, const char *name)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Write `text` to dir/name so that readers see all of it or nothing:
 * exclusive (link(): fails when the name exists) or replacing (rename()). */
static int publish(const char *dir, const char *name, const char *id, const char *text, int exclusive)
{
    char tmp[1300], dst[1300];
    snprintf(tmp, sizeof tmp, "%s/.tmp.%s.%s", dir, name, id);
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t len = strlen(text);
    int ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    close(fd);
    int rc = !ok ? -1 : exclusive ? link(tmp, dst) : rename(tmp, dst);
    int saved = errno;
    unlink(tmp);
    errno = saved;
    return rc;
}

static int parse_member(const char *line, member *m)
{
    char host[64];
    long long step;
    if (sscanf(line, "%127s %d %lld %ld %63s", m->id, &m->prev, &step, &m->pid, host) != 5) return -1;
    m->step = step;
    snprintf(m->host, sizeof m->host, "%s", host);
    return 0;
}

/* A member that ran on this host and whose process is gone (it died waiting). */
static int dead_here(const dm_elastic *e, const member *m)
{
    return strcmp(m->host, e->host) == 0 && m->pid > 0 && kill((pid_t)m->pid, 0) != 0 && errno == ESRCH;
}

/* The members that wrote their file in dir (at most cap). */
static int list_members(const dm_elastic *e, const char *dir, member *out, int cap)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < cap) {
        if (strncmp(de->d_name, "m.", 2) != 0) continue;
        char p[1400], line[512];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        int got = fgets(line, sizeof line, f) != NULL;
        fclose(f);
        if (got && parse_member(line, &out[n]) == 0 && !dead_here(e, &out[n])) n++;
    }
    closedir(d);
    return n;
}

/* New rank order: the previous world's ranks in order, then newcomers by id;
 * at most max_ranks; the one with the most steps moves to the front. */
static int by_order(const void *a, const void *b)
{
    const member *x = a, *y = b;
    if ((x->prev >= 0) != (y->prev >= 0)) return x->prev >= 0 ? -1 : 1;
    if (x->prev != y->prev) return x->prev < y->prev ? -1 : 1;
    return strcmp(x->id, y->id);
}

static int close_round(const dm_elastic *e, const char *dir, member *m, int n)
{
    qsort(m, (size_t)n, sizeof *m, by_order);
    if (e->max_ranks > 0 && n > e->max_ranks) n = e->max_ranks;
    int src = 0;
    for (int i = 1; i < n; i++)
        if (m[i].step > m[src].step) src = i;
    member first = m[src];
    memmove(m + 1, m, (size_t)src * sizeof *m);
    m[0] = first;
    size_t cap = (size_t)n * 400 + 1;
    char *text = malloc(cap);
    if (!text) return -1;
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s %d %lld %ld %s\n", m[i].id, m[i].prev, (long long)m[i].step,
                                m[i].pid, m[i].host);
    int rc = publish(dir, "closed", e->id, text, 1);
    free(text);
    return rc == 0 || errno == EEXIST ? 0 : -1;
}

/* Read a closed round: 1 and *w filled when this process is in it, 0 when
 * it is not, -1 when the round is still open. */
static int read_closed(dm_elastic *e, const char *dir, int round, dm_elastic_world *w)
{
    char p[1200], line[512];
    snprintf(p, sizeof p, "%s/closed", dir);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    int n = 0, me = -1, local = 0;
    int64_t source = 0;
    member m;
    char(*ids)[128] = malloc(MAX_MEMBERS * sizeof *ids);
    while (ids && n < MAX_MEMBERS && fgets(line, sizeof line, f))
        if (parse_member(line, &m) == 0) {
            if (n == 0) source = m.step;
            if (strcmp(m.id, e->id) == 0) me = n;
            if (strcmp(m.host, e->host) == 0) local++;
            memcpy(ids[n], m.id, sizeof ids[n]);
            n++;
        }
    fclose(f);
    if (me < 0 || !ids) {
        free(ids);
        return ids ? 0 : -1;
    }
    free(e->world);
    e->world = ids;
    e->n_world = n;
    *w = (dm_elastic_world){round, me, n, local, source, 0};
    return 1;
}

int dm_elastic_form(dm_elastic *e, int prev_rank, int prev_size, int64_t step, dm_elastic_world *w, dm_error *err)
{
    double t0 = mono();
    /* a newcomer waits for the running world to reach a step boundary */
    double deadline = t0 + (prev_rank >= 0 ? 3 : 4) * e->timeout_s + e->settle_s + 0.5;
    member *m = malloc(MAX_MEMBERS * sizeof *m);
    if (!m) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int round = e->round + 1, written = -1, seen = 0, rc = DM_OK;
    double last_growth = t0;
    char dir[1100];
    for (;;) {
        round_dir(e, round, dir, sizeof dir);
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            rc = dm_fail(err, DM_ERR_IO, "experiment.elastic: cannot create %s: %s", dir, strerror(errno));
            break;
        }
        if (file_exists(e->dir, "done")) {
            *w = (dm_elastic_world){.round = round, .done = 1};
            break;
        }
        int in = read_closed(e, dir, round, w);
        if (in == 1) {
            e->round = round;
            e->size = w->size;
            e->joined = 1;
            break;
        }
        if (in == 0) { /* formed without this process: it is a newcomer to the next */
            round++;
            prev_rank = -1;
            seen = 0;
            last_growth = mono();
            continue;
        }
        if (written != round) {
            char text[400], name[160];
            snprintf(text, sizeof text, "%s %d %lld %ld %s\n", e->id, prev_rank, (long long)step, (long)getpid(),
                     e->host);
            snprintf(name, sizeof name, "m.%s", e->id);
            if (publish(dir, name, e->id, text, 0) != 0) {
                rc = dm_fail(err, DM_ERR_IO, "experiment.elastic: cannot write %s/%s: %s", dir, name, strerror(errno));
                break;
            }
            written = round;
        }
        int n = list_members(e, dir, m, MAX_MEMBERS);
        double now = mono();
        if (n > seen) {
            seen = n;
            last_growth = now;
        }
        int olds = 0;
        for (int i = 0; i < n; i++) olds += m[i].prev >= 0 && m[i].prev < prev_size;
        /* Only the previous world closes a round: a newcomer never forms one of
         * its own. Early (settle_s after the last arrival) only when every
         * member of the previous world still missing is gone (no heartbeat):
         * one still alive is stuck in the old world's collective, or cut off
         * from the others but not from this folder, and is waited for; after
         * 3 timeouts a majority of the previous world goes on without it (a
         * minority gives up at its deadline instead: never two worlds). */
        int missing_alive = 0;
        for (int k = 0; round > 0 && k < e->n_world; k++) {
            int here = 0;
            for (int i = 0; i < n && !here; i++) here = strcmp(m[i].id, e->world[k]) == 0;
            missing_alive += !here && alive(e, e->world[k]);
        }
        int complete = prev_rank >= 0 && n >= e->min_ranks &&
            (olds >= prev_size || (e->max_ranks > 0 && n >= e->max_ranks) ||
             (round > 0 && !missing_alive && now - last_growth >= e->settle_s) ||
             (now - t0 >= (round > 0 ? 3 : 1) * e->timeout_s && (round == 0 || 2 * olds > prev_size)));
        if (complete) {
            if (close_round(e, dir, m, n) != 0) {
                rc = dm_fail(err, DM_ERR_IO, "experiment.elastic: cannot write %s/closed: %s", dir, strerror(errno));
                break;
            }
            continue; /* read what was written (ours or an earlier closer's) */
        }
        /* too few can ever come: the missing are gone, a timeout for restarts to arrive */
        if (prev_rank >= 0 && round > 0 && n + missing_alive < e->min_ranks && now - t0 >= e->timeout_s) deadline = now;
        if (now >= deadline && prev_rank >= 0 && n >= e->min_ranks && round > 0) {
            /* a minority of a world whose others are alive (a cut link): wait
             * to join whatever world the others form */
            round++;
            prev_rank = -1;
            seen = 0;
            t0 = last_growth = now;
            deadline = t0 + 4 * e->timeout_s + e->settle_s + 0.5;
            continue;
        }
        if (now >= deadline) {
            if (prev_rank >= 0)
                rc = dm_fail(err, DM_ERR_TIMEOUT,
                             "experiment.elastic: round %d: %d of the %d ranks needed (min_ranks) came within %.0f s "
                             "(%s)",
                             round, n, e->min_ranks, now - t0, dir);
            else
                rc = dm_fail(err, DM_ERR_TIMEOUT,
                             "experiment.elastic: waited %.0f s to join job %s at round %d and no world took this "
                             "process in: is the job running?",
                             now - t0, e->dir, round);
            break;
        }
        usleep(10000);
    }
    free(m);
    return rc;
}

int dm_elastic_waiting(const dm_elastic *e)
{
    char dir[1100];
    round_dir(e, e->round + 1, dir, sizeof dir);
    member m[4];
    return list_members(e, dir, m, 4) > 0;
}

void dm_elastic_finish(const dm_elastic *e) { publish(e->dir, "done", e->id, "done\n", 0); }
