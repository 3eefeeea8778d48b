"""Small file helpers: the user's configuration files (recipes, pipelines), signatures, atomic writes."""

from __future__ import annotations

import collections.abc
import os
import tempfile
import typing
from pathlib import Path

from modelpress.errors import ModelSaveError, UsageError

__all__ = ["has_signature", "read_small_text", "write_atomically"]

_T = typing.TypeVar("_T")


def has_signature(path: str | os.PathLike[str], magic: bytes) -> bool:
    """Whether the file at ``path`` starts with ``magic`` (False when it cannot be read)."""
    try:
        with open(path, "rb") as file:
            return file.read(len(magic)) == magic
    except OSError:
        return False


def read_small_text(path: str | os.PathLike[str], limit: int, what: str) -> str:
    """The UTF-8 text of ``path``, refused when larger than ``limit`` bytes.

    Args:
        path: The file.
        limit: The most bytes such a file may sensibly hold (it holds settings, not data).
        what: What the file is, for messages (``recipe``, ``pipeline``).

    Raises:
        UsageError: the file is missing or unreadable, too large, or not UTF-8 text.
    """
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > limit:
            raise UsageError(f"{file}: {size} bytes is too large for a {what} (at most {limit} bytes)")
        return file.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{file}: cannot read the {what}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"{file}: the {what} is not UTF-8 text") from e


def write_atomically(dest: Path, write: collections.abc.Callable[[typing.BinaryIO], _T], what: str) -> _T:
    """Write ``dest`` through ``write(file)`` into a temporary file beside it, synced, then renamed.

    A reader sees the old file or the complete new one, never a partial one; on any failure
    nothing is left at ``dest`` (a previous file there stays as it was).

    Args:
        dest: The file to write.
        write: Writes the content into the open binary file; its result is returned.
        what: What the file is, for the message (``the compressed model``).

    Raises:
        ModelSaveError: the folder or file could not be written.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp") as tmp:
            staged = Path(tmp) / dest.name
            with staged.open("wb") as file:
                result = write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(staged, dest)
    except OSError as e:
        raise ModelSaveError(
            f"{dest}: cannot write {what}: {e}; check that the folder is writable and has space"
        ) from e
    return result
