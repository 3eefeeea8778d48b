"""Deployment packages: a folder with the model, its ``pipeline.yaml`` and a ``manifest.json``.

``build_package(model, out_dir, pipeline=..., steps=..., metrics=...)`` writes one atomically;
``load_package(out_dir)`` verifies the sha256 and size of every file (``PackageError`` when a
file is missing, added, altered, or the manifest is malformed) and returns a ``Package`` whose
``run`` chains pre-processing, the model (plain or encrypted ``.mpe``) and post-processing.
"""

from __future__ import annotations

from modelpress.package.build import build_package
from modelpress.package.load import Package, load_package
from modelpress.package.manifest import FORMAT_VERSION, FileEntry, Manifest

__all__ = ["FORMAT_VERSION", "FileEntry", "Manifest", "Package", "build_package", "load_package"]
