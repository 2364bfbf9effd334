/* Small plugins the registry must refuse (or accept), one per BAD_* macro.
 * Built several times by tests/core/CMakeLists.txt with different -D flags. */
#include "dmnist/dmnist.h"

static int c_init(const dm_params *p, const dm_comm_config *c, void **s, dm_comm_info *i, dm_error *e)
{
    (void)p; (void)c; (void)s; (void)i; (void)e;
    return DM_OK;
}

static const dm_comm_vtable vt = {
    .struct_size = sizeof(dm_comm_vtable),
    .init = c_init,
};

#ifndef TYPE_NAME
#define TYPE_NAME "testcomm"
#endif

static const dm_component comp = {
#ifdef BAD_COMPONENT_SIZE
    .struct_size = 8,
#else
    .struct_size = sizeof(dm_component),
#endif
    .kind = DM_KIND_COMM,
    .type_name = TYPE_NAME,
    .help = "test component",
    .params = NULL,
    .vtable = &vt,
};
static const dm_component *const comps[] = {&comp};

__attribute__((unused)) static const dm_plugin_descriptor desc = {
    .struct_size = sizeof(dm_plugin_descriptor),
#ifdef BAD_ABI_MAJOR
    .abi_major = DM_ABI_MAJOR + 1,
#else
    .abi_major = DM_ABI_MAJOR,
#endif
    .abi_minor = DM_ABI_MINOR,
    .name = "test",
    .version = "0",
    .build_signature = "test",
    .n_components = 1,
    .components = comps,
};

#ifdef BAD_NO_ENTRY
DM_EXPORT int not_the_entry(void) { return 0; }
#else
DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t major, uint32_t minor)
{
    (void)major; (void)minor;
    return &desc;
}
#endif
