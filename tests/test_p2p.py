"""Tests for mesh.p2p: real libp2p hosts on 127.0.0.1, plus in-memory framing checks.

Each host test runs its own `trio.run` under a hard deadline, so a hang fails instead of
stalling the suite; `Node.start` shuts the hosts down on the way out.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import multiaddr
import pytest
import trio
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as create_ed25519_key_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from mesh.p2p import (
    MAX_DEPTH,
    MAX_FRAME,
    ConnectFailed,
    FrameMalformed,
    FrameTooLarge,
    InvalidPeerId,
    ListenFailed,
    Node,
    P2PError,
    PeerTimeout,
    Session,
    StreamClosed,
    address_from_peer_id,
    decode_body,
    encode_frame,
    peer_id_for_key,
    read_frame,
    write_frame,
)

ECHO = "/meshmarket/test-echo/1.0.0"
TEST_DEADLINE = 20.0
SERVER_KEY = bytes([1]) * 32
CLIENT_KEY = bytes([2]) * 32
OTHER_KEY = bytes([3]) * 32


def run(afn: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        with trio.fail_after(TEST_DEADLINE):
            await afn()

    trio.run(guarded)


def raw(body: bytes, length: int | None = None) -> bytes:
    """A frame with an arbitrary body and (optionally lying) length prefix."""
    return struct.pack(">I", len(body) if length is None else length) + body


async def echo(session: Session) -> None:
    msg = await session.recv()
    peer, address = session.remote_peer_id, session.remote_address
    await session.send({"type": "echo", "msg": msg, "peer": peer, "address": address})


@asynccontextmanager
async def pair(
    handler: Callable[[Session], Awaitable[None]] = echo, timeout: float = 5.0
) -> AsyncIterator[tuple[Node, Node]]:
    async with Node.start(SERVER_KEY) as server, Node.start(CLIENT_KEY) as client:
        server.serve(ECHO, handler, timeout=timeout)
        yield server, client


async def request(client: Node, server: Node, obj: dict[str, Any]) -> dict[str, Any]:
    async with client.open_session(server.peer_id, server.listen_addrs, ECHO, timeout=5) as s:
        await s.send(obj)
        return await s.recv()


async def send_raw(client: Node, server: Node, data: bytes) -> dict[str, Any]:
    """Write arbitrary bytes as a client, half-close, return the server's one reply frame."""
    async with client.open_session(server.peer_id, server.listen_addrs, ECHO, timeout=5) as s:
        # Reaching into the stream is the point: a hostile peer does not use our framing.
        await s._stream.write(data)
        await s._stream.close()
        return await s.recv(timeout=5)


# --------------------------------------------------------------------------- identity


def test_peer_id_maps_to_ethereum_address() -> None:
    for key in (SERVER_KEY, CLIENT_KEY, bytes(Account.create().key)):
        peer_id = peer_id_for_key(key)
        assert peer_id.startswith("16Uiu2")
        assert address_from_peer_id(peer_id) == Account.from_key(key).address


def test_address_from_peer_id_rejects_non_secp256k1_and_garbage() -> None:
    ed25519_peer = str(ID.from_pubkey(create_ed25519_key_pair().public_key))
    for bad in (ed25519_peer, "not-a-peer-id!", ""):
        with pytest.raises(InvalidPeerId):
            address_from_peer_id(bad)


# --------------------------------------------------------------------------- framing (in memory)


class FakeStream:
    """Yields `data` in `chunk`-sized reads, then EOF (like libp2p) or silence (frozen peer)."""

    def __init__(self, data: bytes, chunk: int = 3, frozen: bool = False) -> None:
        self.data, self.chunk, self.frozen = data, chunk, frozen
        self.written = b""

    async def read(self, n: int | None = None) -> bytes:
        if not self.data:
            if self.frozen:
                await trio.sleep_forever()
            raise StreamEOF()
        take = min(n or self.chunk, self.chunk)
        out, self.data = self.data[:take], self.data[take:]
        await trio.lowlevel.checkpoint()
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


