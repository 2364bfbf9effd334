/* dmnist tensors: a view of float32 memory owned by someone else.
 * A tensor knows its device and its layout; the core owns every buffer
 * that crosses a plugin boundary. */
#ifndef DMNIST_TENSOR_H
#define DMNIST_TENSOR_H

#include "dmnist/abi.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dm_layout {
    DM_LAYOUT_NCHW = 0, /* batch, channels, height, width (row-major) */
    DM_LAYOUT_NHWC = 1
} dm_layout;

/* A 4-D shape. Vectors are (n, c, 1, 1): Flatten turns (n,c,h,w) into
 * (n, c*h*w, 1, 1) without moving data (NCHW order). */
typedef struct dm_shape {
    int n, c, h, w;
} dm_shape;

static inline size_t dm_shape_per_item(dm_shape s) { return (size_t)s.c * s.h * s.w; }
static inline size_t dm_shape_count(dm_shape s) { return (size_t)s.n * s.c * s.h * s.w; }

typedef struct dm_tensor {
    float *data; /* device memory when device == DM_DEVICE_CUDA */
    dm_device device;
    dm_layout layout;
    dm_shape shape;
} dm_tensor;

#ifdef __cplusplus
}
#endif
#endif
