/* Dropout on the CPU. Forward and backward apply the same mask, so both are
 * "multiply by mask * scale". */
#include "dropout.h"
#include "dmnist/cpu_isa.h"
#include "dmnist/layer_util.h"

#include <string.h>

#define DM_ISA_KERNELS "dropout_kern.h"
#include "dmnist/cpu_isa_copies.h"

/* The copy DMNIST_CPU_ISA (or the CPU) selects, checked per call (a getenv
 * and a cached CPUID bit: nothing next to a pass over the batch). An
 * unknown value gets the best copy here; conv2d's create refuses it. */
static void apply_mask(const dropout_state *s, uint64_t seed, size_t count, const float *src, float *dst)
{
    dm_cpu_isa isa;
    dm_cpu_isa_select(&isa);
    switch (isa) {
#if DM_CPU_ISA_X86
    case DM_ISA_AVX512: apply_mask_avx512(s, seed, count, src, dst); break;
    case DM_ISA_AVX2: apply_mask_avx2(s, seed, count, src, dst); break;
#endif
    default: apply_mask_generic(s, seed, count, src, dst); break;
    }
}

void dropout_forward_cpu(const dropout_state *s, uint64_t seed, size_t count, const float *x, float *y)
{
    apply_mask(s, seed, count, x, y);
}

void dropout_backward_cpu(const dropout_state *s, uint64_t seed, size_t count, const float *dy, float *dx)
{
    apply_mask(s, seed, count, dy, dx);
}

void dropout_copy_cpu(size_t count, const float *src, float *dst)
{
    if (src != dst) memcpy(dst, src, count * sizeof(float));
}
