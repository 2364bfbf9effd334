/* dmnist-plugin-check: what the checks of each component kind share.
 *
 * plugin_check.c        command line, loading, descriptor and parameter
 *                       tables, running each component's checks in a child
 *                       process, the result table
 * plugin_check_layer.c  layers: gradients, determinism, poisoned and guarded
 *                       buffers, CUDA against CPU
 * plugin_check_kinds.c  optimizers, datasets, comm backends
 * plugin_check_reference.c  --reference: an optimizer's steps against
 *                       expected numbers */
#ifndef DM_PLUGIN_CHECK_H
#define DM_PLUGIN_CHECK_H

#include "dm_core.h"

typedef enum pc_result { PC_OK = 0, PC_SKIP = 1, PC_FAIL = 2 } pc_result;

typedef struct pc_ctx {
    dm_registry *reg;      /* holds the one plugin file being checked */
    const char *user_spec; /* --params: "key=value ..." fixed in every setting */
    uint64_t seed;         /* --seed: shapes, settings and data are drawn from it */
    int settings;          /* --settings: random parameter settings per layer or optimizer */
    const char *reference; /* --reference: expected optimizer steps (plugin_check_reference.c) */
    int verbose;           /* -v: one line per case */
} pc_ctx;

/* One row of the result table: component, check, result, detail. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
void pc_row(const dm_loaded_component *lc, const char *check, pc_result result, const char *fmt,
            ...);
/* Say what is running, so a crash or a hang can be reported against it. */
void pc_now(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* ---- parameter settings ---------------------------------------------- */

/* Build the spec of setting k for a component: setting 0 takes every
 * default, the others draw every key at random within its range, near its
 * default (small sizes, so checks stay fast). Required keys get a drawn
 * value in every setting; keys in user_spec always keep the user's value.
 * Fails (with a message) only for a required string key the user did not
 * give. */
int pc_setting(const dm_param_def *defs, const char *user_spec, int k, uint64_t seed, char *spec, size_t size,
               dm_error *err);
/* The few settings an optimizer runs with: the defaults, then each boolean
 * flipped and each other enum choice, one key at a time (continuous keys
 * keep their defaults: a random learning-rate-like value proves nothing).
 * Returns how many there are; spec of setting k in `spec`. */
int pc_discrete_setting(const dm_param_def *defs, const char *user_spec, int k, char *spec, size_t size);

/* ---- guarded buffers --------------------------------------------------- */

/* A host buffer with a guard zone of a known byte pattern on each side, so
 * that a write just before or after it is caught. p is 64-byte aligned and
 * NULL when bytes == 0. */
typedef struct pc_buf {
    unsigned char *raw;
    size_t bytes;
    void *p;
} pc_buf;

void pc_buf_alloc(pc_buf *b, size_t bytes);
void pc_buf_free(pc_buf *b);
/* 1 when both guard zones are intact. */
int pc_buf_guards_ok(const pc_buf *b);
/* Fill the data with NaN (floats) so that an element left unwritten shows. */
void pc_buf_poison(pc_buf *b);
/* Index of the first non-finite float in p[0..n), or -1. */
long pc_first_nonfinite(const float *p, size_t n);

/* Wait until the GPU is idle. dm_dev_alloc zeroes new memory with
 * cudaMemset on the legacy default stream, which the core's non-blocking
 * stream does not wait for: without this, that zeroing can land after an
 * upload or a kernel on the stream. No-op without CUDA. */
void pc_dev_settle(void);

/* A private temporary directory (mkdtemp); removed with everything in it. */
int pc_tmpdir(char *path, size_t size);
void pc_rmtree(const char *path);

/* ---- the checks of each kind (their rows say how they went) ----------- */

void pc_check_layer(const pc_ctx *c, const dm_loaded_component *lc);
void pc_check_optimizer(const pc_ctx *c, const dm_loaded_component *lc);
/* The row "reference (cpu)": every case of c->reference. */
void pc_check_reference(const pc_ctx *c, const dm_loaded_component *lc);
void pc_check_dataset(const pc_ctx *c, const dm_loaded_component *lc);
void pc_check_comm(const pc_ctx *c, const dm_loaded_component *lc);

#endif
