"""Reading an ``.mpe`` container from a file or from memory, and the buffer it decrypts into.

Chunks are read by offset (``os.preadv`` where the platform has it), so several threads can
read and decrypt different chunks of one file at once; a source in memory hands out views of
its bytes without copying them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from modelpress.errors import ProtectionError

__all__ = ["Source", "open_source", "output_buffer"]


class Source:
    """Random access to the bytes of a container.

    Attributes:
        size: Total size in bytes.
        where: What to call the source in messages (its path, or ``<bytes>``).
    """

    def __init__(self, size: int, where: str) -> None:
        self.size = size
        self.where = where

    def read(self, offset: int, length: int, scratch: bytearray) -> memoryview:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end), possibly in ``scratch``."""
        raise NotImplementedError


class _MemorySource(Source):
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        super().__init__(len(data), "<bytes>")
        self._view = memoryview(data).cast("B")

    def read(self, offset: int, length: int, scratch: bytearray) -> memoryview:
        return self._view[offset : offset + length]


class _FileSource(Source):
    def __init__(self, file: BinaryIO, size: int, where: str) -> None:
        super().__init__(size, where)
        self._file = file
        self._lock = threading.Lock()  # only for platforms without positional reads

    def read(self, offset: int, length: int, scratch: bytearray) -> memoryview:
        view = memoryview(scratch)[:length]
        filled = 0
        while filled < length:
            count = self._read_at(offset + filled, view[filled:])
            if not count:
                break
            filled += count
        return view[:filled]

    def _read_at(self, offset: int, view: memoryview) -> int:
        if hasattr(os, "preadv"):
            return os.preadv(self._file.fileno(), [view], offset)
        with self._lock:  # e.g. Windows: no positional reads, so seek + read under a lock
            self._file.seek(offset)
            return self._file.readinto(view) or 0


@contextlib.contextmanager
def open_source(source: str | os.PathLike | bytes) -> Iterator[Source]:
    """Open a container given as a path or as bytes.

    Raises:
        ProtectionError: the path is missing, a folder, or unreadable.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        yield _MemorySource(source)
        return
    path = Path(source)
    try:
        file = path.open("rb", buffering=0)
        size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        raise ProtectionError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise ProtectionError(f"{path}: is a folder, not an .mpe file") from None
    except OSError as e:
        raise ProtectionError(f"{path}: cannot read the file ({e.strerror or e})") from None
    with file:
        yield _FileSource(file, size, str(path))


def output_buffer(size: int) -> tuple[bytes | bytearray, memoryview]:
    """A new ``bytes`` of ``size`` bytes and a writable view of it, to decrypt into in place.

    onnxruntime and protobuf want ``bytes``; decrypting into a ``bytearray`` and converting
    would copy the whole model once more (about 0.5 s/GB on a small VM). CPython's C API
    allows filling a bytes object created by ``PyBytes_FromStringAndSize(NULL, size)`` before
    it is shared, which is what this does; elsewhere it falls back to a ``bytearray`` (and the
    caller's ``bytes(...)`` makes the one extra copy).
    """
    if size and hasattr(ctypes, "pythonapi"):
        new_bytes = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_char_p, ctypes.c_ssize_t)(
            ("PyBytes_FromStringAndSize", ctypes.pythonapi)
        )
        as_string = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object)(
            ("PyBytes_AsString", ctypes.pythonapi)
        )
        data = new_bytes(None, size)
        view = memoryview((ctypes.c_char * size).from_address(as_string(data))).cast("B")
        return data, view
    buffer = bytearray(size)
    return buffer, memoryview(buffer)
