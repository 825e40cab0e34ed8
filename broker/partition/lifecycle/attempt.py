"""Attempts: starting one (StartMessage + journal replay), suspension, failure and retry."""

from __future__ import annotations

from sluice import protocol as p
from sluice.broker.ids import InvocationId

from .. import actions as a
from .._context import Ctx, RetryPolicy, key_prefix
from .._records import FillOutbox, Kind, Phase, Status, Timer, TimerKind


def start_attempt(ctx: Ctx, st: Status) -> None:
    """Bump the epoch and stream the journal to the handler (a new or a resumed attempt)."""
    st.epoch += 1
    st.phase = Phase.INVOKED
    st.waiting_completions = []
    st.waiting_signals = []
    st.waiting_names = []
    svc = ctx.registry.services.get(st.service)
    if svc is not None and (
        not st.deployment_id or st.deployment_id not in ctx.registry.deployments
    ):
        st.deployment_id = svc.deployment_id
    state_map: list[p.StateEntry] = []
    lazy = svc is not None and svc.lazy_state
    if st.kind != Kind.SERVICE and not lazy:
        prefix = key_prefix(st.service, st.key)
        state_map = [
            p.StateEntry(key=k[len(prefix) :], value=v) for k, v in ctx.tx.scan("state", prefix)
        ]
    iid = InvocationId(st.id)
    start = p.StartMessage(
        id=st.id,
        debug_id=str(iid),
        known_entries=st.journal_len,
        state_map=state_map,
        partial_state=lazy,
        key=st.key,
        retry_count_since_last_stored_entry=st.retry_count,
        random_seed=int.from_bytes(st.id[8:16], "big"),
    )
    frames = p.encode(start) + b"".join(ctx.journal(st))
    ctx.put_status(st)
    ctx.actions.append(
        a.StartAttempt(st.id, st.epoch, st.service, st.handler, st.deployment_id, frames)
    )


def suspend(ctx: Ctx, st: Status, msg: p.SuspensionMessage) -> None:
    """Suspend unless something awaited is already in the journal (then resume at once)."""
    completions = set(msg.waiting_completions)
    signals = set(msg.waiting_signals)
    names = set(msg.waiting_named_signals)
    for frame in ctx.journal(st):
        f = p.decode_all(frame)[0]
        n = f.message
        if not isinstance(n, p.Notification):
            continue
        if (
            (n.completion_id is not None and n.completion_id in completions)
            or (n.signal_idx is not None and n.signal_idx in signals)
            or (n.signal_name is not None and n.signal_name in names)
        ):
            start_attempt(ctx, st)
            return
    st.phase = Phase.SUSPENDED
    st.waiting_completions = sorted(completions)
    st.waiting_signals = sorted(signals)
    st.waiting_names = sorted(names)
    st.retry_count = 0
    ctx.put_status(st)


def attempt_failed(
    ctx: Ctx, st: Status, code: int, message: str, retry_after_ms: int | None
) -> None:
    """Back off and retry, or pause after the last attempt."""
    ctx.actions.append(a.AbortAttempt(st.id, st.epoch))
    st.retry_count += 1
    st.last_failure = f"[{code}] {message}"[:2000]
    policy = ctx.config.retry
    on_max = "PAUSE"
    svc = ctx.registry.services.get(st.service)
    if svc is not None and svc.retry:  # the service's own policy (manifest v4)
        r = svc.retry
        policy = RetryPolicy(
            initial_ms=int(r.get("retryPolicyInitialInterval", policy.initial_ms)),
            factor=float(r.get("retryPolicyExponentiationFactor", policy.factor)),
            max_interval_ms=int(r.get("retryPolicyMaxInterval", policy.max_interval_ms)),
            max_attempts=int(r.get("retryPolicyMaxAttempts", policy.max_attempts)),
        )
        on_max = str(r.get("retryPolicyOnMaxAttempts", "PAUSE")).upper()
    if st.retry_count >= policy.max_attempts:
        if on_max == "KILL":
            from .complete import complete

            complete(ctx, st, None, p.Failure(code=code if code >= 400 else 500, message=message))
            return
        st.phase = Phase.PAUSED
        ctx.put_status(st)
        _release_outputs(ctx, st)
        return
    delay = retry_after_ms if retry_after_ms is not None else policy.delay_ms(st.retry_count)
    st.phase = Phase.BACKING_OFF
    ctx.put_status(st)
    ctx.add_timer(ctx.now + delay, Timer(kind=TimerKind.RETRY, id=st.id, epoch=st.epoch))


def _release_outputs(ctx: Ctx, st: Status) -> None:
    """A paused invocation holds back no other input's results (``_outbox``'s docstring)."""
    from . import shuffle  # lazy: shuffle's deliver imports the lifecycle

    for sink in st.sinks:
        if sink.outbox:  # (in the outbox of the partition that ingested the record)
            cmd = FillOutbox(key=sink.outbox, release=True)
            shuffle.route_to(ctx, sink.outbox_partition, cmd)


def retry_due(ctx: Ctx, timer: Timer) -> None:
    st = ctx.status(timer.id)
    if st is None or st.phase != Phase.BACKING_OFF or st.epoch != timer.epoch:
        return
    start_attempt(ctx, st)
