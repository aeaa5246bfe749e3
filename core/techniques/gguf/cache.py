"""The checked file cache for GGUF files: written under a temporary name and renamed into place, with a sidecar
holding the file's size and sha256 (and what the quantizer reported); a file that does not match is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

SIDECAR = ".lab.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_file(target: Path, write: Callable[[Path], None], extra: Callable[[], dict] | None = None) -> Path:
    """write(tmp) into a sibling temp file, record size and hash (and `extra()`) beside it, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        facts = {**(extra() if extra else {}), "size_bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}
        sidecar_tmp = tmp.with_name(tmp.name + SIDECAR)
        sidecar_tmp.write_text(json.dumps(facts))
        os.replace(tmp, target)  # the file first: a crash between the two renames leaves no valid sidecar
        os.replace(sidecar_tmp, target.with_name(target.name + SIDECAR))
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + SIDECAR).unlink(missing_ok=True)
        raise
    return target


def is_intact(path: Path) -> bool:
    """The file exists and matches the size and sha256 recorded when it was written."""
    sidecar = path.with_name(path.name + SIDECAR)
    if not path.is_file() or not sidecar.is_file():
        return False
    try:
        facts = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return path.stat().st_size == facts.get("size_bytes") and _sha256(path) == facts.get("sha256")


def file_facts(path: Path) -> dict:
    """What was recorded beside a cached file when it was written (size, sha256, quantizer facts)."""
    try:
        return json.loads(path.with_name(path.name + SIDECAR).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + SIDECAR).unlink(missing_ok=True)
