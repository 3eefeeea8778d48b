"""What ``modelpress convert`` reads: a ``module:factory`` reference or a saved model file.

A source is resolved to a live framework object before anything is exported:

* ``package.module:factory``: the module is imported (the current folder is importable, as
  ``python -m`` would allow) and ``factory()`` is called; it must return a
  ``torch.nn.Module`` or a fitted scikit-learn estimator. Naming a module runs its code: that
  is what the user asked for.
* a saved PyTorch module (``.pt``, ``.pth``: ``torch.save(module)``) or a joblib/pickle file
  of a scikit-learn estimator (``.joblib``, ``.pkl``, ``.pickle``). Unpickling runs whatever
  code the file carries, so these load only with ``trust_pickle=True`` (the CLI's
  ``--trust-pickle``). Without it a PyTorch file is opened with ``weights_only=True`` (the
  restricted unpickler, which cannot run code) only to tell a state dict from a module.
* an ``.onnx`` file, loaded and validated as untrusted input like every model file.

Example inputs are written ``NAME=1x3x224x224[:float32]``; ``parse_input_spec`` reads them.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import importlib
import os
import re
import sys
import typing
from pathlib import Path

import numpy as np

from modelpress.errors import UsageError

__all__ = [
    "DTYPES",
    "PICKLE_SUFFIXES",
    "TORCH_SUFFIXES",
    "InputSpec",
    "Source",
    "example_feeds",
    "load_source",
    "parse_input_spec",
]

TORCH_SUFFIXES = (".pt", ".pth", ".torch")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# Element types an example input may have (numpy names).
DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
SourceKind = typing.Literal["torch", "sklearn", "onnx"]

_FACTORY = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$")
_SPEC = re.compile(r"^([A-Za-z_][\w.\-/]*)=(\d+(?:x\d+)*|scalar)(?::(\w+))?$")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Name, example shape and element type of one model input.

    Attributes:
        name: Graph input name in the exported model.
        shape: Example shape; with a dynamic batch, axis 0 becomes the symbolic ``batch``.
        dtype: numpy element type name, one of ``DTYPES``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def with_batch(self, batch: int) -> InputSpec:
        """The same input with axis 0 resized to ``batch`` (scalars are unchanged)."""
        if not self.shape:
            return self
        return dataclasses.replace(self, shape=(batch, *self.shape[1:]))

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name}={dims}:{self.dtype}"


def parse_input_spec(text: str) -> InputSpec:
    """Read ``NAME=1x3x224x224[:DTYPE]`` (``NAME=scalar`` for a 0-d input).

    Raises:
        UsageError: the text is malformed, a dim is 0, or the dtype is not one of ``DTYPES``.
    """
    match = _SPEC.match(text.strip())
    if match is None:
        raise UsageError(
            f"example input '{text}' must look like NAME=1x3x224x224 or NAME=1x64:float32 "
            f"(dtypes: {', '.join(DTYPES)})"
        )
    name, dims, dtype = match.group(1), match.group(2), match.group(3) or "float32"
    shape = () if dims == "scalar" else tuple(int(d) for d in dims.split("x"))
    if any(d == 0 for d in shape):
        raise UsageError(f"example input '{text}' has a zero-sized dim; give every dim a size >= 1")
    if dtype not in DTYPES:
        raise UsageError(
            f"example input '{text}': unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}"
        )
    return InputSpec(name, shape, dtype)


def example_feeds(specs: collections.abc.Sequence[InputSpec], seed: int) -> dict[str, np.ndarray]:
    """Deterministic inputs for ``specs``: floats standard normal, ints in [0, 10), bools fair coins.

    Small non-negative integers are valid indices into embedding tables and valid class ids.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, size=spec.shape).astype(bool)
        elif spec.dtype.startswith("int"):
            feeds[spec.name] = rng.integers(0, 10, size=spec.shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
    return feeds


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved conversion source.

    Attributes:
        kind: ``torch``, ``sklearn`` or ``onnx``.
        obj: The ``torch.nn.Module``, the scikit-learn estimator, or the ``onnx_ir.Model``.
        description: What the user named (a path or ``module:factory``), for messages.
    """

    kind: SourceKind
    obj: typing.Any
    description: str


def load_source(source: str | os.PathLike[str], *, trust_pickle: bool = False) -> Source:
    """Resolve ``source`` (a file or ``package.module:factory``) to a live model object.

    Args:
        source: A path of a ``.pt``/``.pth``/``.joblib``/``.pkl``/``.onnx`` file, or
            ``package.module:factory``.
        trust_pickle: Allow unpickling a saved file. Unpickling executes code from the file:
            only for files from a trusted origin.

    Raises:
        UsageError: the file is missing or of an unknown kind, a pickle was given without
            ``trust_pickle``, the module or factory cannot be imported or called, or the object
            is neither a PyTorch module nor a scikit-learn estimator.
        ModelLoadError: an ``.onnx`` source is not a valid model.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_file():
        return _load_file(path, trust_pickle)
    match = _FACTORY.match(text)
    if match is None:
        raise UsageError(
            f"{text}: no such file, and not a 'package.module:factory' reference; give a saved model "
            f"({', '.join((*TORCH_SUFFIXES, *PICKLE_SUFFIXES, '.onnx'))}) or a factory function"
        )
    obj = _call_factory(match.group(1), match.group(2), text)
    return Source(_kind_of(obj, f"{text}()"), obj, text)


@contextlib.contextmanager
def _importable_cwd() -> collections.abc.Iterator[None]:
    """Make the current folder importable for the block, as ``python -m`` does."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _call_factory(module_name: str, attr: str, text: str) -> object:
    with _importable_cwd():
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UsageError(
                f"{text}: cannot import module '{module_name}': {e}; run from the folder that holds "
                "the package or install it"
            ) from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UsageError(f"{text}: module '{module_name}' has no callable '{attr}'")
    try:
        return factory()
    except Exception as e:  # user code: any exception type
        raise UsageError(f"{text}: the factory raised {type(e).__name__}: {e}") from e


def _kind_of(obj: object, where: str) -> SourceKind:
    # The object's framework is already imported by whoever built it: look, do not import.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        return "torch"
    sklearn_base = sys.modules.get("sklearn.base")
    if sklearn_base is not None and isinstance(obj, sklearn_base.BaseEstimator):
        return "sklearn"
    raise UsageError(
        f"{where} gave a {type(obj).__module__}.{type(obj).__qualname__}, neither a torch.nn.Module "
        "nor a scikit-learn estimator"
    )


def _refuse_pickle(path: Path) -> UsageError:
    return UsageError(
        f"{path}: loading this file unpickles it, which runs any code the file contains; pass "
        "--trust-pickle (trust_pickle=True) only for a file you trust, or give the model as "
        "package.module:factory"
    )


def _load_file(path: Path, trust_pickle: bool) -> Source:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from modelpress.ir import io

        return Source("onnx", io.load(path), str(path))
    if suffix in TORCH_SUFFIXES:
        obj = _load_torch_file(path, trust_pickle)
    elif suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise _refuse_pickle(path)
        obj = _unpickle(path)
    else:
        raise UsageError(
            f"{path}: unknown model file type '{suffix}'; give a saved PyTorch module "
            f"({', '.join(TORCH_SUFFIXES)}), a joblib/pickle estimator ({', '.join(PICKLE_SUFFIXES)}), "
            "an .onnx file, or package.module:factory"
        )
    return Source(_kind_of(obj, str(path)), obj, str(path))


def _load_torch_file(path: Path, trust_pickle: bool) -> object:
    try:
        import torch
    except ImportError as e:
        raise UsageError(
            f"{path}: reading a PyTorch file needs torch; pip install 'modelpress[torch]'"
        ) from e
    if not trust_pickle:
        try:
            # The restricted unpickler runs no code: it only tells a state dict from a module.
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for a full module, anything for a bad file
            raise _refuse_pickle(path) from e
        if isinstance(weights, collections.abc.Mapping):
            raise _state_dict_error(path)
        raise _refuse_pickle(path)
    with _importable_cwd():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # missing class definitions, corrupt file, ...
            raise UsageError(
                f"{path}: cannot load the saved module: {type(e).__name__}: {e}; the classes it was "
                "saved with must be importable (run from the folder holding their package)"
            ) from e
    if isinstance(obj, collections.abc.Mapping):
        raise _state_dict_error(path)
    return obj


def _state_dict_error(path: Path) -> UsageError:
    return UsageError(
        f"{path}: holds a state dict (weights only), not a module; give package.module:factory for a "
        "function that builds the module and loads these weights"
    )


def _unpickle(path: Path) -> object:
    try:
        import joblib
    except ImportError as e:
        raise UsageError(
            f"{path}: reading a joblib file needs joblib; pip install 'modelpress[sklearn]'"
        ) from e

    with _importable_cwd():
        try:
            return joblib.load(path)
        except Exception as e:  # user pickles fail in any way
            raise UsageError(f"{path}: cannot unpickle the file: {type(e).__name__}: {e}") from e
