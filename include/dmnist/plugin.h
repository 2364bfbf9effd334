/* dmnist plugin glue: the component list, the descriptor and the exported
 * entry point of a plugin, written once here instead of in every plugin.
 *
 *   DM_PLUGIN_DEFINE("relu", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
 *                    DM_LAYER_COMPONENT("relu", "max(x, 0), elementwise", NULL, &relu_vtable));
 *
 * expands to a static component array, a static const dm_plugin_descriptor
 * and
 *
 *   DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t host_abi_major,
 *                                                         uint32_t host_abi_minor);
 *
 * which returns the descriptor to a host of this ABI major and NULL to any
 * other. Use it once per plugin, at file scope, after the vtables and
 * parameter tables it names. Several components go one after another:
 *
 *   DM_PLUGIN_DEFINE("mykit", "0.3.0", DM_PLUGIN_BUILD_SIGNATURE ";openblas",
 *                    DM_LAYER_COMPONENT("swish", "x * sigmoid(x)", NULL, &swish_vtable),
 *                    DM_OPTIMIZER_COMPONENT("lion", "sign of the momentum", lion_params, &lion_vt));
 *
 * A plugin that needs a newer host than ABI <major>.0 (it reads fields or
 * gets calls a later minor version added) says which minor it needs with
 * DM_PLUGIN_DEFINE_FOR_HOST(min_host_minor, name, version, signature, ...):
 * an older host then gets NULL and refuses the plugin with one line.
 *
 * The macros use C99 compound literals and designated initialisers: C only
 * (put them in a .c file of a C++ or CUDA plugin). */
#ifndef DMNIST_PLUGIN_H
#define DMNIST_PLUGIN_H

#include "dmnist/abi.h"
#include "dmnist/comm.h"
#include "dmnist/dataset.h"
#include "dmnist/layer.h"
#include "dmnist/optimizer.h"

/* The build signature: dmnist_add_plugin (CMake) defines it as "cpu" or
 * "cpu;cudaN"; a build without it (a plain Makefile) says "cpu". A plugin
 * appends what it links: DM_PLUGIN_BUILD_SIGNATURE ";openblas". */
#ifndef DM_PLUGIN_BUILD_SIGNATURE
#define DM_PLUGIN_BUILD_SIGNATURE "cpu"
#endif

/* Whether a host of ABI host_major.host_minor can use a plugin that needs
 * at least minor `min_minor` of this major. */
static inline int dm_plugin_host_ok(uint32_t host_major, uint32_t host_minor, uint32_t min_minor)
{
    return host_major == DM_ABI_MAJOR && host_minor >= min_minor;
}

/* ---- components ------------------------------------------------------- */

/* One component: kind, type name (matched against `type =` in the INI
 * file), one line of help, its parameter table (NULL-name terminated, or
 * NULL for none) and a pointer to its vtable, which must have the kind's
 * vtable type (checked at compile time). */
#define DM_LAYER_COMPONENT(type, help, params, vtable) \
    DM_COMPONENT_(DM_KIND_LAYER, type, help, params, DM_TYPED_(const dm_layer_vtable *, vtable))
#define DM_OPTIMIZER_COMPONENT(type, help, params, vtable) \
    DM_COMPONENT_(DM_KIND_OPTIMIZER, type, help, params, DM_TYPED_(const dm_optimizer_vtable *, vtable))
#define DM_DATASET_COMPONENT(type, help, params, vtable) \
    DM_COMPONENT_(DM_KIND_DATASET, type, help, params, DM_TYPED_(const dm_dataset_vtable *, vtable))
#define DM_COMM_COMPONENT(type, help, params, vtable) \
    DM_COMPONENT_(DM_KIND_COMM, type, help, params, DM_TYPED_(const dm_comm_vtable *, vtable))

/* The address of a static const dm_component (a file-scope compound literal). */
#define DM_COMPONENT_(kind_, type_, help_, params_, vtable_) \
    (&(const dm_component){.struct_size = sizeof(dm_component), \
                           .kind = (kind_), \
                           .type_name = (type_), \
                           .help = (help_), \
                           .params = (params_), \
                           .vtable = (vtable_)})

/* `p` unchanged, but a compile error (pointer type mismatch) unless it
 * converts to `type` without a cast. */
#define DM_TYPED_(type, p) (1 ? (p) : (type)0)

/* ---- vtables from a naming convention --------------------------------
 * One line instead of a struct written out, for each kind: the methods
 * are the plugin's static functions NAME_<method>, and the macro defines
 * `static const <kind's vtable type> NAME_vtable`.
 *
 *   DM_DATASET_VTABLE(mnist);                  NAME_open, NAME_read, NAME_close
 *   DM_COMM_VTABLE(local, devices);            NAME_init, NAME_allreduce,
 *                                              NAME_allreduce_start, NAME_wait,
 *                                              NAME_broadcast, NAME_barrier,
 *                                              NAME_finalize; `devices` as in
 *                                              dm_comm_vtable
 *
 * Layers and optimizers have theirs beside their helpers:
 * DM_LAYER_VTABLE and DM_LAYER_VTABLE_NO_PARAMS in dmnist/layer_util.h,
 * DM_OPTIMIZER_VTABLE in dmnist/optimizer_util.h. A component whose
 * methods have other names writes the struct out itself. */
#define DM_DATASET_VTABLE(NAME) \
    static const dm_dataset_vtable NAME##_vtable = { \
        .struct_size = sizeof(dm_dataset_vtable), .open = NAME##_open, .read = NAME##_read, .close = NAME##_close}
#define DM_COMM_VTABLE(NAME, DEVICES) \
    static const dm_comm_vtable NAME##_vtable = {.struct_size = sizeof(dm_comm_vtable), \
                                                 .devices = (DEVICES), \
                                                 .init = NAME##_init, \
                                                 .allreduce = NAME##_allreduce, \
                                                 .allreduce_start = NAME##_allreduce_start, \
                                                 .wait = NAME##_wait, \
                                                 .broadcast = NAME##_broadcast, \
                                                 .barrier = NAME##_barrier, \
                                                 .finalize = NAME##_finalize}

/* ---- the descriptor and the entry point ------------------------------ */

#define DM_PLUGIN_DEFINE(name, version, signature, ...) \
    DM_PLUGIN_DEFINE_FOR_HOST(0, name, version, signature, __VA_ARGS__)

#define DM_PLUGIN_DEFINE_FOR_HOST(min_host_minor, name_, version_, signature_, ...) \
    static const dm_component *const dm_plugin_components_[] = {__VA_ARGS__}; \
    static const dm_plugin_descriptor dm_plugin_descriptor_ = { \
        .struct_size = sizeof(dm_plugin_descriptor), \
        .abi_major = DM_ABI_MAJOR, \
        .abi_minor = DM_ABI_MINOR, \
        .name = (name_), \
        .version = (version_), \
        .build_signature = (signature_), \
        .n_components = (int)(sizeof dm_plugin_components_ / sizeof dm_plugin_components_[0]), \
        .components = dm_plugin_components_, \
    }; \
    DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t host_abi_major, uint32_t host_abi_minor); \
    DM_EXPORT const dm_plugin_descriptor *dm_plugin_entry(uint32_t host_abi_major, uint32_t host_abi_minor) \
    { \
        return dm_plugin_host_ok(host_abi_major, host_abi_minor, (min_host_minor)) ? &dm_plugin_descriptor_ : NULL; \
    } \
    typedef int dm_plugin_define_ends_with_a_semicolon_

#endif /* DMNIST_PLUGIN_H */
