"""Test harness: run handler services on a real broker over real sockets.

`harness("module:app")` starts restate-server 1.7.12 (or the Sluice broker) and the handler
service on free loopback ports, registers the deployment and yields a `TestEnvironment` with
ingress and admin clients. The pieces (`RestateServer`, `SluiceBroker`, `HandlerProcess`) can
also be driven one by one, for crash tests: SIGKILL and restart either process.
"""

from ._broker import RESTATE_VERSION, Broker, RestateServer, SluiceBroker, restate_server_binary
from ._environment import (
    BrokerKind,
    TestEnvironment,
    Transport,
    harness,
    make_broker,
    read_json_lines,
)
from ._handler import ALWAYS_REPLAY_ENV, HandlerProcess
from ._process import HarnessError, free_port

__all__ = [
    "ALWAYS_REPLAY_ENV",
    "RESTATE_VERSION",
    "Broker",
    "BrokerKind",
    "HandlerProcess",
    "HarnessError",
    "RestateServer",
    "SluiceBroker",
    "TestEnvironment",
    "Transport",
    "free_port",
    "harness",
    "make_broker",
    "read_json_lines",
    "restate_server_binary",
]
