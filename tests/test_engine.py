"""Real llama.cpp on the real SmolLM2-135M GGUF: determinism, limits, cancellation, stop strings,
the output's tokens (what a seat signs and a jury checks), manifests and the build they declare.

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

from meshmarket.mesh.errors import ContextOverflowError, ManifestError
from meshmarket.mesh.protocol import PROTOCOL_VERSION, Hardware, Manifest, Sampling, StopScanner, output_hash
from meshmarket.provider.engine import (
    FLASH_ATTN,
    N_BATCH,
    N_UBATCH,
    EngineSlot,
    LlamaCppEngine,
    build_of,
    default_model_path,
)
from meshmarket.provider.modelfile import manifest_for, model_info
from meshmarket.provider.runtime import build_manifest

REPO = Path(__file__).resolve().parents[1]
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
COLOURS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return default_model_path()


# `engine` is the session's engine (tests/conftest.py): the same one the provider tests use, so
# these tests also prove that an engine which already served other jobs stays deterministic.


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
    assert len({r.tokens for r in results}) == 1
    assert len({r.output_hash for r in results}) == 1
    assert first.output_hash == output_hash(first.text, first.tokens)
    assert first.completion_tokens == len(first.tokens) == 32 and first.finish_reason == "length"


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
from meshmarket.mesh.protocol import Sampling
from meshmarket.provider.engine import LlamaCppEngine, default_model_path
engine = LlamaCppEngine(default_model_path(), n_ctx=2048, n_threads=1)
from meshmarket.provider.engine import build_of
result = engine.generate(Sampling.parse(json.loads(sys.argv[1]))).run()
print(json.dumps({"text": result.text, "hash": result.output_hash.hex(), "tokens": list(result.tokens),
                  "build": engine.build.fingerprint, "build_of": build_of().fingerprint}))
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
        assert out["tokens"] == list(local.tokens)
        assert out["hash"] == local.output_hash.hex()
        # The build a process declares is the same in every process of this machine.
        assert out["build"] == out["build_of"] == engine.build.fingerprint == build_of().fingerprint


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
    assert gen.result.text == "".join(received) == engine.text_of(gen.result.tokens)

    already = threading.Event()
    already.set()
    assert engine.generate(request, already).run().completion_tokens == 0

    full = engine.generate(request).run()
    assert full.completion_tokens == 48
    assert full.text.startswith(gen.result.text)
    assert full.tokens[:gen.result.completion_tokens] == gen.result.tokens


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


# --------------------------------------------------------------------------- tokens and stop strings

CAFE = [{"role": "user", "content": "Write the French word for coffee, with its accent."}]
LIST = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def listed(engine: LlamaCppEngine):
    """LIST answered without stop strings (the reference the stop tests cut)."""
    return engine.generate(Sampling(messages=LIST, max_tokens=40)).run()


@pytest.mark.parametrize("messages", [COLOURS, POEM, CAFE], ids=["colours", "poem", "cafe"])
def test_the_tokens_reproduce_the_text_and_the_signed_hash(engine: LlamaCppEngine, messages) -> None:
    """What a jury does with a seat's evidence: detokenize the tokens one by one and compare with the
    text; the output hash covers both."""
    result = engine.generate(Sampling(messages=messages, max_tokens=40)).run()
    assert result.text and engine.text_of(result.tokens) == result.text
    assert result.output_hash == output_hash(result.text, result.tokens)
    assert result.output_hash != output_hash(result.text, result.tokens[:-1])
    assert b"".join(engine.piece(t) for t in result.tokens).decode("utf-8") == result.text
    assert all(isinstance(t, int) and 0 <= t < 2**32 for t in result.tokens)


def test_the_end_of_sequence_token_is_not_an_output_token(engine: LlamaCppEngine) -> None:
    """A model that ends its answer stops the job ("stop"); the end-of-sequence token is neither in
    the tokens nor paid for: with exactly that many tokens allowed the job ends by length with the
    same tokens, one more and it ends by the model."""
    request = Sampling(messages=[{"role": "user", "content": "Say hello."}], max_tokens=200)
    ended = engine.generate(request).run()
    n = ended.completion_tokens
    assert ended.finish_reason == "stop" and 0 < n < 200
    exact = engine.generate(request.model_copy(update={"max_tokens": n})).run()
    assert exact.finish_reason == "length" and exact.tokens == ended.tokens and exact.text == ended.text
    more = engine.generate(request.model_copy(update={"max_tokens": n + 1})).run()
    assert more.finish_reason == "stop" and more.tokens == ended.tokens


def _starts(engine: LlamaCppEngine, tokens) -> list[int]:
    """Where each token's text starts in the output (ASCII output: characters = bytes)."""
    return [len(engine.text_of(tokens[:k])) for k in range(len(tokens))]


def _stops_for(engine: LlamaCppEngine, full) -> dict[str, tuple[str, ...]]:
    """Stop strings taken from an answer generated without them (so none is hard-coded)."""
    starts = _starts(engine, full.tokens)
    mid = next(k for k in range(10, len(full.tokens)) if len(engine.text_of(full.tokens[k:k + 1])) >= 3)
    return {
        # Three whole tokens: the first two must be held back until the third completes it.
        "across tokens": (engine.text_of(full.tokens[12:15]),),
        # Starting inside a token: the token is cut, its head released.
        "inside a token": (full.text[starts[mid] + 1:starts[mid] + 7],),
        # Two stops: the one that appears first in the text wins, whichever is listed first.
        "two stops": (engine.text_of(full.tokens[20:22]), engine.text_of(full.tokens[8:10])),
    }


