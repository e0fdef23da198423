"""Meshmarket's peer-to-peer adapter: the only module that touches libp2p and trio.

It owns
- host construction (TCP, Noise-only security, yamux-only muxing, one connection per peer),
- identity: an Ethereum private key is the libp2p identity, and any peer id maps back to the
  checksummed Ethereum address whose key authenticated it in the Noise handshake,
- framing: 4-byte big-endian length + UTF-8 JSON object, with hard size and time limits,
- a small service abstraction: `Node.serve(protocol, handler)` on one side,
  `Node.open_session(...)` on the other, both exposing the same `Session` API,
- the limits a serving node keeps (`Limits`: connections, sessions, idle connections), shedding
  load with a `busy` error frame instead of queueing,
- the fixes py-libp2p 0.8.1 needs to stay up, applied in one place (`_patch_libp2p`, `_PeerStore`).

Callers see peer ids, addresses and multiaddrs as `str` and messages as `dict`, so the
transport can be replaced without touching them.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import math
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol, cast

import multiaddr
import trio
from eth_keys import keys as eth_keys
from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import Secp256k1PublicKey, create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.io.exceptions import IOException
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStore
from libp2p.rcmgr import Direction
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from meshmarket.mesh.errors import (
    ConnectFailed,
    FrameMalformed,
    FrameTooLarge,
    InvalidPeerId,
    ListenFailed,
    P2PError,
    PeerTimeout,
    ProtocolError,
    StreamClosed,
)
from meshmarket.mesh.protocol import MAX_DEPTH, MAX_FRAME, MAX_INT_DIGITS, error_frame

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Seconds allowed for one frame read/write or for connect + stream setup."""

# Teardown (closing a stream, stopping the host) must never hang the caller.
CLOSE_TIMEOUT = 2.0
#: How long one connection may take to close at shutdown (see _close_swarm).
CONN_CLOSE_GRACE = 0.03

_HEADER = struct.Struct(">I")


# --------------------------------------------------------------------------- identity


def _key_pair(private_key: bytes) -> KeyPair:
    return create_new_key_pair(bytes(private_key))


def peer_id_for_key(private_key: bytes) -> str:
    """Peer id (`16Uiu2…`) of the host whose identity is this Ethereum private key."""
    return str(ID.from_pubkey(_key_pair(private_key).public_key))


def address_from_peer_id(peer_id: str) -> str:
    """Checksummed Ethereum address of the secp256k1 key embedded in `peer_id`.

    Applied to `Session.remote_peer_id` this names the account whose key signed the Noise
    handshake, which is what lets a consumer check it talks to a registered provider.
    """
    try:
        public_key = ID.from_base58(peer_id).extract_public_key()
    except ValueError as exc:
        raise InvalidPeerId(f"not a peer id: {peer_id!r}") from exc
    if not isinstance(public_key, Secp256k1PublicKey):
        raise InvalidPeerId(f"peer id {peer_id} does not embed a secp256k1 key")
    # libp2p serialises secp256k1 keys compressed; Ethereum hashes the uncompressed form.
    return eth_keys.PublicKey.from_compressed_bytes(public_key.to_bytes()).to_checksum_address()


# --------------------------------------------------------------------------- framing


