"""Rewrites that target onnxruntime contrib ops (domain ``com.microsoft``).

Kept apart from the generic ONNX passes (STYLE.md §2): their output runs on stock
onnxruntime but is not portable ONNX. They run only with ``--target onnxruntime``.
"""
