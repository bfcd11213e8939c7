"""What tpdeploy's files mean, for every stage: the bottom layer, importing neither PyTorch nor TensorRT.

recipe        the export recipe and data config recorded in every exported file
onnx_file     an exported ONNX file: loading, input/output contract, TokenPool nodes, recipe
engine_file   a TensorRT engine's sidecar: schema, reader/writer, compatibility check
formats       which kind of file a path is
plugins       the TensorRT plugin library, loaded once per process
files         writing outputs whole or not at all, never over an input

The op itself (its identity, attributes, kernel limits) and where its native libraries are found:
tpdeploy.tokenpool.definition and tpdeploy.tokenpool.libraries, below this layer.
"""
