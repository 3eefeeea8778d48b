"""Open a deployment package, verifying every file against its manifest, and run it.

``load_package`` refuses a package whose manifest is missing, malformed, of an unknown version
or edited; a listed file that is missing, a symlink, or whose size or sha256 differs; and any
file the manifest does not list (a package holds exactly its model, its pipeline and its
manifest). Every refusal is a ``PackageError`` naming the file and what differs.

``Package.run`` chains pre-processing, the model and post-processing. The model bytes are read
and hashed once more right before the session is created from those same bytes, so a file
swapped after ``load_package`` is refused rather than run.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import os
import stat
import typing
from pathlib import Path

import numpy as np

from modelpress.errors import PackageError, UsageError
from modelpress.package.manifest import LIBRARY_NAME, MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, sha256_file
from modelpress.pipeline import Pipeline
from modelpress.protect.encrypt import MAGIC
from modelpress.protect.keys import Key
from modelpress.runtime.run import bind_inputs, open_model_session
from modelpress.runtime.session import OptLevel, run_session

# An onnxruntime.InferenceSession: only runtime/ imports onnxruntime (STYLE.md §2).
Session = typing.Any

__all__ = ["Package", "load_package"]


@dataclasses.dataclass(frozen=True)
class Package:
    """A verified package folder.

    Attributes:
        root: The package folder.
        manifest: Its parsed manifest.
        pipeline: Its pre/post-processing, or None when it has no ``pipeline.yaml``.
    """

    root: Path
    manifest: Manifest
    pipeline: Pipeline | None

    @property
    def model_path(self) -> Path:
        """The model file (``model.onnx``, ``model.mpe`` or ``model.mpz``)."""
        return self.root / self.manifest.model

    @property
    def is_encrypted(self) -> bool:
        """Whether the model is an encrypted ``.mpe`` file (it then needs its key to run)."""
        return self.manifest.model.endswith(".mpe")

    def read_model(self) -> bytes:
        """The model file's bytes, checked once more against the manifest.

        Raises:
            PackageError: the file is gone or its content differs from the manifest.
        """
        return self._read_verified(self.manifest.model)

    def _read_verified(self, name: str) -> bytes:
        path = self.root / name
        try:
            data = _read_regular(path)
        except OSError as e:
            raise PackageError(f"{path}: cannot read the file: {e}") from e
        expected = self.manifest.files[name]
        if len(data) != expected.size or hashlib.sha256(data).hexdigest() != expected.sha256:
            raise PackageError(f"{path}: the file changed since the package was loaded")
        return data

    def open_session(
        self,
        key: Key | None = None,
        *,
        level: OptLevel = "all",
        threads: int | None = None,
        **options: typing.Any,
    ) -> Session:
        """An onnxruntime session on the verified model bytes (decrypted in memory if ``.mpe``).

        ``options`` go to ``open_model_session`` (``inter_op_threads``, ``providers``, ``mode``).

        Raises:
            PackageError: see ``read_model``. ProtectionError: no key or a wrong key for a
                ``.mpe`` model. ModelLoadError: onnxruntime refuses the model.
        """
        if LIBRARY_NAME in self.manifest.files and "library" not in options:
            options["library"] = self._read_verified(LIBRARY_NAME)
        return open_model_session(
            self.read_model(), key, level=level, threads=threads, where=str(self.model_path), **options
        )

    def run(
        self,
        inputs: collections.abc.Sequence[object] | collections.abc.Mapping[str, object] = (),
        key: Key | None = None,
        *,
        named: collections.abc.Mapping[str, object] | None = None,
        level: OptLevel = "all",
        threads: int | None = None,
        session: Session | None = None,
    ) -> dict[str, np.ndarray]:
        """Pre-process raw inputs, run the model, post-process its outputs.

        Args:
            inputs: Raw inputs in the model's input order, or by model input name. A raw input
                is what the first step of its pipeline takes (e.g. a list of encoded image
                bytes for ``decode_image``), or an array when it has no steps.
            key: The key of an encrypted model.
            named: Raw inputs by name; positional ``inputs`` fill the remaining inputs in order.
            level: onnxruntime graph optimization level.
            threads: intra-op threads (None lets onnxruntime choose).
            session: A session from ``open_session`` to reuse (then ``key``, ``level`` and
                ``threads`` are not used).

        Returns:
            The post-processed results by name (a terminal step's arrays as ``OUTPUT.key``).

        Raises:
            UsageError: inputs that do not bind to the model's inputs, or data a step cannot
                process. Others: see ``open_session``.
        """
        session = session or self.open_session(key, level=level, threads=threads)
        if isinstance(inputs, collections.abc.Mapping):
            named, inputs = {**inputs, **(named or {})}, ()
        names = [value.name for value in session.get_inputs()]
        raw = bind_inputs(names, list(inputs), dict(named or {}))
        pipeline = self.pipeline or Pipeline()
        outputs = run_session(session, pipeline.preprocess(raw))
        return pipeline.postprocess({name: np.asarray(value) for name, value in outputs.items()})


def load_package(path: str | os.PathLike[str]) -> Package:
    """Open the package folder ``path`` and verify every file against its manifest.

    Raises:
        PackageError: ``path`` is not a package folder; the manifest is missing, malformed,
            edited or of an unknown version; a listed file is missing, not a regular file, or
            differs in size or sha256; an unlisted file is present; the pipeline is invalid.
    """
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root}: not a package folder (it must hold {MANIFEST_NAME})")
    manifest = _read_manifest(root)
    present = {entry.name for entry in os.scandir(root)}
    missing = sorted(set(manifest.files) - present)
    if missing:
        raise PackageError(f"{root}: '{missing[0]}' is listed in the manifest but missing from the package")
    extra = sorted(present - set(manifest.files) - {MANIFEST_NAME})
    if extra:
        raise PackageError(
            f"{root}: unexpected file(s) {', '.join(extra)}; a package holds only the files its manifest "
            "lists: remove them or rebuild the package"
        )
    for name, expected in sorted(manifest.files.items()):
        file = root / name
        if not stat.S_ISREG(file.lstat().st_mode):
            raise PackageError(f"{file}: must be a regular file (symbolic links and folders are refused)")
        found = sha256_file(file)
        if found.size != expected.size:
            raise PackageError(
                f"{file}: {found.size} bytes, the manifest says {expected.size}: truncated or altered"
            )
        if found.sha256 != expected.sha256:
            raise PackageError(
                f"{file}: sha256 {found.sha256[:16]}..., the manifest says {expected.sha256[:16]}...: "
                "the file was altered or corrupted"
            )
    _check_model_kind(root / manifest.model)
    return Package(root, manifest, _read_pipeline(root, manifest))


def _read_manifest(root: Path) -> Manifest:
    file = root / MANIFEST_NAME
    try:
        if not stat.S_ISREG(file.lstat().st_mode):
            raise PackageError(f"{file}: must be a regular file")
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise PackageError(f"{file}: over the {MAX_MANIFEST_BYTES} byte cap of a manifest")
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackageError(
            f"{root}: no {MANIFEST_NAME}; not a package (build one with `modelpress package`)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PackageError(f"{file}: cannot read the manifest: {e}") from e
    return Manifest.from_json(text, where=str(file))


def _check_model_kind(file: Path) -> None:
    with file.open("rb") as stream:
        encrypted = stream.read(len(MAGIC)) == MAGIC
    if encrypted != file.name.endswith(".mpe"):
        kind = "an encrypted .mpe container" if encrypted else "not an encrypted .mpe container"
        raise PackageError(f"{file}: the file is {kind}, which its name contradicts")


def _read_pipeline(root: Path, manifest: Manifest) -> Pipeline | None:
    if manifest.pipeline is None:
        return None
    try:
        return Pipeline.from_yaml(root / manifest.pipeline)
    except UsageError as e:
        raise PackageError(f"invalid pipeline in the package: {e}") from e


def _read_regular(path: Path) -> bytes:
    # O_NOFOLLOW: a model swapped for a symlink after loading is refused, not followed.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as file:
        return file.read()
