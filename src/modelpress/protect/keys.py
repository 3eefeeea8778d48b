"""Encryption keys for ``.mpe`` files: generation, sources, key files and key ids.

A key is 32 random bytes (AES-256). It reaches modelpress as ``bytes`` or through a
``KeySource``, which reads it only when needed:

* a key file (``KeySource.from_file``): 32 raw bytes, or text holding the key as 64 hex digits
  or as standard base64 (44 characters) with optional surrounding whitespace. ``modelpress
  keygen`` writes hex plus a newline, with permissions 0600. A key file that group or others
  may read is still accepted (deployments often mount secrets 0644), but a warning is logged
  and ``key_file_warning`` lets the CLI say so;
* an environment variable (``KeySource.from_env``): hex or base64 text;
* a Python callable (``KeySource.from_callable``) that returns the key (raw bytes, or hex or
  base64 text), e.g. a call to a key management service.

A key is never printed, logged or put in an error message: messages name the *source* (file
path, variable name) and, where useful, the key id. The key id is 8 bytes derived from the key
with HKDF-SHA256 under its own label, shown as 16 hex digits; it identifies which key a file
needs without revealing anything usable about the key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelpress.errors import ProtectionError, UsageError

__all__ = [
    "KEY_BYTES",
    "Key",
    "KeySource",
    "generate_key",
    "key_file_warning",
    "key_id",
    "resolve_key",
    "write_key_file",
]

logger = logging.getLogger(__name__)

# AES-256 key length.
KEY_BYTES = 32
# HKDF label of the key id: a different label than the file keys, so the id says nothing about them.
_KEY_ID_INFO = b"modelpress .mpe key id v1"
_KEY_ID_BYTES = 8
# Longer than any text form of a key plus generous whitespace: anything bigger is not a key file.
_MAX_KEY_FILE_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class KeySource:
    """Where a key comes from; the key itself is read by ``load`` and never kept.

    Attributes:
        description: What to call the source in messages (``key file 'k.key'``); never the key.
    """

    description: str
    _read: Callable[[], bytes | str] = dataclasses.field(repr=False, compare=False)
    _path: Path | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeySource:
        """A key file: 32 raw bytes, or 64 hex digits / base64 text (what ``keygen`` writes)."""
        file = Path(path)
        return cls(f"key file '{file}'", lambda: _read_key_file(file), file)

    @classmethod
    def from_env(cls, variable: str) -> KeySource:
        """An environment variable holding the key as hex or base64 text."""

        def read() -> str:
            value = os.environ.get(variable)
            if value is None:
                raise ProtectionError(
                    f"environment variable '{variable}' is not set; export it with the key as "
                    "64 hex digits (e.g. the content of a `modelpress keygen` key file)"
                )
            return value

        return cls(f"environment variable '{variable}'", read)

    @classmethod
    def from_callable(cls, provider: Callable[[], bytes | str], name: str | None = None) -> KeySource:
        """A function returning the key (raw bytes, or hex/base64 text), e.g. a KMS lookup.

        Args:
            provider: Called once per ``load``; its exceptions become ``ProtectionError``.
            name: What to call it in messages; defaults to the function's name.
        """
        label = name or getattr(provider, "__qualname__", None) or repr(provider)
        return cls(f"key provider '{label}'", provider)

    def load(self) -> bytes:
        """Read and validate the key.

        Returns:
            The 32 key bytes.

        Raises:
            ProtectionError: the source is missing or unreadable, or does not hold a 256-bit key.
        """
        try:
            value = self._read()
        except ProtectionError:
            raise
        except Exception as e:  # a user's provider may raise anything; keep its traceback chained
            raise ProtectionError(f"{self.description} failed: {type(e).__name__}: {e}") from e
        if self._path is not None:
            warning = key_file_warning(self._path)
            if warning is not None:
                logger.warning("%s", warning)
        return _parse_key(value, self.description)


# What every API of modelpress.protect accepts as a key.
Key = bytes | KeySource


def generate_key() -> bytes:
    """A new random 256-bit key from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def resolve_key(key: Key) -> bytes:
    """The key bytes of ``key`` (loading a ``KeySource``), checked to be 32 bytes.

    Raises:
        ProtectionError: the key cannot be read or is not 32 bytes.
    """
    if isinstance(key, KeySource):
        return key.load()
    if isinstance(key, bytes | bytearray | memoryview):
        return _parse_key(bytes(key), "the key")
    raise ProtectionError(
        f"the key must be bytes or a KeySource, got {type(key).__name__}; "
        "use KeySource.from_file/from_env/from_callable"
    )