def test_frame_round_trip_in_memory() -> None:
    async def main() -> None:
        stream = FakeStream(b"")
        obj = {"type": "req", "text": "héllo ✓", "n": [1, 2.5, None, True]}
        await write_frame(stream, obj)
        assert stream.written[:4] == struct.pack(">I", len(stream.written) - 4)
        assert await read_frame(FakeStream(stream.written)) == obj

    run(main)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (raw(b"x" * 10, length=MAX_FRAME + 1), FrameTooLarge),
        (raw(b"\xff\xfe\x00garbage"), FrameMalformed),
        (raw(b"not json"), FrameMalformed),
        (raw(b"[1, 2, 3]"), FrameMalformed),
        (raw(b'"just a string"'), FrameMalformed),
        (raw(b""), FrameMalformed),
        (raw(b'{"x": NaN}'), FrameMalformed),
        (raw(b"[" * 100_000), FrameMalformed),
        (raw(b"{" * 100_000), FrameMalformed),
        (raw(b'{"x": 1}')[:7], StreamClosed),
        (b"\x00\x00", StreamClosed),
        (b"", StreamClosed),
    ],
)
def test_read_frame_refuses_bad_input(data: bytes, error: type[P2PError]) -> None:
    async def main() -> None:
        with pytest.raises(error):
            await read_frame(FakeStream(data))

    run(main)


def test_read_frame_respects_per_call_max_size() -> None:
    async def main() -> None:
        frame = encode_frame({"pad": "x" * 100})
        with pytest.raises(FrameTooLarge):
            await read_frame(FakeStream(frame), max_size=50)
        assert await read_frame(FakeStream(frame), max_size=200) == {"pad": "x" * 100}

    run(main)


def test_read_frame_times_out_on_a_frozen_peer() -> None:
    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(PeerTimeout):
            await read_frame(FakeStream(raw(b'{"x": 1}')[:6], frozen=True), timeout=0.2)
        assert 0.2 <= time.monotonic() - start < 1.0

    run(main)


def test_write_frame_refuses_what_is_not_a_small_json_object() -> None:
    async def main() -> None:
        stream = FakeStream(b"")
        for bad in ([1, 2], {"x": float("nan")}, {"x": object()}):
            with pytest.raises(FrameMalformed):
                await write_frame(stream, bad)  # type: ignore[arg-type]
        with pytest.raises(FrameTooLarge):
            await write_frame(stream, {"pad": "x" * 100}, max_size=50)
        assert stream.written == b""

    run(main)


def test_decode_body_accepts_only_objects() -> None:
    assert decode_body(b'{"a": {"b": [1]}}') == {"a": {"b": [1]}}
    with pytest.raises(FrameMalformed):
        decode_body(b"null")


