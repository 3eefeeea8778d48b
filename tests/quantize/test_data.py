"""``--calib DIR``: files to feeds, and every bad input as a CalibrationError naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import CalibrationError
from modelpress.ir.build import GraphBuilder
from modelpress.quantize.data import CalibrationData
from tests.quantize import builders


def _two_inputs(batch: int | str = "N"):
    b = GraphBuilder(opset=17)
    x = b.input("x", builders.FLOAT, [batch, 4])
    m = b.input("mask", builders.FLOAT, [batch, 4])
    return b.build([b.op("Add", x, m)])


def _image(batch: int | str = "N"):
    b = GraphBuilder(opset=17)
    return b.build([b.op("Relu", b.input("image", builders.FLOAT, [batch, 1, 8, 8]))])


def _rand(*shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def test_single_samples_batches_and_npz_files(tmp_path):
    np.save(tmp_path / "a.npy", _rand(1, 8, 8))  # one sample: batch axis added
    np.save(tmp_path / "b.npy", _rand(5, 1, 8, 8))  # a batch
    np.savez(tmp_path / "c.npz", _rand(2, 1, 8, 8))  # single array under "arr_0"
    np.savez(tmp_path / "d.npz", image=_rand(3, 1, 8, 8), label=np.arange(3))  # extra keys ignored
    (tmp_path / "notes.txt").write_text("ignored")
    data = CalibrationData(tmp_path, _image())
    assert len(data) == 11
    shapes = [feeds["image"].shape for feeds in data]
    assert shapes == [(1, 1, 8, 8), (5, 1, 8, 8), (2, 1, 8, 8), (3, 1, 8, 8)]
    assert list(data) and len(list(data)) == 4  # re-iterable


def test_num_samples_truncates_in_file_order(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", _rand(4, 1, 8, 8))
    data = CalibrationData(tmp_path, _image(), num_samples=6)
    assert len(data) == 6
    assert [f["image"].shape[0] for f in data] == [4, 2]


def test_a_static_batch_dim_splits_bigger_batches(tmp_path):
    np.save(tmp_path / "a.npy", _rand(3, 1, 8, 8))
    assert [f["image"].shape for f in CalibrationData(tmp_path, _image(batch=1))] == [(1, 1, 8, 8)] * 3
    with pytest.raises(
        CalibrationError, match=r"a batch of 3 cannot be split into the model's static batch size 2"
    ):
        list(CalibrationData(tmp_path, _image(batch=2)))


def test_npz_keys_map_to_the_inputs_of_a_multi_input_model(tmp_path):
    np.savez(tmp_path / "a.npz", x=_rand(2, 4), mask=_rand(2, 4))
    (feeds,) = list(CalibrationData(tmp_path, _two_inputs()))
    assert set(feeds) == {"x", "mask"}


def test_float64_data_is_cast_to_the_input_dtype(tmp_path):
    np.save(tmp_path / "a.npy", _rand(2, 1, 8, 8, dtype=np.float64))
    (feeds,) = list(CalibrationData(tmp_path, _image()))
    assert feeds["image"].dtype == np.float32


@pytest.mark.parametrize("state", ["missing", "file", "empty", "only-other-files"])
def test_bad_folders(tmp_path, state):
    folder = tmp_path / "calib"
    if state == "file":
        folder.write_text("x")
    elif state != "missing":
        folder.mkdir()
        if state == "only-other-files":
            (folder / "a.png").write_bytes(b"")
    expected = {
        "missing": "does not exist",
        "file": "is not a folder",
        "empty": r"holds no .npy or .npz file \(0 other entries\)",
        "only-other-files": r"holds no .npy or .npz file \(1 other entries\)",
    }[state]
    with pytest.raises(CalibrationError, match=expected):
        CalibrationData(folder, _image())


def test_num_samples_below_one_is_refused(tmp_path):
    with pytest.raises(CalibrationError, match="give at least 1 sample"):
        CalibrationData(tmp_path, _image(), num_samples=0)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            _rand(2, 3, 8, 8),
            r"bad.npy: input 'image' expects shape \[N, 1, 8, 8\] \(or one sample \[1, 8, 8\]\), found \[2, 3, 8, 8\]",
        ),
        (_rand(8, 8), r"found \[8, 8\]"),
        (np.zeros((2, 1, 8, 8), np.int64), r"bad.npy: input 'image' expects float32, found int64"),
        (np.zeros((0, 1, 8, 8), np.float32), r"bad.npy: holds no samples"),
    ],
)
def test_wrong_shapes_and_dtypes_name_the_file_and_input(tmp_path, array, message):
    np.save(tmp_path / "a_good.npy", _rand(1, 1, 8, 8))
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(CalibrationError, match=message):
        CalibrationData(tmp_path, _image())  # checked from headers, before any sample runs


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(tmp_path, bad_value):
    array = _rand(2, 1, 8, 8)
    array[1, 0, 3, 3] = bad_value
    np.save(tmp_path / "bad.npy", array)
    data = CalibrationData(tmp_path, _image())
    with pytest.raises(CalibrationError, match=r"bad.npy: input 'image' holds 1 NaN/Inf value\(s\)"):
        list(data)


def test_npy_for_a_multi_input_model_and_missing_npz_keys(tmp_path):
    np.save(tmp_path / "a.npy", _rand(2, 4))
    with pytest.raises(
        CalibrationError, match=r"a.npy: a .npy file holds one array but the model has 2 inputs \(x, mask\)"
    ):
        CalibrationData(tmp_path, _two_inputs())
    (tmp_path / "a.npy").unlink()
    np.savez(tmp_path / "b.npz", x=_rand(2, 4), masks=_rand(2, 4))
    with pytest.raises(
        CalibrationError, match=r"b.npz: no array for input\(s\) mask; the file has keys masks, x"
    ):
        CalibrationData(tmp_path, _two_inputs())


def test_inputs_of_one_file_must_hold_the_same_batch(tmp_path):
    np.savez(tmp_path / "a.npz", x=_rand(2, 4), mask=_rand(3, 4))
    with pytest.raises(CalibrationError, match="inputs hold different numbers of samples"):
        CalibrationData(tmp_path, _two_inputs())


def test_corrupt_and_pickled_files_are_refused(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    with pytest.raises(CalibrationError, match=r"bad\.npy: cannot read the file"):
        CalibrationData(tmp_path, _image())
    (tmp_path / "bad.npy").unlink()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match=r"obj.npy: cannot read the file: it holds Python objects"):
        CalibrationData(tmp_path, _image())
    (tmp_path / "obj.npy").unlink()
    (tmp_path / "bad.npz").write_bytes(b"PK broken zip")
    with pytest.raises(CalibrationError, match=r"bad\.npz: cannot read the file"):
        CalibrationData(tmp_path, _image())


# --- image folders (--calib DIR --calib-pipeline pipeline.yaml) -------------------------------

GRAY_PIPELINE = """
inputs:
  image:
    - decode_image: {mode: L}
    - resize: {size: [8, 8]}
    - to_tensor
