"""What a provider advertises: the model it serves and the signed manifest that says so.

This module owns two things:

* `model_info()` — facts about a GGUF file read from the file itself (architecture,
  quantization, context length, name) plus its sha256, so a provider cannot claim a
  model it does not have and a consumer can ask for an exact file.
* `Manifest` — the versioned, canonically encoded and signed record a provider
  publishes. Its hash is keccak256 of the canonical JSON; the signature is EIP-191
  (`personal_sign`) over that 32-byte hash, which Solidity can check with
  OpenZeppelin's `MessageHashUtils.toEthSignedMessageHash(bytes32)` + `ECDSA.recover`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address, keccak

MANIFEST_VERSION = 1
# A constant inside the hashed bytes: a signature over a manifest hash can never be
# replayed as a signature over some other Meshmarket record that is also JSON.
MANIFEST_KIND = "meshmarket.manifest"

_SHA256_RE = re.compile(r"^0x[0-9a-f]{64}$")
_SIGNATURE_RE = re.compile(r"^0x[0-9a-f]{130}$")
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
        raise ValueError("GGUF file has neither general.file_type nor weight tensors")
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
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)  # atomic, so concurrent nodes never read half a file
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
        raise ValueError(f"{key[0]} is not a readable GGUF file: {exc}") from exc
    architecture = _field(reader, "general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f"{key[0]}: GGUF metadata has no general.architecture")
    context_length = _field(reader, f"{architecture}.context_length")
    if context_length is None or int(context_length) <= 0:
        raise ValueError(f"{key[0]}: GGUF metadata has no {architecture}.context_length")
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


# --------------------------------------------------------------------------- manifest


class ManifestError(ValueError):
    """A manifest that is malformed, unsigned, or signed by the wrong key."""


def _check_type(name: str, value: Any, expected: type) -> None:
    # bool is an int subclass; a True price or thread count is always a bug.
    if isinstance(value, bool) and expected is not bool:
        raise ManifestError(f"{name} must be {expected.__name__}, got bool")
    if not isinstance(value, expected):
        raise ManifestError(f"{name} must be {expected.__name__}, got {type(value).__name__}")


def _check_int(name: str, value: Any, minimum: int = 0) -> None:
    _check_type(name, value, int)
    if value < minimum:
        raise ManifestError(f"{name} must be >= {minimum}, got {value}")


def _check_str(name: str, value: Any, allow_empty: bool = False) -> None:
    _check_type(name, value, str)
    if not allow_empty and not value:
        raise ManifestError(f"{name} must not be empty")


@dataclass(frozen=True)
class Hardware:
    cpu_threads: int
    gpu_name: str  # "" when there is no GPU
    gpu_memory_mb: int
    gpu_layers: int

    def __post_init__(self) -> None:
        _check_int("hardware.cpu_threads", self.cpu_threads, 1)
        _check_str("hardware.gpu_name", self.gpu_name, allow_empty=True)
        _check_int("hardware.gpu_memory_mb", self.gpu_memory_mb)
        _check_int("hardware.gpu_layers", self.gpu_layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Hardware:
        if not isinstance(data, dict):
            raise ManifestError(f"hardware must be an object, got {type(data).__name__}")
        return cls(**_known_fields(cls, data, "hardware."))


def _known_fields(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Pick the dataclass's fields out of `data`; unknown keys are ignored so newer
    providers can add fields without breaking older consumers."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise ManifestError(f"missing field(s): {', '.join(prefix + n for n in missing)}")
    return {n: data[n] for n in names if n in data}


@dataclass(frozen=True)
class Manifest:
    """A provider's signed advertisement. Construct, `sign(account)`, publish `to_json()`."""

    model_id: str
    model_sha256: str
    architecture: str
    quantization: str
    context_length: int
    price_per_token: int  # token base units (e.g. wei of the payment token); never a float
    peer_id: str
    multiaddrs: tuple[str, ...]
    protocol_version: str
    hardware: Hardware
    provider: str  # checksummed Ethereum address that must have signed
    issued_at: int  # unix seconds
    version: int = MANIFEST_VERSION
    signature: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.multiaddrs, list):
            object.__setattr__(self, "multiaddrs", tuple(self.multiaddrs))
        _check_int("version", self.version)
        if self.version != MANIFEST_VERSION:
            raise ManifestError(f"unsupported manifest version {self.version}, expected {MANIFEST_VERSION}")
        _check_str("model_id", self.model_id)
        _check_str("model_sha256", self.model_sha256)
        if not _SHA256_RE.match(self.model_sha256):
            raise ManifestError("model_sha256 must be 0x followed by 64 lowercase hex digits")
        _check_str("architecture", self.architecture)
        _check_str("quantization", self.quantization)
        _check_int("context_length", self.context_length, 1)
        _check_int("price_per_token", self.price_per_token)
        _check_str("peer_id", self.peer_id)
        _check_type("multiaddrs", self.multiaddrs, tuple)
        for i, addr in enumerate(self.multiaddrs):
            _check_str(f"multiaddrs[{i}]", addr)
        _check_str("protocol_version", self.protocol_version)
        _check_type("hardware", self.hardware, Hardware)
        _check_str("provider", self.provider)
        # Checksummed only: normalising here would change the signed bytes.
        if not is_checksum_address(self.provider):
            raise ManifestError(f"provider must be a checksummed Ethereum address, got {self.provider!r}")
        _check_int("issued_at", self.issued_at)
        if self.signature is not None:
            _check_str("signature", self.signature)
            if not _SIGNATURE_RE.match(self.signature):
                raise ManifestError("signature must be 0x followed by 130 lowercase hex digits (65 bytes)")

    @classmethod
    def for_model(
        cls,
        info: ModelInfo,
        *,
        price_per_token: int,
        peer_id: str,
        multiaddrs: list[str] | tuple[str, ...],
        protocol_version: str,
        hardware: Hardware,
        provider: str,
        issued_at: int | None = None,
    ) -> Manifest:
        """Build an unsigned manifest whose model fields come from the GGUF file itself."""
        return cls(
            model_id=info.name,
            model_sha256=info.sha256,
            architecture=info.architecture,
            quantization=info.quantization,
            context_length=info.context_length,
            price_per_token=price_per_token,
            peer_id=peer_id,
            multiaddrs=tuple(multiaddrs),
            protocol_version=protocol_version,
            hardware=hardware,
            provider=provider,
            issued_at=int(time.time()) if issued_at is None else issued_at,
        )

    # -- encoding

    def _body(self) -> dict[str, Any]:
        """Every signed field; the signature itself is not part of what is signed."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "signature"}
        body["multiaddrs"] = list(self.multiaddrs)
        body["hardware"] = self.hardware.to_dict()
        body["kind"] = MANIFEST_KIND
        return body

    def canonical_bytes(self) -> bytes:
        """Sorted keys, no whitespace, UTF-8 as is: two implementations agree byte for byte."""
        return json.dumps(self._body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def manifest_hash(self) -> str:
        """keccak256 of the canonical bytes, 0x-hex (a bytes32)."""
        return "0x" + keccak(self.canonical_bytes()).hex()

    def to_dict(self) -> dict[str, Any]:
        body = self._body()
        if self.signature is not None:
            body["signature"] = self.signature
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"manifest must be an object, got {type(data).__name__}")
        if data.get("kind") != MANIFEST_KIND:
            raise ManifestError(f"kind must be {MANIFEST_KIND!r}, got {data.get('kind')!r}")
        values = _known_fields(cls, data)
        if "version" not in values:
            raise ManifestError("missing field(s): version")
        if not isinstance(values["multiaddrs"], list):
            raise ManifestError(f"multiaddrs must be a list, got {type(values['multiaddrs']).__name__}")
        values["hardware"] = Hardware.from_dict(values["hardware"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    # -- signing

    def sign(self, account: LocalAccount) -> Manifest:
        """Return a copy signed by `account`, which must be the manifest's provider."""
        if account.address != self.provider:
            raise ManifestError(f"signer {account.address} is not the provider {self.provider}")
        message = encode_defunct(primitive=bytes.fromhex(self.manifest_hash()[2:]))
        signed = account.sign_message(message)
        return dataclasses.replace(self, signature="0x" + bytes(signed.signature).hex())

    def verify(self) -> str:
        """Recover the signer; raise ManifestError unless it is the provider address."""
        if self.signature is None:
            raise ManifestError("manifest is not signed")
        message = encode_defunct(primitive=bytes.fromhex(self.manifest_hash()[2:]))
        try:
            signer = Account.recover_message(message, signature=bytes.fromhex(self.signature[2:]))
        except Exception as exc:  # eth-keys raises several types for malformed v/r/s
            raise ManifestError(f"invalid signature: {exc}") from exc
        if signer != self.provider:
            raise ManifestError(f"manifest signed by {signer}, not by provider {self.provider}")
        return signer
