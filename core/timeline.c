/* The --timeline recorder: a Chrome trace (chrome://tracing, Perfetto) of
 * every step of every rank.
 *
 * A process is one rank, so there is one recorder per process. While
 * training, each rank streams its events, one JSON object per line, into
 * its own part file "FILE.rank<R>.part" beside FILE: no memory grows with
 * the number of steps and no rank waits for another. At the end every rank
 * closes its part, the trainer runs a barrier, and rank 0 joins the parts
 * into FILE = {"traceEvents":[...], ...}. The parts must therefore be on a
 * file system every rank writes to (always true for ranks on one host).
 *
 * Events carry pid = rank (Perfetto shows one process per rank) and tid 0.
 * Times come from CLOCK_MONOTONIC, the trainer's clock. They are written as
 * microseconds of wall-clock time since an origin every rank was given
 * (rank 0's wall clock when training started), so ranks on different hosts
 * with synchronised clocks line up too, and the numbers stay small enough
 * for a double to hold to the nanosecond.
 */
#define _GNU_SOURCE
#include "dm_core.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>

typedef struct timeline {
    FILE *part;      /* this rank's events, one JSON object per line */
    char path[4096]; /* the merged trace */
    char part_path[4200];
    int rank, world_size;
    int64_t step;   /* args.step of the next events; < 0: none */
    double shift_s; /* monotonic + shift = seconds since the origin */
    long events;
} timeline;

static timeline g_tl; /* one rank per process: one recorder */

double dm_timeline_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double dm_timeline_wallclock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int dm_timeline_on(void) { return g_tl.part != NULL; }

static void part_path(char *buf, size_t size, const char *path, int rank)
{
    snprintf(buf, size, "%s.rank%d.part", path, rank);
}

/* JSON string body: quotes, backslashes and control characters escaped. */
void dm_put_json_string(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
}

static void put_meta(const char *what, const char *key, const char *value, int tid)
{
    fprintf(g_tl.part, "{\"ph\":\"M\",\"name\":\"%s\",\"pid\":%d,\"tid\":%d,\"args\":{\"%s\":", what, g_tl.rank, tid,
            key);
    if (value) {
        fputc('"', g_tl.part);
        dm_put_json_string(g_tl.part, value);
        fputs("\"}}\n", g_tl.part);
    } else {
        fprintf(g_tl.part, "%d}}\n", g_tl.rank); /* sort index: ranks in order */
    }
}

int dm_timeline_open(const char *path, int rank, int world_size, double origin, dm_error *err)
{
    if (g_tl.part) return dm_fail(err, DM_ERR_INTERNAL, "timeline: already open");
    if (!path || !path[0]) return dm_fail(err, DM_ERR_INVALID, "--timeline: empty file name");
    memset(&g_tl, 0, sizeof g_tl);
    snprintf(g_tl.path, sizeof g_tl.path, "%s", path);
    part_path(g_tl.part_path, sizeof g_tl.part_path, path, rank);
    g_tl.part = fopen(g_tl.part_path, "w");
    if (!g_tl.part) return dm_fail(err, DM_ERR_IO, "%s: cannot open for writing: %s", g_tl.part_path, strerror(errno));
    g_tl.rank = rank;
    g_tl.world_size = world_size;
    g_tl.step = -1;
    g_tl.shift_s = dm_timeline_wallclock() - dm_timeline_clock() - origin;
    char name[32];
    snprintf(name, sizeof name, "rank %d", rank);
    put_meta("process_name", "name", name, 0);
    put_meta("process_sort_index", "sort_index", NULL, 0);
    put_meta("thread_name", "name", "train", 0);
    return DM_OK;
}

void dm_timeline_set_step(int64_t step) { g_tl.step = step; }

/* Whole nanoseconds since the origin: a span's start and end are rounded
 * the same way, so a nested span never pokes out of its parent. */
static long long trace_ns(double t) { return llround((t + g_tl.shift_s) * 1e9); }

static void put_event_head(const char *ph, const char *cat, const char *fmt, va_list ap)
{
    char name[256];
    vsnprintf(name, sizeof name, fmt, ap);
    fprintf(g_tl.part, "{\"ph\":\"%s\",\"cat\":\"%s\",\"name\":\"", ph, cat);
    dm_put_json_string(g_tl.part, name);
    fprintf(g_tl.part, "\",\"pid\":%d,\"tid\":0", g_tl.rank);
}