def key_id(key: Key) -> str:
    """The key's id as 16 hex digits (HKDF-SHA256 of the key under a label of its own).

    The id is stored in every ``.mpe`` header, so a wrong key is reported as such before any
    decryption is attempted. It cannot be turned back into the key.

    Raises:
        ProtectionError: the key cannot be read or is not 32 bytes.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_ID_BYTES, salt=None, info=_KEY_ID_INFO)
    return hkdf.derive(resolve_key(key)).hex()


def key_file_warning(path: str | os.PathLike[str]) -> str | None:
    """A warning when the key file may be read by group or others (POSIX), else None.

    Like ssh, modelpress expects key files to be private (mode 0600); unlike ssh it still
    accepts wider permissions, because secret mounts (e.g. Kubernetes) default to 0644.
    """
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if os.name != "posix" or not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (
        f"key file '{path}' is accessible to group/others (mode {stat.S_IMODE(mode):04o}); "
        f"restrict it with `chmod 600 {path}`"
    )


def write_key_file(path: str | os.PathLike[str], key: bytes, *, overwrite: bool = False) -> Path:
    """Write ``key`` as 64 hex digits and a newline to ``path``, mode 0600, atomically.

    The key is staged in a private temporary file in the destination folder and then linked
    (no overwrite) or renamed (``overwrite=True``) into place, so a reader never sees a
    partial key and an existing key is never clobbered by accident.

    Args:
        path: The key file to create; missing parent folders are created.
        key: The 32 key bytes.
        overwrite: Replace an existing file at ``path``.

    Returns:
        The path written.

    Raises:
        UsageError: ``path`` exists and ``overwrite`` is false.
        ProtectionError: the key is not 32 bytes, or the file cannot be written.
    """
    dest = Path(path)
    text = (_parse_key(key, "the key").hex() + "\n").encode("ascii")
    if not overwrite and dest.exists():
        raise UsageError(f"{dest}: a file is already there; refusing to overwrite a key (use --force)")
    staged = dest.parent / f".{dest.name}.{os.urandom(6).hex()}.tmp"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the mode given to open is reduced by the umask, never widened
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(staged, dest)
        else:
            os.link(staged, dest)  # fails if the destination appeared meanwhile: nothing clobbered
    except FileExistsError:
        raise UsageError(
            f"{dest}: a file is already there; refusing to overwrite a key (use --force)"
        ) from None
    except OSError as e:
        raise ProtectionError(f"{dest}: cannot write the key file: {e.strerror or e}") from None
    finally:
        staged.unlink(missing_ok=True)
    return dest


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ProtectionError(
            f"key file '{path}': no such file; create one with `modelpress keygen`"
        ) from None
    except OSError as e:
        raise ProtectionError(f"key file '{path}': cannot read it ({e.strerror or e})") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise ProtectionError(f"key file '{path}': over {_MAX_KEY_FILE_BYTES} bytes, so not a key file")
    return data


def _parse_key(value: bytes | str, where: str) -> bytes:
    """32 raw bytes as they are; otherwise text holding 64 hex digits or base64 of 32 bytes.

    Errors never include the value: it may be (most of) a key.
    """
    if isinstance(value, bytes | bytearray) and len(value) == KEY_BYTES:
        return bytes(value)
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise _bad_key(where) from None
    if not isinstance(value, str):
        raise ProtectionError(f"{where}: gave a {type(value).__name__}, expected bytes or str")
    text = value.strip()
    key = None
    if len(text) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        raise _bad_key(where)
    return key


def _bad_key(where: str) -> ProtectionError:
    return ProtectionError(
        f"{where}: not a 256-bit key; expected 32 raw bytes, 64 hex digits or base64 of 32 bytes "
        "(what `modelpress keygen` writes)"
    )
