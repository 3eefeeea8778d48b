import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder
from modelpress.passes.fuse_matmul_add import FuseMatMulAddPass
from tests.testing import (
    assert_refused,
    assert_rewrites,
)

F32 = ir.DataType.FLOAT
RNG = np.random.default_rng(0)


def rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _matmul_add(a_shape, c_shape, *, c_first=False, trans_a=False, trans_b=False, opset=17):
    """y = MatMul(a, W) + c, with a/W optionally given transposed through a Transpose."""
    b = GraphBuilder(opset=opset)
    a = b.input("a", F32, a_shape)
    if trans_a:
        a = b.op("Transpose", a, perm=[1, 0])
    w = b.const(rand(5, 3) if trans_b else rand(3, 5), "w")
    if trans_b:
        w = b.op("Transpose", w, perm=[1, 0])
    c = (
        b.const(rand(*c_shape), "c")
        if all(isinstance(d, int) for d in c_shape)
        else b.input("c", F32, c_shape)
    )
    m = b.op("MatMul", a, w)
    return b.build([b.op("Add", c, m) if c_first else b.op("Add", m, c)])


def _assert_fused(model, dim_values=None):
    return assert_rewrites(FuseMatMulAddPass(), model, {"Gemm": 1}, dim_values=dim_values)


@pytest.mark.parametrize("c_shape", [(5,), (1, 5), (2, 5), (2, 1), (1,), ()])
def test_matmul_add_becomes_gemm(c_shape):
    _assert_fused(_matmul_add([2, 3], c_shape))


def test_bias_first_is_fused():
    _assert_fused(_matmul_add([2, 3], (5,), c_first=True))


def test_symbolic_rows_with_a_row_broadcast_bias():
    _assert_fused(_matmul_add(["M", 3], (5,)), dim_values={"M": 4})


def test_bias_with_the_same_symbolic_rows():
    _assert_fused(_matmul_add(["M", 3], ["M", 5]), dim_values={"M": 4})


@pytest.mark.parametrize(("trans_a", "trans_b"), [(True, False), (False, True), (True, True)])
def test_transposes_become_gemm_attributes(trans_a, trans_b):
    after = _assert_fused(_matmul_add([3, 2] if trans_a else [2, 3], (5,), trans_a=trans_a, trans_b=trans_b))
    attributes = {name: attr.as_int() for name, attr in next(iter(after.graph)).attributes.items()}
    assert attributes == {name: 1 for name, on in (("transA", trans_a), ("transB", trans_b)) if on}


# --- refusals: one test each --------------------------------------------------------------


def _assert_refused(model):
    assert_refused(FuseMatMulAddPass(), model)


def test_batched_matmul_is_refused():
    _assert_refused(_matmul_add([4, 2, 3], (5,)))


def test_bias_of_rank_3_is_refused():
    _assert_refused(_matmul_add([2, 3], (1, 2, 5)))  # Add would output rank 3; Gemm rank 2


def test_bias_that_broadcasts_the_output_is_refused():
    # Regression: Add([1, 5], [3, 5]) is [3, 5]; Gemm's C may not grow the output.
    _assert_refused(_matmul_add([1, 3], (3, 5)))


def test_bias_with_an_unrelated_symbolic_dim_is_refused():
    _assert_refused(_matmul_add(["M", 3], ["K", 5]))


def test_bias_rows_against_symbolic_rows_are_refused():
    _assert_refused(_matmul_add(["M", 3], (2, 5)))  # M = 1 at run time would break Gemm


def test_bias_of_unknown_shape_is_refused():
    b = GraphBuilder()
    a = b.input("a", F32, [2, 3])
    c = b.op("Reshape", b.input("data", F32, [10]), b.input("target", ir.DataType.INT64, ["r"]))
    m = b.op("MatMul", a, b.const(rand(3, 5)))
    _assert_refused(b.build([b.op("Reshape", b.op("Add", m, c), b.const(np.array([-1], np.int64)))]))


def test_matmul_output_with_other_consumers_is_refused():
    b = GraphBuilder()
    a = b.input("a", F32, [2, 3])
    m = b.op("MatMul", a, b.const(rand(3, 5)))
    _assert_refused(b.build([b.op("Add", m, b.const(rand(5))), b.op("Relu", m)]))


def test_opset_6_is_refused():
    _assert_refused(_matmul_add([2, 3], (2, 5), opset=6))
