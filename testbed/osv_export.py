"""An OSV export served over HTTP on loopback, as a configured data source is served:
it answers ``If-None-Match`` with 304 when the ETag still holds, and keeps the status of
every answer in order."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


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
