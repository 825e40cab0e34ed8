"""Durable futures and the combinators over them.

A durable future stands for a notification the broker will deliver (a call result, a
sleep, an awakeable). Awaiting it, or a combinator of several, consumes notifications in
journal order, so the outcome is the same on every replay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from . import protocol as p
from ._vm import Invocation, Leaf, failure_error

T = TypeVar("T")


class DurableFuture(Generic[T]):
    """A result the broker delivers durably; await it, or combine it with others."""

    __slots__ = ("_convert", "_leaf", "_start", "_vm")

    def __init__(
        self,
        vm: Invocation,
        leaf: Leaf,
        convert: Callable[[p.Notification], T],
        start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._vm = vm
        self._leaf = leaf
        self._convert = convert
        self._start = start  # run steps execute when first awaited

    def done(self) -> bool:
        """Whether the result is already known (no waiting needed)."""
        return self._vm.result(self._leaf) is not None

    def _outcome(self) -> T:
        n = self._vm.result(self._leaf)
        assert n is not None
        if n.failure is not None:
            raise failure_error(n.failure)
        return self._convert(n)

    def _failed(self) -> bool:
        n = self._vm.result(self._leaf)
        return n is not None and n.failure is not None

    async def _begin(self) -> None:
        start, self._start = self._start, None
        if start is not None:
            await start()

    async def _wait(self) -> T:
        await self._begin()
        await self._vm.wait((self._leaf,), self.done)
        return self._outcome()

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()


class SendHandle:
    """The handle of a one-way send: the callee's invocation id arrives durably."""

    __slots__ = ("_future",)

    def __init__(self, future: DurableFuture[str]) -> None:
        self._future = future

    async def invocation_id(self) -> str:
        return await self._future


class CallFuture(DurableFuture[T]):
    """A call's result, plus the callee's invocation id (known before the result)."""

    __slots__ = ("_id_future",)

    def __init__(
        self,
        vm: Invocation,
        leaf: Leaf,
        convert: Callable[[p.Notification], T],
        id_future: DurableFuture[str],
    ) -> None:
        super().__init__(vm, leaf, convert)
        self._id_future = id_future

    async def invocation_id(self) -> str:
        return await self._id_future


def _vm_of(futures: tuple[DurableFuture[Any], ...]) -> Invocation:
    if not futures:
        raise ValueError("no futures given")
    vm = futures[0]._vm
    if any(f._vm is not vm for f in futures):
        raise ValueError("durable futures of different invocations cannot be combined")
    return vm


async def gather(*futures: DurableFuture[Any]) -> list[Any]:
    """Wait for all; raise the first failure (in completion order) as soon as it is known."""
    vm = _vm_of(futures)
    for f in futures:
        await f._begin()

    def settled() -> bool:
        return all(f.done() for f in futures) or any(f._failed() for f in futures)

    await vm.wait((f._leaf for f in futures), settled)
    failed = [f for f in futures if f._failed()]
    if failed:
        first = min(failed, key=lambda f: vm.arrival(f._leaf))
        first._outcome()
    return [f._outcome() for f in futures]


async def first_completed(*futures: DurableFuture[Any]) -> DurableFuture[Any]:
    """Wait for the first to complete and return it (if several have, the first to arrive)."""
    vm = _vm_of(futures)
    for f in futures:
        await f._begin()
    await vm.wait((f._leaf for f in futures), lambda: any(f.done() for f in futures))
    return min((f for f in futures if f.done()), key=lambda f: vm.arrival(f._leaf))


async def select(**futures: DurableFuture[Any]) -> tuple[str, Any]:
    """Wait for the first to complete; return its name and result (or raise its failure)."""
    first = await first_completed(*futures.values())
    name = next(n for n, f in futures.items() if f is first)
    return name, first._outcome()


async def wait_completed(
    *futures: DurableFuture[Any],
) -> tuple[list[DurableFuture[Any]], list[DurableFuture[Any]]]:
    """Wait until at least one completes; return (done, pending), each in argument order."""
    vm = _vm_of(futures)
    for f in futures:
        await f._begin()
    await vm.wait((f._leaf for f in futures), lambda: any(f.done() for f in futures))
    return [f for f in futures if f.done()], [f for f in futures if not f.done()]
