"""The context a handler receives: every durable operation goes through it."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import random as _random
import time
import uuid as _uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from . import protocol as p
from ._errors import TerminalError, TimeoutError
from ._futures import CallFuture, DurableFuture, SendHandle, first_completed
from ._serde import Serde, serde_for
from ._service import handler_of
from ._vm import Invocation

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Retries of a `ctx.run` step inside one attempt.

    With neither `max_attempts` nor `max_duration` set, a failing step fails the attempt
    and the broker retries the invocation with its own policy. With either set, the step is
    retried in place with exponential backoff and, once exhausted, journaled as a terminal
    failure (a `TerminalError` raised from the `await`).
    """

    max_attempts: int | None = None
    max_duration: timedelta | None = None
    initial_retry_interval: timedelta = timedelta(milliseconds=50)
    retry_interval_factor: float = 2.0
    max_retry_interval: timedelta = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class Request:
    """The invocation's request: its id, headers and raw body."""

    id: str
    headers: Mapping[str, str]
    body: bytes


def _value(serde: Serde[Any]) -> Callable[[p.Notification], Any]:
    def convert(n: p.Notification) -> Any:
        return None if n.value is None else serde.deserialize(n.value)

    return convert


def _void(_: p.Notification) -> None:
    return None


def _ms(delay: timedelta) -> int:
    return max(int(delay.total_seconds() * 1000), 0)


_ANY = serde_for(Any)

# The broker's built-in service for Kafka records (``ctx.kafka_send``).
KAFKA_SERVICE = "sluice.Kafka"
KAFKA_SEND = "send"


