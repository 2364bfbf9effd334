/* Run-time CPU-feature dispatch for the CPU kernels of plugins (and the
 * core's report of it): header-only, so a plugin links nothing of the core.
 *
 * dmnist is built for generic x86-64 (SSE2), one binary for every machine.
 * A kernel that gains from wider vectors is compiled several times, once per
 * instruction set below (GCC `#pragma GCC target` / `target` attributes; see
 * docs/cpu-path.md, "Run-time dispatch"), and a layer picks one copy when it
 * is created:
 *
 *   DM_ISA_GENERIC  x86-64 baseline (SSE2); the only copy on other CPUs and
 *                   compilers
 *   DM_ISA_AVX2     x86-64-v3: AVX2, FMA, BMI2 (Haswell, Zen 1-3)
 *   DM_ISA_AVX512   x86-64-v4: AVX-512 F/BW/CD/DQ/VL (Skylake-X, Zen 4-5)
 *
 * The environment variable DMNIST_CPU_ISA = generic | avx2 | avx512 | auto
 * (unset = auto: the best the CPU has) forces a copy for tests and
 * benchmarks; a request above what the CPU supports gets the best it does
 * support (never an illegal instruction). Every copy computes the same
 * float operations in the same order (the plugins build them with
 * -ffp-contract=off, so no copy fuses a multiply-add another does not), and
 * the results are bit-identical across copies (tests/layers: layers_isa). */
#ifndef DMNIST_CPU_ISA_H
#define DMNIST_CPU_ISA_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dm_cpu_isa { DM_ISA_GENERIC = 0, DM_ISA_AVX2 = 1, DM_ISA_AVX512 = 2, DM_ISA_COUNT = 3 } dm_cpu_isa;

/* 1 where this compiler can build the x86 copies (GCC on x86-64). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define DM_CPU_ISA_X86 1
#else
#define DM_CPU_ISA_X86 0
#endif

static inline const char *dm_cpu_isa_name(dm_cpu_isa isa)
{
    static const char *const names[DM_ISA_COUNT] = {"generic", "avx2", "avx512"};
    return (unsigned)isa < DM_ISA_COUNT ? names[isa] : "?";
}

/* The best copy this CPU can run (and this build has). */
static inline dm_cpu_isa dm_cpu_isa_best(void)
{
#if DM_CPU_ISA_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return DM_ISA_AVX512;
    if (__builtin_cpu_supports("x86-64-v3")) return DM_ISA_AVX2;
#endif
    return DM_ISA_GENERIC;
}

/* The copy to use: DMNIST_CPU_ISA's, capped at dm_cpu_isa_best(). Returns 0,
 * or -1 when the variable holds something else than the four words (then
 * *isa is the best copy and the caller says so). */
static inline int dm_cpu_isa_select(dm_cpu_isa *isa)
{
    const dm_cpu_isa best = dm_cpu_isa_best();
    const char *e = getenv("DMNIST_CPU_ISA");
    *isa = best;
    if (!e || !*e || strcmp(e, "auto") == 0) return 0;
    for (int i = 0; i < DM_ISA_COUNT; i++)
        if (strcmp(e, dm_cpu_isa_name((dm_cpu_isa)i)) == 0) {
            *isa = (dm_cpu_isa)i < best ? (dm_cpu_isa)i : best;
            return 0;
        }
    return -1;
}

/* The per-core L2 cache in bytes, as the C library reports it (sysconf),
 * else 1 MiB (a common size on current x86 server cores); clamped to
 * [256 KiB, 4 MiB] so a strange report cannot make blocks absurd. */
static inline size_t dm_cpu_l2_bytes(void)
{
    long v = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    size_t b = v > 0 ? (size_t)v : (size_t)1 << 20;
    if (b < ((size_t)1 << 18)) b = (size_t)1 << 18;
    if (b > ((size_t)1 << 22)) b = (size_t)1 << 22;
    return b;
}

/* One line for logs and `dmnist-run --version`: the copy the CPU kernels
 * use, the best one, why (DMNIST_CPU_ISA), the vector features the CPU
 * reports and the L2 size the blocks are sized by. */
static inline void dm_cpu_isa_describe(char *buf, size_t size)
{
    dm_cpu_isa isa;
    const int bad = dm_cpu_isa_select(&isa) != 0;
    const char *env = getenv("DMNIST_CPU_ISA");
    char feats[160] = "";
#if DM_CPU_ISA_X86
    static const char *const names[] = {"sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"};
    const int have[] = {__builtin_cpu_supports("sse4.2"),   __builtin_cpu_supports("avx"),
                        __builtin_cpu_supports("avx2"),     __builtin_cpu_supports("fma"),
                        __builtin_cpu_supports("avx512f"),  __builtin_cpu_supports("avx512bw"),
                        __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512dq")};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (have[i]) {
            strncat(feats, feats[0] ? " " : "", sizeof feats - strlen(feats) - 1);
            strncat(feats, names[i], sizeof feats - strlen(feats) - 1);
        }
#endif
    snprintf(buf, size,
             "cpu kernels: %s (best on this CPU: %s; DMNIST_CPU_ISA=%s%s); cpu features: %s; "
             "L2 %zu KiB per core",
             dm_cpu_isa_name(isa), dm_cpu_isa_name(dm_cpu_isa_best()), env && *env ? env : "auto",
             bad ? ", not a known value" : "", feats[0] ? feats : "(baseline only)", dm_cpu_l2_bytes() >> 10);
}

#ifdef __cplusplus
}
#endif

#endif
