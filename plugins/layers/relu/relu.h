/* ReLU: y = max(x, 0), dx = dy where x > 0, else 0. The two expressions are
 * shared by the CPU pass (relu.c, through dmnist/elementwise.h) and the CUDA
 * kernels (relu_cuda.cu, compiled in under DM_WITH_CUDA). */
#ifndef DM_RELU_H
#define DM_RELU_H

#include "dmnist/elementwise.h"

#define RELU(x, a) ((x) > 0.0f ? (x) : 0.0f)
#define RELU_DX(x, y, dy, a) ((x) > 0.0f ? (dy) : 0.0f)

#ifdef DM_WITH_CUDA
#ifdef __cplusplus
extern "C" {
#endif
/* relu_cuda.cu: the two passes on device buffers, on `stream`; a dm_status. */
int relu_forward_cuda(const dm_elementwise *s, void *stream, size_t count, const float *x, float *y, dm_error *err);
int relu_backward_cuda(const dm_elementwise *s, void *stream, size_t count, const float *x, const float *y,
                       const float *dy, float *dx, dm_error *err);
#ifdef __cplusplus
}
#endif
#endif

#endif
