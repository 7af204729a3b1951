"""Custom ops, one folder each: spec, reference, torch op, ONNX Runtime kernel, GPU kernel, TensorRT plugin."""
