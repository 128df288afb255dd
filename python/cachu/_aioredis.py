"""The Redis client of the async API: an asyncio protocol on the caller's event loop.

A Redis round trip on loopback takes tens of microseconds; handing it to a thread
and back (a runtime on other threads, then ``call_soon_threadsafe``) costs as much
again on a small machine. So async calls talk to Redis from the event loop itself: one
pipelined connection per (event loop, URL), requests answered in order. It carries
requests that the Rust core makes (the scripts of the call flow, each with the
``SCRIPT LOAD`` to send when the server does not know it yet) and hands the replies
back as RESP frames for the core to read: the protocol's meaning (keys, values,
leases) is the core's alone. It shares the core's URL options and the server's health
(the breaker and the one-warning-per-outage message), and never blocks the loop:
connects and replies have the URL's timeouts.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import weakref
from typing import Any, Optional, Union, cast
from urllib.parse import unquote, urlsplit

from cachu._cachu import (
    BackendError,
    _redis_admit,
    _redis_command,
    _redis_endpoint,
    _redis_failed,
    _redis_node,
    _redis_ok,
    _redis_redirect,
    _redis_resolve,
)


class ReplyError(Exception):
    """An error reply of the server (the connection stays usable)."""


Reply = Union[bytes, int, str, None, ReplyError, list]


class _Parser:
    """RESP2 replies out of a byte stream."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self) -> tuple[bool, Reply]:
        """``(True, reply)``, or ``(False, None)`` while the next reply is incomplete."""
        pos, reply = self._read(self._pos)
        if pos < 0:
            return False, None
        self._pos = pos
        return True, reply

    def _read(self, pos: int) -> tuple[int, Reply]:
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return -1, None
        kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
        pos = end + 2
        if kind == b"$":
            n = int(line)
            if n < 0:
                return pos, None
            if len(buf) < pos + n + 2:
                return -1, None
            return pos + n + 2, bytes(buf[pos : pos + n])
        if kind == b":":
            return pos, int(line)
        if kind == b"+":
            return pos, line.decode()
        if kind == b"-":
            return pos, ReplyError(line.decode(errors="replace"))
        if kind == b"*":
            n = int(line)
            items: list[Reply] = []
            for _ in range(max(n, 0)):
                pos, item = self._read(pos)
                if pos < 0:
                    return -1, None
                items.append(item)
            return pos, (None if n < 0 else items)
        raise ReplyError(f"unexpected reply from the server: {bytes(buf[pos - 2 :])[:40]!r}")


class _Connection(asyncio.Protocol):
    """One pipelined connection: replies come back in the order of the requests."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._parser = _Parser()
        # (deadline, future) per request, in the order of the replies.
        self._waiters: collections.deque[tuple[float, asyncio.Future[Reply]]] = collections.deque()
        self._watchdog: Optional[asyncio.TimerHandle] = None
        self._transport: Optional[asyncio.Transport] = None
        self.broken: Optional[BaseException] = None
        self.pid = os.getpid()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any loop's stream transport (asyncio's, uvloop's): not checked by class.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        try:
            while self._waiters:
                complete, reply = parser.next()
                if not complete:
                    break
                _, fut = self._waiters.popleft()
                if fut.done():
                    continue
                if isinstance(reply, ReplyError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except (ValueError, ReplyError) as e:
            self._fail(ConnectionError(f"unreadable reply: {e}"))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(str(exc)))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()

    def _watch(self) -> None:
        """One timer per connection, not one per request: due when the oldest request
        is; if that one is still unanswered, the connection fails (its reply may still
        come, so the stream is out of step); else it waits for the next oldest."""
        self._watchdog = None
        if not self._waiters:
            return
        deadline = self._waiters[0][0]
        if self._loop.time() >= deadline:
            self._fail(TimeoutError(f"no reply within {self._timeout}s"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._watch)

    async def request(self, payload: bytes) -> Reply:
        if self.broken is not None or self._transport is None:
            raise ConnectionError(f"connection is closed ({self.broken})")
        fut = self._loop.create_future()
        self._waiters.append((self._loop.time() + self._timeout, fut))
        self._transport.write(payload)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._waiters[0][0], self._watch)
        return await fut

    async def request_asking(self, payload: bytes) -> Reply:
        """``payload`` after ``ASKING``, in one write: no other request comes between
        them (a cluster's slot in migration answers it only after ``ASKING``)."""
        if self.broken is not None or self._transport is None:
            raise ConnectionError(f"connection is closed ({self.broken})")
        deadline = self._loop.time() + self._timeout
        asking, fut = self._loop.create_future(), self._loop.create_future()
        self._waiters.extend(((deadline, asking), (deadline, fut)))
        self._transport.write(_ASKING + payload)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._waiters[0][0], self._watch)
        try:
            await asking
        except ReplyError:
            pass  # the request's own reply says what went wrong
        return await fut

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.broken = self.broken or ConnectionError("closed")


