"""The invoker: runs attempts against handler endpoints and feeds what they say back to the log."""

from ._h2 import H2Client, H2Response
from ._http1 import http1_request
from ._invoker import Invoker, InvokerOptions

__all__ = ["H2Client", "H2Response", "Invoker", "InvokerOptions", "http1_request"]
