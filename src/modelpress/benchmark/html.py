"""Write a ``BenchReport`` as one self-contained HTML file: tables and embedded PNG plots.

The plots are drawn with matplotlib's Agg backend (no display needed) and embedded as base64
``data:`` URIs, so the file can be mailed or archived alone; every text from the report
(model names and paths are user input) is HTML-escaped.
"""

from __future__ import annotations

import base64
import collections.abc
import html
import io
import os
from pathlib import Path
from typing import Any

from modelpress.benchmark.report import STAGES, BenchReport
from modelpress.errors import UsageError

__all__ = ["render_html", "write_html"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    ".note{color:#666;font-size:90%}"
)


def write_html(report: BenchReport, path: str | os.PathLike[str]) -> Path:
    """Write ``render_html(report)`` to ``path`` (folders created) and return the path.

    Raises:
        UsageError: the file cannot be written.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(render_html(report), encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{dest}: cannot write the report: {e}") from e
    return dest


def _quality_section(report: BenchReport) -> str:
    rated = [m for m in report.models if m.quality is not None]
    if not rated:
        return ""
    rows = []
    for m in rated:
        q = m.quality
        assert q is not None
        accuracy, agreement = _percent(q.accuracy), _percent(q.agreement_vs_first)
        rows.append([m.name, q.samples, accuracy, agreement, q.cosine_vs_first, q.max_abs_diff_vs_first])
    return "<h2>Output quality on the data</h2>" + _table(
        [
            "model",
            "rows",
            "top-1 accuracy",
            "top-1 agreement vs first",
            "mean cosine vs first",
            "max |Δ| vs first",
        ],
        rows,
    )


def render_html(
    report: BenchReport,
    *,
    title: str = "modelpress bench",
    preface: collections.abc.Sequence[tuple[str, list[str], list[list[Any]]]] = (),
) -> str:
    """The report as an HTML page: settings, models, timings, ratios to the first model, plots.

    Args:
        report: The benchmark report.
        title: The page title and heading.
        preface: Tables shown first, each ``(heading, column names, rows)``.
    """
    settings = report.settings
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>",
        *(f"<h2>{_e(heading)}</h2>" + _table(header, rows) for heading, header, rows in preface),
        f"<p class='note'>{_e(_settings_line(settings))}<br>{_e(_environment_line(report.environment))}</p>",
        "<h2>Models</h2>",
        _table(
            ["model", "kind", "path", "size (KiB)", "load (ms)", "peak RSS rise (MiB)", "pipeline"],
            [
                [m.name, m.kind, m.path, m.model_bytes / 1024, m.load_ms, m.peak_rss_mb, m.pipeline]
                for m in report.models
            ],
        ),
        f"<p class='note'>Peak RSS: {_e(report.rss_method)}.</p>",
        _quality_section(report),
        "<h2>Latency and throughput</h2>",
        _table(
            ["model", "batch", "threads", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)", "samples/s"]
            + [f"{stage} (ms)" for stage in STAGES]
            + ["max |Δ| vs first"],
            [
                [m.model, m.batch, m.threads, m.latency.p50_ms, m.latency.p90_ms, m.latency.p99_ms]
                + [m.latency.mean_ms, m.latency.throughput]
                + [m.stages_ms[stage] for stage in STAGES]
                + [m.max_abs_diff_vs_first]
                for m in report.measurements
            ],
        ),
        f"<h2>Ratios to {_e(report.models[0].name) if report.models else 'the first model'}</h2>",
        _table(
            ["model", "batch", "threads", "p50", "p99", "throughput", "size", "load"],
            [
                [
                    r[k]
                    for k in (
                        "model",
                        "batch",
                        "threads",
                        "p50",
                        "p99",
                        "throughput",
                        "model_bytes",
                        "load_ms",
                    )
                ]
                for r in report.ratios()
            ],
        ),
        "<h2>Plots</h2>",
        _img(_latency_plot(report), "latency percentiles per model, batch size and thread count"),
        _img(_throughput_plot(report), "throughput per model, batch size and thread count"),
        "</body></html>",
    ]
    return "\n".join(parts)


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:.2%}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _settings_line(settings: dict[str, Any]) -> str:
    return (
        f"batch sizes {settings.get('batches')}, threads {settings.get('threads')}, "
        f"{settings.get('runs')} timed runs after {settings.get('warmup')} warm-up runs, "
        f"onnxruntime level '{settings.get('level')}', spinning off, runs interleaved round-robin, "
        f"inputs: {settings.get('data') or 'random'}"
    )


def _environment_line(environment: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in environment.items())


def _configs(report: BenchReport) -> list[tuple[int, int]]:
    return sorted({(m.batch, m.threads) for m in report.measurements})


def _grouped_bars(report: BenchReport, value_of: Any, ylabel: str, title: str, whiskers: bool) -> bytes:
    # Imported here: matplotlib is slow to import and only the HTML report needs it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    configs = _configs(report)
    names = [m.name for m in report.models]
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(configs) * max(len(names), 1)), 4.0))
    for index, name in enumerate(names):
        xs, heights, middles, highs = [], [], [], []
        for position, (batch, threads) in enumerate(configs):
            item = report.find(name, batch, threads)
            if item is None:
                continue
            height, middle, high = value_of(item)
            xs.append(position + (index - (len(names) - 1) / 2) * width)
            heights.append(height)
            middles.append(middle)
            highs.append(high - height)
        errors = [[0.0] * len(xs), highs] if whiskers else None
        axes.bar(xs, heights, width, yerr=errors, capsize=3, label=name)
        if whiskers:
            axes.scatter(xs, middles, marker="_", s=150, color="black", zorder=3)
    axes.set_xticks(range(len(configs)), [f"batch {b}, {t} thr" for b, t in configs])
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _latency_plot(report: BenchReport) -> bytes:
    return _grouped_bars(
        report,
        lambda m: (m.latency.p50_ms, m.latency.p90_ms, m.latency.p99_ms),
        "latency (ms)",
        "latency: bar p50, dash p90, whisker top p99",
        whiskers=True,
    )


def _throughput_plot(report: BenchReport) -> bytes:
    return _grouped_bars(
        report,
        lambda m: (m.latency.throughput,) * 3,
        "samples / s",
        "throughput",
        whiskers=False,
    )
