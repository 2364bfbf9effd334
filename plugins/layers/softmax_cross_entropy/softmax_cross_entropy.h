/* Softmax + cross-entropy loss layer: state and device math.
 * Input (n, c, h, w) holds n items of c*h*w class scores (logits);
 * output has the same shape and holds the softmax probabilities. */
#ifndef DM_SOFTMAX_CROSS_ENTROPY_H
#define DM_SOFTMAX_CROSS_ENTROPY_H

#include "dmnist/layer.h"

typedef struct sce_state {
    char name[64];
    dm_device device;
    dm_shape in; /* create-time input shape */
    int classes; /* c*h*w */
} sce_state;

/* p (n, classes) = softmax(x). When labels is not NULL, also returns the
 * sum over items of -log p[label] in *loss_sum and the number of items whose
 * first argmax equals the label in *correct. */
void sce_forward_cpu(const sce_state *s, int n, const float *x, const int32_t *labels, float *p, double *loss_sum,
                     int *correct);
/* dx (n, classes) = (p - onehot(labels)) / n. */
void sce_backward_cpu(const sce_state *s, int n, const float *p, const int32_t *labels, float *dx);

#ifdef DM_WITH_CUDA
/* softmax_cross_entropy_cuda.cu: the same on device buffers, on `stream`;
 * forward adds the loss sum and hits to metrics[0], metrics[1] (device)
 * when labels and metrics are not NULL. A dm_status. */
int sce_forward_cuda(const sce_state *s, void *stream, int n, const float *x, const int32_t *labels, float *p,
                     float *metrics, dm_error *err);
int sce_backward_cuda(const sce_state *s, void *stream, int n, const float *p, const int32_t *labels, float *dx,
                      dm_error *err);
#endif

#endif
