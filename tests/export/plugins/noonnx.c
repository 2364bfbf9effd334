/* A layer without an ONNX description (no onnx method, as every plugin built
 * before ABI 1.3): the exporter must refuse it by name. max(x, 0) otherwise. */
#include "dmnist/dmnist.h"
#include "dmnist/elementwise.h"

#define NOONNX(x, a) ((x) > 0.0f ? (x) : 0.0f)
#define NOONNX_DX(x, y, dy, a) ((x) > 0.0f ? (dy) : 0.0f)
DM_ELEMENTWISE_LAYER(noonnx, NOONNX, NOONNX_DX);

DM_PLUGIN_DEFINE("noonnx", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_LAYER_COMPONENT("noonnx", "relu that cannot describe itself as ONNX (tests/export)", NULL,
                                    &noonnx_vtable));
