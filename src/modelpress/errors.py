"""The one exception hierarchy of modelpress.

Every error a user can cause (a bad file, a bad option, a model we cannot handle) is a
``ModelpressError``. Messages say what failed, where (file, node, value), what was expected,
what was found, and how to fix it. The CLI maps each class to an exit code.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CompressionError",
    "ConversionError",
    "InvalidModelError",
    "ModelLoadError",
    "ModelSaveError",
    "ModelpressError",
    "NumericMismatchError",
    "PackageError",
    "PassError",
    "PostconditionError",
    "PreconditionError",
    "ProtectionError",
    "UsageError",
]


class ModelpressError(Exception):
    """Base class of every error modelpress raises on purpose."""

    exit_code: int = 1


class UsageError(ModelpressError):
    """An option or argument is wrong (unknown pass name, bad level, malformed option, missing feed)."""

    exit_code = 2


class ModelLoadError(ModelpressError):
    """A model file or byte string could not be read as a safe, well-formed ONNX model."""

    exit_code = 3


class ModelSaveError(ModelpressError):
    """A model could not be written; the destination was left untouched."""

    exit_code = 3


class InvalidModelError(ModelpressError):
    """The model was read but breaks the ONNX specification (checker or IR invariant)."""

    exit_code = 3


class PreconditionError(ModelpressError):
    """A pass or workflow was given a model it declares it cannot handle."""

    exit_code = 4


class PostconditionError(ModelpressError):
    """A pass produced a model that breaks its own guarantees (a bug in modelpress)."""

    exit_code = 5


class PassError(ModelpressError):
    """A pass failed; carries the pass name and the passes that ran before it."""

    exit_code = 5

    def __init__(self, message: str, *, pass_name: str, history: tuple[str, ...] = ()) -> None:
        detail = f"pass '{pass_name}' failed: {message}"
        if history:
            detail += f" (after passes: {', '.join(history)})"
        super().__init__(detail)
        self.pass_name = pass_name
        self.history = history


class NumericMismatchError(ModelpressError):
    """Two models that must be equivalent gave different outputs beyond the tolerance."""

    exit_code = 6


class ProtectionError(ModelpressError):
    """Encryption, decryption or de-obfuscation failed (wrong key, tampered file)."""

    exit_code = 7


class ConversionError(ModelpressError):
    """A source model (PyTorch, scikit-learn) could not be converted to ONNX.

    The message names the operator or estimator the exporter refused and how to work around it.
    """

    exit_code = 8


class CalibrationError(ModelpressError):
    """Calibration data for quantization is missing, unreadable or does not fit the model.

    The message names the folder or file, the model input, what was expected and what was
    found (shape, dtype, NaN/Inf).
    """

    exit_code = 9


class PackageError(ModelpressError):
    """A deployment package is incomplete, altered or malformed.

    Raised when a file the manifest lists is missing or its size or sha256 differs (tampered or
    corrupted), when the folder holds files the manifest does not list, or when the manifest is
    not valid JSON, fails its own digest, or has a format version this modelpress cannot read.
    """

    exit_code = 10


class CompressionError(ModelpressError):
    """A Deep Compression container (``.mpz``) is damaged, truncated, foreign or hostile.

    Raised when the file does not start with the ``.mpz`` signature, has a format version this
    modelpress cannot read, is shorter or longer than its header declares, fails its SHA-256,
    or has a header whose sizes, offsets or stream lengths do not fit the file. The message
    says which check failed and where; nothing is decoded or written when one is raised.
    """

    exit_code = 11
