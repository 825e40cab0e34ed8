"""Sluice SDK: durable handlers in Python.

    pip install sluice            # the SDK alone: no RocksDB, no Kafka client

Write handlers with `Service`, `VirtualObject` and `Workflow`, serve them with `serve(...)`
or mount `app(...)` in any ASGI server, and register the endpoint with a broker.
"""

from ._batch import Batch, OutputRecord, Record, RecordBatch
from ._context import (
    Context,
    DurablePromise,
    ObjectContext,
    ObjectSharedContext,
    Request,
    RunOptions,
    WorkflowContext,
    WorkflowSharedContext,
)
from ._endpoint import Endpoint, app, serve
from ._errors import CancelledError, SuspendedError, TerminalError, TimeoutError
from ._futures import CallFuture, DurableFuture, SendHandle, gather, select, wait_completed
from ._serde import BytesSerde, JsonSerde, Serde, SerdeError, TypedSerde
from ._service import Service, VirtualObject, Workflow

__all__ = [
    "Batch",
    "BytesSerde",
    "CallFuture",
    "CancelledError",
    "Context",
    "DurableFuture",
    "DurablePromise",
    "Endpoint",
    "JsonSerde",
    "ObjectContext",
    "ObjectSharedContext",
    "OutputRecord",
    "Record",
    "RecordBatch",
    "Request",
    "RunOptions",
    "SendHandle",
    "Serde",
    "SerdeError",
    "Service",
    "SuspendedError",
    "TerminalError",
    "TimeoutError",
    "TypedSerde",
    "VirtualObject",
    "Workflow",
    "WorkflowContext",
    "WorkflowSharedContext",
    "app",
    "gather",
    "select",
    "serve",
    "wait_completed",
]
