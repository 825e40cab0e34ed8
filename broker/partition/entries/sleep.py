"""Sleep: a durable timer that completes the command when it fires."""

from __future__ import annotations

from sluice import protocol as p

from .._context import Ctx
from .._records import Status, Timer, TimerKind


def sleep(ctx: Ctx, st: Status, cmd: p.SleepCommand) -> None:
    ctx.add_timer(
        cmd.wake_up_time,
        Timer(kind=TimerKind.SLEEP, id=st.id, completion_id=cmd.result_completion_id),
    )


def wake(ctx: Ctx, timer: Timer) -> None:
    ctx.notify(
        timer.id, p.SleepCompletionNotification(completion_id=timer.completion_id, void=True)
    )
