"""From a model to the files that are deployed.

export   a Token-Pooled ViT (PyTorch) -> ONNX with tpdeploy::TokenPool nodes, validated
fp16     a float32 ONNX file -> float16 with the contract's float32 islands (no PyTorch)
quantize a float32 ONNX file -> static Q/DQ int8 or FP8, calibrated, the same islands float32 (no PyTorch)
engine   an ONNX file -> a TensorRT engine with the TokenPool plugin, and its sidecar
"""
