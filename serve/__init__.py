"""serve: classify folders, files and URLs with a bundle, model.onnx or a TensorRT engine into a streaming CSV."""
