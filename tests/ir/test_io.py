"""modelpress.ir.io: round trips, atomic saves, and every kind of bad or hostile input."""

from __future__ import annotations

import io as pyio
import os
import pathlib
import random
import zipfile

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.errors import ModelLoadError, ModelSaveError
from modelpress.ir import io

WEIGHT = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 7.0
BIAS = np.linspace(-1, 1, 32, dtype=np.float32)


def _model_proto(weight: np.ndarray = WEIGHT, bias: np.ndarray = BIAS) -> onnx.ModelProto:
    """x[N, 64] @ w + b -> y[N, 32]: one big weight (8 KiB) and one small (128 B)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _model() -> ir.Model:
    return ir.serde.deserialize_model(_model_proto())


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}


def _add_model(tensor: TensorProto, dims: list[int] | None = None) -> onnx.ModelProto:
    """y = x + <tensor>, the smallest model carrying one (possibly malformed) initializer."""
    shape = dims if dims is not None else [4]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", tensor.name], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _external_tensor(location: str, *, dims=(4,), offset: int | None = None, length: int | None = None):
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    if offset is not None:
        tensor.external_data.add(key="offset", value=str(offset))
    if length is not None:
        tensor.external_data.add(key="length", value=str(length))
    return tensor


def _write(path: pathlib.Path, proto: onnx.ModelProto) -> pathlib.Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _load_error(source, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as info:
        io.load(source, **kwargs)
    return str(info.value)


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# --- round trips -------------------------------------------------------------------------------


def test_inline_round_trip_keeps_weights_and_passes_the_checker(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    loaded = io.load(path)
    np.testing.assert_array_equal(_weights(loaded)["w"], WEIGHT)
    np.testing.assert_array_equal(_weights(loaded)["b"], BIAS)
    assert [v.name for v in loaded.graph.inputs] == ["x"]


def test_external_round_trip_moves_only_large_tensors_and_loads_lazily(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    proto = onnx.load(str(path), load_external_data=False)
    locations = {t.name: t.data_location for t in proto.graph.initializer}
    assert locations == {"w": TensorProto.EXTERNAL, "b": TensorProto.DEFAULT}
    assert (tmp_path / "m.onnx.data").stat().st_size == WEIGHT.nbytes
    loaded = io.load(path)
    assert isinstance(loaded.graph.initializers["w"].const_value, ir.ExternalTensor)
    np.testing.assert_array_equal(_weights(loaded)["w"], WEIGHT)
    np.testing.assert_array_equal(_weights(loaded)["b"], BIAS)


def test_save_does_not_modify_the_model(tmp_path):
    model = _model()
    before = io.to_bytes(model)
    io.save(model, tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    assert io.to_bytes(model) == before
    assert not isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)


def test_auto_external_data_switches_on_weight_size(tmp_path, monkeypatch):
    io.save(_model(), tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()
    monkeypatch.setattr(io, "_AUTO_EXTERNAL_BYTES", 1000)
    io.save(_model(), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    np.testing.assert_array_equal(_weights(io.load(tmp_path / "big.onnx"))["w"], WEIGHT)


def test_model_loaded_with_external_data_saves_elsewhere_inline_and_external(tmp_path):
    (tmp_path / "a").mkdir()
    source = io.save(_model(), tmp_path / "a" / "m.onnx", external_data=True, size_threshold_bytes=0)
    model = io.load(source)
    inline = io.save(model, tmp_path / "b" / "inline.onnx", external_data=False)
    proto = onnx.load(str(inline), load_external_data=False)
    assert all(t.data_location == TensorProto.DEFAULT for t in proto.graph.initializer)
    external = io.save(model, tmp_path / "c" / "ext.onnx", external_data=True, size_threshold_bytes=1024)
    (tmp_path / "a" / "m.onnx.data").unlink()  # the copies must not depend on the source's data
    for path in (inline, external):
        weights = _weights(io.load(path))
        np.testing.assert_array_equal(weights["w"], WEIGHT)
        np.testing.assert_array_equal(weights["b"], BIAS)


def test_resave_over_own_external_data_keeps_file_and_memory_model_valid(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    model = io.load(path)
    # A smaller 'w' moves 'b' to a new offset in the new data file; the model in memory still
    # holds 'b' as a lazy external tensor at its old offset.
    model.graph.initializers["w"].const_value = ir.tensor(WEIGHT[:32] * 2, name="w")
    io.save(model, path, external_data=True, size_threshold_bytes=0)
    reloaded = _weights(io.load(path))
    np.testing.assert_array_equal(reloaded["w"], WEIGHT[:32] * 2)
    np.testing.assert_array_equal(reloaded["b"], BIAS)
    np.testing.assert_array_equal(_weights(model)["b"], BIAS)
    assert _leftovers(tmp_path) == []


def test_string_initializers_are_sized_and_saved(tmp_path):
    model = _model()
    strings = ir.StringTensor(np.array([b"alpha", b"be"]), name="s")
    model.graph.initializers["s"] = ir.Value(name="s", const_value=strings)
    assert io.tensor_nbytes(strings) == 7
    loaded = io.load(io.save(model, tmp_path / "m.onnx"))
    assert list(loaded.graph.initializers["s"].const_value.numpy()) == [b"alpha", b"be"]


def test_models_with_functions_and_subgraphs_round_trip(tmp_path):
    model = io.from_text(FUNCTION_MODEL_TEXT)
    loaded = io.load(io.save(model, tmp_path / "f.onnx"))
    assert list(loaded.functions) == [("local", "Double", "")]
    assert io.to_bytes(loaded) == io.to_bytes(model)


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("suffix", [".json", ".txt", ".onnxtxt", ""])
def test_save_always_writes_binary_protobuf_whatever_the_suffix(tmp_path, suffix, external):
    path = io.save(_model(), tmp_path / f"m{suffix}", external_data=external)
    proto = onnx.ModelProto()
    proto.ParseFromString(path.read_bytes())
    assert proto.graph.name == "linear"
    np.testing.assert_array_equal(_weights(io.load(path))["w"], WEIGHT)


def test_save_creates_missing_folders(tmp_path):
    path = io.save(_model(), tmp_path / "a" / "b" / "m.onnx")
    assert path.is_file()


def test_save_onto_a_folder_raises_model_save_error(tmp_path):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(ModelSaveError, match=r"m\.onnx: cannot write the model"):
        io.save(_model(), tmp_path / "m.onnx")
    assert _leftovers(tmp_path) == []


def test_inline_save_over_the_protobuf_limit_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "PROTOBUF_LIMIT_BYTES", 1000)
    with pytest.raises(ModelSaveError, match=r"2 GiB limit.*external_data=True"):
        io.save(_model(), tmp_path / "m.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


# --- atomic writes -----------------------------------------------------------------------------


def _failing_replace(monkeypatch, fail_on: str):
    real_replace = os.replace

    def replace(src, dst):
        if pathlib.Path(dst).name == fail_on:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)


def test_failed_rename_leaves_previous_inline_file_intact(tmp_path, monkeypatch):
    path = io.save(_model(), tmp_path / "m.onnx")
    before = path.read_bytes()
    _failing_replace(monkeypatch, "m.onnx")
    with pytest.raises(ModelSaveError, match=r"m\.onnx: cannot write the model.*No space left"):
        io.save(_model_with_weight(WEIGHT + 1), path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = io.save(_model(), tmp_path / "m.onnx")
    before = path.read_bytes()
    real_write = pathlib.Path.write_bytes

    def half_write(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_write)
    with pytest.raises(ModelSaveError):
        io.save(_model_with_weight(WEIGHT + 1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_failed_external_save_restores_previous_model_and_data(tmp_path, monkeypatch):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    model_before = path.read_bytes()
    data_before = (tmp_path / "m.onnx.data").read_bytes()
    _failing_replace(monkeypatch, "m.onnx")  # the data file moves in, then the model rename fails
    with pytest.raises(ModelSaveError):
        io.save(_model_with_weight(WEIGHT + 1), path, external_data=True, size_threshold_bytes=0)
    monkeypatch.undo()
    assert path.read_bytes() == model_before
    assert (tmp_path / "m.onnx.data").read_bytes() == data_before
    np.testing.assert_array_equal(_weights(io.load(path))["w"], WEIGHT)
    assert _leftovers(tmp_path) == []


def test_failed_first_external_save_leaves_nothing(tmp_path, monkeypatch):
    _failing_replace(monkeypatch, "m.onnx")
    with pytest.raises(ModelSaveError):
        io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_external_writer_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = io.save(_model(), tmp_path / "m.onnx")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(io.ir, "save", broken_save)
    with pytest.raises(ModelSaveError, match="Input/output error"):
        io.save(_model(), path, external_data=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def _model_with_weight(weight: np.ndarray) -> ir.Model:
    return ir.serde.deserialize_model(_model_proto(weight.astype(np.float32)))


# --- bytes -------------------------------------------------------------------------------------


def test_to_bytes_round_trips_through_load():
    data = io.to_bytes(_model())
    np.testing.assert_array_equal(_weights(io.load(data))["w"], WEIGHT)
    np.testing.assert_array_equal(_weights(io.load(bytearray(data)))["b"], BIAS)


def test_to_bytes_inlines_external_tensors(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    data = io.to_bytes(io.load(path))
    proto = onnx.load_from_string(data)
    assert all(t.data_location == TensorProto.DEFAULT for t in proto.graph.initializer)
    (tmp_path / "m.onnx.data").unlink()
    np.testing.assert_array_equal(_weights(io.load(data))["w"], WEIGHT)


def test_to_bytes_over_the_protobuf_limit_raises(monkeypatch):
    monkeypatch.setattr(io, "PROTOBUF_LIMIT_BYTES", 1000)
    with pytest.raises(ModelSaveError, match=r"2 GiB limit.*load it by path"):
        io.to_bytes(_model())


def test_bytes_with_external_data_need_base_dir(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    data = path.read_bytes()
    message = _load_error(data)
    assert message.startswith("<bytes>: tensor 'w'")
    assert "base_dir" in message
    loaded = io.load(data, base_dir=tmp_path)
    np.testing.assert_array_equal(_weights(loaded)["w"], WEIGHT)
    assert "is not a folder" in _load_error(data, base_dir=tmp_path / "nowhere")


def test_external_data_check_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = io.load(path)
    io.check_model(model, full=True)
    np.testing.assert_array_equal(_weights(model)["w"], WEIGHT)


def test_check_model_on_a_model_over_the_protobuf_limit_goes_through_a_file(monkeypatch):
    monkeypatch.setattr(io, "PROTOBUF_LIMIT_BYTES", 4000)
    monkeypatch.setattr(io, "_CHECK_INLINE_BYTES", 100)
    io.check_model(_model(), full=True)
    broken = _model()
    broken.graph.node(0).op_type = "NoSuchOp"
    with pytest.raises(ModelLoadError, match="NoSuchOp"):
        io.check_model(broken)


def test_check_model_does_not_modify_a_given_proto(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    proto = onnx.load(str(path), load_external_data=False)
    before = proto.SerializeToString()
    io.check_model(proto)
    assert proto.SerializeToString() == before


# --- bad files ---------------------------------------------------------------------------------


def _zip_bytes() -> bytes:
    buffer = pyio.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", _model_proto().SerializeToString())
    return buffer.getvalue()


BAD_CONTENTS = {
    "random bytes": bytes(random.Random(0).getrandbits(8) for _ in range(4096)),
    "text file": b"This is not a model.\nJust some text, line two.\n",
    "zip archive": _zip_bytes(),
    "tensor message": numpy_helper.from_array(WEIGHT, "w").SerializeToString(),
    "graph message": _model_proto().graph.SerializeToString(),
    "single zero byte": b"\x00",
    "pickle": b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02e.",
}


@pytest.mark.parametrize("kind", sorted(BAD_CONTENTS))
def test_non_onnx_content_raises_model_load_error_naming_the_file(tmp_path, kind):
    path = tmp_path / "bad.onnx"
    path.write_bytes(BAD_CONTENTS[kind])
    message = _load_error(path)
    assert message.startswith(f"{path}: ")
    assert "not an ONNX model" in message or "not a valid ONNX model" in message


@pytest.mark.parametrize("kind", sorted(BAD_CONTENTS))
def test_non_onnx_bytes_raise_model_load_error(kind):
    assert _load_error(BAD_CONTENTS[kind]).startswith("<bytes>: ")


def test_missing_file(tmp_path):
    message = _load_error(tmp_path / "nope.onnx")
    assert message == f"{tmp_path / 'nope.onnx'}: no such file; check the path"


def test_dangling_symlink_is_a_missing_file(tmp_path):
    (tmp_path / "link.onnx").symlink_to(tmp_path / "gone.onnx")
    assert "no such file" in _load_error(tmp_path / "link.onnx")


def test_directory(tmp_path):
    message = _load_error(tmp_path)
    assert message.startswith(f"{tmp_path}: is a folder")


def test_empty_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert _load_error(tmp_path / "empty.onnx") == (
        f"{tmp_path / 'empty.onnx'}: the file is empty (0 bytes); it is not an ONNX model"
    )


def test_empty_bytes():
    assert "no bytes" in _load_error(b"")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = _write(tmp_path / "m.onnx", _model_proto())
    path.chmod(0)
    try:
        assert "cannot read the file" in _load_error(path)
    finally:
        path.chmod(0o644)


def test_every_truncation_raises_model_load_error(tmp_path):
    data = _add_model(numpy_helper.from_array(BIAS[:4].copy(), "w")).SerializeToString()
    path = tmp_path / "cut.onnx"
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError) as info:
            io.load(path)
        assert str(info.value).startswith(f"{path}: "), cut


def test_truncated_large_model_at_several_offsets(tmp_path):
    data = _model_proto().SerializeToString()
    path = tmp_path / "cut.onnx"
    for cut in (1, 2, 10, 100, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1):
        path.write_bytes(data[:cut])
        assert "truncated" in _load_error(path), cut


FUNCTION_MODEL_TEXT = """
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[2] x, bool c) => (float[2] y) {
        z = local.Double(x)
        y = If(c) <then_branch = t () => (float[2] a) { a = Identity(z) },
                   else_branch = e () => (float[2] b) { b = Neg(z) }>
    }
    <domain: "local", opset_import: ["" : 17]>
    Double (v) => (w) { w = Add(v, v) }
