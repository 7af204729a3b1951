"""Export of a trained checkpoint to one ONNX graph with fuller:: custom ops, and the TensorRT engine build."""
