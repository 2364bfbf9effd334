/* dmnist plugin ABI: the descriptor every plugin .so returns, status codes,
 * errors, and the parameter tables the core validates INI sections against.
 *
 * Growth rules (see docs/plugin-abi.md):
 *  - Every struct crossing the boundary starts with `size_t struct_size`.
 *  - New fields and new methods are only ever appended, under a comment naming
 *    the ABI minor version that added them. The host reads a field only if
 *    struct_size says it is there, and checks a method pointer for NULL before
 *    calling it.
 *  - DM_ABI_MAJOR changes only when a field is removed or changes meaning; the
 *    host refuses plugins built against a newer major.
 */
#ifndef DMNIST_ABI_H
#define DMNIST_ABI_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DM_ABI_MAJOR 1
#define DM_ABI_MINOR 3

/* The one symbol every plugin exports. */
#define DM_PLUGIN_ENTRY_SYMBOL "dm_plugin_entry"

#if defined(__GNUC__)
#define DM_EXPORT __attribute__((visibility("default")))
#else
#define DM_EXPORT
#endif

/* ---- status codes and errors ------------------------------------------ */

typedef enum dm_status {
    DM_OK = 0,
    DM_ERR_INVALID = 1,     /* bad argument or parameter value */
    DM_ERR_NOMEM = 2,       /* allocation failed */
    DM_ERR_IO = 3,          /* file could not be read or written */
    DM_ERR_FORMAT = 4,      /* file content is malformed */
    DM_ERR_UNSUPPORTED = 5, /* device, layout or shape not implemented */
    DM_ERR_COMM = 6,        /* communication failure */
    DM_ERR_TIMEOUT = 7,     /* a peer or operation did not answer in time */
    DM_ERR_DEVICE = 8,      /* CUDA / accelerator failure */
    DM_ERR_INTERNAL = 9     /* a bug */
} dm_status;

#define DM_ERRMSG_MAX 512

/* Filled by the callee on failure with one line (no trailing newline).
 * The caller owns it; callees never keep a pointer to it. */
typedef struct dm_error {
    int code;
    char msg[DM_ERRMSG_MAX];
} dm_error;

/* Set err (may be NULL) and return code, so plugins can write
 *   return dm_fail(err, DM_ERR_INVALID, "kernel %d > input %d", k, h); */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline int
