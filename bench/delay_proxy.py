"""A reverse proxy that adds a fixed delay to every call: W4's "FHIR server 50 ms away".

    python -m bench.delay_proxy --upstream http://127.0.0.1:8090 --delay-ms 50 --port 0

HTTP/1.1 with keep-alive on both sides (one upstream connection per proxy thread), so the delay
is the only cost it adds besides a loopback hop. Absolute URLs of the upstream in response bodies
and Location headers (Bundle ``link`` / ``fullUrl``) are rewritten to the proxy's own address so
paging stays behind the proxy. Binds 127.0.0.1 only. Prints ``PROXY_READY <port>`` when listening.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "host"}


class DelayProxy(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, upstream: str, delay_s: float):
        super().__init__(("127.0.0.1", port), _Handler)
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}".encode()
        self.own_origin = f"http://127.0.0.1:{self.server_address[1]}".encode()
        self.delay_s = delay_s
        self.local = threading.local()
        self.calls = 0
        self.lock = threading.Lock()

    def upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
            self.local.conn = conn
        return conn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else a small response written in two parts waits for a delayed ACK (~40 ms)
    server: DelayProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    def _forward(self) -> None:
        if self.path == "/_proxy/calls":  # the bench's counter: not forwarded, not delayed, not counted
            data = str(self.server.calls).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        time.sleep(self.server.delay_s)  # the added network distance, on every call
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{self.server.upstream_host}:{self.server.upstream_port}"
        for attempt in (0, 1):  # a keep-alive connection the upstream closed: reconnect once
            conn = self.server.upstream(fresh=attempt == 1)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, OSError):
                if attempt == 1:
                    self.send_error(502, "upstream unreachable")
                    return
        payload = payload.replace(self.server.upstream_origin, self.server.own_origin)
        with self.server.lock:
            self.server.calls += 1
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() in HOP_BY_HOP:
                continue
            if name.lower() == "location":
                value = value.replace(self.server.upstream_origin.decode(), self.server.own_origin.decode())
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = DelayProxy(args.port, args.upstream, args.delay_ms / 1000)
    print(f"PROXY_READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
