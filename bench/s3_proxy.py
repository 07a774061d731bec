#!/usr/bin/env python3
"""A counting, delaying HTTP proxy in front of an S3-compatible server, for bench/index.sh.

    s3_proxy.py LISTEN_PORT UPSTREAM_PORT [LATENCY_MS]

Every request waits LATENCY_MS before it is forwarded and again before its answer is sent
(a round trip of 2 x LATENCY_MS, as to a distant region). The Host header goes through
unchanged, so SigV4 signatures stay valid. GET /__count answers the requests counted since
the last POST /__reset, by method and in total, and the seconds the server took to answer
them (`server_s`, summed over concurrent requests), as JSON; neither is counted.
"""
import http.client
import http.server
import json
import sys
import threading
import time

LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
LATENCY = (float(sys.argv[3]) if len(sys.argv) > 3 else 20.0) / 1000
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
lock = threading.Lock()
counts = {}
upstream = [0.0]
local = threading.local()


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def forward(self):
        if self.path == "/__count":
            with lock:
                body = json.dumps({"total": sum(counts.values()), **counts,
                                   "server_s": round(upstream[0], 2)}).encode()
            return self.answer(200, body, [("Content-Type", "application/json")])
        if self.path == "/__reset":
            with lock:
                counts.clear()
                upstream[0] = 0.0
            return self.answer(200, b"{}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        key = self.command + (" list" if "list-type=2" in self.path else "")
        with lock:
            counts[key] = counts.get(key, 0) + 1
        time.sleep(LATENCY)
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=300)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        started = time.monotonic()
        try:
            local.conn.request(self.command, self.path, body=body, headers=headers)
            response = local.conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError):
            local.conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=300)
            local.conn.request(self.command, self.path, body=body, headers=headers)
            response = local.conn.getresponse()
            data = response.read()
        with lock:
            upstream[0] += time.monotonic() - started
        time.sleep(LATENCY)
        out = [(k, v) for k, v in response.getheaders()
               if k.lower() not in HOP and k.lower() != "content-length"]
        if self.command == "HEAD":
            self.send_response(response.status)
            for name, value in out:
                self.send_header(name, value)
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
            self.end_headers()
        else:
            self.answer(response.status, data, out)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


server = http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN), Proxy)
server.daemon_threads = True
server.serve_forever()