class FrameStream(Protocol):
    """The part of a libp2p stream the framing needs (lets tests use in-memory fakes)."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN/Infinity, which are not JSON and break other parsers.
    raise ValueError(f"non-standard JSON constant {name}")


def encode_frame(obj: dict[str, Any], max_size: int = MAX_FRAME) -> bytes:
    """Header + body for `obj`; raises FrameMalformed / FrameTooLarge instead of sending junk."""
    if not isinstance(obj, dict):
        raise FrameMalformed(f"a frame must be a JSON object, got {type(obj).__name__}")
    try:
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise FrameMalformed(f"cannot encode frame: {exc}") from exc
    if len(body) > max_size:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds {max_size}")
    return _HEADER.pack(len(body)) + body


# Brackets inside JSON strings do not nest; possessive quantifiers keep the scan linear.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_STEP = [1 if c in b"[{" else -1 if c in b"]}" else 0 for c in range(256)]


def _nesting_depth(body: bytes) -> int:
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


class _OverLimit(ValueError):
    """A JSON value the parser could read but the protocol never needs (told apart from bad JSON)."""


def _bounded_int(literal: str) -> int:
    # Python refuses >4,300 digits with a hint about sys.set_int_max_str_digits(), which means
    # nothing to a remote peer; no protocol value needs more than 20.
    if (digits := len(literal.lstrip("-"))) > MAX_INT_DIGITS:
        raise _OverLimit(f"a number has {digits} digits; numbers have at most {MAX_INT_DIGITS}")
    return int(literal)


def _finite_float(literal: str) -> float:
    # float("1e400") is inf: it could never be sent back (allow_nan=False) and is no number.
    value = float(literal)
    if not math.isfinite(value):
        shown = literal if len(literal) <= 24 else literal[:24] + "…"
        raise _OverLimit(f"the number {shown} is out of range")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(obj: Any, path: str = "") -> str | None:
    """Where (a field path) the first string, key or value, that is not valid Unicode sits.

    JSON may escape half of a surrogate pair (`"\\ud800"`); the result is no text: it cannot be
    encoded, hashed, logged or sent back. Nesting is bounded (MAX_DEPTH) before this runs."""
    if isinstance(obj, str):
        return path or "(the body)" if _SURROGATE.search(obj) else None
    if isinstance(obj, dict):
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if _SURROGATE.search(key):
                return f"a key of {path or 'the body'}"
            if (found := _lone_surrogate(value, where)) is not None:
                return found
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            if (found := _lone_surrogate(value, f"{path}[{i}]")) is not None:
                return found
    return None


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def decode_body(body: bytes) -> dict[str, Any]:
    """The JSON object in a frame body; FrameMalformed (not UTF-8, not JSON, not an object, nested
    deeper than MAX_DEPTH, a number over its limits) or ProtocolError `bad_request` (a string
    that is not valid Unicode), each with a sentence the peer can act on."""
    # eth_account imports py_ecc, which raises the recursion limit to 100000: json.loads
    # of ~100k nested "[" then overflows the C stack and kills the process (seen here).
    # So deep nesting is refused before the parser sees it (~75 ms for a hostile 1 MiB).
    if (depth := _nesting_depth(body)) > MAX_DEPTH:
        raise FrameMalformed(f"frame body nests {depth} deep, limit {MAX_DEPTH}")
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_int=_bounded_int,
                         parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise FrameMalformed(f"frame body is not UTF-8 (byte {exc.start}): send UTF-8 JSON") from None
    except _OverLimit as exc:
        raise FrameMalformed(f"frame body: {exc}") from None
    except ValueError as exc:
        raise FrameMalformed(f"frame body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameMalformed(f"a frame must be a JSON object ({{...}}), got {_JSON_TYPES.get(type(obj), 'something else')}")
    # A lone surrogate can only arrive as a \u escape: UTF-8 decoding refuses encoded ones.
    if b"\\u" in body and (where := _lone_surrogate(obj)) is not None:
        where = where if len(where) <= 80 else where[:80] + "…"
        raise ProtocolError("bad_request", f"{where} holds a lone surrogate (an unpaired \\ud800-\\udfff escape): "
                                           "send valid Unicode")
    return obj


async def _read_exactly(stream: FrameStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except IOException as exc:  # libp2p's StreamEOF / StreamReset / StreamError
            raise StreamClosed(f"stream ended after {len(buf)} of {n} bytes") from exc
        if not chunk:
            raise StreamClosed(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(
    stream: FrameStream, timeout: float = DEFAULT_TIMEOUT, max_size: int = MAX_FRAME
) -> dict[str, Any]:
    """Read exactly one frame.

    One deadline covers every read of the frame, so a peer trickling a byte at a time
    cannot hold us longer than `timeout` either. The length is checked before the body
    is read, so an oversized frame costs 4 bytes, not `length`.
    """
    try:
        with trio.fail_after(timeout):
            (length,) = _HEADER.unpack(await _read_exactly(stream, _HEADER.size))
            if length > max_size:
                raise FrameTooLarge(f"peer announced a {length}-byte frame, limit {max_size}")
            body = await _read_exactly(stream, length)
    except trio.TooSlowError:
        raise PeerTimeout(f"no complete frame within {timeout} s") from None
    return decode_body(body)


async def write_frame(
    stream: FrameStream,
    obj: dict[str, Any],
    timeout: float = DEFAULT_TIMEOUT,
    max_size: int = MAX_FRAME,
) -> None:
    """Write one frame; a peer that stops reading (full yamux window) costs at most `timeout`."""
    data = encode_frame(obj, max_size)
    try:
        with trio.fail_after(timeout):
            await stream.write(data)
    except trio.TooSlowError:
        raise PeerTimeout(f"peer did not take a frame within {timeout} s") from None
    except IOException as exc:
        raise StreamClosed(f"cannot write frame: {exc!r}") from exc


# --------------------------------------------------------------------------- sessions


class Session:
    """One request/response conversation on its own stream, seen from either side."""

    def __init__(self, stream: INetStream, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        # The muxed connection's peer id is the one proven by the Noise handshake.
        self.remote_peer_id: str = str(stream.muxed_conn.peer_id)
        self.remote_address: str = address_from_peer_id(self.remote_peer_id)

    async def recv(self, timeout: float | None = None, max_size: int = MAX_FRAME) -> dict[str, Any]:
        """Next frame from the peer; `timeout=None` means the session's default."""
        return await read_frame(self._stream, self._pick(timeout), max_size)

    async def send(
        self, obj: dict[str, Any], timeout: float | None = None, max_size: int = MAX_FRAME
    ) -> None:
        await write_frame(self._stream, obj, self._pick(timeout), max_size)

    def _pick(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout


Handler = Callable[[Session], Awaitable[None]]


async def _close_stream(stream: INetStream, *, reset: bool = False) -> None:
    # Shielded so it also runs while the node is being cancelled, bounded so it cannot hang.
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
        try:
            if reset:
                await stream.reset()
            else:
                await stream.close()
        except Exception:
            logger.debug("closing stream failed, resetting it", exc_info=True)
            await stream.reset()


# --------------------------------------------------------------------------- py-libp2p fixes

#: The py-libp2p releases whose source `_patch_libp2p` and `_PeerStore` were checked against. Another
#: version is left unpatched (with a warning) until someone reads its swarm.py and peerstore.py
#: again; `test_libp2p_fixes_are_applied` then fails on purpose.
LIBP2P_CHECKED = ("0.8.1",)


def _libp2p_version() -> str:
    try:
        return importlib.metadata.version("libp2p")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _patch_libp2p() -> bool:
    """Make py-libp2p give back an inbound-connection slot when the connection closes (True if
    applied). The one place Meshmarket changes libp2p's code (docs/P2P_NOTES.md, pitfall 15).

    Swarm._handle_inbound_connection (libp2p/network/swarm.py:1947) takes one token of
    `_inbound_limiter`, a CapacityLimiter of max_connections - min_connections = 250 tokens
    (swarm.py:348-353), per accepted TCP connection, and returns it when
    _do_handle_inbound_connection returns (swarm.py:1995-1999). After a successful upgrade that
    method parks on `self.manager.wait_finished()` (swarm.py:2058-2060): until the swarm stops,
    not until the connection closes. Every connection ever accepted keeps its token and its task,
    and the 251st is closed unread (swarm.py:1981-1992, logged at DEBUG only): the node refuses
    everyone until it restarts.

    The replacement does what the original does for TCP (gate check, upgrade, close on failure)
    but parks on the muxed connection's `event_closed`, which yamux sets on every close path
    (stream_muxer/yamux/yamux.py:814 close(), :1730 _cleanup_on_error() on EOF or reset). It must
    stay parked while the connection lives: trio.serve_listeners closes the socket when the
    handler returns. Pre-multiplexed transports (QUIC, unused here) keep the original.
    """
    original = Swarm._do_handle_inbound_connection
    if getattr(original, "_meshmarket_patched", False):
        return True
    try:
        source = inspect.getsource(original)
    except (OSError, TypeError):
        source = ""
    version = _libp2p_version()
    if version not in LIBP2P_CHECKED or "self.manager.wait_finished()" not in source:
        logger.warning("py-libp2p %s: inbound-connection fix not applied (checked against %s); "
                       "re-read swarm.py, see docs/P2P_NOTES.md", version, ", ".join(LIBP2P_CHECKED))
        return False

    async def _do_handle_inbound_connection(self, read_write_closer, maddr, failure_event):  # type: ignore[no-untyped-def]
        if isinstance(read_write_closer, IMuxedConn):
            return await original(self, read_write_closer, maddr, failure_event)
        remote = self._build_remote_multiaddr(read_write_closer)
        if remote is not None and not await self.connection_gate.is_allowed(remote):
            with suppress(Exception):
                await read_write_closer.close()
            return
        raw_conn = RawConnection(read_write_closer, False)
        try:
            muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        except Exception as exc:
            logger.debug("inbound connection on %s failed: %r", maddr, exc)
            with suppress(Exception):
                await raw_conn.close()
            return
        closed = getattr(muxed_conn, "event_closed", None)
        if closed is None:  # a muxer without the event: libp2p's own behaviour
            await self.manager.wait_finished()
        else:
            await closed.wait()

    _do_handle_inbound_connection._meshmarket_patched = True  # type: ignore[attr-defined]
    Swarm._do_handle_inbound_connection = _do_handle_inbound_connection  # type: ignore[method-assign]
    return True


LIBP2P_PATCHED = _patch_libp2p()

#: Peers whose identify data (addresses, protocols, keys) a host keeps: libp2p's default. The cap
#: is what drops peers that left (the peerstore's TTL cleanup task is never started).
MAX_PEERSTORE_PEERS = 1000


class _PeerStore(PeerStore):
    """libp2p's PeerStore, except that the host's own entry is never evicted.

    py-libp2p 0.8.1 caps the peerstore at `max_peers` by evicting entries without addresses first
    (libp2p/peer/peerstore.py:201-224, run from add_addrs whenever identify stores a peer's
    addresses). The host's own entry holds only its key pair, so it went first, at the 1001st
    identified peer; the next identify then failed in get_public_key() (host/basic_host.py) and
    the exception stopped the swarm (docs/P2P_NOTES.md, pitfall 16).
    """

    def __init__(self, own_id: ID, max_peers: int = MAX_PEERSTORE_PEERS) -> None:
        super().__init__(max_peers=max_peers)
        self._own_id = own_id

    def _enforce_peer_limit(self) -> None:
        own = self.peer_data_map.pop(self._own_id, None)
        try:
            super()._enforce_peer_limit()
        finally:
            if own is not None:
                self.peer_data_map[self._own_id] = own


async def _no_auto_connect() -> None:
    return None


def _forget_disconnect(peer_id: ID) -> None:
    return None


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """What a node accepts from the peers that dial it. Past a limit a new session is answered at
    once with a `busy` error frame (never queued), and an over-limit connection is closed
    `busy_linger` seconds after that answer, once it has been read. docs/PROTOCOL.md, part 2, lists
    them; libp2p's own hard caps sit above (250 inbound connections, 300 in all, 8 per peer)."""

    #: Inbound connections at once, all peers: under libp2p's 250, so the connections past it still
    #: get a `busy` answer instead of a reset.
    max_connections: int = 200
    #: Inbound connections of one peer at once: a consumer needs one; a restarting one, briefly two.
    max_connections_per_peer: int = 4
    #: Sessions (streams of a served protocol) open at once on one connection: a consumer opens
    #: two to one provider (manifest, request); a gateway running many queries on one node, more.
    max_sessions_per_connection: int = 32
    #: Sessions open at once, all connections together.
    max_sessions: int = 256
    #: An inbound connection without a session for this long is closed: its client is gone or
    #: keeps it for later (a client must then dial again). Long enough to span a consumer's
    #: openJob and draw on a public chain (a few blocks) between its manifest and request sessions.
    idle_timeout: float = 120.0
    #: How long an over-limit connection stays open after its first `busy` answer, for the answer
    #: to be read (closing at once could drop it), ...
    busy_linger: float = 2.0
    #: ... or after it was set up, if it opens no session (a slow client still gets its answer).
    over_limit_timeout: float = 10.0


class _Conn:
    """What a node knows of one connection."""

    __slots__ = ("peer", "inbound", "refusal", "refused_at", "sessions", "seen", "last_active", "closing")

    def __init__(self, peer: str, inbound: bool, now: float) -> None:
        self.peer, self.inbound = peer, inbound
        self.refusal: str | None = None  # why this over-limit connection gets `busy`
        self.refused_at: float | None = None  # when it first did
        self.sessions = 0
        self.seen = self.last_active = now
        self.closing = False


def _has_open_streams(conn: INetConn) -> bool:
    # SwarmConn.streams holds streams from before protocol negotiation on; yamux's map also has
    # streams not handed over yet, and closed ones until its 30 s sweep (hence the `closed` test).
    streams = getattr(conn.muxed_conn, "streams", {})
    return bool(conn.get_streams()) or any(not getattr(s, "closed", False) for s in list(streams.values()))


class _Admission(INotifee):
    """A node's inbound bookkeeping against its Limits: which connections are admitted, how many
    sessions each has open, when each was last used; and the sweep closing idle and over-limit
    connections. A libp2p notifee, so it sees every connection as it is registered."""

    def __init__(self, swarm: Swarm, limits: Limits) -> None:
        self.swarm, self.limits = swarm, limits
        self.conns: dict[INetConn, _Conn] = {}
        self.sessions = 0

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self.conn(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.conns.pop(conn, None)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    def conn(self, conn: INetConn) -> _Conn:
        """The record of `conn`, admitting it (or not) the first time it is seen."""
        if (known := self.conns.get(conn)) is not None:
            return known
        peer = str(conn.muxed_conn.peer_id)
        record = _Conn(peer, getattr(conn, "direction", None) == Direction.INBOUND, trio.current_time())
        if record.inbound:
            live = [c for k, c in self.conns.items() if c.inbound and c.refusal is None and not k.is_closed]
            mine = sum(c.peer == peer for c in live)
            if len(live) >= self.limits.max_connections:
                record.refusal = (f"this node has {len(live)} connections open, its limit: retry in a few seconds "
                                  "or use another provider")
            elif mine >= self.limits.max_connections_per_peer:
                record.refusal = (f"you have {mine} connections open to this node, its limit per peer: "
                                  "send your sessions over one connection")
        self.conns[conn] = record
        return record

    def open_session(self, conn: INetConn) -> _Conn | str:
        """The connection's record with one more session counted, or why not (a `busy` message)."""
        record = self.conn(conn)
        if record.refusal is not None:
            if record.refused_at is None:
                record.refused_at = trio.current_time()
            return record.refusal
        if record.sessions >= self.limits.max_sessions_per_connection:
            return (f"{record.sessions} sessions are open on this connection, its limit: wait for one to end "
                    "or open another connection")
        if self.sessions >= self.limits.max_sessions:
            return f"this node has {self.sessions} sessions open, its limit: retry in a few seconds"
        record.sessions += 1
        self.sessions += 1
        record.last_active = trio.current_time()
        return record

    def close_session(self, record: _Conn) -> None:
        record.sessions -= 1
        self.sessions -= 1
        record.last_active = trio.current_time()

    def due(self, now: float) -> list[INetConn]:
        """Inbound connections to close now (marked closing), after forgetting the closed ones."""
        live = {c for conns in list(self.swarm.connections.values()) for c in conns if not c.is_closed}
        for gone in [c for c in self.conns if c not in live]:
            del self.conns[gone]
        due = []
        for conn in live:
            record = self.conn(conn)
            if not record.inbound or record.closing or record.sessions:
                continue
            if record.refusal is not None:
                expired = (now - record.seen >= self.limits.over_limit_timeout
                           or record.refused_at is not None and now - record.refused_at >= self.limits.busy_linger)
            else:
                expired = now - record.last_active >= self.limits.idle_timeout and not _has_open_streams(conn)
            if expired:
                record.closing = True
                due.append(conn)
        return due

    async def sweep(self) -> None:
        """Forever: close idle inbound connections and over-limit ones whose `busy` was read."""
        tick = min(1.0, self.limits.idle_timeout / 4, self.limits.busy_linger / 2)
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(tick)
                try:
                    due = self.due(trio.current_time())
                except Exception:  # it runs in libp2p's nursery: a bug here must not stop the swarm
                    logger.exception("connection sweep failed")
                    continue
                for conn in due:
                    nursery.start_soon(_close_conn, conn)


async def _close_conn(conn: INetConn) -> None:
    # The full CLOSE_TIMEOUT, not the 30 ms of shutdown: SwarmConn.close() removes the connection
    # from the swarm (and its libp2p slots) only after yamux's close slept 0.1 s; cut short, the
    # dead connection would stay registered and counted.
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await conn.close()
        except Exception:
            logger.debug("closing an idle connection failed", exc_info=True)


# --------------------------------------------------------------------------- node


def _new_host(key_pair: KeyPair, listen_addr: multiaddr.Multiaddr, max_connections_per_peer: int = 1) -> IHost:
    # sec_opt replaces libp2p's default table, which also offers TLS, secio and plaintext.
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        listen_addrs=[listen_addr],
        peerstore_opt=_PeerStore(ID.from_pubkey(key_pair.public_key)),
        # With the default (3) every dial races extra connections and waits 250 ms.
        connection_config=ConnectionConfig(max_connections_per_peer=max_connections_per_peer),
    )
    # Meshmarket nodes dial only on purpose. libp2p's auto-connector redials every peer it has
    # met, on a timer and on each disconnect: a provider then dials a consumer's old ephemeral
    # address, and while that dial is in flight (max 1 connection per peer) the consumer's
    # fresh inbound connection fails. Its watermarks cannot turn it off without also turning
    # on pruning, so the dial step itself is replaced, on this swarm only.
    connector = cast(Swarm, host.get_network()).auto_connector
    connector.maybe_connect = _no_auto_connect  # type: ignore[method-assign]
    # Its disconnect record (one entry per peer that ever disconnected) is pruned only inside the
    # dial step replaced above (network/auto_connector.py:456, :611): it would grow forever.
    connector.record_disconnect = _forget_disconnect  # type: ignore[method-assign]
    return host


def _ensure_port_free(ip: str, port: int) -> None:
    # libp2p listens with SO_REUSEPORT, so a second node on a taken port starts silently
    # and the kernel splits inbound connections between the two. A probe bound without
    # SO_REUSEPORT fails with EADDRINUSE instead.
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((ip, port))
    except OSError as exc:
        raise ListenFailed(f"cannot listen on {ip}:{port}: {exc}") from exc
    finally:
        probe.close()


def _dial_addr(addr: str) -> multiaddr.Multiaddr:
    try:
        ma = multiaddr.Multiaddr(addr)
    except Exception as exc:  # multiaddr raises several unrelated types for bad input
        raise ConnectFailed(f"bad multiaddr {addr!r}: {exc}") from exc
    # The peer id is given separately and enforced by Noise; a /p2p suffix is redundant.
    return ma.decapsulate_code(multiaddr.protocols.P_P2P)


async def _close_swarm(swarm: Swarm) -> None:
    """Close every connection at once, then the swarm (listeners). py-libp2p's yamux close ends
    with a fixed 100 ms sleep, reached twice per connection: one by one, a consumer that talked
    to five providers would spend a second shutting down."""

    async def close(conn) -> None:
        # The sleeps come after the GO_AWAY frame, the socket close and the callbacks: cutting
        # them short loses nothing here, because swarm.close() below forgets every connection.
        with trio.move_on_after(CONN_CLOSE_GRACE):
            try:
                await conn.close()
            except Exception:
                logger.debug("closing a connection failed", exc_info=True)

    async with trio.open_nursery() as nursery:
        for conns in list(swarm.connections.values()):
            for conn in list(conns):
                nursery.start_soon(close, conn)
    try:
        await swarm.close()
    except Exception:
        logger.debug("closing the swarm failed", exc_info=True)


#: Errors of a stream opened on a connection that was closing under us (a server closes idle ones).
_STALE_CONNECTION = (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)

#: An error frame's message is cut to this many characters (it is a sentence, not a dump).
MAX_ERROR_MESSAGE = 500


class Node:
    """A running libp2p host with Meshmarket's identity, security, framing rules and limits."""

    def __init__(self, host: IHost, limits: Limits | None = None) -> None:
        self._host = host
        self.peer_id: str = str(host.get_id())
        self.address: str = address_from_peer_id(self.peer_id)
        self.limits = limits or Limits()
        self._admission = _Admission(cast(Swarm, host.get_network()), self.limits)
        host.get_network().register_notifee(self._admission)

    @classmethod
    @asynccontextmanager
    async def start(
        cls, private_key: bytes, listen_port: int = 0, *, listen_ip: str = "127.0.0.1",
        max_connections_per_peer: int = 1, limits: Limits | None = None,
    ) -> AsyncIterator[Node]:
        """Run a host listening on `listen_ip:listen_port` (0 = any free port) until exit.

        `max_connections_per_peer` is libp2p's own setting. Dialing nodes keep 1 (with more, every
        dial waits 250 ms for a second connection). A server should allow a few: a client that
        restarts reconnects while its old connection is still registered, and with a limit of 1
        libp2p may keep the stale connection and drop the new one. `limits` (default `Limits()`)
        bounds what peers that dial this node may hold open.
        """
        if listen_port:
            _ensure_port_free(listen_ip, listen_port)
        listen_addr = multiaddr.Multiaddr(f"/ip4/{listen_ip}/tcp/{listen_port}")
        host = _new_host(_key_pair(private_key), listen_addr, max_connections_per_peer)
        body_error: BaseException | None = None
        with trio.CancelScope() as scope:
            async with host.run([listen_addr]):
                node = cls(host, limits)
                await node._start_sweep()
                try:
                    yield node
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                    # host.run's teardown leaves the listener and established connections
                    # open (their sockets leak until garbage collection), so the remote keeps
                    # counting them and, after 8, refuses this peer. Close the swarm
                    # explicitly, bounded and shielded.
                    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                        await _close_swarm(cast(Swarm, host.get_network()))
        if scope.cancelled_caught:
            logger.warning("p2p host did not stop within %s s; abandoned", CLOSE_TIMEOUT)
            # The cancelled teardown swallowed the caller's exception; do not lose it.
            if body_error is not None:
                raise body_error

    async def _start_sweep(self) -> None:
        # In the swarm's own background nursery: it stops with the swarm, and the caller's
        # exceptions are not wrapped in one more exception group.
        swarm = cast(Swarm, self._host.get_network())
        await swarm.event_background_nursery_created.wait()
        cast(trio.Nursery, swarm.background_nursery).start_soon(self._admission.sweep)

    @property
    def listen_addrs(self) -> list[str]:
        """Real listen multiaddrs (port resolved), without the /p2p suffix."""
        return [str(a) for a in self._host.get_transport_addrs()]

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self._host.get_connected_peers()]

    def serve(self, protocol: str, handler: Handler, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run `handler(session)` for every inbound stream of `protocol`, within the node's Limits.

        `timeout` is the default for each recv/send of the session. A stream past a limit is
        answered `busy` without reaching the handler. A ProtocolError or P2PError the handler
        raises becomes an error frame with its code and sentence; anything else is logged and
        answered `internal`. Nothing reaches libp2p.
        """

        async def on_stream(stream: INetStream) -> None:
            try:
                admitted = self._admission.open_session(cast(INetConn, stream.swarm_conn))
                if isinstance(admitted, str):
                    logger.info("%s session from %s refused: busy %s", protocol, stream.muxed_conn.peer_id, admitted)
                    await self._send_error(stream, "busy", admitted)
                    return
                try:
                    await self._handle(protocol, handler, stream, timeout)
                finally:
                    self._admission.close_session(admitted)
            finally:
                await _close_stream(stream)

        self._host.set_stream_handler(TProtocol(protocol), on_stream)

    async def _handle(self, protocol: str, handler: Handler, stream: INetStream, timeout: float) -> None:
        try:
            await handler(Session(stream, timeout))
        except (P2PError, ProtocolError) as exc:
            # A refusal or a broken frame: the peer gets the code and the sentence.
            logger.info("%s session from %s refused: %s %s", protocol, stream.muxed_conn.peer_id, exc.code, exc)
            await self._send_error(stream, exc.code, str(exc))
        except Exception:
            logger.exception("%s handler crashed", protocol)
            # The message stays generic: internals are not the remote peer's business.
            await self._send_error(stream, "internal", "internal error")

    @staticmethod
    async def _send_error(stream: INetStream, code: str, message: str) -> None:
        # The sentence may quote what the peer sent: keep it short and encodable whatever it holds.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE - 1] + "…"
        try:
            frame = error_frame(code, message)
        except ValueError:  # a code the protocol does not define: a bug here, not the peer's business
            logger.error("undocumented error code %r (%s) answered as internal", code, message)
            frame = error_frame("internal", "internal error")
        try:
            await write_frame(stream, frame, timeout=CLOSE_TIMEOUT)
        except P2PError:
            logger.debug("could not deliver error frame %s", code)

    async def _open_stream(self, pid: ID, addrs: list[multiaddr.Multiaddr], protocol: str) -> INetStream:
        """A new stream to `pid`, dialing only if not connected. A connection reused from earlier
        may be closing under us (servers close idle connections): then it is dropped and the peer
        dialed once more, so a client never sees a failure the server caused by tidying up."""
        for attempt in (1, 2):
            reused = pid in self._host.get_connected_peers()
            if not reused:
                # libp2p blacklists a peer for 60 s after a failed dial; the caller passing
                # addresses again is an explicit request to retry now.
                cast(Swarm, self._host.get_network()).unblock_peer(pid)
                await self._host.connect(PeerInfo(pid, addrs))
            try:
                return await self._host.new_stream(pid, [TProtocol(protocol)])
            except _STALE_CONNECTION:
                if not reused or attempt == 2:
                    raise
                logger.debug("connection to %s closed under a new stream; dialing again", pid)
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._host.get_network().close_peer(pid)
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def open_session(
        self,
        peer_id: str,
        multiaddrs: Sequence[str],
        protocol: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[Session]:
        """Open a new stream for `protocol` to `peer_id`, dialing only if not yet connected.

        `timeout` bounds connect + protocol negotiation (a retry on a connection the server just
        closed included) and is the session's default recv/send timeout. Noise refuses the
        connection unless the remote key is `peer_id`.
        """
        addrs = [_dial_addr(a) for a in multiaddrs]
        try:
            pid = ID.from_base58(peer_id)
        except ValueError as exc:
            raise ConnectFailed(f"not a peer id: {peer_id!r}") from exc
        try:
            with trio.fail_after(timeout):
                stream = await self._open_stream(pid, addrs, protocol)
        except trio.TooSlowError:
            raise PeerTimeout(f"no {protocol} stream to {peer_id} within {timeout} s") from None
        except _STALE_CONNECTION as exc:
            raise ConnectFailed(f"cannot open {protocol} to {peer_id}: {exc}") from exc
        try:
            session = Session(stream, timeout)
        except P2PError:
            await _close_stream(stream, reset=True)
            raise
        try:
            yield session
        except BaseException:
            # Reset tells the server to abandon the conversation instead of waiting for us.
            await _close_stream(stream, reset=True)
            raise
        await _close_stream(stream)
