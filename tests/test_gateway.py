"""The OpenAI-compatible gateway against the real market, through the official `openai` client.

One devnet for this module and tests/test_explorer.py, started the way a user starts it (`mesh
devnet up --detach`): Anvil, the contracts, six provider processes (dev:1-5 honest, dev:6 signs
altered answers; six, so that a dispute seats a full jury of three beside a job's three seats). The gateway runs in-process (consumer.gateway.thread) on fresh consumer accounts.
Every answer is compared with what the real engine says for the same request: the market's
verified text is the model's, byte for byte.

Every client call either succeeds or raises exactly the error class the case expects.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from meshmarket.consumer.gateway.config import GatewayConfig
from meshmarket.consumer.gateway.dispatch import DispatchSettings
from meshmarket.consumer.gateway.thread import GatewayThread
from meshmarket.consumer.journal import Journal
from meshmarket.consumer.selection import Selector
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.config import Deployment
from meshmarket.mesh.lifecycle import job_state
from meshmarket.mesh.protocol import Sampling

pytestmark = pytest.mark.xdist_group("gateway")  # its devnet (a module fixture) is started once, on one worker

CAP = 20  # the gateways' max price per token (the devnet's providers ask 10)
REQUEST_CAP = 250_000  # 0.25 MESH: a request of 4096 tokens at 20 (x 6 shares: 0.49 MESH) is over it
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
MAX = 12
PROVIDERS = 6
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the shared market


@dataclass
class SharedMarket:
    """The devnet (via the CLI), and gateway A on a fresh consumer account."""

    home: Path
    record: dict
    chain: Chain
    net: object  # a cli.devnet.MeshNet attached to the running devnet (clock moves, funding)
    consumer: object
    journal: Journal
    selector: Selector
    gateway: GatewayThread
    model: str

    def client(self, **kw) -> openai.OpenAI:
        return client(self.gateway.url, **kw)

    def provider_pids(self) -> list[int]:
        return [p["pid"] for p in self.record["providers"]]

    def cheater(self) -> str:
        return next(p["address"] for p in self.record["providers"] if p["cheater"])


_SHARED: dict[str, SharedMarket] = {}


def client(url: str, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", **kw)


def mesh(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "MESH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "meshmarket.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def attach(chain: Chain):
    """A MeshNet object over the running devnet (for its funding and clock helpers)."""
    from tests.devnet import FixtureNet as MeshNet

    return MeshNet.attach(chain)


def start_gateway(chain, consumer, root: Path, config: GatewayConfig, settings: DispatchSettings,
                  selector: Selector | None = None) -> GatewayThread:
    return GatewayThread(chain, consumer, config, settings, selector=selector, journal=Journal(root / "jobs"),
                         spending_path=root / "spending.json").start()


def _start_shared() -> SharedMarket:
    home = Path(tempfile.mkdtemp(prefix="gw-devnet-"))
    out = mesh(home, "devnet", "up", "--providers", str(PROVIDERS), "--cheaters", "1", "--detach", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    record = json.loads(out.stdout)
    try:
        chain = Chain.open(Deployment.load(home / "deployment.json"), record["rpc_url"])
        net = attach(chain)
        consumer = net.new_consumer()
        root = home / "gateway-a"
        selector = Selector.open(chain, url=f"sqlite:///{home / 'gateway-a.sqlite'}")
        gw = start_gateway(chain, consumer, root,
                           GatewayConfig(max_price=CAP, request_cap=REQUEST_CAP, explorer_poll_ms=400),
                           DispatchSettings(refresh_every=5, settle_every=10), selector)
        model = client(gw.url).models.list().data[0].id
        return SharedMarket(home, record, chain, net, consumer, Journal(root / "jobs"), selector, gw, model)
    except BaseException:
        mesh(home, "devnet", "down")
        raise


def _stop_shared() -> None:
    shared = _SHARED.pop("market", None)
    if shared is None:
        return
    try:
        shared.gateway.close()
        shared.selector.close()
    finally:
        out = mesh(shared.home, "devnet", "down", timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not (shared.home / "devnet.json").exists() and not (shared.home / "deployment.json").exists()
        shutil.rmtree(shared.home, ignore_errors=True)


def shared_market(config: pytest.Config) -> SharedMarket:
    """Started once per test process, for every module that asks (cleaned up at the end)."""
    if "market" not in _SHARED:
        _SHARED["market"] = _start_shared()
        config.add_cleanup(_stop_shared)
    return _SHARED["market"]


@pytest.fixture(scope="module")
def market(request) -> SharedMarket:
    return shared_market(request.config)


def engine_text(engine, messages=QUESTION, max_tokens=MAX, stop=(), prompt=None) -> str:
    if prompt is not None:
        sampling = Sampling(prompt=prompt, max_tokens=max_tokens, stop=stop)
    else:
        sampling = Sampling(messages=[(m["role"], m["content"]) for m in messages], max_tokens=max_tokens, stop=stop)
    return engine.generate(sampling).run().text


def chat(market: SharedMarket, **kw):
    kw.setdefault("model", market.model)
    kw.setdefault("messages", QUESTION)
    kw.setdefault("max_tokens", MAX)
    return market.client().chat.completions.create(**kw)


def assert_receipt(market: SharedMarket, m: dict, tokens: int) -> None:
    """The `meshmarket` field is the chain's truth: real transactions, two seats or more agreeing."""
    assert m["job_id"].startswith("0x") and m["model"] == market.model
    assert m["outcome"] in ("agreed", "contested") and int(m["agreement"][0]) >= 2
    backing = [p for p in m["providers"] if p["paid"] or p["status"].startswith("paid unless")]
    assert len(backing) >= 2 and all(p["tokens"] == tokens for p in backing)
    for name in ("open", "draw", "settle"):
        tx = market.chain.w3.eth.get_transaction_receipt(m["tx"][name])
        assert tx["status"] == 1 and tx["from"] == market.consumer.address
    if m["outcome"] == "agreed":
        assert m["settled"] and m["spent"] == m["paid"] == sum(p["tokens"] * p["price"] for p in m["providers"])
    else:  # the dissenter is the cheater, unpaid unless a jury decides otherwise
        assert m["spent"] == m["escrow"]
        assert {p["address"] for p in m["providers"] if p["status"].startswith("unpaid")} == {market.cheater()}


