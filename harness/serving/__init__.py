"""Using a trained model: the retrieval index, export (TorchScript/ONNX) and retrieval pictures."""
