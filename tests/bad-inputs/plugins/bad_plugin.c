/* One small plugin, built once per defect by tests/bad-inputs/CMakeLists.txt
 * (-DBAD_<defect>), each into a folder of its own; tests/core's registry
 * test loads some of them too. Without a BAD_* macro it is a valid plugin
 * with one dataset component, "badtest", that the corpus never trains with: the loader must refuse every variant before use.
 *
 *   BAD_ABI_MAJOR         built for a newer major ABI
 *   BAD_NO_ENTRY          exports no dm_plugin_entry
 *   BAD_NULL_DESCRIPTOR   the entry returns NULL (refuses the host)
 *   BAD_DESCRIPTOR_SIZE   descriptor struct_size too small
 *   BAD_COMPONENT_SIZE    component struct_size too small
 *   BAD_VTABLE_SIZE       vtable struct_size too small
 *   BAD_KIND              a component kind the host does not know
 *   BAD_DUP_TYPE          claims the dataset type "synthetic", taken by a real plugin
 *   BAD_DUP_IN_PLUGIN     two components with one type name
 *   BAD_NULL_COMPONENT    a NULL entry in the component list
 *   BAD_EMPTY_TYPE        an empty type name
 *   BAD_RESERVED_PARAM    declares a parameter named "type"
 *   BAD_ENUM_NO_CHOICES   an enum parameter without choices
 *   BAD_CORE_KEY          declares "batch_size", a key the core owns in [data]
 *   BAD_UNDEFINED_SYMBOL  needs a symbol nothing provides (RTLD_NOW refuses it)
 *
 * Plugins that misbehave instead of declaring something wrong (the core
 * must name the file, and an unused one must not stop the run):
 *
 *   BAD_CRASH_IN_CTOR     a constructor writes to an invalid address (SIGSEGV)
 *   BAD_CRASH_IN_ENTRY    dm_plugin_entry does
 *   BAD_CRASH_IN_CREATE   the dataset's open() does (the dataset's "create")
 *   BAD_ABORT_IN_ENTRY    dm_plugin_entry calls abort() (SIGABRT)
 *   BAD_EXIT_IN_CTOR      a constructor calls exit(0)
 *   BAD_EXIT_IN_ENTRY     dm_plugin_entry calls exit(0)
 *   BAD_EXIT_IN_CREATE    open() calls exit(0)
 *   BAD_HANG_IN_CTOR      a constructor never returns
 *   BAD_HANG_IN_ENTRY     dm_plugin_entry never returns
 */
#include "dmnist/dmnist.h"

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

/* An address no mapping holds; volatile, so neither the compiler nor
 * UBSan's null check sees what the store does. */
static volatile uintptr_t bad_address = 16;
__attribute__((unused)) static void crash(void) { *(volatile int *)bad_address = 1; }
__attribute__((unused)) static void hang(void)
{
    for (;;) pause();
}

#if defined(BAD_CRASH_IN_CTOR) || defined(BAD_EXIT_IN_CTOR) || defined(BAD_HANG_IN_CTOR)
__attribute__((constructor)) static void bad_ctor(void)
{
#if defined(BAD_CRASH_IN_CTOR)
    crash();
#elif defined(BAD_EXIT_IN_CTOR)
    exit(0);
#else
    hang();
#endif
}
#endif

#ifdef BAD_UNDEFINED_SYMBOL
extern int dm_bad_test_missing_function(void);
#endif

static int bt_open(const dm_params *p, const dm_dataset_config *c, void **s, dm_dataset_info *i, dm_error *e)
{
    (void)p;
    (void)c;
    (void)s;
    (void)i;
#ifdef BAD_CRASH_IN_CREATE
    crash();
#endif
#ifdef BAD_EXIT_IN_CREATE
    exit(0);
#endif
#ifdef BAD_UNDEFINED_SYMBOL
    if (dm_bad_test_missing_function()) return DM_OK;
#endif
    return dm_fail(e, DM_ERR_UNSUPPORTED, "badtest: never opened");
}
static int bt_read(void *s, dm_split sp, const int64_t *idx, int n, float *im, int32_t *lab, dm_error *e)
{
    (void)s;
    (void)sp;
    (void)idx;
    (void)n;
    (void)im;
    (void)lab;
    return dm_fail(e, DM_ERR_UNSUPPORTED, "badtest: never read");
}
static void bt_close(void *s) { (void)s; }

static const dm_dataset_vtable vt = {
#ifdef BAD_VTABLE_SIZE
    .struct_size = 2 * sizeof(void *),
#else
    .struct_size = sizeof(dm_dataset_vtable),
#endif
    .open = bt_open,
    .read = bt_read,
    .close = bt_close,
};

static const dm_param_def params[] = {
#ifdef BAD_RESERVED_PARAM
    {"type", DM_PARAM_STRING, "x", 1, 0, NULL, "reserved by the core"},
#endif
#ifdef BAD_ENUM_NO_CHOICES
    {"mode", DM_PARAM_ENUM, "a", 1, 0, NULL, "an enum without choices"},
#endif
#ifdef BAD_CORE_KEY
    {"batch_size", DM_PARAM_INT, "1", 1, 100, NULL, "owned by the core's [data]"},
#endif
    {"size", DM_PARAM_INT, "1", 1, 100, NULL, "a harmless key"},
    DM_PARAM_END};

#if defined(BAD_DUP_TYPE)
#define TYPE_NAME "synthetic"
#elif defined(BAD_EMPTY_TYPE)
#define TYPE_NAME ""
#else
#define TYPE_NAME "badtest"
#endif

static const dm_component comp = {
#ifdef BAD_COMPONENT_SIZE
    .struct_size = 8,
#else
    .struct_size = sizeof(dm_component),
#endif
#if defined(BAD_KIND)
    .kind = (dm_kind)7,
#else
    .kind = DM_KIND_DATASET,
#endif
    .type_name = TYPE_NAME,
    .help = "test component for tests/bad-inputs",
    .params = params,
    .vtable = &vt,
};

#if defined(BAD_DUP_IN_PLUGIN)
static const dm_component *const comps[] = {&comp, &comp};
#elif defined(BAD_NULL_COMPONENT)
static const dm_component *const comps[] = {&comp, NULL};
#else
static const dm_component *const comps[] = {&comp};
#endif

__attribute__((unused)) static const dm_plugin_descriptor desc = {
#ifdef BAD_DESCRIPTOR_SIZE
    .struct_size = 16,
#else
    .struct_size = sizeof(dm_plugin_descriptor),
#endif
#ifdef BAD_ABI_MAJOR
    .abi_major = DM_ABI_MAJOR + 1,
#else
    .abi_major = DM_ABI_MAJOR,
#endif
    .abi_minor = DM_ABI_MINOR,
    .name = "badtest",
    .version = "0.0.1",
    .build_signature = "cpu;test",
    .n_components = (int)(sizeof comps / sizeof comps[0]),
    .components = comps,
};

#ifdef BAD_NO_ENTRY
DM_EXPORT int dm_plugin_entry_misspelled(void) { return 0; }
#else
DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t major, uint32_t minor)
{
    (void)major;
    (void)minor;
#if defined(BAD_CRASH_IN_ENTRY)
    crash();
#elif defined(BAD_ABORT_IN_ENTRY)
    abort();
#elif defined(BAD_EXIT_IN_ENTRY)
    exit(0);
#elif defined(BAD_HANG_IN_ENTRY)
    hang();
#endif
#ifdef BAD_NULL_DESCRIPTOR
    return NULL;
#else
    return &desc;
#endif
}
#endif
