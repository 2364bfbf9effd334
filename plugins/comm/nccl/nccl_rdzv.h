/* Sharing the NCCL unique id through a rendezvous directory (the file://
 * rendezvous of dmnist-run --np, or one the user names): rank 0 publishes
 * the id with an atomic rename, the other ranks poll for it until a
 * deadline. Plain C with no CUDA, so tests/cuda checks it on any machine. */
#ifndef DM_NCCL_RDZV_H
#define DM_NCCL_RDZV_H

#include "dmnist/abi.h"

/* The directory of a "file:///DIR" URL (a pointer into url), or NULL for
 * any other scheme. */
const char *nccl_rdzv_dir(const char *url);

/* The file name for this job's id: "nccl-id", or "nccl-id-<job>" when the
 * launcher names the job (PMIX_NAMESPACE, OMPI_MCA_ess_base_jobid), so two
 * mpirun jobs sharing a directory never read each other's id. */
void nccl_rdzv_name(char *buf, size_t size);

/* Rank 0: write blob (size bytes) and the world size to DIR/NAME through a
 * temporary file and link(), so readers never see half a file; a NAME that
 * exists already is refused (DM_ERR_INVALID), never replaced. */
int nccl_rdzv_publish(const char *dir, const char *name, int world_size, const void *blob, size_t size, dm_error *err);

/* Other ranks: wait until DIR/NAME exists (polling every few ms, at most
 * timeout_s seconds) and read blob from it. A file written for another
 * world size or of the wrong length is an error naming the file. */
int nccl_rdzv_fetch(const char *dir, const char *name, int world_size, void *blob, size_t size, double timeout_s,
                    dm_error *err);

#endif
