/* Conv2D layer: per-instance state and the device math behind the vtable.
 * conv2d.c is the device-independent glue (params, shapes, dispatch);
 * conv2d_cpu.c holds the CPU math (im2col + sgemm), conv2d_winograd.c the
 * CPU's Winograd F(4x4, 3x3) path for 3x3 stride-1 layers, and
 * conv2d_cuda.cu the cuDNN path (built with DM_WITH_CUDA), whose
 * conv2d_forward_cuda/conv2d_backward_cuda take the same arguments. */
#ifndef DM_CONV2D_H
#define DM_CONV2D_H

#include "dmnist/layer.h"

typedef struct conv2d_state {
    char name[64]; /* section name, for messages */
    dm_device device;
    int nthreads; /* OpenMP threads for the memory-bound passes */

    int n; /* largest batch */
    int in_c, in_h, in_w;
    int filters, k, stride;
    int pad_top, pad_left; /* 'same' puts the odd pixel at the bottom/right, like Keras */
    int out_h, out_w;
    int has_bias, relu; /* relu: fused ReLU on the output */
    int chunk;          /* images per task: one im2col + GEMM on one thread */
    int winograd;       /* CPU: Winograd F(4x4, 3x3) instead of im2col (3x3, stride 1) */
    int sub;            /* Winograd: images of a task transformed together (<= chunk) */
    int isa;            /* CPU: the dm_cpu_isa copy of the kernels (dmnist/cpu_isa.h) */

    /* Bound buffers (the core owns them). */
    float *w, *b; /* w (filters, in_c, k, k); b (filters) or NULL */
    float *dw, *db;
    void *workspace; /* conv2d_workspace_bytes(s), carved up by the CPU code */
    void *cuda;      /* conv2d_cuda.cu's state (cuDNN handle, algorithms) on CUDA */
} conv2d_state;

/* Workspace the CPU path needs for batches up to s->n with s->chunk and
 * s->nthreads set. */
size_t conv2d_workspace_bytes(const conv2d_state *s);

/* The same for the Winograd path (conv2d_winograd.c): 3x3 kernels, stride 1. */
size_t conv2d_winograd_workspace_bytes(const conv2d_state *s);
void conv2d_winograd_forward_cpu(const conv2d_state *s, int n, const float *x, float *y);
void conv2d_winograd_backward_cpu(const conv2d_state *s, int n, const float *x, const float *y, const float *dy,
                                  float *dx);

/* x (n, in_c, in_h, in_w) -> y (n, filters, out_h, out_w). */
void conv2d_forward_cpu(const conv2d_state *s, int n, const float *x, float *y);
/* dy (n, filters, out_h, out_w) -> dx (same shape as x; may be NULL), and
 * OVERWRITES dw/db. y is the forward output (for the fused ReLU). */
void conv2d_backward_cpu(const conv2d_state *s, int n, const float *x, const float *y, const float *dy, float *dx);

/* conv2d_cuda.cu (cuDNN): create sets s->cuda and *workspace_bytes; bind
 * takes the core's workspace; forward/backward as the CPU versions, on
 * `stream`, returning a dm_status.
 * Declared in every build, defined only with DM_WITH_CUDA: DM_CPU_OR_CUDA
 * calls them there alone (and type-checks the calls everywhere). */
int conv2d_cuda_create(conv2d_state *s, int tf32, int deterministic, void *stream, size_t *workspace_bytes,
                       dm_error *err);
void conv2d_cuda_bind(conv2d_state *s, void *workspace);
int conv2d_forward_cuda(conv2d_state *s, void *stream, int n, const float *x, float *y, dm_error *err);
int conv2d_backward_cuda(conv2d_state *s, void *stream, int n, const float *x, const float *y, const float *dy,
                         float *dx, dm_error *err);
void conv2d_cuda_destroy(conv2d_state *s);

#endif
