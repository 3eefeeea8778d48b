"""Report structure, ratios to the first model, the JSON schema and the HTML page."""

from __future__ import annotations

import base64
import html
import json
import re

import pytest

from modelpress.benchmark import SCHEMA, render_html, write_html
from tests.benchmark._fakes import NAMES, fake_report


def test_ratios_are_relative_to_the_first_model_at_the_same_configuration():
    rows = fake_report().ratios()
    assert len(rows) == 8
    for row in rows:
        if row["model"] == NAMES[0]:
            assert (row["p50"], row["p99"], row["throughput"], row["model_bytes"]) == (1.0, 1.0, 1.0, 1.0)
        else:
            assert row["p50"] == pytest.approx(0.5)
            assert row["p99"] == pytest.approx(0.5)
            assert row["throughput"] == pytest.approx(2.0)
            assert row["model_bytes"] == pytest.approx(0.5)
            assert row["load_ms"] == pytest.approx(0.5)


def test_json_follows_the_schema_and_survives_a_round_trip():
    data = json.loads(json.dumps(fake_report().to_json()))
    assert data["schema"] == SCHEMA
    assert set(data) == {
        "schema",
        "settings",
        "environment",
        "rss_method",
        "models",
        "measurements",
        "ratios",
    }
    assert set(data["models"][0]) == {
        "name",
        "path",
        "kind",
        "model_bytes",
        "load_ms",
        "peak_rss_mb",
        "pipeline",
        "quality",
    }
    first = data["measurements"][0]
    assert set(first) == {
        "model",
        "batch",
        "threads",
        "latency_ms",
        "throughput",
        "runs",
        "stages_ms",
        "max_abs_diff_vs_first",
    }
    assert set(first["latency_ms"]) == {"p50", "p90", "p99", "mean", "min", "max"}
    assert set(first["stages_ms"]) == {"preprocess", "inference", "postprocess"}
    # batch 1, 1 thread, base model: runs of 1, 2, 3, 4 ms.
    assert first["latency_ms"]["p50"] == pytest.approx(2.5)
    assert first["throughput"] == pytest.approx(400.0)
    assert set(data["ratios"][1]) == {
        "model",
        "batch",
        "threads",
        "p50",
        "p99",
        "throughput",
        "model_bytes",
        "load_ms",
    }


def test_html_is_self_contained_with_plots_and_every_model_name(tmp_path):
    report = fake_report()
    path = write_html(report, tmp_path / "out" / "report.html")
    page = path.read_text(encoding="utf-8")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    for name in NAMES:
        assert html.escape(name) in page
    assert "<model>" not in page  # user text is escaped
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert page.count("<table>") == 3
    assert render_html(report).count("data:image/png;base64,") == 2
