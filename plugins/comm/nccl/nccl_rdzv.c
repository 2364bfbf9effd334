/* File rendezvous for the NCCL unique id; format of DIR/NAME:
 *   "DMNCCLID" (8 bytes) | world size (int32) | blob size (uint32) | blob */
#define _GNU_SOURCE
#include "nccl_rdzv.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "DMNCCLID"
#define HEADER (8 + 4 + 4)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *nccl_rdzv_dir(const char *url)
{
    if (!url || strncmp(url, "file://", 7) != 0 || !url[7]) return NULL;
    return url + 7;
}

void nccl_rdzv_name(char *buf, size_t size)
{
    const char *job = getenv("PMIX_NAMESPACE");
    if (!job || !job[0]) job = getenv("OMPI_MCA_ess_base_jobid");
    if (!job || !job[0]) {
        snprintf(buf, size, "nccl-id");
        return;
    }
    /* keep the name one plain path component */
    size_t k = (size_t)snprintf(buf, size, "nccl-id-");
    for (const char *c = job; *c && k + 1 < size; c++)
        buf[k++] =
            (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.'
            ? *c
            : '_';
    if (k < size) buf[k] = 0;
}

int nccl_rdzv_publish(const char *dir, const char *name, int world_size, const void *blob, size_t size, dm_error *err)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    unsigned char *buf = malloc(HEADER + size);
    if (!buf) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int32_t ws = world_size;
    uint32_t bs = (uint32_t)size;
    memcpy(buf, MAGIC, 8);
    memcpy(buf + 8, &ws, 4);
    memcpy(buf + 12, &bs, 4);
    memcpy(buf + HEADER, blob, size);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(buf);
        return dm_fail(err, DM_ERR_IO, "rendezvous: cannot create %s: %s", tmp, strerror(e));
    }
    ssize_t wrote = write(fd, buf, HEADER + size);
    int e = errno;
    free(buf);
    if (wrote != (ssize_t)(HEADER + size) || fsync(fd) != 0) {
        close(fd);
        unlink(tmp);
        return dm_fail(err, DM_ERR_IO, "rendezvous: cannot write %s: %s", tmp, wrote < 0 ? strerror(e) : "short write");
    }
    close(fd);
    /* link() creates path only if it does not exist, atomically: a file left
     * by another job (or an earlier one with the same name) is refused, never
     * replaced under a rank that may already have read it. */
    int rc = link(tmp, path);
    e = errno;
    unlink(tmp);
    if (rc != 0 && e == EEXIST)
        return dm_fail(err, DM_ERR_INVALID,
                       "rendezvous %s already holds an NCCL id (%s: another job, or an earlier one): use "
                       "a fresh directory or give each job its own DMNIST_JOB_ID",
                       dir, name);
    if (rc != 0) return dm_fail(err, DM_ERR_IO, "rendezvous: cannot link %s to %s: %s", tmp, path, strerror(e));
    return DM_OK;
}

int nccl_rdzv_fetch(const char *dir, const char *name, int world_size, void *blob, size_t size, double timeout_s,
                    dm_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return dm_fail(err, DM_ERR_IO, "rendezvous directory %s does not exist", dir);
    const double deadline = now_s() + timeout_s;
    unsigned char buf[HEADER + 1024];
    if (size > 1024) return dm_fail(err, DM_ERR_INTERNAL, "rendezvous blob too large");
    for (int sleep_us = 1000;; sleep_us = sleep_us < 20000 ? sleep_us * 2 : 20000) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t got = read(fd, buf, sizeof buf);
            close(fd);
            int32_t ws;
            uint32_t bs;
            if (got < HEADER || memcmp(buf, MAGIC, 8) != 0)
                return dm_fail(err, DM_ERR_FORMAT, "rendezvous file %s is not an NCCL id file", path);
            memcpy(&ws, buf + 8, 4);
            memcpy(&bs, buf + 12, 4);
            if (ws != world_size)
                return dm_fail(err, DM_ERR_INVALID,
                               "rendezvous file %s was written for %d ranks, this run has %d "
                               "(a stale file from another run? use a fresh directory)",
                               path, (int)ws, world_size);
            if (bs != size || got != (ssize_t)(HEADER + size))
                return dm_fail(err, DM_ERR_FORMAT, "rendezvous file %s holds %zd bytes, expected %zu", path, got,
                               (size_t)HEADER + size);
            memcpy(blob, buf + HEADER, size);
            return DM_OK;
        }
        if (errno != ENOENT) return dm_fail(err, DM_ERR_IO, "rendezvous: cannot read %s: %s", path, strerror(errno));
        if (now_s() >= deadline)
            return dm_fail(err, DM_ERR_TIMEOUT,
                           "rank 0 did not publish the NCCL id in %s within %g s (is rank 0 "
                           "running, with the same rendezvous?)",
                           path, timeout_s);
        usleep((useconds_t)sleep_us);
    }
}