def test_decode_body_bounds_nesting() -> None:
    """eth_account (imported here) lifts the recursion limit to 100000, so without the bound
    json.loads of deep nesting segfaults this very process instead of raising."""
    ok = b'{"a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert decode_body(ok)["a"]
    with pytest.raises(FrameMalformed, match="nests"):
        decode_body(b'{"a":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}")
    with pytest.raises(FrameMalformed, match="nests"):
        decode_body(b"[" * 300_000)
    # Brackets inside strings, escaped quotes included, are text, not nesting.
    text = '\\"' + "[" * 500 + "{" * 500
    assert decode_body(json.dumps({"t": text}).encode()) == {"t": text}


# --------------------------------------------------------------------------- two real hosts


def test_round_trip_and_authenticated_identities() -> None:
    async def main() -> None:
        async with pair() as (server, client):
            assert server.address == Account.from_key(SERVER_KEY).address
            assert client.address == Account.from_key(CLIENT_KEY).address
            (addr,) = server.listen_addrs
            assert addr.startswith("/ip4/127.0.0.1/tcp/") and not addr.endswith("/tcp/0")

            async with client.open_session(server.peer_id, server.listen_addrs, ECHO) as s:
                assert s.remote_peer_id == server.peer_id
                assert s.remote_address == server.address
                await s.send({"type": "ping", "n": 1})
                reply = await s.recv()
            assert reply["msg"] == {"type": "ping", "n": 1}
            # What the server saw is the Noise-authenticated client key.
            assert reply["peer"] == client.peer_id
            assert reply["address"] == client.address

            # A /p2p suffix is accepted, and the second session reuses the connection.
            with_suffix = [f"{a}/p2p/{server.peer_id}" for a in server.listen_addrs]
            async with client.open_session(server.peer_id, with_suffix, ECHO) as s:
                await s.send({"n": 2})
                assert (await s.recv())["msg"] == {"n": 2}
            assert client.connected_peers() == [server.peer_id]
            network = client._host.get_network()
            assert len(network.get_connections(ID.from_base58(server.peer_id))) == 1

    run(main)


def test_concurrent_sessions_share_one_connection() -> None:
    async def slow_echo(session: Session) -> None:
        msg = await session.recv()
        await trio.sleep(0.05)  # overlap the sessions on purpose
        await session.send({"type": "echo", "msg": msg})

    async def main() -> None:
        replies: dict[int, dict[str, Any]] = {}

        async def one(client: Node, server: Node, i: int) -> None:
            replies[i] = await request(client, server, {"i": i})

        async with pair(slow_echo) as (server, client):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, client, server, i)
            assert {i: r["msg"]["i"] for i, r in replies.items()} == {i: i for i in range(20)}
            assert client.connected_peers() == [server.peer_id]

    run(main)


def test_wrong_peer_id_for_address_is_refused() -> None:
    """Noise checks the key behind the address: nobody can answer for another peer id."""

    async def main() -> None:
        async with pair() as (server, client):
            impostor = peer_id_for_key(OTHER_KEY)
            with pytest.raises(ConnectFailed):
                async with client.open_session(impostor, server.listen_addrs, ECHO):
                    pass
            assert await request(client, server, {"n": 1}) is not None

    run(main)


def test_unknown_protocol_is_connect_failed() -> None:
    async def main() -> None:
        async with pair() as (server, client):
            with pytest.raises(ConnectFailed):
                async with client.open_session(server.peer_id, server.listen_addrs, "/nope/1.0.0"):
                    pass

    run(main)


def test_oversized_frame_refused_and_server_keeps_serving() -> None:
    seen: list[BaseException] = []

    async def handler(session: Session) -> None:
        try:
            await echo(session)
        except P2PError as exc:
            seen.append(exc)
            raise

    async def main() -> None:
        async with pair(handler) as (server, client):
            # Only the header and a few bytes are sent: the length alone must be refused.
            reply = await send_raw(client, server, raw(b'{"x": 1}', length=MAX_FRAME + 1))
            assert reply["type"] == "error" and reply["code"] == "frame_too_large"
            assert isinstance(seen[-1], FrameTooLarge)

            # Our side refuses to send one too, before anything hits the wire.
            async with client.open_session(server.peer_id, server.listen_addrs, ECHO) as s:
                with pytest.raises(FrameTooLarge):
                    await s.send({"pad": "x" * MAX_FRAME})

            assert (await request(client, server, {"n": 1}))["msg"] == {"n": 1}

    run(main)


def test_large_frame_within_limit_passes() -> None:
    async def main() -> None:
        async with pair() as (server, client):
            big = {"pad": "y" * (MAX_FRAME - 1000)}  # room for the echo envelope
            reply = await request(client, server, big)
            assert reply["msg"] == big

    run(main)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw(b"\x00\xffgarbage\x80"), "frame_malformed"),
        (raw(b"hello, not json"), "frame_malformed"),
        (raw(b'["an", "array"]'), "frame_malformed"),
        (raw(b"[" * 200_000), "frame_malformed"),
        (b"GET / HTTP/1.1\r\n\r\n", "frame_too_large"),  # "GET " read as a length
        (raw(b'{"cut": "short"}')[:9], "stream_closed"),
    ],
)
def test_malformed_input_refused_and_server_keeps_serving(data: bytes, code: str) -> None:
    async def main() -> None:
        async with pair() as (server, client):
            reply = await send_raw(client, server, data)
            assert reply["type"] == "error" and reply["code"] == code
            assert (await request(client, server, {"n": 2}))["msg"] == {"n": 2}

    run(main)


