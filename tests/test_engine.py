"""Real llama.cpp on the real SmolLM2-135M GGUF: determinism, limits, cancellation, manifests.

No mocks: the point is to catch the ways real inference drifts between jobs and processes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from eth_account import Account

from mesh.errors import ContextOverflowError, ManifestError
from mesh.protocol import Hardware, Manifest, Sampling
from provider.engine import EngineSlot, LlamaCppEngine, default_model_path, output_hash
from provider.modelfile import manifest_for, model_info

REPO = Path(__file__).resolve().parents[1]
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
COLOURS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="module")
def engine(model_path: Path) -> LlamaCppEngine:
    eng = LlamaCppEngine(model_path, n_ctx=2048, n_threads=1)
    yield eng
    eng.close()


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("temperature,seed", [(0.0, 0), (0.8, 7)])
def test_repeated_jobs_are_byte_identical(engine: LlamaCppEngine, temperature: float, seed: int) -> None:
    request = Sampling(messages=POEM, max_tokens=32, temperature_milli=round(temperature * 1000), seed=seed)
    other = Sampling(messages=COLOURS, max_tokens=8)
    first = engine.generate(request).run()
    # An unrelated job in between, then the same job twice in a row: both are the cases
    # where llama-cpp-python's prefix reuse changed the output before the per-job reset.
    engine.generate(other).run()
    results = [first, engine.generate(request).run(), engine.generate(request).run()]
    assert len({r.text.encode() for r in results}) == 1
    assert len({r.output_hash for r in results}) == 1
    assert first.output_hash == output_hash(first.text)
    assert first.completion_tokens == 32 and first.finish_reason == "length"


def test_streamed_pieces_join_to_result(engine: LlamaCppEngine) -> None:
    gen = engine.generate(Sampling(messages=POEM, max_tokens=24))
    pieces = list(gen)
    assert len(pieces) > 1
    assert "".join(pieces) == gen.result.text
    assert gen.result.prompt_tokens == gen.prompt_tokens > 0


def test_different_seeds_can_differ(engine: LlamaCppEngine) -> None:
    texts = {
        engine.generate(Sampling(messages=POEM, max_tokens=24, temperature_milli=1200, seed=s)).run().text
        for s in (1, 2, 3)
    }
    assert len(texts) > 1


_CHILD = """
import json, sys
from mesh.protocol import Sampling
from provider.engine import LlamaCppEngine, default_model_path
engine = LlamaCppEngine(default_model_path(), n_ctx=2048, n_threads=1)
result = engine.generate(Sampling.parse(json.loads(sys.argv[1]))).run()
print(json.dumps({"text": result.text, "hash": result.output_hash, "tokens": result.completion_tokens}))
"""


def test_separate_processes_agree(engine: LlamaCppEngine) -> None:
    spec = {"messages": POEM, "max_tokens": 32, "temperature_milli": 800, "seed": 42}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(spec)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # llama.cpp logs context warnings there
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    for child in children:
        stdout, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        outputs.append(json.loads(stdout))
    # This engine has already served other jobs: it must still match fresh processes.
    local = engine.generate(Sampling.parse(spec)).run()
    for out in outputs:
        assert out["text"].encode() == local.text.encode()
        assert out["hash"] == local.output_hash
        assert out["tokens"] == local.completion_tokens


def test_concurrent_callers_are_serialised(engine: LlamaCppEngine) -> None:
    request = Sampling(messages=COLOURS, max_tokens=16)
    expected = engine.generate(request).run()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(engine.generate(request).run().text)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [expected.text, expected.text]


# --------------------------------------------------------------------------- limits


def test_cancel_stops_early_and_next_job_is_clean(engine: LlamaCppEngine) -> None:
    request = Sampling(messages=POEM, max_tokens=48)
    cancel = threading.Event()
    gen = engine.generate(request, cancel)
    received = []
    for piece in gen:
        received.append(piece)
        if len(received) == 3:
            cancel.set()
    assert gen.result.finish_reason == "cancelled"
    assert gen.result.completion_tokens <= 4
    assert gen.result.text == "".join(received)

    already = threading.Event()
    already.set()
    assert engine.generate(request, already).run().completion_tokens == 0

    full = engine.generate(request).run()
    assert full.completion_tokens == 48
    assert full.text.startswith(gen.result.text)


def test_closing_an_abandoned_stream_frees_the_model(engine: LlamaCppEngine) -> None:
    gen = engine.generate(Sampling(messages=POEM, max_tokens=48))
    next(gen)
    with pytest.raises(RuntimeError, match="not finished"):
        gen.result
    gen.close()
    assert engine.generate(Sampling(messages=COLOURS, max_tokens=4)).run().completion_tokens > 0


def test_prompt_over_context_is_refused_before_generating(model_path: Path) -> None:
    small = LlamaCppEngine(model_path, n_ctx=256)
    try:
        request = Sampling(prompt="word " * 400, max_tokens=8)
        assert small.count_prompt_tokens(request) > 256
        with pytest.raises(ContextOverflowError, match="exceeds the context window of 256"):
            small.generate(request)

        short = Sampling(prompt="The sea is", max_tokens=1)
        room = 256 - small.count_prompt_tokens(short)
        fits = short.model_copy(update={"max_tokens": room})
        small.generate(fits).close()  # accepted: prompt + max_tokens == n_ctx
        with pytest.raises(ContextOverflowError):
            small.generate(short.model_copy(update={"max_tokens": room + 1}))
    finally:
        small.close()


def test_engine_slot_answers_busy_without_waiting() -> None:
    slot = EngineSlot(1)
    assert slot.try_acquire()
    assert not slot.try_acquire()
    assert slot.in_use == 1
    slot.release()
    assert slot.try_acquire()
    slot.release()
    with pytest.raises(RuntimeError):
        slot.release()


# --------------------------------------------------------------------------- manifest


@pytest.fixture(scope="module")
def provider_account():
    return Account.from_key("0x" + "11" * 32)


@pytest.fixture(scope="module")
def signed_manifest(model_path: Path, provider_account) -> Manifest:
    manifest = manifest_for(
        model_info(model_path),
        price_per_token=3 * 10**15,
        peer_id="16Uiu2HAmExamplePeer",
        multiaddrs=["/ip4/127.0.0.1/tcp/4001"],
        protocol_version="/meshmarket/infer/1.0.0",
        hardware=Hardware(cpu_threads=1, gpu_name="", gpu_memory_mb=0, gpu_layers=0),
        provider=provider_account.address,
        issued_at=1_700_000_000,
    )
    return manifest.sign(provider_account)


def test_model_info_reads_the_real_gguf(model_path: Path) -> None:
    info = model_info(model_path)
    assert info.quantization == "Q4_1"
    assert info.architecture == "llama"
    assert info.context_length > 0
    assert info.name
    assert info.sha256 == "0x" + hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert model_info(model_path) is info  # cached by (path, size, mtime)


def test_manifest_round_trip_and_signature(signed_manifest: Manifest, provider_account) -> None:
    decoded = Manifest.from_json(signed_manifest.to_json())
    assert decoded == signed_manifest
    assert decoded.signature == signed_manifest.signature
    assert decoded.manifest_hash() == signed_manifest.manifest_hash()
    assert decoded.verify() == provider_account.address
    assert len(bytes.fromhex(decoded.manifest_hash()[2:])) == 32
    canonical = signed_manifest.canonical_bytes()
    assert canonical.startswith(b'{"architecture":"llama","context_length":8192,"hardware":{"cpu_threads":1,')
    assert json.loads(canonical) == {k: v for k, v in signed_manifest.to_dict().items() if k != "signature"}


def test_manifest_ignores_unknown_fields(signed_manifest: Manifest) -> None:
    data = signed_manifest.to_dict()
    data["future_field"] = {"anything": [1, 2]}
    data["hardware"]["npu"] = "x"
    decoded = Manifest.parse(data)
    assert decoded == signed_manifest
    decoded.verify()


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("price_per_token",), "3000", "price_per_token must be an integer, got a string"),
        (("price_per_token",), 3e15, "price_per_token must be an integer, got a number with a fraction"),
        (("price_per_token",), True, "price_per_token must be an integer, got a boolean"),
        (("price_per_token",), -1, "price_per_token must be >= 0"),
        (("context_length",), "8192", "context_length must be an integer"),
        (("multiaddrs",), "/ip4/1.2.3.4/tcp/1", "multiaddrs must be a list"),
        (("multiaddrs",), [7], r"multiaddrs\[0\] must be a string"),
        (("hardware", "cpu_threads"), "1", "hardware.cpu_threads must be an integer"),
        (("hardware", "gpu_name"), None, "hardware.gpu_name must be a string, got null"),
        (("hardware",), [], "hardware must be an object"),
        (("provider",), "0x" + "ab" * 20, "checksummed"),
        (("model_sha256",), "abc", "model_sha256: String should match pattern"),
        (("version",), 2, "unsupported manifest version"),
        (("kind",), "meshmarket.receipt", "kind must be 'meshmarket.manifest'"),
    ],
)
def test_manifest_refuses_wrong_types(signed_manifest: Manifest, path: tuple[str, ...], value, message: str) -> None:
    data = signed_manifest.to_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ManifestError, match=message):
        Manifest.parse(data)


def test_manifest_refuses_missing_fields(signed_manifest: Manifest) -> None:
    data = signed_manifest.to_dict()
    del data["peer_id"]
    with pytest.raises(ManifestError, match="peer_id: missing field"):
        Manifest.parse(data)


def test_tampered_manifest_fails_verification(signed_manifest: Manifest) -> None:
    data = signed_manifest.to_dict()
    data["price_per_token"] += 1
    with pytest.raises(ManifestError, match="not by provider"):
        Manifest.parse(data).verify()


def test_manifest_signed_by_someone_else_is_rejected(signed_manifest: Manifest, provider_account) -> None:
    mallory = Account.from_key("0x" + "22" * 32)
    with pytest.raises(ManifestError, match="is not the provider"):
        signed_manifest.sign(mallory)
    # Mallory signs a manifest naming the victim as provider: recovery exposes her.
    forged = signed_manifest.model_copy(update={"provider": mallory.address}).sign(mallory)
    stolen = forged.model_copy(update={"provider": provider_account.address})
    with pytest.raises(ManifestError, match="not by provider"):
        stolen.verify()
    with pytest.raises(ManifestError, match="not signed"):
        signed_manifest.model_copy(update={"signature": None}).verify()
