"""Discovery: ask an endpoint what it serves (``GET /discover``) and pick a protocol version."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from sluice import protocol as p

MANIFEST_VERSIONS = (4, 3, 2, 1)
_ACCEPT = ", ".join(
    f"application/vnd.restate.endpointmanifest.v{v}+json" for v in MANIFEST_VERSIONS
)


class DiscoveryError(Exception):
    """Discovery failed; ``status`` is the HTTP status the admin API should answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def discover(
    uri: str,
    *,
    use_http_11: bool,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - one deadline for each of its HTTP requests
) -> tuple[dict[str, Any], int, int]:
    """Return (manifest, negotiated protocol version, manifest version)."""
    import asyncio

    from sluice.broker.invoker import H2Client, http1_request
    from sluice.broker.invoker._h2 import h2_request

    url = urlsplit(uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise DiscoveryError(f"bad deployment uri {uri!r}: expected http://host:port[/path]")
    if url.scheme == "https":
        raise DiscoveryError("https deployments are not supported yet; use http:// (h2c)")
    host, port = url.hostname, url.port or 80
    path = url.path.rstrip("/") + "/discover"
    hdrs = [("accept", _ACCEPT), *(headers or {}).items()]
    try:
        if use_http_11:
            status, rh, body = await asyncio.wait_for(
                http1_request(host, port, "GET", path, hdrs), timeout
            )
        else:
            client = H2Client(host, port)
            try:
                resp = await asyncio.wait_for(h2_request(client, "GET", path, hdrs), timeout)
            finally:
                client.close()
            status, rh, body = resp.status, resp.headers, bytes(resp.body)
    except TimeoutError as e:
        raise DiscoveryError(f"discovery of {uri} timed out after {timeout:.0f}s", 502) from e
    except (OSError, ConnectionError) as e:
        mode = "HTTP/1.1" if use_http_11 else "HTTP/2 (h2c prior knowledge)"
        raise DiscoveryError(f"cannot reach {uri} over {mode}: {e}", 502) from e
    if status != 200:
        text = body[:300].decode("utf-8", "replace")
        raise DiscoveryError(f"discovery of {uri} answered HTTP {status}: {text}", 502)
    ctype = rh.get("content-type", "")
    mversion = 1
    for v in MANIFEST_VERSIONS:
        if f"endpointmanifest.v{v}+json" in ctype:
            mversion = v
            break
    try:
        manifest = json.loads(body)
    except ValueError as e:
        raise DiscoveryError(f"discovery of {uri} returned invalid JSON: {e}") from e
    lo = int(manifest.get("minProtocolVersion", 1))
    hi = int(manifest.get("maxProtocolVersion", lo))
    version = min(hi, p.MAX_VERSION)
    if version < max(lo, p.MIN_VERSION):
        raise DiscoveryError(
            f"the deployment speaks service protocol v{lo}..v{hi}; "
            f"this broker speaks v{p.MIN_VERSION}..v{p.MAX_VERSION}"
        )
    if not isinstance(manifest.get("services"), list):
        raise DiscoveryError("the manifest has no 'services' list")
    return manifest, version, mversion
