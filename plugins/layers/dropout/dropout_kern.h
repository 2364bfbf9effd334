/* Dropout's mask pass, built once per instruction set (cpu_isa.h):
 * dropout_cpu.c includes this file three times, under `#pragma GCC target`
 * for AVX-512 and AVX2 and without one, with WK(name) naming each copy. The
 * mask multiplies 64-bit integers, which only AVX-512 does in vector
 * registers (about 15x faster on the hash than the portable copy). Integer
 * hashing, one multiplication and a select: every copy gives the same bits.
 * No include guard, no types. */

static void WK(apply_mask)(const dropout_state *s, uint64_t seed, size_t count, const float *src, float *dst)
{
    const uint32_t thr = s->threshold;
    const float scale = s->scale;
#pragma omp parallel for schedule(static) num_threads(s->nthreads) if (count >= DM_PARALLEL_MIN_ELEMENTS)
    for (size_t i = 0; i < count; i++) {
        const float v = src[i] * scale;
        dst[i] = dropout_keep(seed, i, thr) ? v : 0.0f;
    }
}
