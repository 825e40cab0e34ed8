"""A small Confluent-compatible Schema Registry on a loopback port, for tests.

It implements the four calls Sluice makes (register, schema by id, latest by subject,
list subjects), keeps everything in memory, and counts requests so tests can check caching.
Setting ``failing`` to an HTTP status makes it answer every request with that status.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


class RegistryServer:
    def __init__(self, port: int = 0) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: Counter[str] = Counter()
        self.failing: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RegistryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def again(self) -> RegistryServer:
        """A registry started again on the same port with the schemas this one held (as a
        real registry keeps them), answering from its first request."""
        other = RegistryServer(self._server.server_address[1])
        other.schemas = dict(self.schemas)
        other.subjects = {s: list(ids) for s, ids in self.subjects.items()}
        return other

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/vnd.schemaregistry.v1+json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = [unquote(p) for p in self.path.strip("/").split("/")]
                registry.requests[f"GET /{parts[0]}"] += 1
                if registry.failing is not None:
                    self._reply(registry.failing, {"error_code": 50001, "message": "failing"})
                elif parts[:2] == ["schemas", "ids"] and len(parts) == 3:
                    text = registry.schemas.get(int(parts[2]))
                    if text is None:
                        self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                    else:
                        self._reply(200, {"schema": text})
                elif (
                    parts[0] == "subjects"
                    and len(parts) == 4
                    and parts[2:] == ["versions", "latest"]
                ):
                    ids = registry.subjects.get(parts[1])
                    if not ids:
                        self._reply(404, {"error_code": 40401, "message": "Subject not found"})
                    else:
                        sid = ids[-1]
                        body = {"subject": parts[1], "id": sid, "version": len(ids)}
                        self._reply(200, {**body, "schema": registry.schemas[sid]})
                elif parts == ["subjects"]:
                    self._reply(200, sorted(registry.subjects))
                else:
                    self._reply(404, {"error_code": 404, "message": "not found"})

            def do_POST(self) -> None:
                parts = [unquote(p) for p in self.path.strip("/").split("/")]
                registry.requests["POST /subjects"] += 1
                if registry.failing is not None:
                    self._reply(registry.failing, {"error_code": 50001, "message": "failing"})
                    return
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                if parts[0] != "subjects" or parts[2:] != ["versions"]:
                    self._reply(404, {"error_code": 404, "message": "not found"})
                    return
                text = json.dumps(json.loads(body["schema"]), sort_keys=True)
                sid = next((i for i, s in registry.schemas.items() if s == text), None)
                if sid is None:
                    sid = len(registry.schemas) + 1
                    registry.schemas[sid] = text
                versions = registry.subjects.setdefault(parts[1], [])
                if sid not in versions:
                    versions.append(sid)
                self._reply(200, {"id": sid})

        return Handler
