"""The admin API (port 9070), shaped like restate-server's where Restate has the endpoint."""

from ._api import AdminApi

__all__ = ["AdminApi"]