def test_handler_crash_is_reported_not_fatal() -> None:
    async def crashing(session: Session) -> None:
        msg = await session.recv()
        if msg.get("crash"):
            raise RuntimeError("secret internal detail")
        await session.send({"type": "ok"})

    async def main() -> None:
        async with pair(crashing) as (server, client):
            reply = await request(client, server, {"crash": True})
            assert reply == {"type": "error", "code": "internal", "message": "internal error"}
            assert await request(client, server, {"crash": False}) == {"type": "ok"}

    run(main)


def test_frozen_client_hits_peer_timeout() -> None:
    timeout = 0.5
    seen: list[tuple[type[BaseException], float]] = []

    async def handler(session: Session) -> None:
        start = time.monotonic()
        try:
            msg = await session.recv()
        except P2PError as exc:
            seen.append((type(exc), time.monotonic() - start))
            raise
        await session.send({"type": "echo", "msg": msg})

    async def main() -> None:
        async with pair(handler, timeout=timeout) as (server, client):
            async with client.open_session(server.peer_id, server.listen_addrs, ECHO) as s:
                await s._stream.write(raw(b'{"half": "a frame"}')[:10])
                # Send nothing more and keep the stream open: the server must give up.
                reply = await s.recv(timeout=timeout + 3)
            assert reply["code"] == "timeout"
            ((kind, elapsed),) = seen
            assert kind is PeerTimeout
            assert timeout <= elapsed < timeout + 0.5
            assert (await request(client, server, {"n": 3}))["msg"] == {"n": 3}

    run(main)


def test_frozen_server_hits_peer_timeout_and_shutdown_stays_bounded() -> None:
    async def frozen(session: Session) -> None:
        await session.recv()
        await trio.sleep(3600)

    async def main() -> None:
        async with pair(frozen) as (server, client):
            async with client.open_session(server.peer_id, server.listen_addrs, ECHO) as s:
                await s.send({"n": 1})
                start = time.monotonic()
                with pytest.raises(PeerTimeout):
                    await s.recv(timeout=0.3)
                assert time.monotonic() - start < 1.0
            stop_started = time.monotonic()
        assert time.monotonic() - stop_started < 3.0

    run(main)


def test_connect_to_silent_listener_times_out() -> None:
    """A TCP peer that accepts and never speaks must not hold open_session past its timeout."""

    async def main() -> None:
        async def silent(stream: trio.SocketStream) -> None:
            await trio.sleep(3600)

        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            addrs = [f"/ip4/127.0.0.1/tcp/{port}"]
            async with Node.start(CLIENT_KEY) as client:
                start = time.monotonic()
                with pytest.raises(PeerTimeout):
                    async with client.open_session(
                        peer_id_for_key(OTHER_KEY), addrs, ECHO, timeout=0.5
                    ):
                        pass
                assert time.monotonic() - start < 1.5
            nursery.cancel_scope.cancel()

    run(main)


def test_taken_port_is_refused_not_shared() -> None:
    async def main() -> None:
        async with Node.start(SERVER_KEY) as server:
            port = int(server.listen_addrs[0].rsplit("/", 1)[1])
            with pytest.raises(ListenFailed):
                async with Node.start(OTHER_KEY, port):
                    pass

    run(main)


def test_failed_dial_does_not_blacklist_the_peer() -> None:
    """libp2p refuses to redial a peer for 60 s after a failure; a provider that was down
    must be reachable as soon as it is back."""

    async def main() -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        addrs = [f"/ip4/127.0.0.1/tcp/{port}"]
        async with Node.start(CLIENT_KEY) as client:
            with pytest.raises(ConnectFailed):
                async with client.open_session(peer_id_for_key(SERVER_KEY), addrs, ECHO, timeout=5):
                    pass
            async with Node.start(SERVER_KEY, port) as server:
                server.serve(ECHO, echo)
                assert (await request(client, server, {"back": True}))["msg"] == {"back": True}

    run(main)


