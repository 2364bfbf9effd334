/* ReLU on the CPU: plain loops the compiler vectorises, split over OpenMP. */
#include "relu.h"

void relu_forward_cpu(const relu_state *s, size_t count, const float *x, float *y)
{
#pragma omp parallel for schedule(static) num_threads(s->nthreads) if (count >= RELU_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward_cpu(const relu_state *s, size_t count, const float *x, const float *dy,
                       float *dx)
{
#pragma omp parallel for schedule(static) num_threads(s->nthreads) if (count >= RELU_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++)
    {
        const float g = dy[i]; /* unconditional load: the loop vectorises */
        dx[i] = x[i] > 0.0f ? g : 0.0f;
    }
}