# Per event loop: URL -> connection (or the task connecting it).
_connections: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, asyncio.Future[_Connection]]
] = weakref.WeakKeyDictionary()


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=options["ca_file"])
    if options["insecure"]:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _connect(url: str) -> _Connection:
    options = _redis_endpoint(url)
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    conn = _Connection(loop, options["command_timeout"])
    timeout = options["connect_timeout"]
    if parts.scheme == "unix":
        connecting = loop.create_unix_connection(lambda: conn, unquote(parts.path))
    else:
        connecting = loop.create_connection(
            lambda: conn,
            parts.hostname or "localhost",
            parts.port or 6379,
            ssl=_ssl_context(options) if parts.scheme == "rediss" else None,
        )
    await asyncio.wait_for(connecting, timeout)
    setup = []
    if parts.password is not None:
        user = unquote(parts.username) if parts.username else None
        setup.append(_redis_command("AUTH", *([user] if user else []), unquote(parts.password)))
    db = parts.path.strip("/") if parts.scheme != "unix" else ""
    if db and db != "0":
        setup.append(_redis_command("SELECT", db))
    for payload in setup:
        reply = await asyncio.wait_for(conn.request(payload), timeout)
        if isinstance(reply, ReplyError):
            conn.close()
            raise reply
    return conn


# Per event loop: an async generator whose ``finally`` closes the loop's connections.
# asyncio closes every live async generator when the loop shuts down
# (``loop.shutdown_asyncgens()``, which ``asyncio.run`` and pytest-asyncio call), so
# connections end with their loop instead of leaking until garbage collection.
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


async def _close_at_shutdown(per_loop: dict[str, asyncio.Future[_Connection]]) -> Any:
    try:
        yield
    finally:
        _close_all(per_loop)


def _close_all(per_loop: dict[str, asyncio.Future[_Connection]]) -> int:
    closed = 0
    for pending in list(per_loop.values()):
        if pending.done() and not pending.cancelled() and pending.exception() is None:
            pending.result().close()
            closed += 1
        else:
            pending.cancel()
    per_loop.clear()
    return closed


