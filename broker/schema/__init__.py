"""Deployments, services and handlers: what the broker knows how to invoke."""

from ._discovery import DiscoveryError, discover
from ._registry import Deployment, HandlerInfo, Registry, ServiceInfo

__all__ = ["Deployment", "DiscoveryError", "HandlerInfo", "Registry", "ServiceInfo", "discover"]
