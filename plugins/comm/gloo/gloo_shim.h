/* C interface to the parts of Gloo (a C++ library) the gloo plugin uses.
 *
 * Every function catches all C++ exceptions and returns a dm_status with a
 * one-line message; none of them throws. The calls are synchronous and one
 * dm_gloo must not be used by two threads at once (comm_gloo.c runs them all
 * on its worker thread, in order).
 */
#ifndef DMNIST_GLOO_SHIM_H
#define DMNIST_GLOO_SHIM_H

#include "dmnist/abi.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dm_gloo dm_gloo;

typedef struct dm_gloo_setup {
    const char *rendezvous; /* "file:///DIR" or "redis://HOST[:PORT]" */
    const char *prefix;     /* key prefix in the store; unique per job when a store is reused */
    const char *iface;      /* network interface to bind, e.g. "lo"; "" = Gloo's choice */
    const char *host;       /* address or hostname to bind, e.g. "127.0.0.1"; "" = Gloo's choice */
    int rank, size;
    double timeout_s;        /* rendezvous and every collective */
    const char *job_id;      /* the launcher's job id, "" for none: keys live under prefix/job.<id> */
    const char *fingerprint; /* this job's config fingerprint, "" for none: a claim showing another is refused */
    int single_host;         /* every rank runs on this machine: loopback will do */
} dm_gloo_setup;

/* Meet the other ranks in the store, then connect to each of them. On
 * success *local_rank is this rank's index among the ranks on its host. */
int dm_gloo_connect(const dm_gloo_setup *setup, dm_gloo **out, int *local_rank, dm_error *err);

/* In place; buf[n] holds the sum over all ranks on return. */
int dm_gloo_allreduce_sum(dm_gloo *g, float *buf, size_t n, dm_error *err);

/* buf[bytes] of rank `root` is copied to every other rank. */
int dm_gloo_broadcast(dm_gloo *g, void *buf, size_t bytes, int root, dm_error *err);

int dm_gloo_barrier(dm_gloo *g, dm_error *err);

/* Closes the connections and frees g (NULL is fine). */
void dm_gloo_close(dm_gloo *g);

#ifdef __cplusplus
}
#endif
#endif
