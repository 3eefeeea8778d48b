"""Reading an ``.mpe`` container from a file or from memory, and the buffers it decrypts into.

Chunks are read by offset (``os.preadv`` where the platform has it), so several threads can
read and decrypt different chunks of one file at once; a source in memory hands out views of
its bytes without copying them.

The plaintext of a version 2 file goes to anonymous memory (``AnonymousBuffer``). Getting
fresh pages from the kernel is the largest cost of loading an encrypted model on a small VM,
larger than AES-GCM itself (measured on this project's 2-core VM for 1 GB: page faults while
decrypting 1.1 s/GB; ``MAP_POPULATE``, all pages in one pass before decrypting, 0.47 s/GB;
pages mapped by a helper thread one step ahead of the decryption, 0.33 s/GB; reading and
decrypting alone about 0.2 s/GB). ``MADV_POPULATE_WRITE`` was measured too, slower than
``MAP_POPULATE`` (0.54 s/GB in the helper thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import mmap
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from modelpress.errors import ProtectionError

__all__ = ["AnonymousBuffer", "Source", "open_source", "output_buffer"]


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
    def __init__(self, file: io.RawIOBase, size: int, where: str) -> None:
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
def open_source(source: str | os.PathLike[str] | bytes) -> Iterator[Source]:
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


class AnonymousBuffer:
    """Page-aligned anonymous memory whose pages are mapped ahead of the code that fills it.

    Large buffers are reserved at once and then mapped by a helper thread, ``step`` bytes at a
    time, each step with ``mmap(MAP_FIXED | MAP_POPULATE)`` over its own part of the
    reservation (the kernel allocates the pages in one pass, and ``ctypes`` releases the GIL
    meanwhile). The writer calls ``wait_ready(end)`` before writing below ``end``, so it writes
    to pages already mapped while the helper maps the next ones on the other core. Small
    buffers, and platforms where this is not known to be safe, get one ``MAP_POPULATE``
    mapping (Linux) or a plain one (elsewhere, pages faulted in as they are written).

    The helper only ever replaces pages of this buffer's own reservation, while the buffer is
    alive: ``finish`` (or leaving the ``with`` block) stops and joins it, and the caller must
    do so before it lets go of ``memory``. No file backs the memory.

    Attributes:
        memory: The buffer (an anonymous ``mmap``): keep it alive as long as views of it are.
    """

    def __init__(self, size: int, step: int = 0) -> None:
        """Reserve ``size`` bytes; ``step`` (default 32 MiB) is what the helper maps at a time."""
        self._size, self._step = size, step or _POPULATE_STEP
        ahead = _mmap is not None and size >= 2 * self._step  # else a helper would not pay off
        self.memory = _reserve(size, populate=not ahead)
        self._ready = 0 if ahead else size
        self._failed = False
        self._stop = False
        self._changed = threading.Condition()
        self._helper: threading.Thread | None = None
        if ahead:
            self._helper = threading.Thread(target=self._populate, name="modelpress-populate", daemon=True)
            self._helper.start()

    def wait_ready(self, end: int) -> None:
        """Wait until bytes ``[0, end)`` are mapped (returns at once if they are).

        Raises:
            MemoryError: the kernel could not map part of the buffer (nothing was written there).
        """
        if self._ready < end:
            with self._changed:
                self._changed.wait_for(lambda: self._ready >= end or self._failed)
        if self._failed and self._ready < end:
            raise MemoryError(f"cannot map {self._size} bytes of memory for the decrypted model")

    def finish(self) -> None:
        """Stop the helper thread and wait for it; the memory stays as it is."""
        if self._helper is not None:
            self._stop = True
            self._helper.join()
            self._helper = None

    def __enter__(self) -> AnonymousBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def _populate(self) -> None:
        start = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
        assert _mmap is not None  # only started where libc's mmap was found
        populated = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_POPULATE | _MAP_FIXED
        protection = mmap.PROT_READ | mmap.PROT_WRITE
        try:
            for offset in range(0, self._size, self._step):
                if self._stop:
                    return
                length = min(self._step, self._size - offset)
                if _mmap(start + offset, length, protection, populated, -1, 0) != start + offset:
                    # A failed MAP_FIXED may leave the range unmapped on older kernels: map it
                    # again, unpopulated; if even that fails, the writer must not touch it.
                    plain = populated & ~_MAP_POPULATE
                    if _mmap(start + offset, length, protection, plain, -1, 0) != start + offset:
                        # The range may now hold a gap that the next mapping of the process can
                        # take: unmapping the whole buffer later would unmap that too, so it
                        # never is (a leak, in a process that is out of memory anyway).
                        _NEVER_UNMAPPED.append(self.memory)
                        self._failed = True
                        return
                with self._changed:
                    self._ready = offset + length
                    self._changed.notify_all()
        finally:
            with self._changed:
                if not self._failed:
                    self._ready = self._size  # the rest (if stopped or after a remap) faults in on write
                self._changed.notify_all()


def _reserve(size: int, *, populate: bool) -> mmap.mmap:
    if populate and _MAP_POPULATE:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_POPULATE)
    return mmap.mmap(-1, size)


# Step of the helper thread: large enough that a step's system call costs nothing, small enough
# that the writer rarely waits (32 MiB measured as good as 8 or 64).
_POPULATE_STEP = 32 * 2**20
# Linux only (elsewhere no populating at all).
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# Buffers whose pages could not be mapped again after a failed MAP_FIXED (see _populate).
_NEVER_UNMAPPED: list[mmap.mmap] = []


def _libc_mmap() -> Callable[..., int | None] | None:
    """The C library's ``mmap`` where ``MAP_FIXED`` is known (Linux on x86-64 or arm64), else None."""
    if not (
        sys.platform.startswith("linux") and _MAP_POPULATE and platform.machine() in ("x86_64", "aarch64")
    ):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).mmap
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_void_p
    function.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    return function


# MAP_FIXED on the architectures _libc_mmap accepts (linux/mman.h); the mmap module lacks it.
_MAP_FIXED = 0x10
_mmap = _libc_mmap()
