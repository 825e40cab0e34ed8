"""State commands: lazy reads complete from the state table; writes go straight to it."""

from __future__ import annotations

from sluice import protocol as p

from .._context import Ctx, key_prefix
from .._records import Status


def get_lazy(ctx: Ctx, st: Status, cmd: p.GetLazyStateCommand) -> None:
    value = ctx.tx.get("state", key_prefix(st.service, st.key) + cmd.key)
    n = p.GetLazyStateCompletionNotification(completion_id=cmd.result_completion_id)
    if value is None:
        n.void = True
    else:
        n.value = value
    ctx.notify(st.id, n)


def get_lazy_keys(ctx: Ctx, st: Status, cmd: p.GetLazyStateKeysCommand) -> None:
    prefix = key_prefix(st.service, st.key)
    keys = [k[len(prefix) :] for k, _ in ctx.tx.scan("state", prefix)]
    ctx.notify(
        st.id,
        p.GetLazyStateKeysCompletionNotification(
            completion_id=cmd.result_completion_id, state_keys=p.StateKeys(keys=keys)
        ),
    )


def set_state(ctx: Ctx, st: Status, cmd: p.SetStateCommand) -> None:
    ctx.tx.put("state", key_prefix(st.service, st.key) + cmd.key, cmd.value or b"")


def clear(ctx: Ctx, st: Status, cmd: p.ClearStateCommand) -> None:
    ctx.tx.delete("state", key_prefix(st.service, st.key) + cmd.key)


def clear_all(ctx: Ctx, st: Status, cmd: p.ClearAllStateCommand) -> None:
    for k, _ in ctx.tx.scan("state", key_prefix(st.service, st.key)):
        ctx.tx.delete("state", k)