async def _loop_connections(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    per_loop = _connections.get(loop)
    if per_loop is None:
        per_loop = _connections[loop] = {}
        closer = _close_at_shutdown(per_loop)
        await closer.__anext__()  # registers it with the loop's async generator hooks
        _closers[loop] = closer
    return per_loop


async def _connection(url: str) -> _Connection:
    loop = asyncio.get_running_loop()
    per_loop = await _loop_connections(loop)
    pending = per_loop.get(url)
    if pending is not None and pending.done() and not pending.cancelled():
        conn = pending.exception() is None and pending.result()
        if conn and conn.broken is None and conn.pid == os.getpid():
            return conn
        pending = None
    if pending is None or pending.done():
        pending = loop.create_task(_connect(url))
        per_loop[url] = pending
    try:
        return await asyncio.shield(pending)
    except BaseException:
        if per_loop.get(url) is pending and pending.done():
            del per_loop[url]
        raise


_ASKING = _redis_command("ASKING")
# Redirections of one request followed before it fails (a slot moving twice).
_MAX_REDIRECTS = 5
# A slot being migrated or without a master (TRYAGAIN, CLUSTERDOWN, MASTERDOWN) is
# asked again after this pause, as the sync path does (src/backend/redis/cluster.rs).
_RETRY_PAUSE = 0.025
# The URLs whose servers are being found again in a thread.
_resolving: set[str] = set()


def _resolve_soon(url: str) -> None:
    """Finds the servers of ``url`` again (the slot map, Sentinel's master) in a thread,
    once at a time: a failed master may have been replaced."""
    if url in _resolving:
        return
    _resolving.add(url)

    def done(fut: asyncio.Future[None]) -> None:
        _resolving.discard(url)
        if not fut.cancelled():
            fut.exception()  # a failure is seen by the next call

    asyncio.get_running_loop().run_in_executor(None, _redis_resolve, url).add_done_callback(done)


async def _node_of(url: str, key: str) -> str:
    """The URL of the server that holds ``key`` among the servers of ``url``."""
    node = _redis_node(url, key, False)
    if node is None:
        loop = asyncio.get_running_loop()
        node = await loop.run_in_executor(None, _redis_node, url, key, True)
    if node is None:
        raise BackendError(f"Redis at {_redis_endpoint(url)['shown']}: no master serves the key")
    return node


async def call(
    url: str, payload: bytes, load: Optional[bytes] = None, key: Optional[str] = None
) -> Reply:
    """One request; ``load`` (a ``SCRIPT LOAD``) is sent first if the server does not
    know the script. ``key`` is given when the server depends on it (a cluster, a
    Sentinel's master); a cluster's redirections are followed. A transport failure is
    recorded as the server's outage and raised as ``BackendError`` with the outage's
    message (the same as the sync path's)."""
    node = url if key is None else await _node_of(url, key)
    asking = False
    for _ in range(_MAX_REDIRECTS):
        down = _redis_admit(node)
        if down is not None:
            if key is not None:
                _resolve_soon(url)
            raise BackendError(down)
        try:
            conn = await _connection(node)
            try:
                reply = await (conn.request_asking(payload) if asking else conn.request(payload))
            except ReplyError as e:
                if load is None or not str(e).startswith("NOSCRIPT"):
                    raise
                await conn.request(load)
                reply = await (conn.request_asking(payload) if asking else conn.request(payload))
        except ReplyError as e:
            words = str(e).split()
            if key is not None and len(words) >= 3 and words[0] in ("MOVED", "ASK"):
                asking = words[0] == "ASK"
                node = _redis_redirect(url, words[2], None if asking else int(words[1]))
                if not asking:
                    _resolve_soon(url)
                continue
            if key is not None and words and words[0] in ("TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"):
                _resolve_soon(url)
                await asyncio.sleep(_RETRY_PAUSE)
                node, asking = await _node_of(url, key), False
                continue
            if key is not None and words and words[0] == "READONLY":
                _resolve_soon(url)
            shown = _redis_endpoint(node)["shown"]
            if key is None and words and words[0] in ("MOVED", "ASK", "CROSSSLOT"):
                raise BackendError(
                    f"Redis at {shown} is a node of a Redis Cluster ({e}): "
                    "its URL is a redis+cluster:// one"
                ) from None
            raise BackendError(f"Redis at {shown}: {e}") from None
        except Exception as e:  # noqa: BLE001 - any other failure is the server's, never the caller's
            if key is not None:
                _resolve_soon(url)
            raise BackendError(_redis_failed(node, f"{type(e).__name__}: {e}")) from None
        _redis_ok(node)
        return reply
    raise BackendError(
        f"Redis at {_redis_endpoint(url)['shown']}: the request was redirected "
        f"{_MAX_REDIRECTS} times"
    )


async def close_connections() -> int:
    """Closes this event loop's connections; returns how many."""
    return _close_all(_connections.get(asyncio.get_running_loop(), {}))
