"""scikit-learn estimator -> ONNX with skl2onnx, and the estimator's reference outputs.

The estimator (or pipeline) must be fitted. Its input is one float32 tensor
``[batch, n_features]``, named by the example input (``input`` by default), with a dynamic
batch. Classifiers are converted without skl2onnx's ZipMap, so their outputs are two plain
tensors: ``label`` [N] and ``probabilities`` [N, classes] (class scores when the estimator has
no ``predict_proba``). Regressors give ``variable`` [N, targets]; transformers give
``variable``; clusterers give ``label`` and ``scores``. Target opset 17 for the default domain.

The reference run feeds the same float32 values, widened to float64 (scikit-learn computes in
float64; some estimators refuse float32 input they were not fitted on).

skl2onnx and scikit-learn are an optional extra (``modelpress[sklearn]``), imported lazily.
"""

from __future__ import annotations

import typing

import numpy as np

from modelpress.convert.source import InputSpec
from modelpress.errors import ConversionError, UsageError

__all__ = ["DEFAULT_ROWS", "OPSET", "export_sklearn", "input_spec_for", "is_classifier", "run_sklearn"]

OPSET = 17
# Rows of the example batch when the user gives no example input.
DEFAULT_ROWS = 16
# Methods whose result the converted model's second output holds, in order of preference.
_SECOND_OUTPUT = ("predict_proba", "decision_function", "transform")


def _check_fitted(estimator: typing.Any, where: str) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError as e:
        raise UsageError(
            f"{where}: the {type(estimator).__name__} is not fitted; fit it before converting"
        ) from e


def is_classifier(estimator: typing.Any) -> bool:
    """Whether the estimator (or a pipeline's last step) is a classifier."""
    from sklearn.base import is_classifier as sk_is_classifier

    return bool(sk_is_classifier(estimator))


def input_spec_for(estimator: typing.Any, spec: InputSpec | None, where: str) -> InputSpec:
    """The example input: ``spec`` checked against the estimator, or ``input`` [16, n_features].

    Raises:
        UsageError: ``spec`` is not 2-D float32, its feature count differs from the estimator's,
            or no spec was given and the estimator does not record ``n_features_in_``.
    """
    _check_fitted(estimator, where)
    n_features = getattr(estimator, "n_features_in_", None)
    if spec is None:
        if n_features is None:
            raise UsageError(
                f"{where}: the {type(estimator).__name__} does not record its feature count; "
                "give --example-input input=1xFEATURES"
            )
        return InputSpec("input", (DEFAULT_ROWS, int(n_features)))
    if len(spec.shape) != 2 or spec.dtype != "float32":
        raise UsageError(
            f"{where}: a scikit-learn model takes one float32 matrix [rows, features]; got example "
            f"input {spec} (write it as {spec.name}=1xFEATURES)"
        )
    if n_features is not None and spec.shape[1] != n_features:
        raise UsageError(
            f"{where}: example input {spec} has {spec.shape[1]} features, the estimator was fitted on "
            f"{n_features}"
        )
    return spec


def export_sklearn(estimator: typing.Any, spec: InputSpec, where: str) -> bytes:
    """Convert a fitted estimator to serialized ONNX bytes (dynamic batch, opset 17).

    Raises:
        UsageError: skl2onnx is not installed.
        ConversionError: skl2onnx has no converter for a step of the estimator; the message
            names its type and how to register one.
    """
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
    except ImportError as e:
        raise UsageError(
            "converting a scikit-learn model needs skl2onnx; pip install 'modelpress[sklearn]'"
        ) from e
    initial_types = [(spec.name, FloatTensorType([None, spec.shape[1]]))]
    try:
        try:
            # Plain tensors instead of a sequence of maps: onnxruntime users want arrays.
            proto = convert_sklearn(
                estimator, initial_types=initial_types, target_opset=OPSET, options={"zipmap": False}
            )
        except NameError as e:  # skl2onnx rejects options an estimator does not declare
            if "zipmap" not in str(e):
                raise
            proto = convert_sklearn(estimator, initial_types=initial_types, target_opset=OPSET)
    except (MissingConverter, MissingShapeCalculator) as e:
        raise ConversionError(
            f"{where}: skl2onnx has no converter for {_unconverted(e, estimator)}. Hint: register one with "
            "skl2onnx.update_registered_converter, or replace that step with a supported estimator"
        ) from e
    except Exception as e:  # converter bugs and unsupported options have no common base
        text = str(e).strip().splitlines()
        raise ConversionError(
            f"{where}: skl2onnx failed on the {type(estimator).__name__}: {type(e).__name__}: "
            f"{text[0] if text else ''}; check that every step of the pipeline is supported by skl2onnx"
        ) from e
    return bytes(proto.SerializeToString())


def _unconverted(error: Exception, estimator: typing.Any) -> str:
    # skl2onnx's message reads "... for type '<class 'pkg.Name'>'"; keep the class path.
    text = str(error)
    start = text.find("<class '")
    if start >= 0:
        end = text.find("'>", start)
        return f"'{text[start + 8 : end]}'"
    return f"'{type(estimator).__module__}.{type(estimator).__qualname__}'"


def run_sklearn(estimator: typing.Any, rows: np.ndarray, n_outputs: int) -> list[np.ndarray | None]:
    """The estimator's results in the converted model's output order.

    Output 0 is ``predict`` (``transform`` for a transformer); output 1, when the model has
    one, is ``predict_proba``, else ``decision_function``, else ``transform``. Outputs with
    no matching method are None (not compared).

    Raises:
        UsageError: the estimator failed on the example rows.
    """
    x64 = np.asarray(rows, dtype=np.float64)
    try:
        if not hasattr(estimator, "predict"):
            results: list[np.ndarray | None] = [np.asarray(estimator.transform(x64))]
        else:
            results = [np.asarray(estimator.predict(x64))]
            if n_outputs > 1:
                method = next((m for m in _SECOND_OUTPUT if hasattr(estimator, m)), None)
                results.append(np.asarray(getattr(estimator, method)(x64)) if method else None)
    except Exception as e:  # user estimators fail in any way
        raise UsageError(
            f"the {type(estimator).__name__} failed on the example rows: {type(e).__name__}: {e}"
        ) from e
    return results + [None] * (n_outputs - len(results))
