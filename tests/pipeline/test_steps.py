"""Pipeline steps, one by one against hand-computed numpy references; YAML round trip; validation."""

from __future__ import annotations

import io as stdio

import numpy as np
import pytest
from PIL import Image

from modelpress.errors import UsageError
from modelpress.pipeline import STEPS, Pipeline, make_step
from modelpress.pipeline.steps import REQUIRED

RNG = np.random.default_rng(0)


def step(name: str, **params):
    return make_step({name: params})


def png(array: np.ndarray) -> bytes:
    buffer = stdio.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# --- images -----------------------------------------------------------------------------


def test_decode_image_is_lossless_for_png_and_batches_equal_sizes():
    a = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    b = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    batch = step("decode_image").apply([png(a), png(b)])
    np.testing.assert_array_equal(batch, np.stack([a, b]))
    single = step("decode_image").apply(png(a))
    assert single.shape == (1, 5, 7, 3)


def test_decode_image_modes_paths_and_ragged_batches(tmp_path):
    gray = np.full((4, 6, 3), 100, dtype=np.uint8)  # R = G = B: luminance is the same value
    decoded = step("decode_image", mode="L").apply(png(gray))
    np.testing.assert_array_equal(decoded, np.full((1, 4, 6, 1), 100, dtype=np.uint8))
    rgba = step("decode_image", mode="RGBA").apply(png(gray))
    np.testing.assert_array_equal(rgba[0, :, :, 3], 255)
    path = tmp_path / "image.png"
    path.write_bytes(png(gray))
    np.testing.assert_array_equal(step("decode_image").apply([path])[0], gray)
    ragged = step("decode_image").apply([png(gray), png(gray[:2])])
    assert isinstance(ragged, list) and [i.shape for i in ragged] == [(4, 6, 3), (2, 6, 3)]


def test_decode_image_refuses_strings_garbage_and_huge_images():
    with pytest.raises(UsageError, match="string; give the encoded bytes"):
        step("decode_image").apply("/etc/passwd")
    with pytest.raises(UsageError, match="image 1 cannot be decoded"):
        step("decode_image").apply([png(np.zeros((2, 2, 3), np.uint8)), b"not an image"])
    with pytest.raises(UsageError, match="4x4 pixels, over max_pixels 10"):
        step("decode_image", max_pixels=10).apply(png(np.zeros((4, 4, 3), np.uint8)))


def test_resize_nearest_upsampling_repeats_pixels():
    image = RNG.integers(0, 256, (1, 2, 3, 3), dtype=np.uint8)
    resized = step("resize", size=[4, 6], interpolation="nearest").apply(image)
    np.testing.assert_array_equal(resized, image.repeat(2, axis=1).repeat(2, axis=2))


def test_resize_shorter_side_keeps_aspect_and_constant_images():
    images = [np.full((10, 20, 3), 7, np.uint8), np.full((30, 15, 1), 9, np.uint8)]
    resized = step("resize", size=5).apply(images)
    assert [r.shape for r in resized] == [(5, 10, 3), (10, 5, 1)]
    np.testing.assert_array_equal(resized[0], 7)  # bilinear of a constant is the constant
    np.testing.assert_array_equal(resized[1], 9)
    with pytest.raises(UsageError, match="uint8"):
        step("resize", size=5).apply(np.zeros((1, 4, 4, 3), np.float32))


def test_center_crop_slices_the_middle():
    batch = RNG.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    # Offsets round((5 - 2) / 2) = 2 and round((6 - 4) / 2) = 1, like torchvision.
    np.testing.assert_array_equal(step("center_crop", size=[2, 4]).apply(batch), batch[:, 2:4, 1:5])
    ragged = [batch[0], batch[1, :4, :5]]
    cropped = step("center_crop", size=3).apply(ragged)
    np.testing.assert_array_equal(cropped, np.stack([batch[0, 1:4, 2:5], batch[1, 0:3, 1:4]]))
    with pytest.raises(UsageError, match="smaller than the crop 6x6; resize first"):
        step("center_crop", size=6).apply(batch)


def test_to_tensor_transposes_and_scales():
    batch = RNG.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    tensor = step("to_tensor").apply(batch)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    nhwc = step("to_tensor", layout="nhwc", divisor=1, dtype="float64").apply(list(batch))
    np.testing.assert_array_equal(nhwc, batch.astype(np.float64))
    with pytest.raises(UsageError, match=r"images differ in size .*add resize or center_crop"):
        step("to_tensor").apply([batch[0], batch[1, :3]])


