"""The base of pipeline steps and the validators of their parameters.

A step is a small class: a YAML ``name``, the ``stage`` it may run in (``pre`` for model
inputs, ``post`` for model outputs, ``any`` for both), a ``params_spec`` (name -> ``Param``)
and ``apply(value)``. Parameters are validated once, when the step is built: an unknown
name, a missing required parameter or a bad value raises ``UsageError`` naming the step and
the parameter. ``apply`` then only checks what depends on the data (e.g. a mean with 3 values
on an axis of size 4).

Parsed parameters stay plain Python values (numbers, strings, lists), so a step writes back
to YAML exactly what it accepted (``to_dict``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import typing

import numpy as np

from modelpress.errors import UsageError

__all__ = [
    "DTYPES",
    "REQUIRED",
    "Param",
    "Stage",
    "Step",
    "boolean",
    "choice",
    "dtype_name",
    "integer",
    "labels",
    "number",
    "numbers",
    "optional",
    "size",
    "vocabulary",
]

Stage = typing.Literal["pre", "post", "any"]
Parser = collections.abc.Callable[[object], object]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: typing.Any = _Required()
# Element types a step may produce (numpy names).
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a step.

    Attributes:
        parse: Returns the parsed value or raises ``ValueError`` saying what it must be.
        default: The value when omitted; ``REQUIRED`` when it must be given.
    """

    parse: Parser
    default: object = REQUIRED


class Step:
    """One pre- or post-processing operation with validated parameters.

    Subclasses set ``name``, ``stage``, ``params_spec``, and implement ``apply``; they may
    override ``validate`` for checks across parameters (call ``self.bad`` to fail).
    """

    name: typing.ClassVar[str]
    stage: typing.ClassVar[Stage]
    params_spec: typing.ClassVar[collections.abc.Mapping[str, Param]] = {}
    # A terminal step returns several named arrays and must end its chain.
    terminal: typing.ClassVar[bool] = False

    def __init__(self, params: collections.abc.Mapping[str, object] | None = None) -> None:
        given = dict(params or {})
        unknown = sorted(set(given) - set(self.params_spec))
        if unknown:
            known = ", ".join(self.params_spec) or "no parameters"
            raise UsageError(f"step '{self.name}': unknown parameter '{unknown[0]}'; it takes {known}")
        self.params: dict[str, typing.Any] = {}
        self._given: dict[str, object] = {}
        for key, spec in self.params_spec.items():
            if key not in given:
                if spec.default is REQUIRED:
                    raise UsageError(f"step '{self.name}': missing required parameter '{key}'")
                self.params[key] = spec.default
                continue
            try:
                self.params[key] = spec.parse(given[key])
            except ValueError as e:
                raise self.bad(key, f"{e}, got {given[key]!r}") from None
            self._given[key] = self.params[key]
        self.validate()

    def validate(self) -> None:
        """Checks across parameters; raise ``self.bad(...)`` on failure."""

    def bad(self, param: str, reason: str) -> UsageError:
        """The error for a bad parameter value, naming the step and the parameter."""
        return UsageError(f"step '{self.name}': parameter '{param}' {reason}")

    def fail(self, reason: str) -> UsageError:
        """The error for data this step cannot process."""
        return UsageError(f"step '{self.name}': {reason}")

    def apply(self, value: typing.Any) -> typing.Any:
        """Transform one batch (an array, or for image steps a list of HWC images)."""
        raise NotImplementedError

    def numeric(self, value: object) -> np.ndarray:
        """``value`` as a float array: float inputs keep their precision, others become float32.

        Raises:
            UsageError: the values are not numbers (strings, objects).
        """
        try:
            array = np.asarray(value)
        except ValueError as e:  # ragged nested lists
            raise self.fail(f"the input is not a rectangular array of numbers: {e}") from e
        if array.dtype.kind == "f":
            return array
        if array.dtype.kind not in "biu":
            raise self.fail(f"expected numbers, got an array of {array.dtype}")
        return array.astype(np.float32)

    def along(self, param: str, x: np.ndarray, axis: int) -> np.ndarray:
        """Parameter ``param`` (a scalar, or one value per index of ``axis``) broadcastable to ``x``.

        Raises:
            UsageError: ``axis`` does not exist in ``x``, or the list length differs from its size.
        """
        values = self.params[param]
        if not isinstance(values, list):
            return np.asarray(values, dtype=x.dtype)
        if not -x.ndim <= axis < x.ndim:
            raise self.fail(f"axis {axis} does not exist in an input of shape {list(x.shape)}")
        if len(values) != x.shape[axis]:
            raise self.fail(
                f"'{param}' has {len(values)} values but axis {axis} of the input {list(x.shape)} has "
                f"size {x.shape[axis]}"
            )
        shape = [1] * x.ndim
        shape[axis] = len(values)
        return np.asarray(values, dtype=x.dtype).reshape(shape)

    def to_dict(self) -> dict[str, dict[str, object]]:
        """``{name: params}`` with the parameters that were given, as YAML writes them."""
        return {self.name: dict(self._given)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._given!r})"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(*, minimum: float | None = None, above: float | None = None) -> Parser:
    """A finite number (``minimum`` inclusive, ``above`` exclusive bounds)."""

    def parse(value: object) -> float:
        if not _is_number(value) or not math.isfinite(typing.cast(float, value)):
            raise ValueError("must be a finite number")
        result = float(typing.cast(float, value))
        if minimum is not None and result < minimum:
            raise ValueError(f"must be >= {minimum:g}")
        if above is not None and result <= above:
            raise ValueError(f"must be > {above:g}")
        return result

    return parse


def numbers(*, above: float | None = None) -> Parser:
    """A finite number or a non-empty list of them (one per feature or channel)."""
    scalar = number(above=above)

    def parse(value: object) -> float | list[float]:
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("must be a number or a non-empty list of numbers")
            return [typing.cast(float, scalar(v)) for v in value]
        return typing.cast(float, scalar(value))

    return parse


def integer(*, minimum: int | None = None) -> Parser:
    """An integer (booleans refused), at least ``minimum``."""

    def parse(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("must be an integer")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return parse


def boolean(value: object) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def choice(*options: str) -> Parser:
    """One of ``options``."""

    def parse(value: object) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value  # narrowed to str by the `in` test against str options

    return parse


def dtype_name(value: object) -> str:
    """A numpy element type name from ``DTYPES``."""
    return typing.cast(str, choice(*DTYPES)(value))


def size(value: object) -> int | list[int]:
    """A size: one positive integer, or ``[height, width]``."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise ValueError("must be a positive integer or [height, width] of positive integers")
        return [int(v) for v in value]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError("must be a positive integer or [height, width] of positive integers")
    return value


def labels(value: object) -> list[str]:
    """A non-empty list of strings (class names)."""
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a non-empty list of strings")
    return list(value)


def vocabulary(value: object) -> list[str] | list[float]:
    """A non-empty list of distinct categories, all strings or all numbers."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("must be a non-empty list of categories")
    if not (all(isinstance(v, str) for v in value) or all(_is_number(v) for v in value)):
        raise ValueError("must hold only strings or only numbers")
    if len(set(value)) != len(value):
        repeated = next(v for v in value if list(value).count(v) > 1)
        raise ValueError(f"must not repeat a category ({repeated!r} appears twice)")
    return list(value)


def optional(parse: Parser) -> Parser:
    """``parse``, or None (null in YAML)."""

    def parse_optional(value: object) -> object:
        return None if value is None else parse(value)

    return parse_optional
