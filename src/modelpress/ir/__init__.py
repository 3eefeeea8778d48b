"""The IR layer: onnx_ir is the object model; this package adds load/save policy and checks."""

from modelpress.ir.io import check_model, from_text, load, save, to_bytes

__all__ = ["check_model", "from_text", "load", "save", "to_bytes"]
