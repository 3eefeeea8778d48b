"""A deployment recipe: one YAML file naming the model, its pipeline, its data and the stages.

```yaml
version: 1
name: digits                      # names the work folder (build/deploy/NAME) and the report
model:                            # exactly one of:
  example: digits                 #   a bundled example, trained here (digits: load_digits CNN)
  # path: model.onnx              #   an ONNX file
  # convert: pkg.module:factory   #   a PyTorch nn.Module / scikit-learn estimator factory
  # example_input: [x=1x3x32x32]  #   (with convert) input specs, as for `modelpress convert`
pipeline: pipeline.yaml           # pre/post-processing (a file, or the mapping inline); optional
data:                             # raw inputs, as the deployed package receives them
  example: digits                 #   the example's data: calibration rows and a labelled eval split
  # calib: calib/                 #   .npy/.npz folder or one .npz: rows for calibration
  # eval: eval.npz                #   rows (+ a 'labels' array) for accuracy and the benchmark
stages:                           # run in this order; leave one out to skip it
  optimize: {level: all, target: onnxruntime}
  quantize: {mode: static, calibrator: minmax, num_samples: 512}
                                  #   max_drop: 0.01 keeps the fewest nodes float to lose <= 1 point
                                  #   of top-1 on the eval data; bias_correction: true
  # compress: {sparsity: 0, fc_bits: 5}   # Deep Compression .mpz instead of quantize (not both)
  protect: {encrypt: true}        # key_file: K (default: a new key in the work folder)
bench: {batch: [1, 8], threads: [2], runs: 30}
```

Paths in the recipe are relative to the recipe file's folder; everything deploy writes goes to
the work folder. The file is read with ``yaml.safe_load`` and every key is checked: an unknown
key, a wrong type or a bad value raises ``UsageError`` naming the key (``stages.quantize.mode``)
and what is accepted, before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import yaml

from modelpress._files import read_small_text
from modelpress.errors import UsageError

__all__ = ["EXAMPLES", "STAGES", "BenchSettings", "Recipe", "load_recipe", "parse_recipe"]

EXAMPLES = ("digits",)
STAGES = ("optimize", "quantize", "compress", "protect")
_MAX_RECIPE_BYTES = 1 << 20
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_STAGE_KEYS = {
    "optimize": {"level", "target", "passes", "verify"},
    "quantize": {
        "mode",
        "calibrator",
        "percentile",
        "activation_dtype",
        "per_channel",
        "reduce_range",
        "num_samples",
        "exclude_nodes",
        "bias_correction",
        "float_stem",
        "max_drop",
    },
    "compress": {"sparsity", "conv_bits", "fc_bits", "embedding_bits", "min_elements"},
    "protect": {"encrypt", "key_file", "obfuscate", "opaque", "seed"},
}


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """How the stages are benchmarked side by side (see ``benchmark_models``)."""

    batch: tuple[int, ...] = (1, 8)
    threads: tuple[int, ...] = (2,)
    runs: int = 30
    warmup: int = 5


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe; paths are absolute.

    Attributes:
        name: Names the work folder and the report.
        model: ``{"example": name}``, ``{"path": Path}`` or ``{"convert": source,
            "example_input": [...]}``.
        pipeline: A pipeline file, or an inline pipeline mapping, or None.
        data: ``{"example": name}`` or ``{"calib": Path | None, "eval": Path | None}``.
        stages: Stage name -> its options, in the order they run.
        bench: Benchmark settings.
        where: The recipe file, for messages.
    """

    name: str
    model: dict[str, typing.Any]
    pipeline: Path | dict[str, typing.Any] | None
    data: dict[str, typing.Any]
    stages: dict[str, dict[str, typing.Any]]
    bench: BenchSettings
    where: str


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file.

    Raises:
        UsageError: the file is missing, too large, not YAML, or any key is wrong.
    """
    file = Path(path)
    text = read_small_text(file, _MAX_RECIPE_BYTES, "recipe")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{file}: not valid YAML: {e}") from e
    return parse_recipe(data, base=file.resolve().parent, where=str(file))


def parse_recipe(data: object, *, base: Path, where: str = "recipe") -> Recipe:
    """Validate a recipe given as a mapping; relative paths are resolved against ``base``.

    Raises:
        UsageError: a key is unknown or missing, or a value has the wrong type or range.
    """
    top = _mapping(data, where, {"version", "name", "model", "pipeline", "data", "stages", "bench"})
    if top.get("version", 1) != 1:
        raise UsageError(
            f"{where}: version {top['version']!r} is not supported; this modelpress reads version 1"
        )
    name = top.get("name", "model")
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise UsageError(
            f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)"
        )
    if "model" not in top:
        raise UsageError(
            f"{where}: 'model' is missing; give model: {{example: digits}}, {{path: F}} or {{convert: SRC}}"
        )
    model = _model(top["model"], base, f"{where}: model")
    pipeline = top.get("pipeline")
    if isinstance(pipeline, str):
        pipeline = _path(pipeline, base, f"{where}: pipeline", must_exist=True)
    elif pipeline is not None and not isinstance(pipeline, dict):
        raise UsageError(f"{where}: pipeline must be a file name or a mapping, not {type(pipeline).__name__}")
    data_section = _data(top.get("data", {}), base, f"{where}: data")
    stages = _stages(top.get("stages", {}), base, f"{where}: stages")
    if (
        "quantize" in stages
        and stages["quantize"].get("mode", "static") == "static"
        and not (data_section.get("example") or data_section.get("calib"))
    ):
        raise UsageError(
            f"{where}: stages.quantize (static) needs calibration data: add data.calib (a folder of "
            ".npy/.npz rows), or choose mode: dynamic or weight-only"
        )
    max_drop = stages.get("quantize", {}).get("max_drop")
    if max_drop is not None:
        if not isinstance(max_drop, int | float) or isinstance(max_drop, bool) or not 0 <= max_drop < 1:
            raise UsageError(f"{where}: stages.quantize.max_drop must be a number in [0, 1), e.g. 0.01")
        if not (data_section.get("example") or data_section.get("eval")):
            raise UsageError(
                f"{where}: stages.quantize.max_drop needs labelled eval data: add data.eval (rows + 'labels')"
            )
    if stages.get("optimize", {}).get("target") == "onnxruntime" and "quantize" in stages:
        raise UsageError(
            f"{where}: stages.optimize target onnxruntime writes com.microsoft fused ops the quantizer "
            "leaves in float; use target: onnx (the default) before quantize: onnxruntime fuses the "
            "quantized graph itself at load"
        )
    return Recipe(
        name, model, pipeline, data_section, stages, _bench(top.get("bench", {}), f"{where}: bench"), where
    )


def _model(value: object, base: Path, where: str) -> dict[str, typing.Any]:
    section = _mapping(value, where, {"example", "path", "convert", "example_input"})
    kinds = [k for k in ("example", "path", "convert") if k in section]
    if len(kinds) != 1:
        raise UsageError(
            f"{where}: give exactly one of example, path or convert (got {', '.join(kinds) or 'none'})"
        )
    kind = kinds[0]
    if kind == "example":
        _choice(section["example"], EXAMPLES, f"{where}.example")
        return {"example": section["example"]}
    if kind == "path":
        return {"path": _path(section["path"], base, f"{where}.path", must_exist=True)}
    source = section["convert"]
    if not isinstance(source, str) or not source:
        raise UsageError(f"{where}.convert must be 'package.module:factory' or a saved model file")
    if ":" not in source or Path(source).suffix:
        candidate = base / source
        source = str(candidate) if candidate.exists() else source
    specs = section.get("example_input", [])
    if isinstance(specs, str):
        specs = [specs]
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise UsageError(f"{where}.example_input must be a list of NAME=1x3x224x224 specs")
    return {"convert": source, "example_input": specs}


def _data(value: object, base: Path, where: str) -> dict[str, typing.Any]:
    section = _mapping(value, where, {"example", "calib", "eval"})
    if "example" in section:
        if len(section) > 1:
            raise UsageError(f"{where}: 'example' provides both calib and eval data; drop the others")
        _choice(section["example"], EXAMPLES, f"{where}.example")
        return {"example": section["example"]}
    return {
        k: _path(section[k], base, f"{where}.{k}", must_exist=True) if k in section else None
        for k in ("calib", "eval")
    }


def _stages(value: object, base: Path, where: str) -> dict[str, dict[str, typing.Any]]:
    section = _mapping(value, where, set(STAGES))
    order = [stage for stage in section if stage in STAGES]
    if order != [stage for stage in STAGES if stage in section]:
        raise UsageError(f"{where}: stages run in the order {', '.join(STAGES)}; list them in that order")
    stages: dict[str, dict[str, typing.Any]] = {}
    for stage in order:
        options = _mapping(
            section[stage] if section[stage] is not None else {}, f"{where}.{stage}", _STAGE_KEYS[stage]
        )
        if stage == "protect":
            if options.get("key_file") is not None:
                options["key_file"] = _path(
                    options["key_file"], base, f"{where}.protect.key_file", must_exist=True
                )
            if (
                not options.get("encrypt", True)
                and not options.get("obfuscate")
                and not options.get("opaque")
            ):
                raise UsageError(
                    f"{where}.protect: choose encrypt: true and/or obfuscate: low|medium|high (opaque: true)"
                )
            if options.get("obfuscate") is not None:
                _choice(options["obfuscate"], ("low", "medium", "high"), f"{where}.protect.obfuscate")
        stages[stage] = options
    if "compress" in stages:
        if "quantize" in stages:
            raise UsageError(
                f"{where}: choose quantize or compress, not both (compress shares float weights; an int8 "
                "model has none left)"
            )
        protect = stages.get("protect", {})
        if protect.get("obfuscate") or protect.get("opaque"):
            raise UsageError(
                f"{where}.protect: an .mpz can be encrypted, not obfuscated; drop obfuscate/opaque "
                "or compress"
            )
    return stages


def _bench(value: object, where: str) -> BenchSettings:
    section = _mapping(value, where, {"batch", "threads", "runs", "warmup"})
    settings: dict[str, typing.Any] = {}
    for key in ("batch", "threads"):
        if key in section:
            items = section[key] if isinstance(section[key], list) else [section[key]]
            if not items or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in items):
                raise UsageError(f"{where}.{key} must be a list of integers >= 1, e.g. [1, 8]")
            settings[key] = tuple(dict.fromkeys(items))
    for key, low in (("runs", 1), ("warmup", 0)):
        if key in section:
            if not isinstance(section[key], int) or isinstance(section[key], bool) or section[key] < low:
                raise UsageError(f"{where}.{key} must be an integer >= {low}")
            settings[key] = section[key]
    return BenchSettings(**settings)


def _mapping(value: object, where: str, allowed: set[str]) -> dict[str, typing.Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping (key: value lines), not {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key '{unknown[0]}'; expected one of {', '.join(sorted(allowed))}")
    return dict(value)


def _choice(value: object, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(choices)}")


def _path(value: object, base: Path, where: str, *, must_exist: bool) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} must be a file or folder name")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if must_exist and not path.exists():
        raise UsageError(f"{where}: {path} does not exist (paths are relative to the recipe's folder)")
    return path
