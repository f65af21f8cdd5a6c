"""A site's on-disk cache of tensors derived from its own rows (tokenisation, frozen-trunk outputs).

Entries are keyed by SHA-256 digests of *everything* they were computed from (the model's
frozen weights and configuration, the exact rows), so a changed model or changed data is a
different key and can never be served a stale entry: invalidation is by construction, not by
bookkeeping. Each file also stores its own key and is checked on read, so a renamed or
truncated file is a miss, not a wrong answer. Files are written atomically and read with
``torch.load(weights_only=True)`` (tensors only, no pickled code).

What lives here is derived from the site's rows: it belongs on the site's disk (the node
folder's ``cache_dir``) and is never sent anywhere; only DP-SGD updates leave a site.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from torch import Tensor

from fedmodel.io import atomic_write_bytes

SUFFIX = ".pt"
KEY_FIELD = "__key__"


def digest(*parts: str) -> str:
    """SHA-256 over ``parts`` (length-prefixed, so ("ab", "c") and ("a", "bc") differ)."""
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode()
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()


def tensors_digest(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and values."""
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().to("cpu").contiguous()
        h.update(f"{flat.dtype}:{tuple(flat.shape)}".encode())
        h.update(flat.view(-1).view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


class TensorCache:
    """Named tensors per key in one folder; the ``keep`` most recently used entries survive."""

    def __init__(self, folder: Path, keep: int = 8) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def load(self, key: str) -> dict[str, Tensor] | None:
        """The entry for ``key``, or ``None`` (absent, unreadable, or another key's content)."""
        path = self.path(key)
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):
            return None
        if not isinstance(entry, dict) or _stored_key(entry) != key:
            return None
        os.utime(path)  # most recently used: the last to be pruned
        return {k: v for k, v in entry.items() if k != KEY_FIELD}

    def save(self, key: str, tensors: dict[str, Tensor]) -> Path:
        """Store ``tensors`` under ``key`` atomically, then prune the oldest entries."""
        buffer = io.BytesIO()
        torch.save({**tensors, KEY_FIELD: _key_tensor(key)}, buffer)
        path = atomic_write_bytes(self.path(key), buffer.getvalue())
        self._prune()
        return path

    def _prune(self) -> None:
        entries = sorted(self.folder.glob(f"*{SUFFIX}"), key=_mtime, reverse=True)
        for old in entries[self.keep :]:
            old.unlink(missing_ok=True)


def _key_tensor(key: str) -> Tensor:
    return torch.tensor(list(key.encode()), dtype=torch.uint8)


def _stored_key(entry: dict) -> str | None:
    raw = entry.get(KEY_FIELD)
    if not isinstance(raw, Tensor) or raw.dtype != torch.uint8:
        return None
    return bytes(raw.tolist()).decode(errors="replace")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
