/* Umbrella header: everything a plugin may include. */
#ifndef DMNIST_DMNIST_H
#define DMNIST_DMNIST_H
#include "dmnist/abi.h"
#include "dmnist/tensor.h"
#include "dmnist/layer.h"
#include "dmnist/onnx.h"
#include "dmnist/optimizer.h"
#include "dmnist/dataset.h"
#include "dmnist/comm.h"
#include "dmnist/plugin.h"
#endif
