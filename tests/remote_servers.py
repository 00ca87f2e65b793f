"""Loopback servers for the remote-source tests: an HTTP object server with Range, ETag and If-Match
support that injects faults on demand, and moto's S3 server in a child process."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service_process import ServiceProcess, free_port  # noqa: F401 - re-exported for tests


class FaultyObjectServer:
    """Serves ``objects`` (name -> bytes) over HTTP/1.1 with byte ranges, strong ETags and
    If-Match (412), on a free loopback port.

    ``faults[name]`` is a list of fault names consumed one per GET of that object:
    ``"503"``, ``"500"``, ``"reset"`` (connection dropped before any reply), ``"short"`` (declares
    the full length, sends half, closes), ``"short-declared"`` (declares and sends half),
    ``"slow"`` (sends the body in pieces with pauses), ``"other:NAME"`` (the same range of another
    object, with this object's headers), ``"replace:NAME"`` (this object becomes a copy of NAME,
    new ETag, before the reply), ``"ignore-range"`` (200 and the whole object), ``"ok"``.
    ``head_sizes[name]`` makes HEAD claim that size instead of the real one (a lying store).
    ``requests`` logs (name, range header) of every GET; ``peak_gets`` is the most GETs that
    were being answered at once since the last :meth:`clear`.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.head_sizes: dict[str, int] = {}
        self.active_gets = 0
        self.peak_gets = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def put(self, name: str, data: bytes) -> str:
        with self.lock:
            self.objects[name] = bytes(data)
            self.etags[name] = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
            return f"{self.url}/{name}"

    def inject(self, name: str, *faults: str) -> None:
        with self.lock:
            self.faults.setdefault(name, []).extend(faults)

    def gets(self, name: str) -> list[str | None]:
        with self.lock:
            return [r for n, r in self.requests if n == name]

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.peak_gets = self.active_gets
            self.head_sizes.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _lookup(self):
                name = self.path.lstrip("/").split("?")[0]
                with owner.lock:
                    return name, owner.objects.get(name), owner.etags.get(name)

            def do_HEAD(self) -> None:
                name, data, etag = self._lookup()
                if data is None:
                    self._simple(404)
                    return
                with owner.lock:
                    claimed = owner.head_sizes.get(name, len(data))
                self.send_response(200)
                self.send_header("Content-Length", str(claimed))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def _simple(self, status: int) -> None:
                body = f"status {status}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _reset(self) -> None:
                # RST instead of FIN: the client sees "connection reset by peer".
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True

            def do_GET(self) -> None:
                with owner.lock:
                    owner.active_gets += 1
                    owner.peak_gets = max(owner.peak_gets, owner.active_gets)
                try:
                    self._get()
                finally:
                    with owner.lock:
                        owner.active_gets -= 1

            def _get(self) -> None:
                name = self.path.lstrip("/").split("?")[0]
                spec = self.headers.get("Range")
                with owner.lock:
                    owner.requests.append((name, spec))
                    queue = owner.faults.get(name) or []
                    fault = queue.pop(0) if queue else "ok"
                    if fault.startswith("replace:"):
                        other = fault.split(":", 1)[1]
                        owner.objects[name] = owner.objects[other]
                        owner.etags[name] = owner.etags[other] + "-replaced"
                    data, etag = owner.objects.get(name), owner.etags.get(name)
                if data is None:
                    self._simple(404)
                    return
                if fault in ("503", "500"):
                    self._simple(int(fault))
                    return
                if fault == "reset":
                    self._reset()
                    return
                wanted = self.headers.get("If-Match")
                if wanted is not None and wanted != etag:
                    self._simple(412)
                    return
                begin, end, status = 0, len(data), 200
                if spec and fault != "ignore-range":
                    first, _, last = spec.removeprefix("bytes=").partition("-")
                    begin, end, status = int(first), min(int(last) + 1, len(data)), 206
                if fault.startswith("other:"):
                    with owner.lock:
                        data = owner.objects[fault.split(":", 1)[1]]
                body = data[begin:end]
                declared = len(body)
                if fault == "short-declared":
                    body = body[:len(body) // 2]
                    declared = len(body)
                self.send_response(status)
                self.send_header("Content-Length", str(declared))
                self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {begin}-{end - 1}/{len(data)}")
                self.end_headers()
                if fault == "short":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self._reset()
                    return
                if fault == "slow":
                    step = max(1, len(body) // 8)
                    for at in range(0, len(body), step):
                        self.wfile.write(body[at:at + step])
                        self.wfile.flush()
                        time.sleep(0.02)
                    return
                self.wfile.write(body)

        return Handler


class MotoS3Server:
    """``python -m moto.server`` on a free loopback port (the approach of test_provider_kms.py)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        self._service = ServiceProcess(
            "moto server", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                            str(self.port)], self.port, env=env)
        # moto logs every request to stderr; an unread pipe fills after a few hundred requests
        # and the server then blocks mid-response. Keep reading it (the tail helps debugging).
        self.log_tail: list[bytes] = []
        threading.Thread(target=self._drain, args=(self._service.process.stderr,),
                         daemon=True).start()

    def _drain(self, stream) -> None:
        try:
            for line in iter(stream.readline, b""):
                self.log_tail = [*self.log_tail[-49:], line]
        except (OSError, ValueError):  # closed by stop()
            pass

    def filesystem(self, **options):
        """A fresh s3fs filesystem on this server (not fsspec's shared instance cache)."""
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.url,
                                                "region_name": "us-east-1"}, **options)

    def make_bucket(self, name: str, *, versioned: bool = False) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name,
                                         VersioningConfiguration={"Status": "Enabled"})

    def stop(self) -> None:
        self._service.stop()
