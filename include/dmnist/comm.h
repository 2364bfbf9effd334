/* dmnist communication backends.
 *
 * Contract (docs/writing-a-comm-backend.md has the long form):
 *  - Collectives are called by every rank in the same order with the same
 *    sizes; a backend may assume it and need not check it.
 *  - allreduce is in place: on return buf holds the sum (or the mean) over
 *    all ranks, identical bit for bit on every rank.
 *  - allreduce_start returns at once with a handle; buf must not be touched
 *    until wait() on that handle returns. Several handles may be in flight;
 *    they are waited on in the order they were started. wait() frees the
 *    handle, on success and on failure.
 *  - Every call returns within the configured timeout: a lost peer gives
 *    DM_ERR_TIMEOUT or DM_ERR_COMM with a message naming the rank or peer.
 *  - Buffers are on `device`; a backend that cannot take device buffers
 *    does not set that bit in `devices` and the core stages through host.
 *
 * Lifecycle: init -> (collectives)* -> finalize.
 */
#ifndef DMNIST_COMM_H
#define DMNIST_COMM_H

#include "dmnist/abi.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dm_reduce_op { DM_REDUCE_SUM = 0, DM_REDUCE_AVG = 1 } dm_reduce_op;

typedef struct dm_comm_config {
    size_t struct_size;
    int rank, size;         /* from the launcher (dmnist-run --np, mpirun, env);
                                -1 when unknown: the backend finds them itself */
    int local_rank;         /* -1 when unknown */
    const char *rendezvous; /* e.g. "file:///tmp/dmnist-rdzv-1234", or NULL (DMNIST_RENDEZVOUS,
                                or one the core derives for a Slurm step on one node) */
    double timeout_s;       /* every call returns within this */
    dm_device device;       /* where the gradient buffers live */
    /* ABI 1.2+ (read only when DM_HAS_FIELD says so; NULL = not given) */
    const char *job_id;      /* the launcher's job id (DMNIST_JOB_ID, SLURM_JOB_ID, Open
                                MPI's jobid), "" when there is none: a rendezvous puts it
                                in its names, so two jobs sharing one never pair up */
    const char *fingerprint; /* 16 hex digits: this job's config (model, optimizer, data,
                                seed, world size, step budget) and job id; every rank of a
                                job has the same. The core compares it right after init. */
    /* ABI 1.3+ (read only when DM_HAS_FIELD says so) */
    int local_size; /* ranks on this machine, from the launcher; -1 when unknown.
                                The core reads every launcher's variables (DMNIST_*,
                                OMPI_COMM_WORLD_*, SLURM_*, PMI_*): a backend trusts this struct
                                and reads no environment of its own. */
} dm_comm_config;

#define DM_COMM_CONFIG_SIZE_1_0 (offsetof(dm_comm_config, device) + sizeof(dm_device))

typedef struct dm_comm_info {
    size_t struct_size;
    int rank, size, local_rank;
} dm_comm_info;

typedef struct dm_comm_request dm_comm_request; /* opaque, backend-defined */

typedef struct dm_comm_vtable {
    size_t struct_size;
    unsigned devices; /* buffer devices accepted */
    int (*init)(const dm_params *params, const dm_comm_config *cfg, void **state, dm_comm_info *info, dm_error *err);
    int (*allreduce)(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                     dm_error *err);
    int (*allreduce_start)(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                           dm_comm_request **req, dm_error *err);
    int (*wait)(void *state, dm_comm_request *req, dm_error *err);
    int (*broadcast)(void *state, void *buf, size_t bytes, int root, dm_device device, void *cuda_stream,
                     dm_error *err);
    int (*barrier)(void *state, dm_error *err);
    /* Frees everything; safe after any failure. */
    int (*finalize)(void *state, dm_error *err);
    /* Later minor versions append new methods here, never in between (docs/plugin-abi.md). */
} dm_comm_vtable;

#define DM_COMM_VTABLE_SIZE_1_0 (offsetof(dm_comm_vtable, finalize) + sizeof(void *))

#ifdef __cplusplus
}
#endif
#endif
