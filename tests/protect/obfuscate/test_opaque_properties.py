"""Property test: random CNN chains through the opaque-operator passes stay equivalent and restorable."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.protect.obfuscate import (
    AnonymizeOpTypesPass,
    CompressSubgraphsPass,
    ExpandGraphPass,
    ScrambleWeightsPass,
    restore_original,
)
from tests.protect.obfuscate.test_properties import OPS, _chain
from tests.testing import assert_equivalent, run_pass


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(st.sampled_from(sorted(OPS)), min_size=0, max_size=6),
    head=st.sampled_from(["gemm", "conv"]),
    seed=st.integers(0, 2**16),
)
def test_random_chains_through_the_opaque_passes(names, head, seed):
    model = _chain(names, head, seed)
    after = model
    for pass_ in (
        CompressSubgraphsPass(),
        ScrambleWeightsPass(seed),
        ExpandGraphPass(seed, decoys=1.0),
        AnonymizeOpTypesPass(seed),
    ):
        after, _ = run_pass(pass_, after)
    io.check_model(after, full=True)
    assert all(node.domain for node in after.graph)
    assert_equivalent(model, after, rtol=1e-5, seeds=(seed,))
    restored = restore_original(after.clone())
    assert op_histogram(restored) == op_histogram(model)
    assert_equivalent(model, restored, rtol=1e-5, seeds=(seed,))
