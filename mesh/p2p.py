"""Meshmarket's peer-to-peer adapter: the only module that touches libp2p and trio.

It owns
- host construction (TCP, Noise-only security, yamux-only muxing, one connection per peer),
- identity: an Ethereum private key is the libp2p identity, and any peer id maps back to the
  checksummed Ethereum address whose key authenticated it in the Noise handshake,
- framing: 4-byte big-endian length + UTF-8 JSON object, with hard size and time limits,
- a small service abstraction: `Node.serve(protocol, handler)` on one side,
  `Node.open_session(...)` on the other, both exposing the same `Session` API.

Callers see peer ids, addresses and multiaddrs as `str` and messages as `dict`, so the
transport can be replaced without touching them.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from itertools import accumulate
from typing import Any, Protocol, cast

import multiaddr
import trio
from eth_keys import keys as eth_keys
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import Secp256k1PublicKey, create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.io.exceptions import IOException
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from mesh.errors import (
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
from mesh.protocol import MAX_DEPTH, MAX_FRAME, MAX_INT_DIGITS, error_frame

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


def _bounded_int(literal: str) -> int:
    # Python refuses >4,300 digits with a hint about sys.set_int_max_str_digits(), which means
    # nothing to a remote peer; no protocol value needs more than 20.
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number has {len(literal.lstrip('-'))} digits; numbers have at most {MAX_INT_DIGITS}")
    return int(literal)


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def decode_body(body: bytes) -> dict[str, Any]:
    # eth_account imports py_ecc, which raises the recursion limit to 100000: json.loads
    # of ~100k nested "[" then overflows the C stack and kills the process (seen here).
    # So deep nesting is refused before the parser sees it (~75 ms for a hostile 1 MiB).
    if (depth := _nesting_depth(body)) > MAX_DEPTH:
        raise FrameMalformed(f"frame body nests {depth} deep, limit {MAX_DEPTH}")
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_int=_bounded_int)
    except UnicodeDecodeError as exc:
        raise FrameMalformed(f"frame body is not UTF-8 (byte {exc.start}): send UTF-8 JSON") from None
    except ValueError as exc:
        raise FrameMalformed(f"frame body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameMalformed(f"a frame must be a JSON object ({{...}}), got {_JSON_TYPES.get(type(obj), 'something else')}")
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


# --------------------------------------------------------------------------- node


async def _no_auto_connect() -> None:
    return None


def _new_host(key_pair: KeyPair, listen_addr: multiaddr.Multiaddr, max_connections_per_peer: int = 1) -> IHost:
    # sec_opt replaces libp2p's default table, which also offers TLS, secio and plaintext.
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        listen_addrs=[listen_addr],
        # With the default (3) every dial races extra connections and waits 250 ms.
        connection_config=ConnectionConfig(max_connections_per_peer=max_connections_per_peer),
    )
    # Meshmarket nodes dial only on purpose. libp2p's auto-connector redials every peer it has
    # met, on a timer and on each disconnect: a provider then dials a consumer's old ephemeral
    # address, and while that dial is in flight (max 1 connection per peer) the consumer's
    # fresh inbound connection fails. Its watermarks cannot turn it off without also turning
    # on pruning, so the dial step itself is replaced, on this swarm only.
    cast(Swarm, host.get_network()).auto_connector.maybe_connect = _no_auto_connect  # type: ignore[method-assign]
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
        # them short loses nothing (the leak test below checks the sockets are gone).
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


class Node:
    """A running libp2p host with Meshmarket's identity, security and framing rules."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        self.peer_id: str = str(host.get_id())
        self.address: str = address_from_peer_id(self.peer_id)

    @classmethod
    @asynccontextmanager
    async def start(
        cls, private_key: bytes, listen_port: int = 0, *, listen_ip: str = "127.0.0.1",
        max_connections_per_peer: int = 1,
    ) -> AsyncIterator[Node]:
        """Run a host listening on `listen_ip:listen_port` (0 = any free port) until exit.

        Dialing nodes keep `max_connections_per_peer=1` (with more, every dial waits 250 ms for
        a second connection). A server should allow a few: a client that restarts reconnects
        while its old connection is still registered, and with a limit of 1 libp2p may keep
        the stale connection and drop the new one.
        """
        if listen_port:
            _ensure_port_free(listen_ip, listen_port)
        listen_addr = multiaddr.Multiaddr(f"/ip4/{listen_ip}/tcp/{listen_port}")
        host = _new_host(_key_pair(private_key), listen_addr, max_connections_per_peer)
        body_error: BaseException | None = None
        with trio.CancelScope() as scope:
            async with host.run([listen_addr]):
                try:
                    yield cls(host)
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

    @property
    def listen_addrs(self) -> list[str]:
        """Real listen multiaddrs (port resolved), without the /p2p suffix."""
        return [str(a) for a in self._host.get_transport_addrs()]

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self._host.get_connected_peers()]

    def serve(self, protocol: str, handler: Handler, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run `handler(session)` for every inbound stream of `protocol`.

        `timeout` is the default for each recv/send of the session. A ProtocolError or P2PError
        the handler raises becomes an error frame with its code and sentence; anything else is
        logged and answered `internal`. Nothing reaches libp2p.
        """

        async def on_stream(stream: INetStream) -> None:
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
            finally:
                await _close_stream(stream)

        self._host.set_stream_handler(TProtocol(protocol), on_stream)

    @staticmethod
    async def _send_error(stream: INetStream, code: str, message: str) -> None:
        try:
            await write_frame(stream, error_frame(code, message), timeout=CLOSE_TIMEOUT)
        except P2PError:
            logger.debug("could not deliver error frame %s", code)

    @asynccontextmanager
    async def open_session(
        self,
        peer_id: str,
        multiaddrs: Sequence[str],
        protocol: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[Session]:
        """Open a new stream for `protocol` to `peer_id`, dialing only if not yet connected.

        `timeout` bounds connect + protocol negotiation and is the session's default
        recv/send timeout. Noise refuses the connection unless the remote key is `peer_id`.
        """
        addrs = [_dial_addr(a) for a in multiaddrs]
        try:
            pid = ID.from_base58(peer_id)
        except ValueError as exc:
            raise ConnectFailed(f"not a peer id: {peer_id!r}") from exc
        try:
            with trio.fail_after(timeout):
                if pid not in self._host.get_connected_peers():
                    # libp2p blacklists a peer for 60 s after a failed dial; the caller
                    # passing addresses again is an explicit request to retry now.
                    cast(Swarm, self._host.get_network()).unblock_peer(pid)
                    await self._host.connect(PeerInfo(pid, addrs))
                stream = await self._host.new_stream(pid, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise PeerTimeout(f"no {protocol} stream to {peer_id} within {timeout} s") from None
        except (BaseLibp2pError, OSError) as exc:
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
