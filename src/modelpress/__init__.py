"""modelpress: take a trained neural network to deployment (optimize, verify, run ONNX)."""