# ------------------------------------------------------------------------------ the devnet and models


def test_devnet_status_lists_the_running_market(market):
    out = mesh(market.home, "devnet", "status", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["running"] and info["block"] > 0
    assert [p["alive"] for p in info["providers"]] == [True] * PROVIDERS
    assert [p["cheater"] for p in info["providers"]] == [False] * (PROVIDERS - 1) + [True]
    assert all(p["stake"] == 100_000_000 and p["listed"] for p in info["providers"])
    # every other command finds the devnet through the deployment record
    assert Deployment.load(market.home / "deployment.json").market == market.record["contracts"]["market"]


def test_models_list_and_retrieve(market):
    c = market.client()
    models = c.models.list().data
    assert [m.id for m in models] == [market.model]
    extra = models[0].model_extra["meshmarket"]
    assert extra["providers"] == PROVIDERS and extra["context_length"] == 2048 and extra["min_price"] == 10
    assert extra["model_hash"] == market.record["model_hash"] and extra["system_fingerprint"].startswith("fp_")
    assert c.models.retrieve(market.model).id == market.model
    assert c.models.retrieve(market.record["model_hash"]).id == market.model
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found"


# ------------------------------------------------------------------------------ answers


def test_chat_is_the_models_answer_with_usage_and_receipt(market, engine):
    r = chat(market)
    expected = engine_text(engine)
    assert r.object == "chat.completion" and r.model == market.model
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    m = r.model_extra["meshmarket"]
    assert_receipt(market, m, r.usage.completion_tokens)
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == MAX else "stop")
    assert 0 < r.usage.completion_tokens <= MAX and m["gateway"]["prompt_tokens"] == "providers"
    assert r.usage.prompt_tokens == engine.count_prompt_tokens(Sampling(messages=[("user", QUESTION[0]["content"])],
                                                                        max_tokens=MAX))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.system_fingerprint and r.system_fingerprint == m["system_fingerprint"]  # the seats' build