class Context:
    """What every handler can do: steps, timers, calls, awakeables, determinism helpers."""

    def __init__(self, vm: Invocation, input_command: p.InputCommand) -> None:
        self._vm = vm
        self._input = input_command
        self._random: _random.Random | None = None

    # --- identity ------------------------------------------------------------------------

    def request(self) -> Request:
        """The request that started this invocation (same on every replay)."""
        return Request(
            id=self._vm.invocation_id,
            headers={h.key: h.value for h in self._input.headers},
            body=self._input.value or b"",
        )

    def invocation_id(self) -> str:
        return self._vm.invocation_id

    # --- side effects --------------------------------------------------------------------

    def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        options: RunOptions | None = None,
        type_hint: Any = None,
        serde: Serde[Any] | None = None,
    ) -> DurableFuture[Any]:
        """Run `fn(*args)` (sync or async) once; its result is journaled and replayed.

        The step executes when first awaited. On replay the journaled result (or terminal
        failure) is returned without calling `fn` again.
        """
        vm = self._vm
        codec = serde or (serde_for(type_hint) if type_hint is not None else _ANY)
        cid = vm.next_completion()
        vm.command(p.RunCommand(result_completion_id=cid, name=name))

        async def execute() -> None:
            if vm.has_completion(cid):
                return
            vm.send_raw(await _attempt(name, fn, args, options, codec, cid))

        return DurableFuture(vm, ("c", cid), _value(codec), execute)

    async def time(self) -> float:
        """The current time in seconds since the epoch, journaled (same on replay)."""
        result = await self.run("time", time.time)
        return float(result)

    def random(self) -> _random.Random:
        """A random generator seeded by the broker: the same numbers on every replay."""
        if self._random is None:
            self._random = _random.Random(self._vm.random_seed())
        return self._random

    def uuid(self) -> _uuid.UUID:
        """A version-4 UUID drawn from `random()`: the same on every replay."""
        return _uuid.UUID(int=self.random().getrandbits(128), version=4)

    # --- timers --------------------------------------------------------------------------

    def sleep(self, delay: timedelta, *, name: str = "") -> DurableFuture[None]:
        """A durable timer: survives crashes; awaiting it may suspend the invocation."""
        vm = self._vm
        cid = vm.next_completion()
        vm.command(
            p.SleepCommand(
                wake_up_time=vm.now_ms() + _ms(delay), result_completion_id=cid, name=name
            )
        )
        return DurableFuture(vm, ("c", cid), _void)

    async def with_timeout(self, future: DurableFuture[T], after: timedelta) -> T:
        """Await `future`, or raise `TimeoutError` if a durable timer fires first."""
        timer = self.sleep(after)
        if await first_completed(future, timer) is timer:
            timer._outcome()  # raises if the timer failed rather than fired
            raise TimeoutError(f"timed out after {after}")
        return future._outcome()

    # --- calls and sends -----------------------------------------------------------------

    def service_call(self, handler: Any, arg: Any = None, **kw: Any) -> CallFuture[Any]:
        h = handler_of(handler)
        return self._call(h.service, h.name, h.input_serde.serialize(arg), "", h.output_serde, **kw)

    def object_call(self, handler: Any, key: str, arg: Any = None, **kw: Any) -> CallFuture[Any]:
        h = handler_of(handler)
        return self._call(
            h.service, h.name, h.input_serde.serialize(arg), key, h.output_serde, **kw
        )

    def workflow_call(self, handler: Any, key: str, arg: Any = None, **kw: Any) -> CallFuture[Any]:
        return self.object_call(handler, key, arg, **kw)

    def generic_call(
        self, service: str, handler: str, arg: bytes = b"", key: str | None = None, **kw: Any
    ) -> CallFuture[bytes]:
        return self._call(service, handler, arg, key or "", None, **kw)

    def service_send(self, handler: Any, arg: Any = None, **kw: Any) -> SendHandle:
        h = handler_of(handler)
        return self._send(h.service, h.name, h.input_serde.serialize(arg), "", **kw)

    def object_send(self, handler: Any, key: str, arg: Any = None, **kw: Any) -> SendHandle:
        h = handler_of(handler)
        return self._send(h.service, h.name, h.input_serde.serialize(arg), key, **kw)

    def workflow_send(self, handler: Any, key: str, arg: Any = None, **kw: Any) -> SendHandle:
        return self.object_send(handler, key, arg, **kw)

    def generic_send(
        self, service: str, handler: str, arg: bytes = b"", key: str | None = None, **kw: Any
    ) -> SendHandle:
        return self._send(service, handler, arg, key or "", **kw)

    def _call(
        self,
        service: str,
        handler: str,
        parameter: bytes,
        key: str,
        output: Serde[Any] | None,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> CallFuture[Any]:
        vm = self._vm
        id_cid, result_cid = vm.next_completion(), vm.next_completion()
        vm.command(
            p.CallCommand(
                service_name=service,
                handler_name=handler,
                parameter=parameter,
                headers=[p.Header(key=k, value=v) for k, v in (headers or {}).items()],
                key=key,
                idempotency_key=idempotency_key,
                invocation_id_notification_idx=id_cid,
                result_completion_id=result_cid,
            )
        )
        id_future: DurableFuture[str] = DurableFuture(vm, ("c", id_cid), _invocation_id)
        convert: Callable[[p.Notification], Any] = _value(output) if output else _raw
        return CallFuture(vm, ("c", result_cid), convert, id_future)

    def _send(
        self,
        service: str,
        handler: str,
        parameter: bytes,
        key: str,
        *,
        delay: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SendHandle:
        vm = self._vm
        id_cid = vm.next_completion()
        vm.command(
            p.OneWayCallCommand(
                service_name=service,
                handler_name=handler,
                parameter=parameter,
                invoke_time=vm.now_ms() + _ms(delay) if delay else 0,
                headers=[p.Header(key=k, value=v) for k, v in (headers or {}).items()],
                key=key,
                idempotency_key=idempotency_key,
                invocation_id_notification_idx=id_cid,
            )
        )
        return SendHandle(DurableFuture(vm, ("c", id_cid), _invocation_id))

    def kafka_send(
        self,
        topic: str,
        key: str | bytes | None,
        value: Any,
        *,
        headers: Mapping[str, str] | None = None,
        cluster: str | None = None,
        serde: Serde[Any] | None = None,
        avro_schema: str | Mapping[str, Any] | None = None,
    ) -> SendHandle:
        """Send one record to a Kafka topic, exactly once, as a durable step.

        Journaled like a one-way call (to the broker's built-in ``sluice.Kafka/send``): on
        replay nothing is sent again. The broker puts the record in its outbox in the same
        write as this journal entry, and its egress connector delivers it in a Kafka
        transaction, after the records this invocation sent before it with the same key.
        `value`: bytes as they are, anything else through `serde` (JSON by default).
        `cluster`: a Kafka cluster declared on the broker (default: the only one declared,
        or the one named "default").
        `avro_schema`: send the value (then JSON) as Avro in the Schema Registry wire format,
        written with this schema (a dict, registered under subject TOPIC-value) or with the
        latest schema of this subject, in the cluster's schema registry. A value that does
        not fit is not sent; the broker records it as a failed ``sluice.Kafka/egress``.
        """
        data = value if isinstance(value, bytes) else (serde or _ANY).serialize(value)
        body: dict[str, Any] = {"topic": topic, "value_b64": base64.b64encode(data).decode()}
        if isinstance(key, bytes):
            body["key_b64"] = base64.b64encode(key).decode()
        elif key is not None:
            body["key"] = key
        if headers:
            body["headers"] = dict(headers)
        if cluster:
            body["cluster"] = cluster
        if avro_schema is not None:
            body["avro_schema"] = avro_schema if isinstance(avro_schema, str) else dict(avro_schema)
        return self._send(KAFKA_SERVICE, KAFKA_SEND, json.dumps(body).encode(), "")

    def cancel_invocation(self, invocation_id: str) -> None:
        """Ask the broker to cancel another invocation (it sees a `CancelledError`)."""
        self._vm.command(
            p.SendSignalCommand(target_invocation_id=invocation_id, idx=p.CANCEL_SIGNAL, void=True)
        )

    def attach_invocation(self, invocation_id: str, *, type_hint: Any = None) -> DurableFuture[Any]:
        """Wait for another invocation's result."""
        vm = self._vm
        cid = vm.next_completion()
        vm.command(p.AttachInvocationCommand(invocation_id=invocation_id, result_completion_id=cid))
        return DurableFuture(
            vm, ("c", cid), _value(serde_for(type_hint)) if type_hint else _raw_or_json
        )

    # --- awakeables ----------------------------------------------------------------------

    def awakeable(
        self, *, type_hint: Any = None, serde: Serde[Any] | None = None
    ) -> tuple[str, DurableFuture[Any]]:
        """An id to hand to the outside world, and the future its resolution completes."""
        vm = self._vm
        idx = vm.next_signal()
        codec = serde or (serde_for(type_hint) if type_hint is not None else _ANY)
        return vm.awakeable_id(idx), DurableFuture(vm, ("s", idx), _value(codec))

    def resolve_awakeable(
        self, awakeable_id: str, value: Any, *, serde: Serde[Any] | None = None
    ) -> None:
        data = (serde or _ANY).serialize(value)
        self._vm.command(p.CompleteAwakeableCommand(awakeable_id=awakeable_id, value=data))

    def reject_awakeable(self, awakeable_id: str, message: str, code: int = 500) -> None:
        self._vm.command(
            p.CompleteAwakeableCommand(
                awakeable_id=awakeable_id, failure=p.Failure(code=code, message=message)
            )
        )


def _invocation_id(n: p.Notification) -> str:
    return n.invocation_id or ""


def _raw(n: p.Notification) -> bytes:
    return n.value or b""


def _raw_or_json(n: p.Notification) -> Any:
    return _ANY.deserialize(n.value or b"")


async def _attempt(
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    options: RunOptions | None,
    serde: Serde[Any],
    cid: int,
) -> p.ProposeRunCompletionMessage:
    """Execute a step (retrying in place if the options say so) and build its proposal."""
    attempt = 0
    started = time.monotonic()
    delay = options.initial_retry_interval.total_seconds() if options else 0.0
    while True:
        attempt += 1
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return p.ProposeRunCompletionMessage(
                result_completion_id=cid, value=serde.serialize(result)
            )
        except TerminalError as exc:
            return p.ProposeRunCompletionMessage(
                result_completion_id=cid,
                failure=p.Failure(code=exc.status_code, message=exc.message),
            )
        except Exception as exc:
            if options is None or (options.max_attempts is None and options.max_duration is None):
                raise
            exhausted = (options.max_attempts is not None and attempt >= options.max_attempts) or (
                options.max_duration is not None
                and time.monotonic() - started + delay >= options.max_duration.total_seconds()
            )
            if exhausted:
                message = (
                    f"step {name!r} failed after {attempt} attempts: {type(exc).__name__}: {exc}"
                )
                return p.ProposeRunCompletionMessage(
                    result_completion_id=cid, failure=p.Failure(code=500, message=message)
                )
            await asyncio.sleep(delay)
            delay = min(
                delay * options.retry_interval_factor, options.max_retry_interval.total_seconds()
            )


class ObjectSharedContext(Context):
    """A shared handler of a virtual object: the key and read-only state."""

    def key(self) -> str:
        return self._vm.key

    async def get(self, key: str, *, type_hint: Any = None, serde: Serde[Any] | None = None) -> Any:
        """The value stored under `key`, or None."""
        data = await self._get_raw(key)
        if data is None:
            return None
        codec = serde or (serde_for(type_hint) if type_hint is not None else _ANY)
        return codec.deserialize(data)

    async def _get_raw(self, key: str) -> bytes | None:
        vm = self._vm
        k = key.encode()
        replayed = vm.peek_replayed()
        lazy = isinstance(replayed, p.GetLazyStateCommand) or (
            replayed is None and vm.partial_state and k not in vm.state
        )
        if not lazy:
            value = vm.state.get(k)
            got = vm.command(p.GetEagerStateCommand(key=k, void=value is None, value=value))
            assert isinstance(got, p.GetEagerStateCommand)
            return None if got.void or got.value is None else got.value
        cid = vm.next_completion()
        vm.command(p.GetLazyStateCommand(key=k, result_completion_id=cid))
        value = await DurableFuture(vm, ("c", cid), lambda n: n.value)
        vm.state[k] = value
        return value

    async def state_keys(self) -> list[str]:
        """The keys that hold state, sorted."""
        vm = self._vm
        replayed = vm.peek_replayed()
        lazy = isinstance(replayed, p.GetLazyStateKeysCommand) or (
            replayed is None and vm.partial_state
        )
        if not lazy:
            known = p.StateKeys(keys=sorted(k for k, v in vm.state.items() if v is not None))
            got = vm.command(p.GetEagerStateKeysCommand(value=known))
            assert isinstance(got, p.GetEagerStateKeysCommand)
            keys = got.value.keys if got.value else []
        else:
            cid = vm.next_completion()
            vm.command(p.GetLazyStateKeysCommand(result_completion_id=cid))
            keys = await DurableFuture(
                vm, ("c", cid), lambda n: n.state_keys.keys if n.state_keys else []
            )
        return sorted(k.decode() for k in keys)


class ObjectContext(ObjectSharedContext):
    """An exclusive handler of a virtual object: the key and read-write state."""

    def set(self, key: str, value: Any, *, serde: Serde[Any] | None = None) -> None:
        data = (serde or serde_for(type(value))).serialize(value)
        k = key.encode()
        self._vm.command(p.SetStateCommand(key=k, value=data))
        self._vm.state[k] = data

    def clear(self, key: str) -> None:
        k = key.encode()
        self._vm.command(p.ClearStateCommand(key=k))
        self._vm.state[k] = None

    def clear_all(self) -> None:
        self._vm.command(p.ClearAllStateCommand())
        self._vm.state.clear()
        self._vm.partial_state = False


class DurablePromise:
    """A workflow's named promise: completed once, read by any of its handlers."""

    def __init__(self, vm: Invocation, name: str, serde: Serde[Any]) -> None:
        self._vm = vm
        self._name = name
        self._serde = serde

    def value(self) -> DurableFuture[Any]:
        """The promise's value once completed (waits durably until then)."""
        cid = self._vm.next_completion()
        self._vm.command(p.GetPromiseCommand(key=self._name, result_completion_id=cid))
        return DurableFuture(self._vm, ("c", cid), _value(self._serde))

    async def peek(self) -> Any:
        """The value if already completed, else None (does not wait)."""
        cid = self._vm.next_completion()
        self._vm.command(p.PeekPromiseCommand(key=self._name, result_completion_id=cid))
        return await DurableFuture(self._vm, ("c", cid), _value(self._serde))

    async def resolve(self, value: Any) -> None:
        """Complete with a value; a TerminalError if it was already completed."""
        await self._complete(
            p.CompletePromiseCommand(key=self._name, completion_value=self._serde.serialize(value))
        )

    async def reject(self, message: str, code: int = 500) -> None:
        """Complete with a failure; readers get a TerminalError."""
        await self._complete(
            p.CompletePromiseCommand(
                key=self._name, completion_failure=p.Failure(code=code, message=message)
            )
        )

    async def _complete(self, command: p.CompletePromiseCommand) -> None:
        cid = self._vm.next_completion()
        command.result_completion_id = cid
        self._vm.command(command)
        await DurableFuture(self._vm, ("c", cid), _void)


class WorkflowSharedContext(ObjectSharedContext):
    """A shared handler of a workflow: read its state, resolve or read its promises."""

    def promise(
        self, name: str, *, type_hint: Any = None, serde: Serde[Any] | None = None
    ) -> DurablePromise:
        return DurablePromise(
            self._vm, name, serde or (serde_for(type_hint) if type_hint is not None else _ANY)
        )


class WorkflowContext(WorkflowSharedContext, ObjectContext):
    """The workflow's main handler: runs once per workflow id; read-write state."""
