# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fault-injecting HTTP proxy for tests: a threaded forwarder on a free loopback port in front of an S3 endpoint.

Point ``S3_ENDPOINT_URL`` at ``proxy.endpoint_url``; requests pass through to the upstream
endpoint, bodies streamed both ways, until a fault is armed. Faults are armed from the test
process while the proxy runs (thread-safe); each acts on the requests that match its ``method``
and a substring of the request target (path and query), e.g. ``method="PUT", path="partNumber="``
for UploadPart, ``method="POST", path="uploadId="`` for CompleteMultipartUpload::

    with FaultProxy(moto.endpoint_url) as proxy:
        proxy.outage(5, method="PUT", path="partNumber=")  # refuse connections for 5 s from the first UploadPart
        proxy.fail(503, "SlowDown", count=3)               # answer an S3 error instead of forwarding
        proxy.reset_body(100000, method="GET")             # forward; reset the connection after 100000 body bytes
        proxy.drop_answer(method="POST", path="uploadId=") # forward; reset the connection instead of answering
        proxy.hold_answer(30, method="POST", path="uploads") # forward; hold the answer for 30 s, then pass it on
        proxy.stall(30)                                    # hold requests unanswered for 30 s
        proxy.stall_body(20, 100000, method="GET")         # forward; after 100000 body bytes send nothing for 20 s
        proxy.strip_header("If-Match", method="GET")       # forward without a header (a store that ignores it)
        proxy.not_s3()                                     # answer as a plain web server: 404 and an HTML page

Each call returns its :class:`Fault`: ``fault.hits`` counts the requests it acted on and
``fault.fired`` is an Event set at the first. ``proxy.seen`` lists every request as
:class:`Seen` (method, target, headers, action). ``proxy.clear()`` goes back to passing through.
"""

import collections
import fcntl
import socket
import struct
import termios
import threading
import time
import urllib.parse

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024
POLL = 0.05  # seconds the acceptor waits for a connection before it looks at outages and stop again

# A request the proxy saw: headers with lower-case names; action is "pass" or the fault's kind.
Seen = collections.namedtuple("Seen", "method target headers action")

_REASONS = {404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
             '<RequestId>faultproxy-%d</RequestId><HostId>faultproxy</HostId></Error>')
_WEB_404 = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n"
            b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


class _Closed(Exception):
    """The connection ended (a peer closed it, or the proxy cut it)."""


class Fault:
    """One armed fault: what it does (``kind``, ``params``), to which requests, how many or for how long.

    ``count``: acts on that many matching requests (None: no limit); ``seconds``: acts for that
    long from its first matching request (None: no limit).
    """

    def __init__(self, kind, method=None, path=None, count=None, seconds=None, **params):
        self.kind = kind
        self.method = method.upper() if method else None
        self.path = path
        self.count = count
        self.seconds = seconds
        self.params = params
        self.hits = 0
        self.first_hit = None  # time.monotonic() of the first request acted on
        self.fired = threading.Event()

    def __repr__(self):
        return "Fault(%s, method=%s, path=%s, hits=%d)" % (self.kind, self.method, self.path, self.hits)

    def until(self):
        """When a fault with ``seconds`` stops acting (monotonic clock)."""
        return self.first_hit + self.seconds

    def take(self, method, target, now):
        """Whether this fault acts on a request; counts it. Called under the proxy's lock."""
        if self.method not in (None, method) or (self.path is not None and self.path not in target):
            return False
        if self.count is not None and self.hits >= self.count:
            return False
        if self.seconds is not None and self.first_hit is not None and now >= self.until():
            return False
        self.hits += 1
        if self.first_hit is None:
            self.first_hit = now
            self.fired.set()
        return True


