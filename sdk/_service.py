"""Service definitions: the three kinds of service and their handlers."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ._batch import Batch, OutputRecordsSerde, RecordBatch, RecordBatchSerde
from ._serde import Serde, serde_for

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

ServiceKind = Literal["SERVICE", "VIRTUAL_OBJECT", "WORKFLOW"]
HandlerKind = Literal["EXCLUSIVE", "SHARED", "WORKFLOW"] | None
# The attribute a decorated function carries its HandlerDef in (the function is the user's:
# its type cannot declare it, hence setattr and getattr).
_HANDLER_ATTR = "__sluice_handler__"


@dataclass(slots=True)
class HandlerDef:
    """A handler as the endpoint sees it: where it lives, how to call it, how to (de)serialize."""

    service: str
    service_kind: ServiceKind
    name: str
    kind: HandlerKind
    fn: Callable[..., Awaitable[Any]]
    takes_input: bool
    input_serde: Serde[Any]
    output_serde: Serde[Any]
    documentation: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class _ServiceBase:
    kind: ServiceKind

    def __init__(self, name: str, *, description: str | None = None) -> None:
        if not name or not (name[0].isalpha() or name[0] == "_"):
            raise ValueError(f"invalid service name {name!r}: start with a letter")
        self.name = name
        self.description = description
        self.handlers: dict[str, HandlerDef] = {}

    def _register(
        self,
        fn: F,
        *,
        name: str | None,
        kind: HandlerKind,
        input_serde: Serde[Any] | None,
        output_serde: Serde[Any] | None,
        metadata: dict[str, str] | None,
        batch: Batch | None = None,
    ) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an `async def` function")
        handler_name = name or fn.__name__
        if handler_name in self.handlers:
            raise ValueError(f"{self.name} already has a handler named {handler_name!r}")
        params = list(inspect.signature(fn).parameters.values())
        if not params or len(params) > 2:
            raise TypeError(
                f"handler {fn.__qualname__} must take (ctx) or (ctx, input), "
                f"not {len(params)} parameters"
            )
        hints = typing.get_type_hints(fn)
        takes_input = len(params) == 2
        in_type = hints.get(params[1].name, Any) if takes_input else type(None)
        out_type = hints.get("return", Any)
        if batch is not None:
            if not takes_input:
                raise TypeError(f"stream handler {fn.__qualname__} must take (ctx, batch)")
            # Typed helpers, no pydantic needed: the batch and the output records.
            if in_type is RecordBatch:
                input_serde = input_serde or RecordBatchSerde()
            output_serde = output_serde or OutputRecordsSerde()
            metadata = {**batch.metadata(), **(metadata or {})}
        handler = HandlerDef(
            service=self.name,
            service_kind=self.kind,
            name=handler_name,
            kind=kind,
            fn=fn,
            takes_input=takes_input,
            input_serde=input_serde or serde_for(in_type),
            output_serde=output_serde or serde_for(out_type),
            documentation=inspect.getdoc(fn),
            metadata=metadata or {},
        )
        self.handlers[handler_name] = handler
        # The decorated function stays callable as is, and knows its target for ctx calls.
        setattr(fn, _HANDLER_ATTR, handler)
        return typing.cast(F, fn)


class Service(_ServiceBase):
    """A stateless service: its handlers run concurrently, with no key and no state."""

    kind: ServiceKind = "SERVICE"

    def handler(
        self,
        name: str | None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        metadata: dict[str, str] | None = None,
        batch: Batch | None = None,
    ) -> Callable[[F], F]:
        """Declare an `async def handler(ctx: Context[, input])`.

        `batch`: a stream handler, `async def h(ctx: Context, batch: RecordBatch) ->
        list[OutputRecord]`, fed up to `batch.max_records` records of one Kafka partition
        per invocation by any subscription that does not set `batch_max_records` itself.
        """
        return lambda fn: self._register(
            fn,
            name=name,
            kind=None,
            input_serde=input_serde,
            output_serde=output_serde,
            metadata=metadata,
            batch=batch,
        )


class VirtualObject(_ServiceBase):
    """State per key. Exclusive handlers of one key run one at a time, in arrival order;
    shared handlers read state and run concurrently."""

    kind: ServiceKind = "VIRTUAL_OBJECT"

    def handler(
        self,
        name: str | None = None,
        *,
        kind: Literal["exclusive", "shared"] = "exclusive",
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Callable[[F], F]:
        """Declare a handler; `kind="shared"` for a concurrent, read-only one."""
        if kind not in ("exclusive", "shared"):
            raise ValueError(f"kind must be 'exclusive' or 'shared', not {kind!r}")
        ty: HandlerKind = "EXCLUSIVE" if kind == "exclusive" else "SHARED"
        return lambda fn: self._register(
            fn,
            name=name,
            kind=ty,
            input_serde=input_serde,
            output_serde=output_serde,
            metadata=metadata,
        )


class Workflow(_ServiceBase):
    """A `main` handler that runs exactly once per workflow id, plus shared handlers
    that read its state and resolve its durable promises."""

    kind: ServiceKind = "WORKFLOW"

    def main(
        self,
        name: str | None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Callable[[F], F]:
        """Declare the workflow's run-once handler."""
        if any(h.kind == "WORKFLOW" for h in self.handlers.values()):
            raise ValueError(f"workflow {self.name} already has a main handler")
        return lambda fn: self._register(
            fn,
            name=name,
            kind="WORKFLOW",
            input_serde=input_serde,
            output_serde=output_serde,
            metadata=metadata,
        )

    def handler(
        self,
        name: str | None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Callable[[F], F]:
        """Declare a shared handler (queries, signals, promise resolution)."""
        return lambda fn: self._register(
            fn,
            name=name,
            kind="SHARED",
            input_serde=input_serde,
            output_serde=output_serde,
            metadata=metadata,
        )


AnyService = Service | VirtualObject | Workflow


def handler_of(target: Any) -> HandlerDef:
    """The definition behind a decorated handler function, for typed calls."""
    handler = getattr(target, _HANDLER_ATTR, None)
    if not isinstance(handler, HandlerDef):
        raise TypeError(f"{target!r} is not a handler declared with @service.handler()")
    return handler
