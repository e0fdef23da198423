"""Facts about a GGUF model file, read from the file itself: architecture, quantization, context
length, name, and its sha256 — so a provider cannot claim a model it does not have, and a consumer
can ask for an exact file. The signed manifest built from them is mesh.protocol.Manifest.

Reading a GGUF's metadata parses its whole tokenizer (seconds) and hashing a large file takes
longer still, so results are cached per (path, size, mtime) in memory and in a per-user file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from meshmarket.mesh.errors import ModelFileError
from meshmarket.mesh.files import write_atomic
from meshmarket.mesh.protocol import Manifest
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- model file


@dataclass(frozen=True)
class ModelInfo:
    """Facts read from a GGUF file."""

    path: str
    name: str
    architecture: str
    quantization: str
    context_length: int
    sha256: str  # 0x-prefixed lowercase hex
    size: int


_cache_lock = threading.Lock()
# Keyed by (absolute path, size, mtime_ns): hashing 100 MB-10 GB files is too slow to
# repeat per manifest, and a replaced file changes size or mtime.
_sha256_cache: dict[tuple[str, int, int], str] = {}
_info_cache: dict[tuple[str, int, int], ModelInfo] = {}


def _file_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the file as 0x-hex, streamed in 1 MiB chunks and cached per (path, size, mtime)."""
    key = _file_key(path)
    with _cache_lock:
        cached = _sha256_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(key[0], "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    result = "0x" + digest.hexdigest()
    with _cache_lock:
        _sha256_cache[key] = result
    return result


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _quantization_name(reader: gguf.GGUFReader) -> str:
    file_type = _field(reader, "general.file_type")
    if file_type is not None:
        try:
            name = gguf.LlamaFileType(int(file_type)).name
        except ValueError:
            return f"FILE_TYPE_{int(file_type)}"
        # "MOSTLY_Q4_1" -> "Q4_1", "ALL_F32" -> "F32": the names people use for files.
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # Older converters omit general.file_type: the dominant type of the 2-D weights
    # is what the file type would have said.
    types = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2)
    if not types:
        raise ModelFileError("GGUF file has neither general.file_type nor weight tensors")
    return types.most_common(1)[0][0]


def _disk_cache_path() -> Path:
    """Per-user cache shared by every node on the machine (not per $MESH_HOME): reading a GGUF's
    metadata parses its whole tokenizer (seconds), and hashing a large file takes longer still."""
    base = os.environ.get("MESH_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "meshmarket" / "model-info.json"


def _disk_cache_get(key: tuple[str, int, int]) -> ModelInfo | None:
    try:
        entry = json.loads(_disk_cache_path().read_text()).get(f"{key[0]}|{key[1]}|{key[2]}")
        return ModelInfo(**entry) if entry else None
    except (OSError, ValueError, TypeError):
        return None  # a missing or damaged cache only costs a re-read


def _disk_cache_put(key: tuple[str, int, int], info: ModelInfo) -> None:
    path = _disk_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[f"{key[0]}|{key[1]}|{key[2]}"] = dataclasses.asdict(info)
        write_atomic(path, json.dumps(data))  # concurrent nodes never read half a file
    except OSError:
        pass  # read-only home: run uncached


def model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a GGUF file's metadata and hash; cached per (path, size, mtime) in memory and on disk."""
    key = _file_key(path)
    with _cache_lock:
        cached = _info_cache.get(key)
    if cached is None:
        cached = _disk_cache_get(key)
    if cached is not None:
        with _cache_lock:
            _info_cache[key] = cached
            _sha256_cache[key] = cached.sha256
        return cached
    try:
        reader = gguf.GGUFReader(key[0])
    except Exception as exc:  # gguf raises bare ValueError/struct errors on non-GGUF input
        raise ModelFileError(f"{key[0]} is not a readable GGUF file: {exc}", "pass the path of a .gguf model file") from exc
    architecture = _field(reader, "general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ModelFileError(f"{key[0]}: GGUF metadata has no general.architecture")
    context_length = _field(reader, f"{architecture}.context_length")
    if context_length is None or int(context_length) <= 0:
        raise ModelFileError(f"{key[0]}: GGUF metadata has no {architecture}.context_length")
    name = _field(reader, "general.name") or Path(key[0]).stem
    info = ModelInfo(
        path=key[0],
        name=str(name),
        architecture=architecture,
        quantization=_quantization_name(reader),
        context_length=int(context_length),
        sha256=file_sha256(key[0]),
        size=key[1],
    )
    with _cache_lock:
        _info_cache[key] = info
    _disk_cache_put(key, info)
    return info


def manifest_for(info: ModelInfo, **fields: Any) -> Manifest:
    """An unsigned manifest whose model fields come from the GGUF file itself; `fields` give the
    rest (price, peer id, addresses, hardware, provider, issued_at...)."""
    fields.setdefault("context_length", info.context_length)
    return Manifest(model_id=info.name, model_sha256=info.sha256, architecture=info.architecture,
                    quantization=info.quantization, **fields)
