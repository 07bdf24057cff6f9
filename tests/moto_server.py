"""A real S3 endpoint for tests: moto's ThreadedMotoServer on 127.0.0.1.

boto3 (in the test process or in a mount daemon) talks HTTP to it like to
any S3. The server can be stopped and started again on the same port; the
buckets survive (moto keeps them in this process), so tests can take the
endpoint down and bring it back. stop() closes the listening socket and
every open connection, so clients see "connection refused", not a server
that silently stopped answering.

`requests` records every request (method, path, query, Range header,
status, response bytes) so tests can check what went over the wire, and
inject() makes matching requests fail (an error status, or a response
body cut short) to exercise retries against the real HTTP stack.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.request
import uuid


class MotoServer:
    def __init__(self):
        self.port: int | None = None
        self.requests: list[dict] = []   # one dict per request (see module doc)
        self._server = None              # moto's ThreadedMotoServer
        self._conns: set[socket.socket] = set()
        self._faults: list[dict] = []    # see inject()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "MotoServer":
        from moto.server import ThreadedMotoServer
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        srv = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port or 0, verbose=False)
        srv.start()
        self.port = srv.get_host_and_port()[1]
        wsgi = srv._server          # werkzeug's ThreadedWSGIServer
        self._track_connections(wsgi)
        wsgi.app = self._recording(wsgi.app)
        self._server = srv
        return self

    def stop(self) -> None:
        """Take the endpoint down: no listener, no open connections."""
        srv, self._server = self._server, None
        if srv is None:
            return
        wsgi = srv._server
        wsgi.shutdown()
        wsgi.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        srv._thread.join(10)

    def _track_connections(self, wsgi) -> None:
        process, close = wsgi.process_request, wsgi.shutdown_request

        def process_request(request, client_address):
            with self._lock:
                self._conns.add(request)
            return process(request, client_address)

        def shutdown_request(request):
            with self._lock:
                self._conns.discard(request)
            return close(request)

        wsgi.process_request = process_request
        wsgi.shutdown_request = shutdown_request

    def inject(self, method: str, path_contains: str = "", *, query_contains: str = "", status: int = 0,
               code: str = "InternalError", truncate_after: int | None = None, times: int = 1) -> None:
        """The next `times` requests with this method whose path and query
        contain the given strings fail: with `status` and an S3 error `code`,
        or (truncate_after) by closing the connection after that many bytes
        of a normal response."""
        with self._lock:
            self._faults.append(dict(method=method, path=path_contains, query=query_contains, status=status,
                                     code=code, truncate=truncate_after, left=times))

    def _fault_for(self, rec: dict) -> dict | None:
        with self._lock:
            for f in self._faults:
                if f["left"] > 0 and f["method"] == rec["method"] and f["path"] in rec["path"] \
                        and f["query"] in rec["query"]:
                    f["left"] -= 1
                    return f
        return None

    def _recording(self, app):
        def wrapped(environ, start_response):
            rec = {"method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
                   "query": environ.get("QUERY_STRING", ""), "range": environ.get("HTTP_RANGE"),
                   "status": None, "bytes": 0, "fault": None}
            fault = self._fault_for(rec)
            with self._lock:
                self.requests.append(rec)   # now: the client may see the answer before this generator ends

            def sr(status, headers, exc_info=None):
                rec["status"] = int(status.split()[0])
                return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)
            if fault and fault["status"]:
                rec["fault"] = fault["code"]
                body = [(f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault["code"]}</Code>'
                         f'<Message>injected by the test</Message></Error>').encode()]
                sr(f'{fault["status"]} Injected', [("Content-Type", "application/xml"),
                                                   ("Content-Length", str(len(body[0])))])
            else:
                body = app(environ, sr)
            try:
                for chunk in body:
                    if fault and fault["truncate"] is not None and rec["bytes"] + len(chunk) > fault["truncate"]:
                        rec["fault"] = "truncated"
                        yield chunk[: fault["truncate"] - rec["bytes"]]
                        raise ConnectionAbortedError("injected: response cut short")
                    rec["bytes"] += len(chunk)
                    yield chunk
            finally:
                if hasattr(body, "close"):
                    body.close()
        return wrapped

    # ---- helpers -------------------------------------------------------------
    def client(self):
        """A plain boto3 client of this endpoint (for checks from tests)."""
        import boto3
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def set_restore_progress(self, polls: int | None) -> None:
        """How many reads of an object a Glacier restore takes in moto
        (None: restores finish at once, moto's default)."""
        if polls is None:
            self._moto_api("unset-transition", {"model_name": "s3::keyrestore"})
        else:
            self._moto_api("set-transition", {"model_name": "s3::keyrestore",
                                              "transition": {"progression": "manual", "times": polls}})

    def _moto_api(self, action: str, body: dict) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/state-manager/{action}",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def tier_options(self, bucket: str, **extra) -> dict:
        """Options of an S3 tier on this endpoint with short test timeouts."""
        opts = dict(bucket=bucket, endpoint_url=self.url, region="us-east-1", access_key_id="testing",
                    secret_access_key="testing", connect_timeout=1, read_timeout=3, deadline=3, max_attempts=3)
        opts.update(extra)
        return opts
