"""The only layer that creates onnxruntime sessions."""
