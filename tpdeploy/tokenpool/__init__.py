"""`tpdeploy::TokenPool` version 1, in one place: its definition and three of its four implementations (the fourth,
the CUDA kernels and the TensorRT plugin, is C++ under plugins/tokenpool/).

    definition      the op's identity, attributes and the CUDA kernels' limits (no PyTorch, no ONNX)
    reference       the PyTorch reference (differentiable in X)
    onnx_function   the ONNX node and its model-local function of standard ops
    cuda_kernels    the CUDA kernels from PyTorch, through ctypes
    libraries       where the native libraries (the kernels, the TensorRT plugin) are found
"""
