/* Flatten on CUDA: a device-to-device copy on the core's stream (NCHW
 * order is already the flattened order), skipped when src == dst. */
#include <cuda_runtime.h>

#include "dmnist/layer.h"
#include "dmnist/cuda_util.h"
extern "C" {
#include "flatten.h"
}

int flatten_copy_cuda(const flatten_state *s, void *stream, size_t count, const float *src, float *dst, dm_error *err)
{
    return dm_cuda_copy(s->name, stream, count, src, dst, err);
}
