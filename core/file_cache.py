"""What a cache derived from a file is keyed by: the file's identity.

    identity = file_identity("genome.fa")     # {"path", "size", "mtime_ns", "head_tail_sha1"}
    version = identity_key(identity, config)  # changes when the file or the config does

A cache entry named by ``identity_key`` is rebuilt, never silently reused, when the file is
edited, grown or truncated (size), touched (mtime) or rewritten in place with the same size
and mtime (the hash of its first and last MiB). Used by the genome token cache
(``mamba_bio.token_cache``) and the audio clip cache (``mamba_audio.datasets``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

HASHED = 1 << 20          # bytes hashed at each end of the file


def file_identity(path) -> dict:
    """The resolved path, size, mtime (ns) and SHA-1 of the first and last ``HASHED`` bytes
    of ``path``."""
    path = Path(path).resolve()
    st = path.stat()
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        digest.update(f.read(HASHED))
        f.seek(max(st.st_size - HASHED, 0))
        digest.update(f.read(HASHED))
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "head_tail_sha1": digest.hexdigest()}


def identity_key(*parts) -> str:
    """A hex SHA-1 of JSON-able ``parts`` (identities, configs), stable across runs."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()