@pytest.mark.parametrize("case", ["across tokens", "inside a token", "two stops"])
def test_a_stop_string_ends_the_job_before_it(engine: LlamaCppEngine, listed, case: str) -> None:
    full = listed
    assert full.completion_tokens >= 30 and full.text.isascii()
    stop = _stops_for(engine, full)[case]
    if case == "two stops":
        assert 0 <= full.text.find(stop[1]) < full.text.find(stop[0])
    # The job ends at the first token whose text completes a stop string, the text before the
    # stop string that starts first.
    k = next(k for k in range(1, len(full.tokens) + 1) if any(s in engine.text_of(full.tokens[:k]) for s in stop))
    so_far = engine.text_of(full.tokens[:k])
    cut = min(so_far.find(s) for s in stop if s in so_far)

    gen = engine.generate(Sampling(messages=LIST, max_tokens=40, stop=stop))
    pieces = list(gen)
    result = gen.result
    assert result.finish_reason == "stop"
    assert result.text == so_far[:cut] == full.text[:cut] and not any(s in result.text for s in stop)
    assert result.tokens == full.tokens[:k] and k < len(full.tokens)
    # Streamed pieces never carried any of the stop string: they join to exactly the cut text.
    assert "".join(pieces) == result.text
    assert all(p for p in pieces)
    # The signed output: the tokens include those of the stop string, the text ends before it, and a
    # jury recomputes exactly this text from the tokens and the request's stop strings.
    assert engine.text_of(result.tokens, stop) == result.text
    assert any(s in engine.text_of(result.tokens) for s in stop)
    assert result.output_hash == output_hash(result.text, result.tokens)
    assert StopScanner.cut(full.text, stop) == result.text


def test_a_stop_string_that_never_completes_changes_nothing(engine: LlamaCppEngine, listed) -> None:
    """A stop whose start ends the output is held back to the end, then released: the answer is the
    one without stop strings."""
    full = listed
    stop = (full.text[-2:] + "\x07",)
    gen = engine.generate(Sampling(messages=LIST, max_tokens=40, stop=stop))
    pieces = list(gen)
    assert gen.result.finish_reason == full.finish_reason
    assert "".join(pieces) == gen.result.text == full.text and gen.result.tokens == full.tokens
    assert engine.text_of(gen.result.tokens, stop) == full.text
    assert not pieces[-1] or full.text.endswith(pieces[-1])


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
        protocol_version=str(PROTOCOL_VERSION),
        hardware=Hardware(cpu_threads=1, gpu_name="", gpu_memory_mb=0, gpu_layers=0),
        build=build_of(),
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
    assert canonical.startswith(b'{"architecture":"llama","build":{"backend":"')
    assert b'},"context_length":8192,"hardware":{"cpu_threads":1,' in canonical
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
        (("version",), 1, "unsupported manifest version 1, expected 2"),
        (("build", "n_batch"), "512", "build.n_batch must be an integer"),
        (("build", "cpu_features"), "AVX", "build.cpu_features must be a list"),
        (("build", "llama_cpp"), "", "build.llama_cpp must not be empty"),
        (("build",), "fp_0123456789", "build must be an object"),
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


def test_the_manifest_declares_this_machines_build(engine: LlamaCppEngine, model_path: Path, provider_account) -> None:
    """The manifest a provider registers (provider.runtime.build_manifest) declares the build its
    engine runs: llama.cpp's version and backend, the CPU features, the engine's batch settings. Its
    fingerprint is stable (the same build always says the same) and signed with the manifest."""
    import llama_cpp

    m = build_manifest(provider_account, model_path, 10, "127.0.0.1", 4001, threads=1, gpu_layers=0, ctx=1024)
    assert m.verify() == provider_account.address and m.protocol_version == str(PROTOCOL_VERSION)
    assert m.build == build_of() == engine.build
    assert m.build.llama_cpp == llama_cpp.__version__ and m.build.backend == "CPU" and m.build.gpu_layers == 0
    assert (m.build.n_batch, m.build.n_ubatch, m.build.flash_attn) == (N_BATCH, N_UBATCH, FLASH_ATTN)
    info = llama_cpp.llama_print_system_info().decode()
    assert m.build.cpu_features and all(f"{f} = 1" in info for f in m.build.cpu_features)
    assert list(m.build.cpu_features) == sorted(set(m.build.cpu_features))
    assert m.context_length == 1024
    fp = m.build.fingerprint
    assert fp.startswith("fp_") and len(fp) == 13 and int(fp[3:], 16) >= 0
    assert fp == build_of().fingerprint == Manifest.from_json(m.to_json()).build.fingerprint
    assert build_of(gpu_layers=8).fingerprint != fp  # offloading changes the floats: another build
    again = build_manifest(provider_account, model_path, 10, "127.0.0.1", 4001, threads=4, gpu_layers=0, ctx=2048)
    assert again.build == m.build  # threads and context do not change outputs: not part of the build


def test_the_build_is_the_same_read_from_many_threads_at_once():
    """llama_print_system_info writes a static buffer: 16 threads reading it at once got 12 different
    strings here. build_of reads it under a lock (a launcher registers providers in parallel threads;
    a torn read declared a build with missing CPU features, and the provider then refused to start)."""
    import threading

    from meshmarket.provider.engine import _system_info, build_of

    _system_info.cache_clear()
    builds = []
    threads = [threading.Thread(target=lambda: builds.append(build_of(0))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _system_info.cache_clear()
    assert len(builds) == 16 and set(builds) == {build_of(0)}