def test_chat_streamed_with_usage(market, engine):
    chunks = list(chat(market, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == engine_text(engine)
    assert len({ch.id for ch in chunks}) == 1 and all(ch.object == "chat.completion.chunk" for ch in chunks)
    last, finish = chunks[-1], chunks[-2]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert finish.choices[0].finish_reason in ("stop", "length")
    assert all(ch.usage is None for ch in chunks[:-1])
    assert_receipt(market, last.model_extra["meshmarket"], last.usage.completion_tokens)
    assert last.system_fingerprint == last.model_extra["meshmarket"]["system_fingerprint"]


def test_completion_raw_prompt_streamed_and_not(market, engine):
    prompt = "The three primary colours are"
    c = market.client()
    r = c.completions.create(model=market.model, prompt=prompt, max_tokens=6)
    assert r.object == "text_completion" and r.choices[0].text == engine_text(engine, prompt=prompt, max_tokens=6)
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    chunks = list(c.completions.create(model=market.model, prompt=prompt, max_tokens=6, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].model_extra["meshmarket"]["job_id"] != r.model_extra["meshmarket"]["job_id"]


def test_stop_sequence_ends_the_answer_and_the_payment(market, engine):
    full = engine_text(engine, max_tokens=MAX)
    stop = full.split()[2]  # a word of the answer
    expected = engine_text(engine, max_tokens=MAX, stop=(stop,))
    assert expected == full[:full.index(stop)]
    r = chat(market, stop=[stop])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < MAX  # the seats stopped generating there, and are paid so far
    chunks = list(chat(market, stop=stop, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


# ------------------------------------------------------------------------------ refusals


def test_refused_requests_cost_nothing(market):
    c = market.client(max_retries=2)  # refusals carry x-should-retry: false: nothing is retried
    nonce = market.chain.w3.eth.get_transaction_count(market.consumer.address)
    with pytest.raises(openai.APIStatusError) as e:  # 4096 x 20 x 6 shares = 0.49 MESH > the cap
        chat(market, max_tokens=4096)
    assert e.value.status_code == 402 and e.value.code == "request_budget_exceeded" and e.value.param == "max_tokens"
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as e:
            r = c.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=MAX, stream=stream)
            list(r) if stream else None
        assert e.value.code == "model_not_found" and market.model in e.value.message
    long_prompt = [{"role": "user", "content": "Summarise this. " + "The quick brown fox jumps. " * 400}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:  # ~2,700 tokens: over the pool's 2,048
            r = c.chat.completions.create(model=market.model, messages=long_prompt, max_tokens=MAX, stream=stream)
            list(r) if stream else None
        assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:  # over the wire's 64 KiB of prompt
        c.completions.create(model=market.model, prompt="x" * 70_000, max_tokens=MAX)
    assert e.value.code == "context_length_exceeded"
    for kw in (dict(n=2), dict(tools=[{"type": "function", "function": {"name": "f"}}]), dict(temperature=3),
               dict(stop=["a" * 65]), dict(extra_body={"meshmarket": {"max_price": CAP + 1}})):
        with pytest.raises(openai.BadRequestError) as e:
            chat(market, **kw)
        assert e.value.type == "invalid_request_error" and e.value.param, kw
    assert market.chain.w3.eth.get_transaction_count(market.consumer.address) == nonce  # no transaction at all
    # Digits are a token each: the gateway's estimate (4 bytes a token) lets this through, the seats
    # count 2,535 tokens and refuse it; no seat is added, the escrow returns when the job settles.
    digits = [{"role": "user", "content": "Add these digits: " + "1234567890" * 250}]
    with pytest.raises(openai.BadRequestError) as e:
        chat(market, messages=digits)
    assert e.value.code == "context_length_exceeded" and "2535" in e.value.message
    assert e.value.body["meshmarket"]["job_id"].startswith("0x") and "add_seat" not in e.value.body["meshmarket"]["tx"]


def test_requests_are_served_concurrently(market):
    """Three streamed chats at once all succeed (the pool serves them in turn: a provider runs one
    job at a time), and the gateway keeps answering other requests meanwhile."""
    results, errors = [None] * 3, []

    def one(i: int) -> None:
        try:
            chunks = list(chat(market, max_tokens=6, stream=True, stream_options={"include_usage": True},
                               messages=[{"role": "user", "content": f"Name a colour ({i})."}]))
            results[i] = chunks[-1].model_extra["meshmarket"]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert market.client().models.list().data[0].id == market.model
    assert time.monotonic() - t0 < 1.0
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len({r["job_id"] for r in results}) == 3 and all(r["outcome"] in ("agreed", "contested") for r in results)
    snap = market.gateway.run_sync(market.gateway.app.guard.snapshot)
    assert snap["reserved"] == 0 and snap["spent_today"] > 0


def test_daily_cap_and_a_failure_mid_stream(market, tmp_path):
    """A second gateway (its own account): over its daily cap is a 429; then every provider freezes
    after the first text was streamed: the stream ends with an error event, which the openai client
    raises as an APIError (not a status error: the status was 200)."""
    consumer = market.net.new_consumer()
    # one job of 64 tokens may take 64 x 20 x (3 seats + the jury reserve) = 5,120: it fits; 100 tokens do not
    cheap = GatewayConfig(max_price=CAP, daily_cap=6_000, max_seats=3)
    settings = DispatchSettings(first_token_timeout=8, token_timeout=2, settle_every=3600)
    with start_gateway(market.chain, consumer, tmp_path, cheap, settings) as gw:
        c = client(gw.url)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=market.model, messages=QUESTION, max_tokens=100)
        assert e.value.code == "insufficient_quota"
        got: list[str] = []
        frozen = False
        try:
            with pytest.raises(openai.APIError) as e:
                for ch in c.chat.completions.create(model=market.model, messages=QUESTION, max_tokens=64, stream=True):
                    got.append(ch.choices[0].delta.content or "")
                    if "".join(got) and not frozen:
                        for pid in market.provider_pids():
                            os.kill(pid, signal.SIGSTOP)
                        frozen = True
        finally:
            for pid in market.provider_pids():
                os.kill(pid, signal.SIGCONT)
        assert frozen and type(e.value) is openai.APIError
        assert e.value.code == "providers_failed" and "".join(got)
        assert e.value.body["meshmarket"]["job_id"].startswith("0x") and not e.value.body["meshmarket"]["settled"]
        snap = gw.run_sync(gw.app.guard.snapshot)
        assert snap["reserved"] == 0 and snap["spent_today"] == e.value.body["meshmarket"]["escrow"]


def test_ask_through_a_running_mesh_serve(market, tmp_path, capsys, monkeypatch):
    """`mesh serve` as a user runs it (dev:9, funded by `mesh devnet up`): it records itself, and
    `mesh ask`'s gateway path streams through it; SIGTERM stops it and removes the record."""
    from meshmarket.cli.gateway import ask_via_gateway, running_gateway

    env = {**os.environ, "MESH_HOME": str(market.home), "MESH_ACCOUNT": "dev:9"}
    proc = subprocess.Popen([sys.executable, "-m", "meshmarket.cli", "serve", "--port", "0", "--max-price", str(CAP)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        seen = []
        for line in proc.stdout:  # log lines may come first
            seen.append(line)
            if line.startswith("gateway on http://127.0.0.1:") or len(seen) > 50:
                break
        assert seen and seen[-1].startswith("gateway on"), "".join(seen)
        monkeypatch.setenv("MESH_HOME", str(market.home))
        record = running_gateway("dev:9")
        assert record is not None and record["pid"] == proc.pid
        assert running_gateway("dev:8") is None  # another account asks the market itself
        receipt = ask_via_gateway("What is the capital of France? Answer in one sentence.", max_tokens=MAX,
                                  max_price=CAP, account_name="dev:9")
        out = capsys.readouterr().out
        assert receipt["text"] and out.startswith(receipt["text"]) and receipt["job_id"] in out
        assert int(receipt["agreement"][0]) >= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave it behind; the assertion below reports it
            proc.wait(10)
    assert proc.returncode == 0 and not (market.home / "gateway.json").exists()


def test_a_cheater_is_caught_and_the_receipt_says_so(market, engine):
    """The cheater (dev:6) signs an altered answer. When it is drawn, the two honest seats outvote
    it at once (the receipt: 2/3, the cheater unpaid); the request disputes (16 tokens at 20: a jury
    fee over the contract's minimum), the jury drawn from the rest of the pool scores the tokens,
    and the cheater's stake is slashed (the job's state on the gateway says so). Last in the module:
    it moves the chain's clock through the court."""
    cheater = market.cheater()
    for _ in range(10):
        r = chat(market, max_tokens=16, extra_body={"meshmarket": {"dispute": True}})
        m = r.model_extra["meshmarket"]
        if cheater in {p["address"] for p in m["providers"]}:
            break
    else:
        pytest.fail("the cheater was never drawn in 10 jobs")
    assert r.choices[0].message.content == engine_text(engine, max_tokens=16)  # the honest majority's answer
    assert m["outcome"] in ("contested", "pending") and m["agreement"] == "2/3" and not m["verified"]
    seat = next(p for p in m["providers"] if p["address"] == cheater)
    assert seat["paid"] == 0 and seat["status"].startswith("unpaid unless a jury")
    assert all(p["status"].startswith("paid unless") for p in m["providers"] if p["address"] != cheater)
    job_id = bytes.fromhex(m["job_id"][2:])
    said: list[str] = []
    try:
        state = market.net.fast_forward_court(job_id, market.consumer, market.journal, say=said.append)
    except RuntimeError as exc:  # say what the providers did
        logs = "\n".join(f"--- {p['account']}\n" + "\n".join(Path(p["log"]).read_text().splitlines()[-25:])
                         for p in market.record["providers"])
        pytest.fail(f"{exc}\n" + "\n".join(said) + "\n" + logs)
    assert state.closed
    with urllib.request.urlopen(f"{market.gateway.url}/v1/meshmarket/jobs/{m['job_id']}") as resp:
        job = json.loads(resp.read())
    assert job["status"] == "closed" and job["outcome"] == "judged", (job, m, said)
    seats = {s["address"]: s for s in job["seats"]}
    assert seats[cheater]["slashed"] and seats[cheater]["paid"] == 0 and seats[cheater]["slashed_amount"] > 0
    assert all(not s["slashed"] and s["paid"] > 0 for a, s in seats.items() if a != cheater)
    assert job_state(market.chain, job_id).settled["slashMask"]


# ------------------------------------------------------------------------------ pure HTTP behaviour
# The ASGI app with a scripted backend (no market): framing, refusals, limits, auth. Fast.


class ScriptedBackend:
    """Streams `pieces`, then answers, or fails after `fail_after` pieces."""

    def __init__(self, pieces=("The", " sky", " is", " blue."), fail_after: int | None = None) -> None:
        self.pieces, self.fail_after, self.calls = pieces, fail_after, 0

    async def models(self) -> list[dict]:
        return [{"id": "scripted", "model_hash": "0x" + "ab" * 32}]

    async def complete(self, req, on_token):
        import trio

        from meshmarket.consumer.gateway.backend import Completion, GatewayError

        self.calls += 1
        for i, piece in enumerate(self.pieces):
            if i == self.fail_after:
                raise GatewayError(502, "provider_error", "providers_failed", "the seats stopped answering",
                                   receipt={"job_id": "0x" + "cd" * 32, "settled": False}, spent=123)
            await trio.sleep(0.01)
            on_token(piece)
        return Completion("".join(self.pieces), "stop", 5, len(self.pieces),
                          receipt={"job_id": "0x" + "ef" * 32, "spent": 77}, system_fingerprint="fp_scripted")

    async def job(self, job_id: str) -> dict:
        from meshmarket.consumer.gateway.backend import GatewayError

        raise GatewayError(404, "invalid_request_error", "job_not_found", "no such job", "job_id")

    async def market(self) -> dict:
        return {"models": await self.models(), "providers": [], "jobs": [], "big": 2**60}


class ScriptedServer:
    """The Gateway app on hypercorn (consumer.gateway.serve) in a thread, on a free port."""

    def __init__(self, backend, **config) -> None:
        from meshmarket.consumer.gateway.app import Gateway

        config.setdefault("max_price", 20)
        self.app = Gateway(backend, GatewayConfig(**config))
        self.url = ""
        self._ready = threading.Event()

    def __enter__(self) -> ScriptedServer:
        import trio

        from meshmarket.consumer.gateway.serve import serve

        async def main() -> None:
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as n:
                urls = await n.start(lambda task_status: serve(self.app, "127.0.0.1", 0,
                                                               shutdown_trigger=self._stop.wait, task_status=task_status))
                self.url = urls[0]
                self._ready.set()

        self._thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        import trio

        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)


def http(server, method, path, body=None, headers=None, raw: bytes | None = None):
    """(status, headers, body bytes) over a fresh connection."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    hs = {"content-type": "application/json"} if body is not None or raw is not None else {}
    hs.update(headers or {})
    conn.request(method, path, body=raw if raw is not None else (json.dumps(body).encode() if body else None), headers=hs)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}


def test_sse_framing_usage_and_the_error_event():
    with ScriptedServer(ScriptedBackend()) as s:
        status, headers, body = http(s, "POST", "/v1/chat/completions",
                                     {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        events = body.split(b"\n\n")
        assert status == 200 and headers["content-type"] == "text/event-stream; charset=utf-8"
        assert events[-1] == b"" and events[-2] == b"data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-2]]
        assert all(e.startswith(b"data: {") and b"\n" not in e for e in events[:-2])
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "The sky is blue."
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
        assert chunks[-1]["meshmarket"]["gateway"]["estimate"] == 256 * 20 * 6
        assert s.app.guard.snapshot()["spent_today"] == 77  # the receipt's spending, not the estimate
    with ScriptedServer(ScriptedBackend(fail_after=2)) as s:
        status, _, body = http(s, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
        events = body.split(b"\n\n")
        assert status == 200 and b"data: [DONE]" not in events
        err = json.loads(events[-2][6:])["error"]
        assert err["code"] == "providers_failed" and err["meshmarket"]["settled"] is False
        assert s.app.guard.snapshot()["spent_today"] == 123
        # before any text the failure keeps its status: the client raises a status error
        s.app.backend.fail_after = 0
        with pytest.raises(openai.InternalServerError) as e:
            list(client(s.url, max_retries=2).chat.completions.create(model="scripted", messages=CHAT["messages"],
                                                                      stream=True))
        assert e.value.status_code == 502 and s.app.backend.calls == 2  # x-should-retry: false: no retry


def test_http_refusals_limits_and_the_explorer_files():
    with ScriptedServer(ScriptedBackend(), request_cap=1000) as s:
        for raw, code in [(b"{not json", "invalid_json"), (b"[1]", "invalid_json"), (b'{"a": NaN}', "invalid_json")]:
            status, _, body = http(s, "POST", "/v1/chat/completions", raw=raw)
            assert status == 400 and json.loads(body)["error"]["code"] == code
        status, _, body = http(s, "POST", "/v1/chat/completions", raw=json.dumps(CHAT).encode(),
                               headers={"content-type": "text/plain"})
        assert status == 415
        status, headers, _ = http(s, "POST", "/v1/chat/completions", raw=b'{"model": "' + b"x" * 2_000_000 + b'"}')
        assert status == 413 and headers["connection"] == "close"
        status, headers, _ = http(s, "GET", "/v1/chat/completions")
        assert status == 405 and headers["allow"] == "POST"
        status, _, body = http(s, "POST", "/v1/chat/completions", {**CHAT, "max_tokens": 100})
        assert status == 402 and json.loads(body)["error"]["code"] == "request_budget_exceeded"
        assert http(s, "GET", "/v1/models", headers={"host": "evil.example"})[0] == 403  # DNS rebinding
        assert http(s, "POST", "/v1/chat/completions", CHAT, headers={"origin": "https://evil.example"})[0] == 403
        status, headers, body = http(s, "GET", "/")
        assert status == 200 and b"explorer.js" in body and "script-src 'self'" in headers["content-security-policy"]
        assert all(http(s, "GET", p)[0] == 200 for p in ("/explorer.js", "/explorer.css", "/favicon.svg"))
        status, _, body = http(s, "GET", "/api/market")
        assert status == 200 and json.loads(body)["big"] == str(2**60)  # browsers would round it
        assert http(s, "GET", "/v1/meshmarket/jobs/0x12")[0] == 404


def test_an_api_key_is_required_everywhere_when_set():
    import base64

    from meshmarket.consumer.gateway.serve import check_bind
    from meshmarket.mesh.errors import ConfigError

    key = "k" * 24
    with ScriptedServer(ScriptedBackend(), api_key=key) as s:
        status, headers, _ = http(s, "GET", "/v1/models")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert http(s, "GET", "/v1/models", headers={"authorization": "Bearer " + key[:-1]})[0] == 401
        assert http(s, "GET", "/v1/models", headers={"authorization": "Bearer " + key, "host": "gw.example"})[0] == 200
        status, headers, _ = http(s, "GET", "/")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")  # a browser asks
        basic = "Basic " + base64.b64encode(f"me:{key}".encode()).decode()
        assert http(s, "GET", "/", headers={"authorization": basic})[0] == 200
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(ConfigError, match="API key") as e:
            check_bind(host, None)
        assert e.value.code == "api_key_required"
        check_bind(host, key)
    check_bind("127.0.0.1", None)


def test_a_querys_errors_map_to_http_by_their_code_alone():
    """The gateway's one table (consumer.gateway.dispatch.ERRORS): each error a query can raise,
    built as the library builds it, has its HTTP status, OpenAI type and code; a code the table
    does not know is a 502 (the market failed), and what is not a MeshError at all a 500 (app.py)."""
    from meshmarket.consumer.gateway.dispatch import ERRORS, UNKNOWN, gateway_error
    from meshmarket.mesh.errors import (ChainError, ContractReverted, JobSlotsFull, MeshError, NodeUnreachable, NoGas,
                                        NotDeployed, PromptTooLong, ProviderFailed, RequestRefused, TooFewProviders,
                                        WrongChain)

    job = b"\x01" * 32
    refused = ProviderFailed("context_overflow", "2535 tokens do not fit 2048", "0xabc")
    cases = {  # the error -> (its code, status, OpenAI type, OpenAI code)
        TooFewProviders("only 2"): ("too_few_providers", 503, "market_unavailable", "too_few_providers"),
        TooFewProviders("dear", code="price_cap_too_low", needed_price=10):
            ("price_cap_too_low", 503, "market_unavailable", "too_few_providers"),
        TooFewProviders("stake", code="not_enough_stake"):
            ("not_enough_stake", 503, "market_unavailable", "too_few_providers"),
        TooFewProviders("jury", code="pool_cannot_seat_jury", limit=6):
            ("pool_cannot_seat_jury", 503, "market_unavailable", "too_few_providers"),
        PromptTooLong("too long", job_id=job, limit=2048):
            ("context_overflow", 400, "invalid_request_error", "context_length_exceeded"),
        RequestRefused("refused", job_id=job, fault=refused, deadline=0, now=0):
            ("context_overflow", 400, "invalid_request_error", "context_length_exceeded"),
        RequestRefused("refused", job_id=job, fault=ProviderFailed("bad_request", "no"), deadline=0, now=0):
            ("request_refused", 400, "invalid_request_error", "request_refused"),
        ContractReverted("openJob refused: balance", None, "ERC20InsufficientBalance"):
            ("insufficient_funds", 402, "insufficient_quota", "insufficient_funds"),
        ContractReverted("openJob refused: allowance", None, "ERC20InsufficientAllowance"):
            ("insufficient_funds", 402, "insufficient_quota", "insufficient_funds"),
        NoGas("openJob: cannot pay for gas"): ("no_gas", 402, "insufficient_quota", "insufficient_funds"),
        ContractReverted("drawSeats refused: only 2", None, "NotEnoughProviders"):
            ("too_few_providers", 503, "market_unavailable", "too_few_providers"),
        ContractReverted("openJob refused: slot", None, "SlotBusy"):
            ("job_slots_full", 429, "rate_limit_exceeded", "too_many_open_jobs"),
        JobSlotsFull("16 jobs open"): ("job_slots_full", 429, "rate_limit_exceeded", "too_many_open_jobs"),
        ContractReverted("settle refused: bad signature", None, "BadSignature"):
            ("reverted", 502, "provider_error", "chain_refused"),
        ChainError("the node timed out"): ("chain_error", 503, "market_unavailable", "chain_unavailable"),
        NodeUnreachable("no node"): ("node_unreachable", 503, "market_unavailable", "chain_unavailable"),
        WrongChain("chain 1"): ("wrong_chain", 503, "market_unavailable", "chain_unavailable"),
        NotDeployed("no code"): ("not_deployed", 503, "market_unavailable", "chain_unavailable"),
        MeshError("something new"): ("error", 502, "provider_error", "market_error"),
        ProviderFailed("internal", "a seat failed"): ("internal", 502, "provider_error", "market_error"),
    }
    for exc, (code, status, kind, openai_code) in cases.items():
        err = gateway_error(exc, account="0xme", param="messages", job_id=None, drawn=False, receipt=None)
        assert (exc.code, err.status, err.type, err.code) == (code, status, kind, openai_code), exc
        assert exc.message in err.message and "mesh " not in err.message and "--" not in err.message
        assert err.param == ("messages" if status == 400 else None) and err.spent == 0
    assert set(ERRORS) <= {code for code, *_ in cases.values()}  # every row of the table is tried above
    assert UNKNOWN.status == 502
    # How far the job got decides what it spent and whether a client may retry, never the text.
    down = gateway_error(ChainError("timed out"), account="0xme", param="prompt", job_id=None, drawn=False, receipt=None)
    assert down.retryable and down.spent == 0
    opened = gateway_error(ChainError("timed out"), account="0xme", param="prompt", job_id=job, drawn=True,
                           receipt={"job_id": "0x" + job.hex()})
    assert not opened.retryable and opened.spent is None and opened.body()["error"]["meshmarket"]["job_id"]
    funds = gateway_error(ContractReverted("openJob refused: balance 0", None, "ERC20InsufficientBalance"),
                          account="0xme", param="prompt", job_id=None, drawn=False, receipt=None)
    assert funds.message == "The gateway's account 0xme cannot pay this job's escrow: openJob refused: balance 0"


def test_stream_policy_never_shows_a_lone_seats_text():
    from meshmarket.consumer.gateway.streaming import StreamPolicy

    p = StreamPolicy("agreed")
    assert p.feed(2, "A SKY IS BLUE [x]") == ""  # a cheater alone shows nothing
    assert p.feed(0, "The sky") == "" and p.feed(1, "The s") == "The s"
    assert p.feed(1, "ky is blue") == "ky" and p.feed(0, " is green") == " is "
    assert p.finish("The sky is blue.") == "blue." and p.released == "The sky is blue."
    first = StreamPolicy("first")
    assert first.feed(1, "The s") == "The s" and first.feed(0, "The sky") == ""
    assert first.fail(1) == "ky"  # seat 0 takes over where seat 1 stopped
    assert first.finish("THE SKY") is None  # what was shown is not what was verified


def test_spending_guard_day_rollover_and_restart(tmp_path):
    from meshmarket.consumer.gateway.backend import GatewayError
    from meshmarket.consumer.gateway.spending import SpendingGuard

    now = [1_700_000_000.0]  # 2023-11-14 22:13 UTC
    path = tmp_path / "spending.json"
    g = SpendingGuard(request_cap=1000, daily_cap=1500, clock=lambda: now[0], path=path)
    with pytest.raises(GatewayError) as e:
        g.reserve(1001)
    assert e.value.status == 402
    a = g.reserve(1000)
    with pytest.raises(GatewayError) as e:  # 1000 reserved + 600 > 1500
        g.reserve(600)
    assert e.value.status == 429
    g.settle(a, 300)
    g2 = SpendingGuard(request_cap=1000, daily_cap=1500, clock=lambda: now[0], path=path)  # a restart
    assert g2.snapshot()["spent_today"] == 300
    now[0] += 86400  # the next UTC day
    assert g2.snapshot()["spent_today"] == 0 and g2.reserve(1000).amount == 1000