class FaultProxy:
    """The proxy: ``start()``/``stop()`` or a context manager; ``endpoint_url`` once started."""

    def __init__(self, upstream_url):
        parts = urllib.parse.urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port or 80)
        self.port = None
        self.endpoint_url = None
        self.seen = []
        self._faults = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._outage_until = 0.0
        self._live = set()  # sockets of open connections: an outage or stop() cuts them
        self._threads = []
        self._listener = None
        self._acceptor = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def __repr__(self):
        return "FaultProxy(%s -> %s:%s)" % (self.endpoint_url, self.upstream[0], self.upstream[1])

    # -- controls ------------------------------------------------------------------------------

    def outage(self, seconds, method=None, path=None, now=False):
        """Refuse connections for ``seconds`` from the first matching request (reset, with every open connection).

        ``now``: from now. The listening socket is closed (new connections are refused) and opened again after.
        """
        fault = self._arm(Fault("outage", method, path, count=1, seconds=seconds))
        if now:
            with self._lock:
                fault.hits, fault.first_hit = 1, time.monotonic()
            fault.fired.set()
            self._begin_outage(seconds)
        return fault

    def fail(self, status=503, code="SlowDown", count=None, seconds=None, method=None, path=None):
        """Answer matching requests with an S3 error (``status``, ``code``) instead of forwarding them."""
        return self._arm(Fault("fail", method, path, count=count, seconds=seconds, status=status, code=code))

    def reset_body(self, after_bytes, method=None, path=None, count=1, then=None):
        """Forward matching requests; reset the connection after ``after_bytes`` bytes of the answer's body.

        ``then``: a function called (on the proxy's thread) once those bytes were delivered and before the
        reset, e.g. to replace the object between the cut and the client's resumed read.
        """
        return self._arm(Fault("reset_body", method, path, count=count, after_bytes=after_bytes, then=then))

    def stall_body(self, seconds, after_bytes, method=None, path=None, count=1):
        """Forward matching requests; after ``after_bytes`` bytes of a body send nothing for ``seconds``, then reset.

        The body is the request's when it is longer than ``after_bytes`` (an upload: the rest of it is not read),
        else the answer's (a download). Fewer bytes either way: the request passes.
        """
        return self._arm(Fault("stall_body", method, path, count=count, after_bytes=after_bytes, hold=seconds))

    def strip_header(self, name, method=None, path=None, count=None):
        """Forward matching requests without header ``name``: a store that ignores it (e.g. If-Match on a GET)."""
        return self._arm(Fault("strip_header", method, path, count=count, name=name))

    def drop_answer(self, method=None, path=None, count=1):
        """Forward matching requests and read the answer, then reset the connection instead of passing it on."""
        return self._arm(Fault("drop_answer", method, path, count=count))

    def hold_answer(self, seconds, method=None, path=None, count=1):
        """Forward matching requests and read the answer (the store has done the work), then hold it for ``seconds``
        before passing it on: the client does not know yet what the store did."""
        return self._arm(Fault("hold_answer", method, path, count=count, hold=seconds))

    def stall(self, seconds, method=None, path=None, count=None):
        """Accept matching requests and send nothing for ``seconds`` from the first; then reset their connections.

        ``count``: only that many requests are held (the later ones pass, even within ``seconds``).
        """
        return self._arm(Fault("stall", method, path, count=count, seconds=seconds))

    def not_s3(self, method=None, path=None, count=None, seconds=None):
        """Answer matching requests as a web server that is not S3: ``HTTP/1.1 404 Not Found`` and an HTML page."""
        return self._arm(Fault("not_s3", method, path, count=count, seconds=seconds))

    def clear(self):
        """Disarm every fault and end an outage: pass everything through again."""
        with self._lock:
            self._faults = []
            self._outage_until = 0.0

    def requests(self, action=None, method=None, path=None):
        """The requests seen (:class:`Seen`), those with ``action``, ``method`` and ``path`` in the target if given."""
        with self._lock:
            seen = list(self.seen)
        return [item for item in seen if action in (None, item.action) and method in (None, item.method)
                and (path is None or path in item.target)]

    # -- running -------------------------------------------------------------------------------

    def start(self):
        """Listen on a free loopback port and start forwarding; returns self."""
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = "http://%s:%d" % (LOOPBACK, self.port)
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self):
        """Stop accepting, cut every connection (stalled ones too) and wait for the threads; safe to call twice."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(5)
        self._cut_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def _arm(self, fault):
        with self._lock:
            self._faults.append(fault)
        return fault

    def _pick(self, method, target):
        with self._lock:
            now = time.monotonic()
            for fault in self._faults:
                if fault.take(method, target, now):
                    return fault
        return None

    def _record(self, request, action):
        with self._lock:
            self.seen.append(Seen(request.method, request.target, request.header_dict(), action))

    def _in_outage(self):
        with self._lock:
            return time.monotonic() < self._outage_until

    def _begin_outage(self, seconds):
        with self._lock:
            self._outage_until = max(self._outage_until, time.monotonic() + seconds)
        self._cut_all()

    def _cut_all(self):
        """Shut down every open connection's sockets: threads blocked on them wake up and close them."""
        with self._lock:
            live = list(self._live)
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, sock, alive=True):
        with self._lock:
            if alive:
                self._live.add(sock)
            else:
                self._live.discard(sock)

    @staticmethod
    def _listen(port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.settimeout(POLL)
        return sock

    def _accept_loop(self):
        try:
            while not self._stopping.is_set():
                if self._in_outage():
                    self._close_listener()
                    self._stopping.wait(POLL)
                    continue
                if self._listener is None:
                    try:
                        self._listener = self._listen(self.port)
                    except OSError:
                        self._stopping.wait(POLL)
                        continue
                try:
                    client, _address = self._listener.accept()
                except OSError:  # socket.timeout included: look at outages and stop again
                    continue
                client.settimeout(None)
                self._spawn(client)
        finally:
            self._close_listener()

    def _close_listener(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _spawn(self, client):
        thread = threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True)
        with self._lock:
            self._threads = [item for item in self._threads if item.is_alive()] + [thread]
        thread.start()

    def _serve(self, client):
        connection = _Connection(self, client)
        try:
            connection.run()
        except (OSError, ValueError, _Closed):
            pass
        finally:
            connection.close()


class _Message:
    """An HTTP request or response head."""

    def __init__(self, head):
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers = []
        for line in lines[1:]:
            if line:
                name, value = line.split(":", 1) if ":" in line else (line, "")
                self.headers.append((name.strip(), value.strip()))
        parts = self.start.split(" ", 2)
        if self.start.startswith("HTTP/"):
            self.method = self.target = None
            self.version, self.status = parts[0], int(parts[1])
        else:
            self.method, self.target, self.version = parts[0].upper(), parts[1], parts[2] if len(parts) > 2 else ""
            self.status = None

    def header(self, name):
        """The last value of header ``name`` (any case), or None."""
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        return found[-1] if found else None

    def header_dict(self):
        """The headers with lower-case names."""
        return dict((key.lower(), value) for key, value in self.headers)

    def without(self, name):
        """The head without header ``name``."""
        kept = ["%s: %s" % (key, value) for key, value in self.headers if key.lower() != name.lower()]
        return ("\r\n".join([self.start] + kept) + "\r\n\r\n").encode("latin-1")

    def keep_alive(self):
        """Whether the connection stays open after this message (HTTP/1.1 unless 'Connection: close')."""
        connection = (self.header("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def expects_continue(self):
        return (self.header("Expect") or "").lower() == "100-continue"

    def framing(self, request_method=None):
        """How the body is delimited: ("length", n), ("chunked", None) or ("eof", None) (responses only)."""
        if self.status is not None and (request_method == "HEAD" or self.status in (204, 304) or self.status < 200):
            return ("length", 0)
        if "chunked" in (self.header("Transfer-Encoding") or "").lower():
            return ("chunked", None)
        if self.header("Content-Length") is not None:
            return ("length", int(self.header("Content-Length")))
        return ("length", 0) if self.status is None else ("eof", None)


class _Discard:
    """A sink for bodies that go nowhere."""

    @staticmethod
    def sendall(_data):
        return None


class _Collect:
    """A sink that keeps what it is sent."""

    def __init__(self):
        self.data = bytearray()

    def sendall(self, data):
        self.data += data


class _Connection:
    """One client connection and its upstream connection: requests served one after the other."""

    def __init__(self, proxy, client):
        self.proxy = proxy
        self.client = client
        self.client_in = client.makefile("rb")
        self.upstream = None
        self.upstream_in = None
        proxy._track(client)

    def run(self):
        """Serve requests until a peer closes, a fault cuts the connection or the proxy stops."""
        keep = True
        while keep:
            if self.proxy._in_outage():
                return self.reset()
            head = _read_head(self.client_in)
            if head is None:
                return False
            request = _Message(head)
            fault = self.proxy._pick(request.method, request.target)
            action = fault.kind if fault else "pass"
            self.proxy._record(request, action)
            keep = getattr(self, "_" + action)(request, fault)
        return False

    # -- what to do with one request: True to keep the connection for another ---------------------

    def _pass(self, request, _fault):
        self._forward(request)
        response = self._response(request)
        self.client.sendall(response.head)
        framing = response.framing(request.method)
        _relay(self.upstream_in, self.client, framing)
        return request.keep_alive() and response.keep_alive() and framing[0] != "eof"

    def _reset_body(self, request, fault):
        self._forward(request)
        response = self._response(request)
        self.client.sendall(response.head)
        kind, length = response.framing(request.method)
        after = fault.params["after_bytes"]
        if kind == "length" and length > after:
            _copy(self.upstream_in, self.client, after)
            _wait_delivered(self.client)  # else the reset would discard what is still queued: the cut comes later
            if fault.params["then"] is not None:
                fault.params["then"]()
            return self.reset()
        _relay(self.upstream_in, self.client, (kind, length))  # an answer too short to cut
        return request.keep_alive() and response.keep_alive() and kind != "eof"

    def _stall_body(self, request, fault):
        after = fault.params["after_bytes"]
        kind, length = request.framing()
        if kind == "length" and length > after:  # an upload: part of its body goes upstream, then nothing
            if request.expects_continue():
                self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._upstream().sendall(request.without("Expect"))
            _copy(self.client_in, self.upstream, after)
        else:  # a download: part of the answer's body comes back, then nothing
            self._forward(request)
            response = self._response(request)
            self.client.sendall(response.head)
            kind, length = response.framing(request.method)
            if not (kind == "length" and length > after):
                _relay(self.upstream_in, self.client, (kind, length))  # an answer too short to stall in
                return request.keep_alive() and response.keep_alive() and kind != "eof"
            _copy(self.upstream_in, self.client, after)
        self.proxy._stopping.wait(fault.params["hold"])
        return self.reset()

    def _strip_header(self, request, fault):
        return self._pass(_Message(request.without(fault.params["name"])), None)

    def _drop_answer(self, request, _fault):
        self._forward(request)
        response = self._response(request)
        _relay(self.upstream_in, _Discard(), response.framing(request.method))
        return self.reset()

    def _hold_answer(self, request, fault):
        self._forward(request)
        response = self._response(request)
        body = _Collect()
        framing = response.framing(request.method)
        _relay(self.upstream_in, body, framing)
        if self.proxy._stopping.wait(fault.params["hold"]):
            return self.reset()
        self.client.sendall(response.head + bytes(body.data))
        return request.keep_alive() and response.keep_alive() and framing[0] != "eof"

    def _fail(self, request, fault):
        status, code = fault.params["status"], fault.params["code"]
        body = (_S3_ERROR % (code, "injected by the fault proxy", fault.hits)).encode()
        self._answer(request, status, [("Content-Type", "application/xml"),
                                       ("x-amz-request-id", "faultproxy-%d" % fault.hits)], body)
        return request.keep_alive()

    def _not_s3(self, request, _fault):
        self._answer(request, 404, [("Server", "nginx"), ("Content-Type", "text/html")], _WEB_404)
        return request.keep_alive()

    def _stall(self, _request, fault):
        self.proxy._stopping.wait(max(0.0, fault.until() - time.monotonic()))
        return self.reset()

    def _outage(self, _request, fault):
        self.proxy._begin_outage(fault.seconds)
        return self.reset()

    # -- plumbing ---------------------------------------------------------------------------------

    def _forward(self, request):
        """Send the request upstream, body streamed; 'Expect: 100-continue' is answered here, not forwarded."""
        if request.expects_continue():
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._upstream().sendall(request.without("Expect"))
        _relay(self.client_in, self.upstream, request.framing())

    def _upstream(self):
        """The upstream connection, opened at the first request that goes there."""
        if self.upstream is None:
            self.upstream = socket.create_connection(self.proxy.upstream, timeout=10)
            self.upstream.settimeout(None)
            self.upstream_in = self.upstream.makefile("rb")
            self.proxy._track(self.upstream)
        return self.upstream

    def _response(self, request):
        """The upstream's final answer head (interim 1xx answers skipped)."""
        while True:
            head = _read_head(self.upstream_in)
            if head is None:
                raise _Closed("upstream closed before answering %s %s" % (request.method, request.target))
            response = _Message(head)
            if response.status >= 200:
                return response

    def _answer(self, request, status, headers, body):
        """Answer here, without the upstream: the request's body is read first."""
        if request.expects_continue():
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        _relay(self.client_in, _Discard(), request.framing())
        lines = ["HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Error"))]
        lines += ["%s: %s" % item for item in headers] + ["Content-Length: %d" % len(body)]
        self.client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if request.method != "HEAD":
            self.client.sendall(body)

    def reset(self):
        """Close the client connection with a TCP reset (and the upstream one); returns False."""
        try:
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()
        return False

    def close(self):
        """Close both connections (safe to call twice)."""
        for stream in (self.client_in, self.upstream_in):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        for sock in (self.client, self.upstream):
            if sock is not None:
                self.proxy._track(sock, alive=False)
                sock.close()


def _wait_delivered(sock, timeout=10.0):
    """Wait (at most ``timeout``) until the peer has acknowledged every byte sent on ``sock`` (Linux: SIOCOUTQ)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if not queued:
            return
        time.sleep(0.01)


def _read_head(reader):
    """A message head (through the empty line), or None when the peer closed before one began."""
    lines = []
    size = 0
    while True:
        line = reader.readline(MAX_HEAD)
        if not line:
            if lines:
                raise _Closed("closed mid-head")
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue
        lines.append(line)
        size += len(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)
        if size > MAX_HEAD:
            raise _Closed("head too large")


def _relay(source, sink, framing):
    """Pass a body on as it comes, delimited by ``framing`` (see _Message.framing)."""
    kind, length = framing
    if kind == "length":
        _copy(source, sink, length)
    elif kind == "chunked":
        _copy_chunked(source, sink)
    else:
        while True:
            data = source.read1(CHUNK)
            if not data:
                return
            sink.sendall(data)


def _copy(source, sink, length):
    while length > 0:
        data = source.read1(min(CHUNK, length))
        if not data:
            raise _Closed("closed mid-body")
        sink.sendall(data)
        length -= len(data)


def _copy_chunked(source, sink):
    while True:
        line = source.readline(MAX_HEAD)
        if not line:
            raise _Closed("closed mid-body")
        sink.sendall(line)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        _copy(source, sink, size + 2)  # the chunk and its CRLF
    while True:  # trailers, through the empty line
        line = source.readline(MAX_HEAD)
        if not line:
            raise _Closed("closed mid-body")
        sink.sendall(line)
        if line in (b"\r\n", b"\n"):
            return
