/* Softmax + cross-entropy loss layer: state and device math.
 * Input (n, c, h, w) holds n items of c*h*w class scores (logits);
 * output has the same shape and holds the softmax probabilities. */
#ifndef DM_SOFTMAX_CROSS_ENTROPY_H
#define DM_SOFTMAX_CROSS_ENTROPY_H

#include "dmnist/layer.h"

typedef struct sce_state {
    char name[64];
    dm_device device;
    dm_shape in;  /* create-time input shape */
    int classes;  /* c*h*w */
} sce_state;

/* p (n, classes) = softmax(x). When labels is not NULL, also returns the
 * sum over items of -log p[label] in *loss_sum and the number of items whose
 * first argmax equals the label in *correct. */
void sce_forward_cpu(const sce_state *s, int n, const float *x, const int32_t *labels, float *p,
                     double *loss_sum, int *correct);
/* dx (n, classes) = (p - onehot(labels)) / n. */
void sce_backward_cpu(const sce_state *s, int n, const float *p, const int32_t *labels,
                      float *dx);

#endif