# --- normalization, encoding, clipping --------------------------------------------------


def test_min_max_scaling_reference():
    x = np.array([[0.0, 10.0], [5.0, 20.0], [12.0, -5.0]], np.float32)
    low, high = np.array([0.0, 0.0]), np.array([10.0, 20.0])
    expected = (x - low) / (high - low)
    np.testing.assert_allclose(step("min_max", min=[0, 0], max=[10, 20]).apply(x), expected, rtol=1e-6)
    ranged = step("min_max", min=0, max=10, feature_range=[-1, 1], clip=True).apply(x)
    np.testing.assert_allclose(ranged, np.clip(x / 10 * 2 - 1, -1, 1), rtol=1e-6)


def test_z_score_and_per_channel_normalize_reference():
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    mean, std = np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.0])
    np.testing.assert_allclose(
        step("z_score", mean=mean.tolist(), std=std.tolist()).apply(x),
        (x - mean) / std,
        rtol=1e-6,
        atol=1e-6,  # float32 results near 0 have no relative precision (flaked under xdist's order)
    )
    images = RNG.random((2, 3, 4, 4)).astype(np.float32)
    m, s = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = (images - np.array(m)[None, :, None, None]) / np.array(s)[None, :, None, None]
    out = step("normalize", mean=m, std=s).apply(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="'mean' has 3 values but axis 1 of the input \\[2, 4\\] has size 4"):
        step("normalize", mean=m, std=s).apply(np.zeros((2, 4), np.float32))
    # Integer inputs become float32.
    assert step("z_score", mean=1, std=2).apply(np.array([3, 5])).tolist() == [1.0, 2.0]


def test_one_hot_reference_unknowns_and_numbers():
    vocab = ["red", "green", "blue"]
    encoded = step("one_hot", vocabulary=vocab).apply(np.array([["blue"], ["red"], ["blue"]]))
    np.testing.assert_array_equal(encoded, np.eye(3, dtype=np.float32)[[2, 0, 2]])
    ignored = step("one_hot", vocabulary=vocab, handle_unknown="ignore").apply(["green", "purple"])
    np.testing.assert_array_equal(ignored, [[0, 1, 0], [0, 0, 0]])
    with pytest.raises(UsageError, match="category 'purple' is not in the vocabulary"):
        step("one_hot", vocabulary=vocab).apply(["purple"])
    # A category longer than every vocabulary entry must not be truncated into one of them.
    with pytest.raises(UsageError, match="not in the vocabulary"):
        step("one_hot", vocabulary=["red"]).apply(np.array(["redder"], dtype=object))
    numbers = step("one_hot", vocabulary=[3, 1, 2], dtype="int64").apply(np.array([1, 3]))
    np.testing.assert_array_equal(numbers, [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(UsageError, match="cannot match"):
        step("one_hot", vocabulary=vocab).apply(np.array([1, 2]))


def test_ordinal_reference():
    vocab = ["low", "mid", "high"]
    out = step("ordinal", vocabulary=vocab).apply(np.array([["high", "low"], ["mid", "mid"]]))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[2, 0], [1, 1]])
    unknown = step("ordinal", vocabulary=vocab, unknown_value=-1, dtype="float32").apply(["mid", "huge"])
    np.testing.assert_array_equal(unknown, np.array([1, -1], np.float32))
    with pytest.raises(UsageError, match="set unknown_value"):
        step("ordinal", vocabulary=vocab).apply(["huge"])


def test_clip_and_cast_reference():
    x = np.array([[-5.0, 0.5, 9.0], [2.0, -1.0, 100.0]])
    np.testing.assert_array_equal(step("clip", min=-1, max=[1, 1, 50]).apply(x), np.clip(x, -1, [1, 1, 50]))
    np.testing.assert_array_equal(step("clip", max=1).apply(x), np.minimum(x, 1))
    cast = step("cast", dtype="int32").apply(x)
    assert cast.dtype == np.int32 and cast.tolist() == x.astype(np.int32).tolist()


# --- post-processing --------------------------------------------------------------------


