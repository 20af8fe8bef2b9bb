# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A TLS-terminating proxy for tests: HTTPS on a free loopback port in front of a plain-HTTP endpoint (moto_server).

Each connection is a TLS server socket (Python's ssl, the certificate and key given, e.g. from tests/testca.py) whose
bytes are forwarded both ways to the upstream port, unchanged: the client speaks HTTPS to ``proxy.endpoint_url``,
the upstream sees its plain HTTP::

    ca = TestCA(tmp_path / "ca")
    with TLSProxy(moto.endpoint_url, ca.server("s3")) as proxy:
        ...  # S3_ENDPOINT_URL=proxy.endpoint_url, AWS_CA_BUNDLE=ca.cert

``proxy.handshakes`` counts the TLS handshakes that succeeded, ``proxy.refused`` those the client broke off (a
client that does not trust the certificate), with the reasons in ``proxy.failures``.
"""

import select
import socket
import ssl
import threading
import urllib.parse

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
POLL = 0.1  # seconds the acceptor waits for a connection before it looks at stop again


class TLSProxy:
    """HTTPS in front of ``upstream_url`` (http://host:port) with ``issued`` (``.cert`` and ``.key`` PEM paths)."""

    def __init__(self, upstream_url, issued):
        parts = urllib.parse.urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(issued.cert), str(issued.key))
        self.endpoint_url = None
        self.handshakes = 0
        self.refused = 0
        self.failures = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = None
        self._threads = []
        self._sockets = set()

    def __repr__(self):
        return "TLSProxy(%s -> %s:%s)" % (self.endpoint_url, self.upstream[0], self.upstream[1])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def start(self):
        """Listen on a free loopback port; returns self."""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL)
        self.endpoint_url = "https://%s:%d" % (LOOPBACK, self._listener.getsockname()[1])
        self._spawn(self._accept, "tlsproxy-accept")
        return self

    def stop(self):
        """Stop accepting, close every connection and wait for the threads."""
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in list(self._threads):
            thread.join(10)
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, target, name, *args):
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _track(self, sock):
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._spawn(self._serve, "tlsproxy-connection", self._track(client))

    def _serve(self, client):
        client.settimeout(30)
        try:
            secure = self._track(self.context.wrap_socket(client, server_side=True))
        except (ssl.SSLError, OSError) as exc:  # the client broke off the handshake: it does not trust the certificate
            with self._lock:
                self.refused += 1
                self.failures.append(str(exc))
            _close(client)
            return
        with self._lock:
            self.handshakes += 1
        try:
            upstream = self._track(socket.create_connection(self.upstream, timeout=30))
        except OSError:
            _close(secure)
            return
        secure.settimeout(None)
        upstream.settimeout(None)
        self._relay(secure, upstream)

    def _relay(self, secure, upstream):
        """Copy bytes both ways until either side ends, then close both. One thread per connection: an SSL socket
        may not be read and written by two threads at once (OpenSSL's state is one)."""
        try:
            while not self._stop.is_set():
                readable = [secure] if secure.pending() else select.select([secure, upstream], [], [], POLL)[0]
                for source, sink in ((secure, upstream), (upstream, secure)):
                    if source in readable:
                        data = source.recv(CHUNK)
                        if not data:
                            return
                        sink.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            _close(secure)
            _close(upstream)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass
    try:
        sock.close()
    except OSError:
        pass