"""


def _write_images(folder, count, size=(12, 10), mode="L", suffix=".png"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0]) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"img{i:02d}{suffix}")


def _pipeline(tmp_path, text=GRAY_PIPELINE):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_images_are_preprocessed_by_the_pipeline_in_batches(tmp_path):
    from modelpress.quantize.data import ImageFolderData, open_samples

    _write_images(tmp_path / "imgs", 35)
    _write_images(tmp_path / "imgs" / "nested", 2, suffix=".JPG")
    (tmp_path / "imgs" / "README.txt").write_text("ignored")
    data = open_samples(tmp_path / "imgs", _image(), pipeline=_pipeline(tmp_path))
    assert isinstance(data, ImageFolderData) and len(data) == 37
    batches = list(data)
    assert [f["image"].shape for f in batches] == [(32, 1, 8, 8), (5, 1, 8, 8)]
    assert batches[0]["image"].dtype == np.float32
    assert 0.0 <= batches[0]["image"].min() and batches[0]["image"].max() <= 1.0
    assert len(list(data)) == 2  # re-iterable
    assert len(ImageFolderData(tmp_path / "imgs", _image(batch=1), _pipeline(tmp_path), num_samples=3)) == 3
    assert [
        f["image"].shape[0]
        for f in ImageFolderData(tmp_path / "imgs", _image(batch=1), _pipeline(tmp_path), num_samples=3)
    ] == [1, 1, 1]


def test_an_image_folder_without_a_pipeline_says_how_to_use_it(tmp_path):
    _write_images(tmp_path / "imgs", 2)
    with pytest.raises(CalibrationError, match=r"holds 2 image file\(s\): pass --calib-pipeline"):
        CalibrationData(tmp_path / "imgs", _image())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "image folder '.*' does not exist"),
        ("no-images", r"holds no image \(.png, .jpg"),
        ("garbage", r"bad.png: not a readable image"),
        ("truncated", r"img00.png: .*step 'decode_image': image 0 cannot be decoded"),
        (
            "wrong-size",
            r"img00.png: the pipeline makes input 'image' \[1, 1, 9, 9\], the model expects \[N, 1, 8, 8\]",
        ),
        ("wrong-input", r"the model has input\(s\) image and the pipeline preprocesses pixels"),
    ],
)
def test_bad_image_folders_and_pipelines(tmp_path, case, message):
    from modelpress.quantize.data import ImageFolderData

    folder = tmp_path / "imgs"
    pipeline = _pipeline(tmp_path)
    if case != "missing":
        _write_images(folder, 1)
    if case == "no-images":
        (folder / "img00.png").unlink()
        (folder / "notes.txt").write_text("x")
    elif case == "garbage":
        (folder / "bad.png").write_bytes(b"not an image at all")
    elif case == "truncated":
        data = (folder / "img00.png").read_bytes()
        (folder / "img00.png").write_bytes(data[: len(data) // 2])
    elif case == "wrong-size":
        pipeline = _pipeline(tmp_path, GRAY_PIPELINE.replace("[8, 8]", "[9, 9]"))
    elif case == "wrong-input":
        pipeline = _pipeline(tmp_path, GRAY_PIPELINE.replace("  image:", "  pixels:"))
    with pytest.raises(CalibrationError, match=message):
        list(ImageFolderData(folder, _image(), pipeline))


def test_image_calibration_end_to_end(tmp_path):
    from modelpress.ir import io
    from modelpress.quantize import QuantSpec, quantize_file

    _write_images(tmp_path / "imgs", 6, mode="RGB")
    pipeline = _pipeline(
        tmp_path,
        "inputs:\n  x:\n    - decode_image\n    - resize: {size: 8}\n    - center_crop: {size: 8}\n"
        "    - to_tensor\n    - normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\n",
    )
    source = io.save(builders.conv_relu(), tmp_path / "float.onnx")
    report = quantize_file(
        source, tmp_path / "q.onnx", QuantSpec(), calib_dir=tmp_path / "imgs", calib_pipeline=pipeline
    )
    assert report.calibration_samples == 6 and report.eval_samples == 6


# --- eval folders (--eval DIR): inputs plus labels --------------------------------------------


def test_eval_labels_follow_the_batches(tmp_path):
    from modelpress.quantize.data import EvalData

    np.savez(tmp_path / "a.npz", image=_rand(3, 1, 8, 8), labels=np.array([1, 2, 3]))
    np.savez(tmp_path / "b.npz", _rand(1, 8, 8), labels=np.int64(7))  # one sample (any key), scalar label
    data = EvalData(tmp_path, _image(batch=1))
    assert data.has_labels and len(data) == 4
    assert [labels.tolist() for _, labels in data] == [[1], [2], [3], [7]]
    assert [feeds["image"].shape for feeds, _ in data] == [(1, 1, 8, 8)] * 4


def test_eval_data_without_labels_and_images(tmp_path):
    from modelpress.quantize.data import EvalData

    np.save(tmp_path / "a.npy", _rand(2, 1, 8, 8))
    data = EvalData(tmp_path, _image())
    assert not data.has_labels and [labels for _, labels in data] == [None]
    _write_images(tmp_path / "imgs", 3)
    images = EvalData(tmp_path / "imgs", _image(), pipeline=_pipeline(tmp_path))
    assert not images.has_labels and [f["image"].shape for f, _ in images] == [(3, 1, 8, 8)]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            np.array([0.5, 1.5]),
            r"'labels' must hold 2 integer class indices \(one per sample\), found float64 \[2\]",
        ),
        (np.array([1, 2, 3]), r"'labels' must hold 2 integer class indices .* found int64 \[3\]"),
        (None, r"b.npz: no 'labels' array, but a.npz has one"),
    ],
)
def test_bad_eval_labels(tmp_path, labels, message):
    from modelpress.quantize.data import EvalData

    np.savez(tmp_path / "a.npz", image=_rand(2, 1, 8, 8), labels=np.array([0, 1]))
    extra = {} if labels is None else {"labels": labels}
    np.savez(tmp_path / "b.npz", image=_rand(2, 1, 8, 8), **extra)
    with pytest.raises(CalibrationError, match=message):
        EvalData(tmp_path, _image())
