/* The `local` backend: one process, world size 1. Every collective is the
 * identity (the sum over one rank is the value itself), so the training
 * loop needs no special case for a single process. Takes buffers on any
 * device: it never touches them. */
#include "dmnist/dmnist.h"

#include <stdlib.h>

typedef struct local_req {
    int unused;
} local_req;

static int local_init(const dm_params *params, const dm_comm_config *cfg, void **state, dm_comm_info *info,
                      dm_error *err)
{
    (void)params;
    if (cfg->size > 1)
        return dm_fail(err, DM_ERR_INVALID,
                       "local: backend 'local' runs one process, but the launcher "
                       "started %d ranks; use backend = mpi, gloo or nccl",
                       cfg->size);
    info->rank = 0;
    info->size = 1;
    info->local_rank = 0;
    *state = NULL;
    return DM_OK;
}

static int local_allreduce(void *s, float *buf, size_t n, dm_reduce_op op, dm_device dev, void *stream, dm_error *err)
{
    (void)s;
    (void)buf;
    (void)n;
    (void)dev;
    (void)stream;
    if (op != DM_REDUCE_SUM && op != DM_REDUCE_AVG) return dm_fail(err, DM_ERR_INVALID, "local: bad op %d", (int)op);
    return DM_OK;
}

static int local_allreduce_start(void *s, float *buf, size_t n, dm_reduce_op op, dm_device dev, void *stream,
                                 dm_comm_request **req, dm_error *err)
{
    int rc = local_allreduce(s, buf, n, op, dev, stream, err);
    if (rc) return rc;
    /* A real (tiny) handle, so callers that forget wait() show up under ASan. */
    *req = malloc(sizeof(local_req));
    return *req ? DM_OK : dm_fail(err, DM_ERR_NOMEM, "local: out of memory");
}

static int local_wait(void *s, dm_comm_request *req, dm_error *err)
{
    (void)s;
    (void)err;
    free(req);
    return DM_OK;
}

static int local_broadcast(void *s, void *buf, size_t bytes, int root, dm_device dev, void *stream, dm_error *err)
{
    (void)s;
    (void)buf;
    (void)bytes;
    (void)dev;
    (void)stream;
    return root == 0 ? DM_OK : dm_fail(err, DM_ERR_INVALID, "local: broadcast root %d but world size is 1", root);
}

static int local_barrier(void *s, dm_error *err)
{
    (void)s;
    (void)err;
    return DM_OK;
}
static int local_finalize(void *s, dm_error *err)
{
    (void)s;
    (void)err;
    return DM_OK;
}

DM_COMM_VTABLE(local, DM_DEVICE_BIT(DM_DEVICE_CPU) | DM_DEVICE_BIT(DM_DEVICE_CUDA));

DM_PLUGIN_DEFINE("local", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_COMM_COMPONENT("local", "single process (world size 1): every collective is the identity", NULL,
                                   &local_vtable));
