/* ReLU layer plugin: no parameters, output shape = input shape. */
#include "relu.h"
#include "dmnist/dmnist.h"

#ifdef DM_WITH_CUDA
DM_ELEMENTWISE_LAYER_CUDA(relu, RELU, RELU_DX, relu_forward_cuda, relu_backward_cuda);
#else
DM_ELEMENTWISE_LAYER(relu, RELU, RELU_DX);
#endif

DM_PLUGIN_DEFINE("relu", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
    DM_LAYER_COMPONENT("relu", "rectified linear unit, max(x, 0), elementwise",
                       NULL, &relu_vtable));
