"""What an obfuscated model and its library must not give away: names, op types, weight bytes."""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx
import onnx_ir as ir

from modelpress.protect.obfuscate.anonymize import original_names

RUN_BYTES = 64  # issue 4: no run of this many bytes of any original weight may be written
_KEY_BYTES = 8
_STRIDE = RUN_BYTES - _KEY_BYTES  # every 64-byte run holds an 8-byte window at a multiple of this


def original_tensors(model: ir.Model) -> list[bytes]:
    """The bytes of every initializer and Constant tensor of ``model`` (main graph)."""
    tensors = [
        v.const_value.tobytes() for v in model.graph.initializers.values() if v.const_value is not None
    ]
    for node in model.graph:
        if node.op_type == "Constant" and "value" in node.attributes:
            tensors.append(node.attributes["value"].value.tobytes())
    return tensors


def longest_common_run(originals: collections.abc.Sequence[bytes], data: bytes) -> int:
    """The longest run of bytes of some original tensor found in ``data`` (0 when under 8 bytes).

    Any common run of 64 bytes or more contains an 8-byte window of the original starting at a
    multiple of 56; those windows are looked up among all 8-byte windows of ``data`` (numpy),
    and each hit is extended both ways.
    """
    if len(data) < _KEY_BYTES:
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(np.frombuffer(data, np.uint8), _KEY_BYTES)
    keys = np.ascontiguousarray(windows).view(np.uint64).reshape(-1)
    probes: dict[int, list[tuple[bytes, int]]] = {}
    for original in originals:
        for start in (
            range(0, len(original) - RUN_BYTES + 1 + _STRIDE, _STRIDE) if len(original) >= RUN_BYTES else ()
        ):
            if start + _KEY_BYTES <= len(original):
                key = int(np.frombuffer(original[start : start + _KEY_BYTES], np.uint64)[0])
                probes.setdefault(key, []).append((original, start))
    longest = 0
    for position in np.flatnonzero(np.isin(keys, np.fromiter(probes, np.uint64, len(probes)))):
        for original, start in probes[int(keys[position])]:
            longest = max(longest, _extend(original, start, data, int(position)))
    return longest


def _extend(original: bytes, start: int, data: bytes, position: int) -> int:
    """Length of the common run through ``original[start:start+8] == data[position:position+8]``."""
    left = 0
    while (
        start - left > 0 and position - left > 0 and original[start - left - 1] == data[position - left - 1]
    ):
        left += 1
    right = _KEY_BYTES
    while start + right < len(original) and position + right < len(data):
        if original[start + right] != data[position + right]:
            break
        right += 1
    return left + right


def structure_bytes(data: bytes) -> bytes:
    """A serialized model (or library) with every tensor's data removed: only its structure and names."""
    proto = onnx.load_from_string(data)
    for tensor in (*proto.graph.initializer, *_attribute_tensors(proto)):
        tensor.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
    return proto.SerializeToString()


def _attribute_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    nodes = [*proto.graph.node, *(n for f in proto.functions for n in f.node)]
    return [a.t for n in nodes for a in n.attribute if a.HasField("t")]


def leaked_names(model: ir.Model, data: bytes) -> list[str]:
    """Original node/value names (not the interface) found in ``data``'s structure, or anywhere if long."""
    interface = {v.name for v in (*model.graph.inputs, *model.graph.outputs)}
    structure = structure_bytes(data)
    names = original_names(model) - interface
    return sorted(n for n in names if n.encode() in structure or (len(n) >= 8 and n.encode() in data))


def leaked_op_types(model: ir.Model, data: bytes) -> list[str]:
    """Original op types used as an op type in ``data`` (a serialized model or library)."""
    proto = onnx.load_from_string(data)
    used = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    return sorted({node.op_type for node in model.graph} & used)


def long_op_types_in(model: ir.Model, data: bytes) -> list[str]:
    """Original op types of 6+ letters found anywhere in ``data`` (e.g. ciphertext: none expected)."""
    return sorted(t for t in {n.op_type for n in model.graph} if len(t) >= 6 and t.encode() in data)