static void put_args(void)
{
    if (g_tl.step >= 0) fprintf(g_tl.part, ",\"args\":{\"step\":%lld}", (long long)g_tl.step);
    fputs("}\n", g_tl.part);
    g_tl.events++;
}

void dm_timeline_span(const char *cat, double t0, double t1, const char *fmt, ...)
{
    if (!g_tl.part) return;
    va_list ap;
    va_start(ap, fmt);
    put_event_head("X", cat, fmt, ap);
    va_end(ap);
    long long a = trace_ns(t0), b = trace_ns(t1 > t0 ? t1 : t0);
    fprintf(g_tl.part, ",\"ts\":%.3f,\"dur\":%.3f", (double)a / 1e3, (double)(b - a) / 1e3);
    put_args();
}

void dm_timeline_async(const char *cat, uint64_t id, double t0, double t1, const char *fmt, ...)
{
    if (!g_tl.part) return;
    /* a begin/end pair with the same cat, name and id: its own track */
    va_list ap;
    va_start(ap, fmt);
    put_event_head("b", cat, fmt, ap);
    va_end(ap);
    fprintf(g_tl.part, ",\"id\":\"0x%llx\",\"ts\":%.3f", (unsigned long long)id, (double)trace_ns(t0) / 1e3);
    put_args();
    va_start(ap, fmt);
    put_event_head("e", cat, fmt, ap);
    va_end(ap);
    fprintf(g_tl.part, ",\"id\":\"0x%llx\",\"ts\":%.3f", (unsigned long long)id,
            (double)trace_ns(t1 > t0 ? t1 : t0) / 1e3);
    put_args();
}

int dm_timeline_close(int keep, dm_error *err)
{
    if (!g_tl.part) return DM_OK;
    int bad = ferror(g_tl.part);
    if (fclose(g_tl.part) != 0) bad = 1;
    g_tl.part = NULL;
    if (!keep || bad) remove(g_tl.part_path);
    if (keep && bad) return dm_fail(err, DM_ERR_IO, "%s: write failed (disk full?)", g_tl.part_path);
    return DM_OK;
}

/* Copy one rank's part into the trace, a comma before every event but the
 * first of the whole file. */
static int copy_part(FILE *out, const char *path, int *first, dm_error *err)
{
    FILE *in = fopen(path, "r");
    if (!in)
        return dm_fail(err, DM_ERR_IO,
                       "%s: cannot read this rank's timeline part: %s (every rank must write "
                       "to the same folder)",
                       path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        if (line[n - 1] == '\n') line[--n] = 0;
        if (!n) continue;
        fputs(*first ? "\n" : ",\n", out);
        fputs(line, out);
        *first = 0;
    }
    int bad = ferror(in);
    free(line);
    fclose(in);
    if (bad) return dm_fail(err, DM_ERR_IO, "%s: read failed", path);
    return DM_OK;
}

int dm_timeline_merge(dm_error *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", g_tl.path);
    FILE *out = fopen(tmp, "w");
    if (!out) return dm_fail(err, DM_ERR_IO, "%s: cannot open for writing: %s", tmp, strerror(errno));
    fputs("{\"traceEvents\":[", out);
    int first = 1, rc = DM_OK;
    for (int r = 0; r < g_tl.world_size && rc == DM_OK; r++) {
        char part[4200];
        part_path(part, sizeof part, g_tl.path, r);
        rc = copy_part(out, part, &first, err);
    }
    fprintf(out, "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"dmnist-run %s\",\"world_size\":%d}}\n",
            DMNIST_VERSION, g_tl.world_size);
    int bad = ferror(out);
    if (fclose(out) != 0) bad = 1;
    if (rc == DM_OK && bad) rc = dm_fail(err, DM_ERR_IO, "%s: write failed (disk full?)", tmp);
    if (rc == DM_OK && rename(tmp, g_tl.path) != 0)
        rc = dm_fail(err, DM_ERR_IO, "%s: cannot rename to %s: %s", tmp, g_tl.path, strerror(errno));
    if (rc != DM_OK) {
        remove(tmp);
        return rc;
    }
    for (int r = 0; r < g_tl.world_size; r++) {
        char part[4200];
        part_path(part, sizeof part, g_tl.path, r);
        remove(part);
    }
    return DM_OK;
}
