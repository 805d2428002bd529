"""Export stage: bundle → model.onnx (+ TensorRT engine), gated on parity with PyTorch."""
