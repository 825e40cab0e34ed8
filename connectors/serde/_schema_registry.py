"""Schema registries: where Avro schemas live and get their ids.

Two implementations of one interface: `HttpSchemaRegistry` speaks the Confluent Schema
Registry REST API (with a cache, so each id is fetched once); `FileSchemaRegistry` keeps
the same data in one JSON file, for tests and offline use.
"""

from __future__ import annotations

import abc
import base64
import json
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import SecretStr

Schema = dict[str, Any] | list[Any] | str


class RegistryError(RuntimeError):
    """The registry refused a request or could not be reached; the message says which.

    ``retriable``: the registry could not answer (unreachable, HTTP 5xx or 429), so the same
    request may work later; otherwise it answered no (an unknown subject or id, a schema it
    rejects), and asking again will not help.
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


def canonical(schema: Schema) -> str:
    """One string per schema, whatever the key order or spacing it was written with."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class SchemaRegistry(abc.ABC):
    """Register schemas under subjects, and resolve ids back to schemas."""

    @abc.abstractmethod
    def register(self, subject: str, schema: Schema) -> int:
        """The id of `schema` under `subject`, registering it if new (idempotent)."""

    @abc.abstractmethod
    def schema(self, schema_id: int) -> Schema:
        """The schema with this id; `RegistryError` if there is none."""

    @abc.abstractmethod
    def latest(self, subject: str) -> tuple[int, Schema]:
        """The newest schema registered under `subject`, with its id."""


class FileSchemaRegistry(SchemaRegistry):
    """A registry kept in one JSON file; ids are assigned in registration order from 1."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        if not self._path.exists():
            return {"schemas": {}, "subjects": {}}
        try:
            data: dict[str, Any] = json.loads(self._path.read_text())
        except ValueError as exc:
            raise RegistryError(f"{self._path}: not a schema registry file: {exc}") from exc
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".registry-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, self._path)  # readers never see a half-written file

    def register(self, subject: str, schema: Schema) -> int:
        text = canonical(schema)
        with self._lock:
            data = self._load()
            ids = {v: int(k) for k, v in data["schemas"].items()}
            schema_id = ids.get(text)
            if schema_id is None:
                schema_id = len(data["schemas"]) + 1
                data["schemas"][str(schema_id)] = text
            versions = data["subjects"].setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            self._save(data)
            return schema_id

    def schema(self, schema_id: int) -> Schema:
        text = self._load()["schemas"].get(str(schema_id))
        if text is None:
            raise RegistryError(f"schema id {schema_id} is not in {self._path}")
        parsed: Schema = json.loads(text)
        return parsed

    def latest(self, subject: str) -> tuple[int, Schema]:
        versions = self._load()["subjects"].get(subject)
        if not versions:
            raise RegistryError(f"subject {subject!r} has no schema in {self._path}")
        return versions[-1], self.schema(versions[-1])


class HttpSchemaRegistry(SchemaRegistry):
    """A Confluent-compatible Schema Registry over HTTP, with an id and subject cache.

    Lookups block on a cache miss only (once per schema id per process).
    """

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._auth: str | None = None
        if username is not None:
            secret = password.get_secret_value() if password else ""
            self._auth = "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()
        self._by_id: dict[int, Schema] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._url + path, data=data, method=method)
        req.add_header("accept", self._CONTENT_TYPE)
        if data is not None:
            req.add_header("content-type", self._CONTENT_TYPE)
        if self._auth:
            req.add_header("authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            if _is_refusal(exc.code, detail):
                raise RegistryError(
                    f"schema registry {method} {path}: HTTP {exc.code}: {detail}"
                ) from None
            raise RegistryError(
                f"schema registry {method} {path}: HTTP {exc.code} (check the registry "
                f"address and credentials if this lasts): {detail}",
                retriable=True,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(
                f"schema registry at {self._url} unreachable: {exc}", retriable=True
            ) from None

    def register(self, subject: str, schema: Schema) -> int:
        text = canonical(schema)
        cached = self._ids.get((subject, text))
        if cached is not None:
            return cached
        answer = self._request("POST", f"/subjects/{_quote(subject)}/versions", {"schema": text})
        schema_id = int(answer["id"])
        self._ids[subject, text] = schema_id
        self._by_id[schema_id] = json.loads(text)
        return schema_id

    def schema(self, schema_id: int) -> Schema:
        cached = self._by_id.get(schema_id)
        if cached is None:
            answer = self._request("GET", f"/schemas/ids/{schema_id}")
            cached = self._by_id[schema_id] = json.loads(answer["schema"])
        return cached

    def latest(self, subject: str) -> tuple[int, Schema]:
        answer = self._request("GET", f"/subjects/{_quote(subject)}/versions/latest")
        schema_id = int(answer["id"])
        parsed: Schema = json.loads(answer["schema"])
        self._by_id[schema_id] = parsed
        return schema_id, parsed


def _is_refusal(status: int, body: str) -> bool:
    """Whether an HTTP error is the registry's own "no": an unknown subject, version or
    schema id (404 with error code 40401 to 40499), an incompatible schema (409), or an
    invalid one (422). Anything else (a 404 for a path it does not serve, 401 and 403,
    5xx, 429, or an answer that is not from a registry at all) says nothing about the
    record: it is retried, so a wrong address or password stalls the pipeline with that
    reason instead of dead-lettering every record."""
    try:
        code = json.loads(body).get("error_code")
    except (ValueError, AttributeError):
        return False
    if not isinstance(code, int):
        return False
    if status == 404:
        return 40401 <= code <= 40499
    return status in (409, 422)


def registry_at(address: str) -> SchemaRegistry:
    """The registry an address names: ``http(s)://[user:password@]host[:port]`` is a Schema
    Registry over HTTP; ``file:///path`` or a plain path is a ``FileSchemaRegistry``."""
    parts = urllib.parse.urlsplit(address)
    if parts.scheme in ("http", "https"):
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        password = SecretStr(urllib.parse.unquote(parts.password)) if parts.password else None
        username = urllib.parse.unquote(parts.username) if parts.username else None
        return HttpSchemaRegistry(url, username=username, password=password)
    if parts.scheme == "file":
        return FileSchemaRegistry(urllib.parse.unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # (one letter: a Windows drive)
        raise ValueError(f"{address!r}: expected http(s)://HOST[:PORT], file:///PATH or a path")
    return FileSchemaRegistry(address)


def redacted(address: str) -> str:
    """``address`` without the password of its user information, for display."""
    parts = urllib.parse.urlsplit(address)
    if not parts.password:
        return address
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")
