/* Softmax cross-entropy on the CPU. The work is tiny (n x 10 for MNIST), so
 * it runs on one thread. -log p[label] is computed as logsumexp - x[label],
 * which stays finite even when p[label] underflows. */
#include "softmax_cross_entropy.h"

#include <math.h>

void sce_forward_cpu(const sce_state *s, int n, const float *x, const int32_t *labels, float *p, double *loss_sum,
                     int *correct)
{
    const int C = s->classes;
    double loss = 0.0;
    int hits = 0;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * C;
        float *pi = p + (size_t)i * C;
        int arg = 0;
        for (int j = 1; j < C; j++)
            if (xi[j] > xi[arg]) arg = j;
        const float m = xi[arg];
        double sum = 0.0;
        for (int j = 0; j < C; j++) {
            pi[j] = expf(xi[j] - m);
            sum += pi[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < C; j++) pi[j] *= inv;
        if (labels) {
            loss += (double)m + log(sum) - (double)xi[labels[i]];
            hits += arg == labels[i];
        }
    }
    *loss_sum = loss;
    *correct = hits;
}

void sce_backward_cpu(const sce_state *s, int n, const float *p, const int32_t *labels, float *dx)
{
    const int C = s->classes;
    const float inv_n = 1.0f / (float)n;
    for (int i = 0; i < n; i++) {
        const float *pi = p + (size_t)i * C;
        float *di = dx + (size_t)i * C;
        for (int j = 0; j < C; j++) di[j] = pi[j] * inv_n;
        di[labels[i]] -= inv_n;
    }
}
