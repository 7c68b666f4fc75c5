"""A loopback HTTPS fault proxy in front of mesh-sandbox: a TEST DOUBLE for a misbehaving MESH server.

mesh-sandbox always answers correctly, so the MESH faults a real service shows (5xx, timeouts, a reply lost
after the server accepted a message) are made here: the proxy terminates mutual TLS with the sandbox's own
test certificates (``devtools.peers.mesh.make_tls``), and for each request either forwards it to the sandbox
(over mutual TLS, with the test client certificate) and relays the answer, or injects a fault. Only
requests whose method and path match ``match`` (by default: sends, ``POST .../outbox``) are faulted; all
others pass. Listens on 127.0.0.1 only.

Modes (``proxy.mode``):

``pass``          forward and relay
``status:NNN``    answer NNN without forwarding (nothing reaches MESH)
``hang``          read the request, forward nothing, wait ``hang_seconds`` and close (client read timeout)
``drop``          close the connection without forwarding or answering
``accept_drop``   forward (MESH accepts and stores the message), then close without relaying the answer:
                  the "reply lost" case a client cannot tell from ``drop``
"""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class MeshFaultProxy:
    def __init__(self, mesh_peer, *, match=lambda method, path: method == "POST" and path.rstrip("/").endswith(
            "/outbox")) -> None:
        self.peer = mesh_peer
        self.match = match
        self.mode = "pass"
        self.remaining: int | None = None      # faults left before switching back to pass (None: forever)
        self.hang_seconds = 5.0
        self.faulted = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        tls = mesh_peer.tls
        self.upstream = requests.Session()
        self.upstream.verify = tls["ca"]
        self.upstream.cert = (tls["client"], tls["client_key"])
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy._mode_for(self.command, self.path)
                if mode == "pass" or mode == "accept_drop":
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    resp = proxy.upstream.request(self.command, proxy.peer.url + self.path, data=body,
                                                  headers=headers, timeout=30,
                                                  verify=proxy.peer.tls["ca"])  # beats REQUESTS_CA_BUNDLE
                    proxy.forwarded += 1
                    if mode == "accept_drop":
                        self.close_connection = True
                        return
                    self.send_response(resp.status_code)
                    for k, v in resp.headers.items():
                        if k.lower() not in HOP and k.lower() != "content-encoding":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(resp.content)))
                    self.end_headers()
                    self.wfile.write(resp.content)
                    return
                if mode.startswith("status:"):
                    code = int(mode.split(":", 1)[1])
                    payload = b'{"errorEvent": "TEST", "errorDescription": "injected by the fault proxy"}'
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if mode == "hang":
                    time.sleep(proxy.hang_seconds)
                self.close_connection = True   # drop / hang: no answer at all

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls["server"], tls["server_key"])
        ctx.load_verify_locations(tls["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="mesh-fault-proxy", daemon=True)

    def _mode_for(self, method: str, path: str) -> str:
        with self._lock:
            if self.mode == "pass" or not self.match(method, path):
                return "pass"
            mode = self.mode
            self.faulted += 1
            if self.remaining is not None:
                self.remaining -= 1
                if self.remaining <= 0:
                    self.mode, self.remaining = "pass", None
            return mode

    def fault(self, mode: str, times: int | None = None) -> None:
        self.mode, self.remaining, self.faulted, self.forwarded = mode, times, 0, 0

    def start(self) -> MeshFaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.upstream.close()

    def __enter__(self) -> MeshFaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def settings(self, mailbox: str):
        """MeshSettings pointing at the proxy (same mailbox, password, key and certificates as the sandbox)."""
        import dataclasses

        return dataclasses.replace(self.peer.settings(mailbox), url=self.url)
