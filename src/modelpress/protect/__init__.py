"""Static protection of models: encryption at rest and in transit (``.mpe`` files).

``encrypt_model`` writes a model as an AES-256-GCM ``.mpe`` container; ``decrypt_model_bytes``
and ``load_encrypted`` turn it back into a model in memory only. Keys come as bytes or through
a ``KeySource`` (key file, environment variable, or a callable such as a KMS lookup). See
``modelpress.protect.encrypt`` for the container format and ``modelpress.protect.keys`` for key
handling. Nothing under ``passes/`` imports this package.
"""

from __future__ import annotations

from modelpress.protect.encrypt import (
    DEFAULT_CHUNK_BYTES,
    FORMAT_VERSION,
    MpeHeader,
    decrypt_model_bytes,
    encrypt_model,
    is_encrypted,
    load_encrypted,
    read_header,
)
from modelpress.protect.keys import KeySource, generate_key, key_file_warning, key_id, write_key_file

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "FORMAT_VERSION",
    "KeySource",
    "MpeHeader",
    "decrypt_model_bytes",
    "encrypt_model",
    "generate_key",
    "is_encrypted",
    "key_file_warning",
    "key_id",
    "load_encrypted",
    "read_header",
    "write_key_file",
]