def test_plaintext_peer_cannot_connect_either_way() -> None:
    """Our host offers only Noise: a host speaking only /plaintext/2.0.0 gets no connection."""

    async def main() -> None:
        key_pair = create_secp256k1_key_pair(OTHER_KEY)
        listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
        plain = new_host(
            key_pair=key_pair,
            sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
            muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
            listen_addrs=[listen],
        )
        async with pair() as (server, client), plain.run([listen]):
            server_maddrs = [multiaddr.Multiaddr(a) for a in server.listen_addrs]
            with pytest.raises(SwarmException):
                await plain.connect(PeerInfo(ID.from_base58(server.peer_id), server_maddrs))
            assert server.connected_peers() == []

            plain_addrs = [str(a) for a in plain.get_transport_addrs()]
            with pytest.raises(ConnectFailed):
                async with client.open_session(str(plain.get_id()), plain_addrs, ECHO):
                    pass
            assert client.connected_peers() == []

    run(main)


# --------------------------------------------------------------------------- property test

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
hostile_bytes = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(raw),
    st.tuples(st.binary(max_size=300), st.integers(0, 2**32 - 1)).map(lambda t: raw(t[0], t[1])),
    st.text(max_size=100).map(lambda t: raw(t.encode())),
    json_values.map(lambda v: raw(json.dumps(v).encode())),
)


def test_random_bytes_never_break_the_server() -> None:
    """Hypothesis drives a synchronous test, so the hosts live in a trio thread we call into."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def host_nodes() -> None:
        try:
            async with pair() as (server, client):
                state.update(server=server, client=client, stop=trio.Event())
                state["token"] = trio.lowlevel.current_trio_token()
                ready.set()
                with trio.fail_after(TEST_DEADLINE):
                    await state["stop"].wait()
        finally:
            ready.set()

    def run_hosts() -> None:
        try:
            trio.run(host_nodes)
        except BaseException as exc:  # reported by the assertion below, not lost in the thread
            state["error"] = exc

    thread = threading.Thread(target=run_hosts, daemon=True)
    thread.start()
    assert ready.wait(10) and "token" in state
    server, client = state["server"], state["client"]

    outcomes: list[str] = []

    async def attack(data: bytes) -> None:
        with trio.fail_after(10):
            reply = await send_raw(client, server, data)
            assert reply["type"] in ("echo", "error")
            outcomes.append(reply.get("code", "echo"))
            good = {"still": "serving"}
            assert (await request(client, server, good))["msg"] == good

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hostile_bytes)
    def check(data: bytes) -> None:
        trio.from_thread.run(attack, data, trio_token=state["token"])

    try:
        check()
    finally:
        if thread.is_alive():
            trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
        thread.join(10)
    assert not thread.is_alive()
    assert "error" not in state, state.get("error")
    assert len(outcomes) >= 50


def test_a_restarting_client_reconnects_every_time_without_leaking() -> None:
    """A consumer that runs `mesh ask` again and again is a new Node each time with the same
    key. Each stopped Node must close its connections: otherwise its sockets leak and, after
    8, the server's connection tracker refuses that peer (seen with py-libp2p 0.8.1)."""
    import os

    async def main() -> None:
        async with Node.start(SERVER_KEY) as server:
            server.serve(ECHO, echo, timeout=5)
            fds = []
            for i in range(12):
                async with Node.start(CLIENT_KEY) as client:
                    reply = await request(client, server, {"n": i})
                    assert reply["msg"] == {"n": i}
                fds.append(len(os.listdir("/proc/self/fd")))
            # The server's side of the last connection closes asynchronously: wait (bounded)
            # for the count to come back to where the steady state was, then compare.
            with trio.move_on_after(2):
                while len(os.listdir("/proc/self/fd")) > min(fds[2:]) + 2:
                    await trio.sleep(0.02)
            fds.append(len(os.listdir("/proc/self/fd")))
            assert max(fds[2:]) - min(fds[2:]) <= 2, f"sockets leak: {fds}"

    run(main)
