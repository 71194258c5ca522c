"""Stage manifests: what a finished stage was made from, so a rerun can tell whether it is still up to date.

`RUN/<stage>/manifest.json` holds the stage's key (a hash of its resolved config, the contents of its input files,
the fingerprints of the models it used and the hashes of its upstream stages' manifests), its outputs and its result
(counts, tokens, cost, seconds). It is written last, atomically: a stage without one did not finish.
`RUN/<stage>/.pending.json` holds the key of a stage that started: a rerun with the same key continues it in place
(the stage resumes from its own files), one with another key starts it afresh.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PENDING = ".pending.json"


def read_json(path: Path) -> Any:
    """JSON from a file, or None when it is missing or unreadable (a torn file counts as missing)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (of every file below it, by relative path, for a folder)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def key_hash(parts: dict[str, Any]) -> str:
    """sha256 of a key's parts as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def manifest_hash(stage_dir: Path) -> str | None:
    """Hash of a finished stage's manifest (what downstream keys depend on), None if it has not finished."""
    path = stage_dir / MANIFEST
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def up_to_date(stage_dir: Path, key: str) -> dict[str, Any] | None:
    """The manifest if the stage finished with this key and its outputs are all still there, else None."""
    manifest = read_json(stage_dir / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    outputs = manifest.get("result", {}).get("outputs", {})
    if not all(Path(p).exists() for p in outputs.values()):
        return None
    return manifest
