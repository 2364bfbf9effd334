/* Compile a kernel header once per instruction set of dmnist/cpu_isa.h.
 *
 * Define DM_ISA_KERNELS as the kernel header's name in quotes, then include
 * this file: the header is included three times, its functions named with
 * WK(name): name_avx512 and name_avx2 (x86-64 with GCC only, each under its
 * `#pragma GCC target`) and name_generic (everywhere). The plugin's own
 * folder must be on the include path (dmnist_add_plugin puts it there; out
 * of tree, add -I. or its equivalent).
 *
 *   #define DM_ISA_KERNELS "dropout_kern.h"
 *   #include "dmnist/cpu_isa_copies.h"
 *   ... dropout_mask_avx512(...), dropout_mask_avx2(...), dropout_mask_generic(...)
 *
 * No include guard: each kernel header includes it once. */
#include "dmnist/cpu_isa.h"

#ifndef DM_ISA_KERNELS
#error "define DM_ISA_KERNELS as the kernel header to compile per instruction set"
#endif

#if DM_CPU_ISA_X86
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
#define WK(name) name##_avx512
#include DM_ISA_KERNELS
#undef WK
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define WK(name) name##_avx2
#include DM_ISA_KERNELS
#undef WK
#pragma GCC pop_options
#endif

#define WK(name) name##_generic
#include DM_ISA_KERNELS
#undef WK
#undef DM_ISA_KERNELS