"""


@pytest.mark.parametrize("base", ["add", "functions"])
def test_random_byte_flips_give_a_usable_model_or_model_load_error(base):
    if base == "add":
        data = _add_model(numpy_helper.from_array(BIAS[:4].copy(), "w")).SerializeToString()
    else:
        data = io.to_bytes(io.from_text(FUNCTION_MODEL_TEXT))
    rng = random.Random(1234)
    outcomes = {"loaded": 0, "rejected": 0}
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        try:
            model = io.load(bytes(mutated))
        except ModelLoadError as e:
            assert str(e).startswith("<bytes>: ")
            outcomes["rejected"] += 1
        else:
            io.to_bytes(model)  # whatever loads must serialize again
            outcomes["loaded"] += 1
    assert outcomes["rejected"] > 0
    assert outcomes["loaded"] > 0


def test_text_fields_that_are_not_utf8_are_rejected():
    proto = _model_proto()
    proto.graph.name = "linear"
    data = proto.SerializeToString().replace(b"linear", b"lin\xffar")
    assert "field 'onnx.GraphProto.name' holds bytes that are not UTF-8" in _load_error(data)


def test_checker_failure_names_the_file_and_the_node(tmp_path):
    proto = _model_proto()
    proto.graph.node[0].op_type = "NoSuchOp"
    path = _write(tmp_path / "m.onnx", proto)
    message = _load_error(path)
    assert message.startswith(f"{path}: not a valid ONNX model")
    assert "NoSuchOp" in message


def test_missing_graph_or_opset_is_not_an_onnx_model(tmp_path):
    proto = _model_proto()
    del proto.opset_import[:]
    assert "no graph, IR version or opset import" in _load_error(_write(tmp_path / "m.onnx", proto))


def test_from_text_syntax_error():
    with pytest.raises(ModelLoadError, match="<text>: not valid ONNX text"):
        io.from_text("<ir_version: 8> g (float x => (y) { }")


# --- hostile tensors ---------------------------------------------------------------------------


def test_negative_dims(tmp_path):
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-4], raw_data=b"\0" * 16)
    message = _load_error(_write(tmp_path / "m.onnx", _add_model(tensor)))
    assert "tensor 'w' has a negative dimension [-4]" in message


@pytest.mark.parametrize(
    ("dims", "data_type"),
    [([2**40, 2**40], TensorProto.FLOAT), ([2**62, 4], TensorProto.INT8), ([2**39], TensorProto.STRING)],
)
def test_absurd_dims(tmp_path, dims, data_type):
    tensor = TensorProto(name="w", data_type=data_type, dims=dims, raw_data=b"\0" * 16)
    path = _write(tmp_path / "m.onnx", _add_model(tensor))
    message = _load_error(path)
    assert message.startswith(f"{path}: tensor 'w' declares dims {dims}")
    assert "corrupt or hostile" in message


def test_raw_data_length_mismatch(tmp_path):
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 15)
    message = _load_error(_write(tmp_path / "m.onnx", _add_model(tensor)))
    assert "tensor 'w' declares dims [4] of FLOAT (16 bytes) but holds 15 bytes" in message


def test_unknown_data_type(tmp_path):
    tensor = TensorProto(name="w", data_type=99, dims=[4], raw_data=b"\0" * 16)
    assert "unknown data type 99" in _load_error(_write(tmp_path / "m.onnx", _add_model(tensor)))


def test_bad_tensor_inside_a_subgraph_is_found(tmp_path):
    bad = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 3)
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["k"], ["a"])],
        "then",
        [],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])],
        [bad],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["b"])], "else", [], [helper.make_tensor_value_info("b", 1, [4])]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", 1, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert "tensor 'k' declares dims [4] of FLOAT (16 bytes) but holds 3 bytes" in _load_error(
        proto.SerializeToString()
    )


def test_bad_constant_inside_a_function_is_found(tmp_path):
    bad = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[2**40, 2**40], raw_data=b"\0" * 4)
    function = helper.make_function(
        "local",
        "F",
        ["v"],
        ["w"],
        [helper.make_node("Constant", [], ["k"], value=bad), helper.make_node("Add", ["v", "k"], ["w"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("F", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    proto = helper.make_model(
        graph,
        functions=[function],
        ir_version=8,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )
    assert "corrupt or hostile" in _load_error(proto.SerializeToString())


# --- hostile external data ---------------------------------------------------------------------


def _external_model(tmp_path: pathlib.Path, tensor: TensorProto) -> pathlib.Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    return _write(folder / "m.onnx", _add_model(tensor))


def test_valid_hand_written_external_tensor_loads(tmp_path):
    path = _external_model(tmp_path, _external_tensor("w.bin", offset=8, length=16))
    (path.parent / "w.bin").write_bytes(b"\xff" * 8 + np.arange(4, dtype=np.float32).tobytes())
    np.testing.assert_array_equal(_weights(io.load(path))["w"], np.arange(4, dtype=np.float32))


def test_absolute_location(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 16)
    path = _external_model(tmp_path, _external_tensor(str(outside)))
    message = _load_error(path)
    assert message.startswith(f"{path}: tensor 'w' has external-data location '{outside}'")
    assert "must be a relative path" in message


def test_parent_traversal(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _external_model(tmp_path, _external_tensor("../secret.bin"))
    message = _load_error(path)
    assert "points outside the model's folder" in message
    assert "'../secret.bin'" in message


def test_symlink_escaping_the_folder(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _external_model(tmp_path, _external_tensor("link.bin"))
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    assert "symlink escape" in _load_error(path)


def test_symlink_inside_the_folder_is_fine(tmp_path):
    path = _external_model(tmp_path, _external_tensor("link.bin"))
    (path.parent / "real.bin").write_bytes(np.ones(4, np.float32).tobytes())
    (path.parent / "link.bin").symlink_to(path.parent / "real.bin")
    np.testing.assert_array_equal(_weights(io.load(path))["w"], np.ones(4, np.float32))


def test_missing_data_file(tmp_path):
    path = _external_model(tmp_path, _external_tensor("w.bin"))
    message = _load_error(path)
    assert message.startswith(f"{path}: tensor 'w' needs external data file 'w.bin', which is missing")


def test_data_file_too_short(tmp_path):
    path = _external_model(tmp_path, _external_tensor("w.bin", offset=8, length=16))
    (path.parent / "w.bin").write_bytes(b"\0" * 20)
    message = _load_error(path)
    assert "reads bytes 8..24 of 'w.bin', which has 20 bytes" in message


def test_external_length_disagrees_with_dims(tmp_path):
    path = _external_model(tmp_path, _external_tensor("w.bin", length=12))
    (path.parent / "w.bin").write_bytes(b"\0" * 16)
    assert "declares 16 bytes but its external data holds 12" in _load_error(path)


def test_external_without_length_uses_the_rest_of_the_file(tmp_path):
    path = _external_model(tmp_path, _external_tensor("w.bin"))
    (path.parent / "w.bin").write_bytes(b"\0" * 17)
    assert "declares 16 bytes but its external data holds 17" in _load_error(path)


@pytest.mark.parametrize("offset", ["abc", "-4"])
def test_bad_offsets(tmp_path, offset):
    tensor = _external_tensor("w.bin")
    tensor.external_data.add(key="offset", value=offset)
    path = _external_model(tmp_path, tensor)
    (path.parent / "w.bin").write_bytes(b"\0" * 32)
    message = _load_error(path)
    assert "non-integer" in message or "reads bytes -4" in message


@pytest.mark.parametrize("location", ["", "a\0b", "x" * 5000])
def test_unusable_locations(tmp_path, location):
    path = _external_model(tmp_path, _external_tensor(location))
    assert _load_error(path).startswith(f"{path}: tensor 'w'")


def test_external_data_pointing_at_a_folder(tmp_path):
    path = _external_model(tmp_path, _external_tensor("sub"))
    (path.parent / "sub").mkdir()
    assert "which is missing" in _load_error(path)
