"""What tpdeploy's files mean, for every stage: the bottom layer, importing neither PyTorch nor TensorRT.

    tokenpool     the op: domain, type, version, modes, attributes, kernel limits
    recipe        the export recipe and data config recorded in every exported file
    onnx_file     an exported ONNX file: loading, input/output contract, TokenPool nodes, recipe
    engine_file   a TensorRT engine's sidecar: schema, reader/writer, compatibility check
    formats       which kind of file a path is
    libraries     finding the native libraries; loading the TensorRT plugin once per process
    files         writing outputs whole or not at all, never over an input
"""
