"""OSV data served over HTTP on loopback: one export, as a configured data source is
served (:class:`OsvExportServer`), or the per-ecosystem exports standing in for the
public ones (:class:`OsvExports`). Both answer ``If-None-Match`` with 304 when the ETag
still holds, and keep the status of every answer in order."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from typing import Any
from urllib.parse import unquote


class OsvExportServer:
    def __init__(self, records: list[dict[str, Any]], etag: str = '"v1"') -> None:
        self.answers: list[int] = []
        self.serve(records, etag)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("If-None-Match") == outer.etag:
                    outer.answers.append(304)
                    self.send_response(304)
                    self.end_headers()
                    return
                outer.answers.append(200)
                self.send_response(200)
                self.send_header("ETag", outer.etag)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *_args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/osv/all.json"

    def serve(self, records: list[dict[str, Any]], etag: str) -> None:
        """From now on, answer with ``records`` under ``etag``."""
        self.body, self.etag = json.dumps(records).encode(), etag

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OsvExports:
    """The public OSV exports as osv.dev serves them, on loopback: one zip of JSON
    records per ecosystem at ``<url>/<ecosystem>/all.zip``, with an ETag honoured by
    ``If-None-Match``. Every request's path and answer status are kept in order;
    :meth:`close` takes it offline."""

    def __init__(self, exports: dict[str, list[dict[str, Any]]]) -> None:
        self.requests: list[tuple[str, int]] = []
        self.zips: dict[str, tuple[bytes, str]] = {}
        for ecosystem, records in exports.items():
            self.serve(ecosystem, records)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ecosystem, _, rest = unquote(self.path).lstrip("/").partition("/")
                found = outer.zips.get(ecosystem) if rest == "all.zip" else None
                if found is None:
                    status, body, etag = 404, b"", ""
                else:
                    body, etag = found
                    status = 304 if self.headers.get("If-None-Match") == etag else 200
                outer.requests.append((self.path, status))
                self.send_response(status)
                if etag:
                    self.send_header("ETag", etag)
                body = body if status == 200 else b""
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, ecosystem: str, records: list[dict[str, Any]]) -> None:
        """From now on, ``<ecosystem>/all.zip`` holds ``records``, one file each."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            for record in records:
                archive.writestr(f"{record['id']}.json", json.dumps(record))
        body = buf.getvalue()
        self.zips[ecosystem] = (body, f'"{hashlib.sha256(body).hexdigest()[:16]}"')

    def asked_for(self) -> set[str]:
        """The ecosystems whose export was asked for."""
        return {unquote(path).lstrip("/").partition("/")[0] for path, _ in self.requests}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