dm_fail(dm_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Return the status of `call` from the calling function unless it is DM_OK
 * (the error is already in err):
 *   DM_TRY(dm_layer_check_create("dense", DENSE_DEVICES, cfg, info, err)); */
#define DM_TRY(call) \
    do { \
        int dm_try_rc_ = (call); \
        if (dm_try_rc_ != DM_OK) return dm_try_rc_; \
    } while (0)

/* ---- devices ----------------------------------------------------------- */

typedef enum dm_device { DM_DEVICE_CPU = 0, DM_DEVICE_CUDA = 1, DM_DEVICE_COUNT } dm_device;

#define DM_DEVICE_BIT(d) (1u << (unsigned)(d))

/* The devices a plugin with a CUDA twin implements in this build: cpu, and
 * cuda when its build defines DM_WITH_CUDA (dmnist_add_plugin does when it
 * compiles the plugin's .cu files). For a vtable's `devices`. */
#ifdef DM_WITH_CUDA
#define DM_DEVICES_BUILT (DM_DEVICE_BIT(DM_DEVICE_CPU) | DM_DEVICE_BIT(DM_DEVICE_CUDA))
#else
#define DM_DEVICES_BUILT DM_DEVICE_BIT(DM_DEVICE_CPU)
#endif

/* A call to a plugin's CUDA twin or to its CPU pass, by device: the value of
 * cuda_call (a dm_status) when `device` is DM_DEVICE_CUDA in a build with
 * DM_WITH_CUDA, else cpu_call (which returns nothing) is run and the value
 * is DM_OK:
 *   return DM_CPU_OR_CUDA(s->device, relu_forward_cpu(s, n, x, y),
 *                         relu_forward_cuda(s, dm_run_stream(ctx), n, x, y, err));
 * Without DM_WITH_CUDA cuda_call is only type-checked (an operand of
 * sizeof, never evaluated): the CUDA functions are declared in every build
 * and defined in a CUDA build alone. */
#ifdef DM_WITH_CUDA
#define DM_CPU_OR_CUDA(device, cpu_call, cuda_call) \
    ((device) == DM_DEVICE_CUDA ? (cuda_call) : ((void)(cpu_call), DM_OK))
#else
#define DM_CPU_OR_CUDA(device, cpu_call, cuda_call) ((void)(device), (void)sizeof(cuda_call), (void)(cpu_call), DM_OK)
#endif

/* A plugin's destroy when its state is one malloc'ed block (NULL-safe). */
static inline void dm_free_state(void *state) { free(state); }

/* ---- parameter tables -------------------------------------------------- */

typedef enum dm_param_type {
    DM_PARAM_INT = 0,
    DM_PARAM_FLOAT = 1,
    DM_PARAM_BOOL = 2, /* true/false, yes/no, on/off, 1/0 */
    DM_PARAM_STRING = 3,
    DM_PARAM_ENUM = 4 /* one of the '|'-separated words in `choices` */
} dm_param_type;

/* One accepted key of an INI section. A component's table ends with an
 * entry whose name is NULL. */
typedef struct dm_param_def {
    const char *name;
    dm_param_type type;
    const char *default_value; /* text as it would appear in the INI; NULL = required */
    double min, max;           /* INT/FLOAT range, inclusive; ignored when min > max */
    const char *choices;       /* ENUM only: "valid|same" */
    const char *help;          /* one line */
} dm_param_def;

/* The entry that ends every parameter table (its name is NULL):
 *   static const dm_param_def pool_params[] = {
 *       {"pool", DM_PARAM_INT, "2", 1, 1024, NULL, "square window size"},
 *       DM_PARAM_END};
 * A component without keys passes NULL as its table, or {DM_PARAM_END}. */
#define DM_PARAM_END \
    { \
        NULL, (dm_param_type)0, NULL, 0, 0, NULL, NULL \
    }

/* A validated value, as handed to a plugin. */
typedef struct dm_param_value {
    const char *name;
    dm_param_type type;
    int64_t i;     /* INT, BOOL (0/1) */
    double f;      /* FLOAT (also set for INT) */
    const char *s; /* always the text; for ENUM the chosen word */
} dm_param_value;

/* Every key of the component's table is present (defaults filled in), in
 * table order. The strings live until the component instance is destroyed. */
typedef struct dm_params {
    size_t struct_size;
    int count;
    const dm_param_value *values;
} dm_params;

static inline const dm_param_value *dm_param_find(const dm_params *p, const char *name)
{
    for (int k = 0; p && k < p->count; k++)
        if (strcmp(p->values[k].name, name) == 0) return &p->values[k];
    return NULL;
}
static inline int64_t dm_param_int(const dm_params *p, const char *name, int64_t dflt)
{
    const dm_param_value *v = dm_param_find(p, name);
    return v ? v->i : dflt;
}
static inline double dm_param_float(const dm_params *p, const char *name, double dflt)
{
    const dm_param_value *v = dm_param_find(p, name);
    return v ? v->f : dflt;
}
static inline const char *dm_param_str(const dm_params *p, const char *name, const char *dflt)
{
    const dm_param_value *v = dm_param_find(p, name);
    return v ? v->s : dflt;
}

/* ---- components and the plugin descriptor ----------------------------- */

typedef enum dm_kind {
    DM_KIND_LAYER = 0,
    DM_KIND_OPTIMIZER = 1,
    DM_KIND_DATASET = 2,
    DM_KIND_COMM = 3,
    DM_KIND_COUNT
} dm_kind;

typedef struct dm_component {
    size_t struct_size; /* sizeof(dm_component) as the plugin saw it */
    dm_kind kind;
    const char *type_name;      /* matched against `type =` in the INI; unique over all plugins */
    const char *help;           /* one line for --list-plugins / --help-plugin */
    const dm_param_def *params; /* NULL-name terminated; may be NULL for none */
    const void *vtable;         /* dm_layer_vtable, dm_optimizer_vtable, ... by kind;
                                    each starts with its own size_t struct_size */
} dm_component;

typedef struct dm_plugin_descriptor {
    size_t struct_size; /* sizeof(dm_plugin_descriptor) as the plugin saw it */
    uint32_t abi_major; /* DM_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;
    const char *name;            /* e.g. "conv2d" */
    const char *version;         /* plugin's own version, e.g. "1.0.0" */
    const char *build_signature; /* e.g. "cpu;openblas" or "cpu;openblas;cuda13;cudnn9" */
    int n_components;
    const dm_component *const *components;
} dm_plugin_descriptor;

/* The entry point. The host passes its own ABI version so a plugin may
 * refuse (return NULL) or adapt. The descriptor must stay valid until the
 * library is closed; it is normally a static const object. */
typedef const dm_plugin_descriptor *(*dm_plugin_entry_fn)(uint32_t host_abi_major, uint32_t host_abi_minor);

/* Whether the struct at p (of type `type`, filled by the other side) holds
 * `field`: its struct_size reaches past the field's end. Check this before
 * reading a field (or calling a method) that a later minor version added:
 *   if (DM_HAS_FIELD(vt, dm_layer_vtable, bind_state) && vt->bind_state) ... */
#define DM_HAS_FIELD(p, type, field) ((p)->struct_size >= offsetof(type, field) + sizeof(((const type *)0)->field))

/* Smallest struct sizes the host accepts for ABI 1.0 (all fields above). */
#define DM_DESCRIPTOR_SIZE_1_0 (offsetof(dm_plugin_descriptor, components) + sizeof(void *))
#define DM_COMPONENT_SIZE_1_0 (offsetof(dm_component, vtable) + sizeof(void *))

/* Deterministic random numbers for plugins (initialisation, dropout,
 * synthetic data): splitmix64, so that every stream is a pure function of
 * the experiment seed and the plugin never depends on libc's rand(). */
static inline uint64_t dm_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform in [0, 1), 24 bits. */
static inline float dm_rng_uniform(uint64_t *state) { return (float)(dm_rng_next(state) >> 40) * (1.0f / 16777216.0f); }
/* Counter-based hash (stateless): the same (seed, index) always gives the
 * same 64 bits; used for dropout masks that CPU and CUDA agree on. */
static inline uint64_t dm_hash64(uint64_t seed, uint64_t index)
{
    uint64_t s = seed ^ (index * 0xD1B54A32D192ED03ull);
    return dm_rng_next(&s);
}

#ifdef __cplusplus
}
#endif
#endif /* DMNIST_ABI_H */
