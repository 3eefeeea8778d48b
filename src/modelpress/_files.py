"""Small file helpers: the user's configuration files (recipes, pipelines), file signatures."""

from __future__ import annotations

import os
from pathlib import Path

from modelpress.errors import UsageError

__all__ = ["has_signature", "read_small_text"]


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
