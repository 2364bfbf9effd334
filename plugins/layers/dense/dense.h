/* Dense layer: state and device math. dense.c is the device-independent
 * glue; a CUDA version adds dense_cuda.cu with the same two functions. */
#ifndef DM_DENSE_H
#define DM_DENSE_H

#include "dmnist/layer.h"

typedef struct dense_state {
    char name[64];
    dm_device device;
    int nthreads;
    dm_shape in; /* create-time input shape; features = c*h*w */
    int n, in_features, units;
    int has_bias, relu; /* relu: fused ReLU on the output */

    /* Bound buffers (the core owns them). */
    float *w, *b; /* w (units, in_features) row-major; b (units) or NULL */
    float *dw, *db;
    float *dz;  /* workspace (n, units): dout * relu'(out), when relu */
    void *cuda; /* dense_cuda.cu's state (cuBLAS handle) on CUDA */
} dense_state;

/* x (n, in_features) -> y (n, units). */
void dense_forward_cpu(const dense_state *s, int n, const float *x, float *y);
/* dy (n, units) -> dx (n, in_features) (may be NULL); OVERWRITES dw, db. */
void dense_backward_cpu(const dense_state *s, int n, const float *x, const float *y, const float *dy, float *dx);

/* dense_cuda.cu (cuBLAS): create sets s->cuda and *workspace_bytes; bind
 * takes the core's workspace; forward/backward as the CPU versions, on
 * `stream`, returning a dm_status.
 * Declared in every build, defined only with DM_WITH_CUDA: DM_CPU_OR_CUDA
 * calls them there alone (and type-checks the calls everywhere). */
int dense_cuda_create(dense_state *s, int tf32, void *stream, size_t *workspace_bytes, dm_error *err);
int dense_cuda_bind(dense_state *s, void *workspace, dm_error *err);
int dense_forward_cuda(dense_state *s, void *stream, int n, const float *x, float *y, dm_error *err);
int dense_backward_cuda(dense_state *s, void *stream, int n, const float *x, const float *y, const float *dy, float *dx,
                        dm_error *err);
void dense_cuda_destroy(dense_state *s);

#endif
