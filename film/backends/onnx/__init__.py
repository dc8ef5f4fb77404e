"""The onnx backend: a model exported by ``film export``, run by onnxruntime (inference only)."""
