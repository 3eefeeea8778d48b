"""The bundled example taken through the whole chain: the README's main command.

build -> optimize -> quantize (static int8) -> protect (encrypt) -> package -> bench, all on
the example CNN with generated calibration data and a demo key, so it runs offline in seconds.
Each stage writes its file into ``workdir`` and reports what it measured; ``run_chain``
returns the records and the CLI prints them (the library never prints).
"""

from __future__ import annotations

import collections.abc
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ChainResult", "run_chain"]

Progress = collections.abc.Callable[[str], None]


@dataclasses.dataclass
class ChainResult:
    """What each stage of the demo chain produced and measured."""

    files: dict[str, Path]
    reports: dict[str, Any]
    bench: Any  # modelpress.benchmark.BenchReport over original, optimized, int8, package


def run_chain(workdir: Path, *, runs: int = 30, progress: Progress | None = None) -> ChainResult:
    """Run every stage on the example CNN inside ``workdir`` (created; files replaced).

    Args:
        workdir: Folder for the models, calibration data, demo key and package.
        runs: Timed runs per model in the final benchmark.
        progress: Called with a line describing each stage as it starts.
    """
    from modelpress.benchmark import benchmark_models
    from modelpress.examples import build_example_cnn
    from modelpress.ir import io
    from modelpress.optimize import optimize_file
    from modelpress.package import build_package
    from modelpress.protect import encrypt_model, generate_key, key_id, write_key_file
    from modelpress.quantize import QuantSpec, quantize_file

    say = progress or (lambda _: None)
    workdir.mkdir(parents=True, exist_ok=True)
    files = {
        "original": workdir / "example_cnn.onnx",
        "optimized": workdir / "example_cnn.opt.onnx",
        "int8": workdir / "example_cnn.int8.onnx",
        "encrypted": workdir / "example_cnn.int8.mpe",
        "key": workdir / "demo.key",
        "package": workdir / "package",
    }
    reports: dict[str, Any] = {}
    say(f"build the example CNN -> {files['original']}")
    model = build_example_cnn()
    io.save(model, files["original"])
    say(f"optimize -> {files['optimized']}")
    reports["optimize"] = optimize_file(files["original"], files["optimized"])
    calib = _calibration_folder(workdir / "calib", model)
    say(f"quantize static int8 with {len(list(calib.glob('*.npy')))} calibration samples -> {files['int8']}")
    reports["quantize"] = quantize_file(files["optimized"], files["int8"], QuantSpec(), calib_dir=calib)
    say(f"protect --encrypt (demo key {files['key']}) -> {files['encrypted']}")
    key = generate_key()
    write_key_file(files["key"], key, overwrite=True)
    reports["protect"] = encrypt_model(files["int8"], files["encrypted"], key)
    say(f"package -> {files['package']}")
    steps = [
        {"step": "optimize", "level": "all"},
        {"step": "quantize", "mode": "static", "calibrator": "minmax"},
        {"step": "protect", "encrypt": True},
    ]
    files["package"] = build_package(
        files["encrypted"], files["package"], steps=steps, key_id=key_id(key), overwrite=True
    )
    say("bench: original vs optimized vs int8 vs the encrypted package, interleaved")
    reports["bench"] = bench = benchmark_models(
        [files["original"], files["optimized"], files["int8"], files["package"]],
        batches=(1,),
        threads=(2,),
        runs=runs,
        warmup=5,
        key=key,
    )
    return ChainResult(files, reports, bench)


def _calibration_folder(folder: Path, model: Any, samples: int = 32) -> Path:
    """Write ``samples`` seeded random inputs (one ``.npy`` per sample) for calibration."""
    from modelpress.runtime.feeds import input_specs

    folder.mkdir(parents=True, exist_ok=True)
    (name, (dtype, shape)), *_ = input_specs(model).items()
    rng = np.random.default_rng(0)
    for index in range(samples):
        np.save(folder / f"{name}_{index:03d}.npy", rng.standard_normal(shape).astype(dtype))
    return folder
