"""The journal state machine, commands in and frames out, with no broker and no sockets."""

from __future__ import annotations

from datetime import timedelta

import sluice
from sluice import protocol as p

from .journal import invoke, json_input

calls: list[str] = []

svc = sluice.Service("Steps")


@svc.handler()
async def three_steps(ctx: sluice.Context, name: str) -> str:
    a = await ctx.run("one", lambda: calls.append("one") or f"{name}-1")
    b = await ctx.run("two", lambda: calls.append("two") or f"{a}-2")
    return b


@svc.handler()
async def sleepy(ctx: sluice.Context) -> str:
    await ctx.sleep(timedelta(seconds=5))
    return "woke"


@svc.handler()
async def racer(ctx: sluice.Context) -> str:
    a = ctx.sleep(timedelta(seconds=1))
    b = ctx.sleep(timedelta(seconds=2))
    name, _ = await sluice.select(a=a, b=b)
    return name


@svc.handler()
async def failing(ctx: sluice.Context) -> None:
    raise sluice.TerminalError("nope", status_code=422)


@svc.handler()
async def flaky(ctx: sluice.Context) -> None:
    raise RuntimeError("try again")


obj = sluice.VirtualObject("Counter")


@obj.handler()
async def add(ctx: sluice.ObjectContext, delta: int) -> int:
    n = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", n + delta)
    return n + delta


app = sluice.app(svc, obj)


async def test_new_run_is_executed_and_proposed() -> None:
    calls.clear()
    out = await invoke(app, "Steps", "three_steps", [json_input('"x"')])
    assert out == [
        p.RunCommand(result_completion_id=1, name="one"),
        p.ProposeRunCompletionMessage(result_completion_id=1, value=b'"x-1"'),
        p.SuspensionMessage(waiting_completions=[1], waiting_signals=[1]),
    ]
    assert calls == ["one"]


async def test_replayed_run_is_not_executed_again() -> None:
    calls.clear()
    journal = [
        json_input('"x"'),
        p.RunCommand(result_completion_id=1, name="one"),
        p.RunCompletionNotification(completion_id=1, value=b'"x-1"'),
        p.RunCommand(result_completion_id=2, name="two"),
        p.RunCompletionNotification(completion_id=2, value=b'"x-1-2"'),
    ]
    out = await invoke(app, "Steps", "three_steps", journal)
    assert out == [p.OutputCommand(value=b'"x-1-2"'), p.EndMessage()]
    assert calls == []


async def test_run_without_a_stored_result_runs_again() -> None:
    calls.clear()
    journal = [json_input('"x"'), p.RunCommand(result_completion_id=1, name="one")]
    out = await invoke(app, "Steps", "three_steps", journal)
    assert out[0] == p.ProposeRunCompletionMessage(result_completion_id=1, value=b'"x-1"')
    assert calls == ["one"]


async def test_mismatch_fails_with_570_naming_handler_index_and_commands() -> None:
    journal = [json_input('"x"'), p.SleepCommand(wake_up_time=1, result_completion_id=1)]
    out = await invoke(app, "Steps", "three_steps", journal)
    assert len(out) == 1
    error = out[0]
    assert isinstance(error, p.ErrorMessage)
    assert error.code == 570
    assert error.related_command_index == 1
    assert "Steps/three_steps" in error.message
    assert "command index 1" in error.message
    assert "SleepCommand(" in error.message and "RunCommand(" in error.message


async def test_sleep_suspends_then_completes_on_replay() -> None:
    out = await invoke(app, "Steps", "sleepy", [json_input("")])
    assert isinstance(out[0], p.SleepCommand)
    assert out[1] == p.SuspensionMessage(waiting_completions=[1], waiting_signals=[1])
    replay = [json_input(""), out[0], p.SleepCompletionNotification(completion_id=1, void=True)]
    assert await invoke(app, "Steps", "sleepy", replay) == [
        p.OutputCommand(value=b'"woke"'),
        p.EndMessage(),
    ]


async def test_select_follows_journal_order_not_argument_order() -> None:
    sleeps = [
        p.SleepCommand(wake_up_time=1, result_completion_id=1),
        p.SleepCommand(wake_up_time=2, result_completion_id=2),
    ]
    b_first = [
        json_input(""),
        *sleeps,
        p.SleepCompletionNotification(completion_id=2, void=True),
        p.SleepCompletionNotification(completion_id=1, void=True),
    ]
    assert (await invoke(app, "Steps", "racer", b_first))[0] == p.OutputCommand(value=b'"b"')
    a_first = [*b_first[:3], b_first[4], b_first[3]]
    assert (await invoke(app, "Steps", "racer", a_first))[0] == p.OutputCommand(value=b'"a"')


async def test_cancel_signal_surfaces_as_cancelled_error() -> None:
    journal = [
        json_input(""),
        p.SleepCommand(wake_up_time=1, result_completion_id=1),
        p.SignalNotification(signal_idx=1, void=True),
    ]
    out = await invoke(app, "Steps", "sleepy", journal)
    assert out == [
        p.OutputCommand(failure=p.Failure(code=409, message="cancelled")),
        p.EndMessage(),
    ]


async def test_terminal_error_becomes_output_failure_and_others_an_error_message() -> None:
    out = await invoke(app, "Steps", "failing", [json_input("")])
    assert out == [p.OutputCommand(failure=p.Failure(code=422, message="nope")), p.EndMessage()]
    out = await invoke(app, "Steps", "flaky", [json_input("")])
    assert len(out) == 1 and isinstance(out[0], p.ErrorMessage)
    assert out[0].code == 500 and "try again" in out[0].message


async def test_invalid_input_is_a_terminal_400() -> None:
    out = await invoke(app, "Counter", "add", [json_input('"seven"')], key="k")
    failure = out[0].failure  # type: ignore[union-attr]
    assert failure.code == 400 and "Counter/add" in failure.message


async def test_eager_state_is_read_without_a_round_trip() -> None:
    out = await invoke(app, "Counter", "add", [json_input("2")], key="k", state={b"count": b"40"})
    assert out == [
        p.GetEagerStateCommand(key=b"count", value=b"40"),
        p.SetStateCommand(key=b"count", value=b"42"),
        p.OutputCommand(value=b"42"),
        p.EndMessage(),
    ]


async def test_partial_state_falls_back_to_a_lazy_read() -> None:
    out = await invoke(app, "Counter", "add", [json_input("2")], key="k", partial_state=True)
    assert out[0] == p.GetLazyStateCommand(key=b"count", result_completion_id=1)
    assert isinstance(out[1], p.SuspensionMessage)


async def test_version_outside_5_to_6_gets_415() -> None:
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invoke/Steps/sleepy",
        "http_version": "1.1",
        "headers": [(b"content-type", b"application/vnd.restate.invocation.v4")],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 415


def test_public_names_are_pinned() -> None:
    assert set(sluice.__all__) >= {
        "Service",
        "VirtualObject",
        "Workflow",
        "Context",
        "ObjectContext",
        "ObjectSharedContext",
        "WorkflowContext",
        "WorkflowSharedContext",
        "TerminalError",
        "serve",
        "app",
        "Batch",
        "Record",
        "RecordBatch",
        "OutputRecord",
    }
    assert all(hasattr(sluice, name) for name in sluice.__all__)


def test_suspension_cannot_be_swallowed_by_except_exception() -> None:
    assert not issubclass(sluice.SuspendedError, Exception)
