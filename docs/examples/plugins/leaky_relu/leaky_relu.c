/* leaky_relu: a dmnist layer plugin built out of tree, the worked example of
 * docs/writing-a-layer-plugin.md.
 *
 *   out = x            where x > 0
 *   out = alpha * x    elsewhere            (elementwise, any shape)
 *
 * One key, `alpha`. No parameters to learn, no workspace, CPU only. */
#include <dmnist/dmnist.h>
#include <dmnist/elementwise.h>

/* y = f(x), and dx = f'(x) * dy; a[0] is the first FLOAT key of the table: alpha. */
#define LEAKY(x, a) ((x) > 0.0f ? (x) : (a)[0] * (x))
#define LEAKY_DX(x, y, dy, a) ((x) > 0.0f ? (dy) : (a)[0] * (dy))

/* Defines leaky_relu_vtable: create, forward, backward, destroy. */
DM_ELEMENTWISE_LAYER(leaky_relu, LEAKY, LEAKY_DX);

/* The keys of a [layer.NAME] section with type = leaky_relu. */
static const dm_param_def leaky_params[] = {
    {"alpha", DM_PARAM_FLOAT, "0.01", 0.0, 1.0, NULL, "slope for x <= 0 (0 gives a plain ReLU)"}, DM_PARAM_END};

/* The descriptor and the one exported symbol, dm_plugin_entry. */
DM_PLUGIN_DEFINE("leaky_relu", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_LAYER_COMPONENT("leaky_relu",
                                    "leaky rectified linear unit: x if x > 0, else alpha * x (elementwise)",
                                    leaky_params, &leaky_relu_vtable));
