"""albert-serve's connections: bounded in number, in how long a client may take to send a request and in its size.

uvicorn's httptools protocol (llhttp, a C parser: about 0.3 ms less CPU per request than h11's pure Python, which
on the default model is a tenth of a fill-mask request) with four bounds added:
- a request's line and headers must arrive within `read_timeout` seconds of its first byte (a connection that
  opens and sends nothing counts from its opening); past it the client gets one JSON 408 and the connection is
  closed. The body has the same bound, from the headers on (serving.app.read_json answers that 408).
- a request's line and headers still arriving past `max_header_bytes` get one JSON 431 and the connection is
  closed (llhttp keeps every header it is sent); those that arrive complete are measured exactly by the app
  (serving.app.HeaderLimit). A request that is not HTTP/1.1 gets one JSON 400 instead of uvicorn's plain text.
- at most `max_connections` connections are open, set below the process's file-descriptor limit so accept()
  never fails for want of one. A new connection past the limit closes the oldest connection that is still
  sending its request (or idle between keep-alive requests), so stalled clients cannot lock good ones out; when
  every open connection has a request being answered, the new one gets one JSON 503.
- each of these, and the event loop's own complaints (accept() out of descriptors), is logged as one line,
  at most once per `Notices.every` seconds per kind, with the count of the ones left out.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LOG = logging.getLogger("albert-serve")

FD_RESERVE = 32  # descriptors kept free for what the process opens besides connections (logs, model files, pipes)


class Notices:
    """Rate-limited one-line warnings: the first of each kind at once, then at most one per `every` seconds."""

    def __init__(self, every: float = 10.0, logger: logging.Logger = LOG):
        self.every, self.logger = every, logger
        self.last: dict[str, float] = {}
        self.left_out: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.every) < self.every:
            self.left_out[kind] = self.left_out.get(kind, 0) + 1
            return
        more = self.left_out.pop(kind, 0)
        self.last[kind] = now
        self.logger.warning("%s%s", message, f" ({more} more like it in the last {self.every:g} s)" if more else "")

    def loop_exception(self, loop, context: dict) -> None:
        """asyncio's exception handler: one line per kind instead of a traceback per event."""
        exc = context.get("exception")
        message = context.get("message", "event loop error")
        self(f"loop:{message}", f"{message}: {exc}" if exc else message)


def descriptor_room() -> int:
    """Connections this process can hold open: the soft descriptor limit less those open now and a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    return soft - open_now - FD_RESERVE if soft != resource.RLIM_INFINITY else 1 << 20


def raw_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 response with a JSON error body, as bytes, for a connection refused below the app."""
    body = json.dumps({"error": message}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body


class Guard:
    """The bounds one server's connections share."""

    def __init__(self, read_timeout: float, max_connections: int, notices: Notices, max_header_bytes: int = 16384):
        self.read_timeout, self.max_connections, self.notices = read_timeout, max_connections, notices
        self.max_header_bytes = max_header_bytes
        self.open: dict[GuardedProtocol, None] = {}  # oldest first


def guarded_protocol(guard: Guard) -> type:
    """The HTTP protocol class uvicorn.Config(http=...) takes, bound to `guard`."""
    return type("GuardedProtocol", (GuardedProtocol,), {"guard": guard})


class GuardedProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with the guard's limits on connections, read time and header size."""
    guard: Guard

    def connection_made(self, transport) -> None:
        """Register the connection with the guard and start its read timer."""
        super().connection_made(transport)
        self.read_timer = None
        self.in_head = False  # between a request's first byte and the end of its headers
        self.head_bytes = 0  # bytes of the chunks read wholly within the request line and headers
        guard = self.guard
        guard.open[self] = None
        self._start_read_timer()
        if len(guard.open) > guard.max_connections:
            victim = next((p for p in guard.open if p is not self and p.sending_request), None)
            if victim is None:
                guard.notices("connections", f"{len(guard.open) - 1} connections are open and each has a request "
                                             f"being answered (limit {guard.max_connections}); refused a new one")
                self.refuse(503, "Service Unavailable", f"this server holds {guard.max_connections} connections, "
                            "each with a request in progress; retry after a second", {"retry-after": "1"})
            else:
                guard.notices("evicted", f"{guard.max_connections} connections open (--max-connections): closed the "
                                         "oldest one still sending its request to take a new one")
                victim.refuse(503, "Service Unavailable", "closed to make room: this connection had not sent a "
                              "complete request and the server is at its connection limit", {"retry-after": "1"})

    @property
    def sending_request(self) -> bool:
        """No request of this connection is being answered: it is sending one, or idle between requests."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete or (cycle.more_body and not cycle.response_started)

    def connection_lost(self, exc) -> None:
        """Forget the connection in the guard and stop its read timer."""
        self.guard.open.pop(self, None)
        self._stop_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Pass the data on, starting the read timer at the first byte of a new request; 431 once the chunks
        read wholly within one request's line and headers pass the limit (the bound is the limit and one read)."""
        if self.read_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._start_read_timer()  # the first byte of a keep-alive connection's next request
        in_head = self.in_head
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._stop_read_timer()  # headers complete: the body's bound is the app's (read_json)
        if in_head and self.in_head:
            self.head_bytes += len(data)
            limit = self.guard.max_header_bytes
            if self.head_bytes > limit:
                self.guard.notices("header-size", f"a client sent over {limit} bytes of request line and headers "
                                                  "(--max-header-bytes); closed its connection")
                self.refuse(431, "Request Header Fields Too Large", f"the request line and headers are over {limit} "
                            f"bytes; this server takes at most {limit} (--max-header-bytes)")

    def on_message_begin(self) -> None:
        """A request's first byte: count its head from here."""
        super().on_message_begin()
        self.in_head, self.head_bytes = True, 0

    def on_headers_complete(self) -> None:
        """The head is complete (the app measures the headers themselves): start the request."""
        self.in_head = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """Time the next request's head if it began in an earlier read (a pipelined part of one); uvicorn arms its
        keep-alive timeout for an idle connection."""
        super().on_response_complete()
        if self.in_head:
            self._start_read_timer()

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse: one JSON 400 (uvicorn writes plain text), the connection closed."""
        self.refuse(400, "Bad Request", "the request is not valid HTTP/1.1; send a request line, headers and a "
                                        "body as RFC 9112 has them")

    def refuse(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer with an error response and close the connection, unless it is closing."""
        self._stop_read_timer()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(raw_response(status, reason, message, headers))
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app's answer, if it ever comes, goes nowhere
            self.cycle.message_event.set()
        self.transport.close()

    def _start_read_timer(self) -> None:
        self._stop_read_timer()
        self.read_timer = self.loop.call_later(self.guard.read_timeout, self._read_timed_out)

    def _stop_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_timed_out(self) -> None:
        self.read_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return
        timeout = self.guard.read_timeout
        self.guard.notices("read-timeout", f"a client sent no complete request line and headers within {timeout:g} s "
                                           "(--read-timeout-s); closed its connection")
        self.refuse(408, "Request Timeout", f"the request line and headers did not arrive within {timeout:g} s "
                                           "(--read-timeout-s)")
