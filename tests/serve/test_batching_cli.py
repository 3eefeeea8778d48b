"""``MicroBatcher`` grouping and the ``modelpress serve`` command line (without starting a server)."""

from __future__ import annotations

import asyncio

import numpy as np
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.serve import MicroBatcher


def test_batcher_merges_same_trailing_shapes_and_runs_others_alone():
    runs: list[int] = []

    def run(feeds):
        return {"y": feeds["x"] * 2}

    async def main():
        batcher = MicroBatcher(run, max_batch=4, max_delay_ms=50, on_batch=runs.append)
        requests = [
            batcher.submit({"x": np.full((1, 3), 1.0)}, rows=1),
            batcher.submit({"x": np.full((2, 3), 2.0)}, rows=2),
            batcher.submit({"x": np.full((1, 5), 3.0)}, rows=1),  # other trailing shape
            batcher.submit({"x": np.full((1, 3), 4.0)}, rows=None),  # not batchable
            batcher.submit({"x": np.full((2, 3), 5.0)}, rows=2),  # over max_batch with the first two
        ]
        try:
            return await asyncio.gather(*requests)
        finally:
            await batcher.close()

    results = asyncio.run(main())
    for result, (shape, value) in zip(
        results, [((1, 3), 1), ((2, 3), 2), ((1, 5), 3), ((1, 3), 4), ((2, 3), 5)], strict=True
    ):
        np.testing.assert_array_equal(result["y"], np.full(shape, 2.0 * value))
    assert sorted(runs) == [1, 1, 2, 3]


def test_a_failing_batch_is_retried_per_request():
    def run(feeds):
        if np.any(feeds["x"] < 0):
            raise ValueError("negative")
        return {"y": feeds["x"] + 1}

    async def main():
        batcher = MicroBatcher(run, max_batch=8, max_delay_ms=50)
        good = batcher.submit({"x": np.ones((1, 2))}, rows=1)
        bad = batcher.submit({"x": -np.ones((1, 2))}, rows=1)
        try:
            return await asyncio.gather(good, bad, return_exceptions=True)
        finally:
            await batcher.close()

    good, bad = asyncio.run(main())
    np.testing.assert_array_equal(good["y"], np.full((1, 2), 2.0))
    assert isinstance(bad, ValueError)


def test_serve_cli_help_and_bad_token_file(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--token-file" in result.output and "--max-delay-ms" in result.output
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = runner.invoke(app, ["serve", str(tmp_path / "missing.onnx"), "--token-file", str(empty)])
    assert result.exit_code == 2
    assert "token file is empty" in result.output
