"""File hashes as A1111 shows them: the sha256 of a model or LoRA file, read in blocks."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The file's sha256 in hex (A1111 shows its first 10 for models, 12 for LoRAs)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