def test_softmax_reference_and_large_logits():
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    expected = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(step("softmax").apply(x), expected, rtol=1e-6)
    np.testing.assert_allclose(step("softmax", axis=0).apply(x), np.exp(x) / np.exp(x).sum(axis=0), rtol=1e-6)
    big = step("softmax").apply(np.array([[1000.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(big, [[0.5, 0.5, 0.0]])
    with pytest.raises(UsageError, match="axis 2 does not exist"):
        step("softmax", axis=2).apply(x)


def test_sigmoid_reference_without_overflow():
    x = np.array([-3.0, 0.0, 2.5], np.float32)
    np.testing.assert_allclose(step("sigmoid").apply(x), 1 / (1 + np.exp(-x)), rtol=1e-6)
    with np.errstate(over="raise"):
        np.testing.assert_array_equal(step("sigmoid").apply(np.array([-1000.0, 1000.0])), [0.0, 1.0])


def test_argmax_and_top_k_reference():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.5]], np.float32)
    np.testing.assert_array_equal(step("argmax").apply(scores), [1, 0])
    assert step("argmax", labels=["a", "b", "c"]).apply(scores).tolist() == ["b", "a"]
    top = step("top_k", k=2, labels=["a", "b", "c"]).apply(scores)
    np.testing.assert_array_equal(top["indices"], [[1, 2], [0, 2]])  # tie: lower index first
    np.testing.assert_array_equal(top["scores"], np.array([[0.7, 0.2], [0.5, 0.5]], np.float32))
    assert top["labels"].tolist() == [["b", "c"], ["a", "c"]]
    assert step("top_k", k=10).apply(scores)["indices"].shape == (2, 3)
    with pytest.raises(UsageError, match="has 2 labels but the output has 3 classes"):
        step("top_k", labels=["a", "b"]).apply(scores)


def test_threshold_discretize_round_rescale_reference():
    p = np.array([0.2, 0.5, 0.9])
    np.testing.assert_array_equal(step("threshold").apply(p), [0, 1, 1])
    assert step("threshold", threshold=0.8, labels=["no", "yes"]).apply(p).tolist() == ["no", "no", "yes"]
    values = np.array([-1.0, 0.0, 0.5, 1.0, 3.0])
    # bins [0, 1]: (-inf, 0) -> 0, [0, 1) -> 1, [1, inf) -> 2; with right: (-inf, 0] -> 0 ...
    np.testing.assert_array_equal(step("discretize", bins=[0, 1]).apply(values), [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(step("discretize", bins=[0, 1], right=True).apply(values), [0, 0, 1, 1, 2])
    named = step("discretize", bins=[0, 1], labels=["neg", "low", "high"]).apply(values)
    assert named.tolist() == ["neg", "low", "low", "high", "high"]
    np.testing.assert_array_equal(
        step("round", decimals=1).apply(np.array([1.24, 2.25, -0.06])), [1.2, 2.2, -0.1]
    )
    y = np.array([[0.0, 1.0], [-1.0, 2.0]], np.float32)
    np.testing.assert_allclose(
        step("rescale", scale=[10, 2], offset=[100, -1]).apply(y), y * np.array([10, 2]) + np.array([100, -1])
    )


# --- the pipeline -----------------------------------------------------------------------

YAML = """
version: 1
inputs:
  image:
    - decode_image: {mode: RGB}
    - resize: {size: 8}
    - center_crop: {size: 6}
    - to_tensor
    - normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
  color:
    - one_hot: {vocabulary: [red, green, blue]}
outputs:
  logits:
    - softmax
    - top_k: {k: 2, labels: [cat, dog, bird]}
  value:
    - rescale: {scale: 2.5, offset: 10}
"""


def test_yaml_round_trip(tmp_path):
    pipeline = Pipeline.from_text(YAML)
    path = tmp_path / "pipeline.yaml"
    path.write_text(pipeline.to_yaml())
    again = Pipeline.from_yaml(path)
    assert again == pipeline and again.to_dict() == pipeline.to_dict()
    assert pipeline.to_dict()["inputs"]["image"][1] == {"resize": {"size": 8}}
    assert pipeline.to_dict()["inputs"]["image"][3] == {"to_tensor": {}}
    assert Pipeline.from_dict(pipeline.to_dict()) == pipeline
    assert Pipeline.from_text("") == Pipeline()


def test_preprocess_and_postprocess_end_to_end():
    pipeline = Pipeline.from_text(YAML)
    images = [
        png(RNG.integers(0, 256, (10, 16, 3), dtype=np.uint8)),
        png(RNG.integers(0, 256, (12, 9, 3), np.uint8)),
    ]
    feeds = pipeline.preprocess({"image": images, "color": ["blue", "red"], "extra": [1, 2]})
    assert feeds["image"].shape == (2, 3, 6, 6) and feeds["image"].dtype == np.float32
    np.testing.assert_array_equal(feeds["color"], [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(feeds["extra"], [1, 2])  # no steps: passed through
    results = pipeline.postprocess(
        {"logits": np.array([[2.0, 1.0, 0.0]]), "value": np.array([[1.0]]), "raw": np.array([5])}
    )
    assert sorted(results) == ["logits.indices", "logits.labels", "logits.scores", "raw", "value"]
    assert results["logits.labels"].tolist() == [["cat", "dog"]]
    np.testing.assert_allclose(results["value"], [[12.5]])


def test_run_time_errors_name_the_input_and_step():
    pipeline = Pipeline.from_text(YAML)
    with pytest.raises(UsageError, match="no raw input 'color'"):
        pipeline.preprocess({"image": []})
    with pytest.raises(UsageError, match=r"inputs.color\[0\]: step 'one_hot': category 'pink'"):
        pipeline.preprocess({"image": [png(np.zeros((8, 8, 3), np.uint8))], "color": ["pink"]})
    with pytest.raises(UsageError, match="the model returned no output 'value'"):
        pipeline.postprocess({"logits": np.zeros((1, 3))})
    ragged = Pipeline.from_text("inputs: {image: [decode_image]}")
    with pytest.raises(UsageError, match="2 images of different sizes"):
        ragged.preprocess({"image": [png(np.zeros((2, 2, 3), np.uint8)), png(np.zeros((3, 2, 3), np.uint8))]})
    with pytest.raises(UsageError, match=r"outputs.y\[0\]: step 'softmax'"):
        Pipeline.from_text("outputs: {y: [softmax]}").postprocess({"y": np.array(["a"])})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be a mapping"),
        ("version: 2", "version 2 is not supported"),
        ("steps: {}", "unknown key 'steps'"),
        ("inputs: [resize]", "'inputs' must map names to lists of steps"),
        ("inputs: {x: resize}", "inputs.x must be a list of steps"),
        ("inputs: {x: [resise]}", r"inputs.x\[0\]: unknown step 'resise'; did you mean 'resize'"),
        ("inputs: {x: [{frobnicate: {}}]}", "unknown step 'frobnicate'; known steps: decode_image"),
        ("inputs: {x: [{a: 1, b: 2}]}", "a step is written 'name' or"),
        ("inputs: {x: [softmax]}", "step 'softmax' belongs under outputs"),
        ("outputs: {y: [decode_image]}", "step 'decode_image' belongs under inputs"),
        ("outputs: {y: [top_k, softmax]}", r"outputs.y\[0\]: step 'top_k' returns several arrays"),
        ("inputs: {x: [{resize: 3}]}", "the parameters of step 'resize' must be a mapping"),
        ("inputs: {x: [resize]}", "step 'resize': missing required parameter 'size'"),
        (
            "inputs: {x: [{resize: {size: 8, mode: x}}]}",
            "step 'resize': unknown parameter 'mode'; it takes size",
        ),
        ("inputs: {x: [{resize: {size: 0}}]}", "parameter 'size' must be a positive integer"),
        ("inputs: {x: [{resize: {size: [1, 2, 3]}}]}", "parameter 'size' must be a positive integer"),
        (
            "inputs: {x: [{resize: {size: 4, interpolation: cubic}}]}",
            "'interpolation' must be one of nearest",
        ),
        ("inputs: {x: [{center_crop: {size: true}}]}", "parameter 'size' must be a positive integer"),
        ("inputs: {x: [{decode_image: {mode: CMYK}}]}", "parameter 'mode' must be one of RGB, L, RGBA"),
        ("inputs: {x: [{decode_image: {max_pixels: 0}}]}", "parameter 'max_pixels' must be >= 1"),
        ("inputs: {x: [{to_tensor: {divisor: 0}}]}", "parameter 'divisor' must be > 0"),
        ("inputs: {x: [{to_tensor: {layout: chw}}]}", "parameter 'layout' must be one of nchw, nhwc"),
        ("inputs: {x: [{min_max: {min: 0}}]}", "missing required parameter 'max'"),
        ("inputs: {x: [{min_max: {min: 1, max: 1}}]}", "parameter 'max' must be greater than 'min'"),
        (
            "inputs: {x: [{min_max: {min: [0, 0], max: [1, 1, 1]}}]}",
            "parameter 'max' has 3 values but 'min' has 2",
        ),
        (
            "inputs: {x: [{min_max: {min: 0, max: 1, feature_range: [1, 0]}}]}",
            "'feature_range' must be \\[low, high\\]",
        ),
        (
            "inputs: {x: [{min_max: {min: 0, max: 1, clip: yes please}}]}",
            "parameter 'clip' must be true or false",
        ),
        ("inputs: {x: [{z_score: {mean: 0, std: 0}}]}", "parameter 'std' must be > 0"),
        (
            "inputs: {x: [{z_score: {mean: [], std: 1}}]}",
            "parameter 'mean' must be a number or a non-empty list",
        ),
        ("inputs: {x: [{z_score: {mean: .nan, std: 1}}]}", "parameter 'mean' must be a finite number"),
        ("inputs: {x: [{normalize: {mean: [0, 0, 0], std: [1, -1, 1]}}]}", "parameter 'std' must be > 0"),
        (
            "inputs: {x: [{normalize: {mean: [0], std: [1], axis: 1.5}}]}",
            "parameter 'axis' must be an integer",
        ),
        ("inputs: {x: [{one_hot: {vocabulary: []}}]}", "'vocabulary' must be a non-empty list"),
        (
            "inputs: {x: [{one_hot: {vocabulary: [a, a]}}]}",
            "must not repeat a category \\('a' appears twice\\)",
        ),
        ("inputs: {x: [{one_hot: {vocabulary: [a, 1]}}]}", "must hold only strings or only numbers"),
        (
            "inputs: {x: [{one_hot: {vocabulary: [a], handle_unknown: skip}}]}",
            "'handle_unknown' must be one of error",
        ),
        ("inputs: {x: [{one_hot: {vocabulary: [a], dtype: float128}}]}", "parameter 'dtype' must be one of"),
        (
            "inputs: {x: [{ordinal: {vocabulary: [a], unknown_value: x}}]}",
            "'unknown_value' must be an integer",
        ),
        ("inputs: {x: [clip]}", "parameter 'max' or 'min' must be given"),
        ("inputs: {x: [{clip: {min: 2, max: 1}}]}", "parameter 'max' must be >= 'min'"),
        ("inputs: {x: [cast]}", "missing required parameter 'dtype'"),
        ("outputs: {y: [{softmax: {axis: last}}]}", "parameter 'axis' must be an integer"),
        ("outputs: {y: [{top_k: {k: 0}}]}", "parameter 'k' must be >= 1"),
        (
            "outputs: {y: [{top_k: {labels: [1, 2]}}]}",
            "parameter 'labels' must be a non-empty list of strings",
        ),
        ("outputs: {y: [{threshold: {labels: [a, b, c]}}]}", "parameter 'labels' must be \\[below, above\\]"),
        ("outputs: {y: [{threshold: {threshold: high}}]}", "parameter 'threshold' must be a finite number"),
        ("outputs: {y: [{discretize: {bins: [1, 1]}}]}", "parameter 'bins' must be strictly increasing"),
        ("outputs: {y: [{discretize: {bins: [0, 1], labels: [a, b]}}]}", "'labels' must name all 3 bins"),
        ("outputs: {y: [{round: {decimals: 0.5}}]}", "parameter 'decimals' must be an integer"),
        ("outputs: {y: [{rescale: {scale: [1, x]}}]}", "parameter 'scale' must be a finite number"),
        ("inputs: {x: [{resize: {size: 4}}]\n", "not valid YAML"),
        ("!!python/object:os.system {}", "not valid YAML"),
    ],
)
def test_every_validation_error_names_the_step_and_parameter(text, message):
    with pytest.raises(UsageError, match=message):
        Pipeline.from_text(text)


def test_every_step_is_documented_and_builds_bare_when_nothing_is_required():
    for name, cls in STEPS.items():
        assert cls.name == name and cls.__doc__ and cls.stage in ("pre", "post", "any")
        # clip has only optional bounds but needs one of them.
        if name != "clip" and all(param.default is not REQUIRED for param in cls.params_spec.values()):
            assert make_step(name).to_dict() == {name: {}}


def test_from_yaml_file_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot read the pipeline"):
        Pipeline.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {x: [resise]}")
    with pytest.raises(UsageError, match=f"{bad}: inputs.x\\[0\\]: unknown step"):
        Pipeline.from_yaml(bad)
