/* ReLU layer plugin: no parameters, output shape = input shape. */
#include "relu.h"
#include "dmnist/dmnist.h"

#ifdef DM_WITH_CUDA
DM_ELEMENTWISE_LAYER_CUDA_ONNX(relu, RELU, RELU_DX, relu_forward_cuda, relu_backward_cuda, "Relu");
#else
DM_ELEMENTWISE_LAYER_ONNX(relu, RELU, RELU_DX, "Relu");
#endif

DM_PLUGIN_DEFINE("relu", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE,
                 DM_LAYER_COMPONENT("relu", "rectified linear unit, max(x, 0), elementwise", NULL, &relu_vtable));
