"""The HTTP ingress: Restate's URL shapes on a lean asyncio HTTP/1.1 server."""

from ._ingress import Ingress, parse_delay

__all__ = ["Ingress", "parse_delay"]
