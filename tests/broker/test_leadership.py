"""Leader epochs as commands in, tables out (broker/partition/lifecycle/leadership.py): what a
log holds besides one leader's clean proposals (a duplicated record, a stale leader's records
after a newer announcement, two announcements of one epoch, an aborted transaction's records
left visible, as Tansu leaves them) changes nothing: every replica that applies the log ends
with the tables of the clean log."""

from __future__ import annotations

from sluice import protocol as p
from sluice.broker.ids import InvocationId
from sluice.broker.partition._records import (
    AnnounceLeader,
    Effects,
    Invoke,
    Kind,
    Proposal,
    encode_command,
)
from tests.broker.test_state_machine import Harness

IID = InvocationId(b"\x01" * 24)
INVOKE = Invoke(id=IID.raw, service="Obj", handler="ex", key="k", kind=Kind.EXCLUSIVE, input=b"1")


def _set(key: bytes, value: bytes) -> Effects:
    frames = p.encode(p.SetStateCommand(key=key, value=value))
    return Effects(id=IID.raw, epoch=1, frames=frames)


def _proposal(epoch: int, seq: int, cmd: Effects) -> Proposal:
    return Proposal(epoch=epoch, seq=seq, command=encode_command(cmd))


def _tables(*log: p.Message) -> dict[tuple[str, bytes], bytes]:
    """The tables after applying ``log``, one command per batch, as a replica would."""
    h = Harness()
    h.apply(INVOKE)
    for cmd in log:
        h.apply(cmd)
    return {
        (cf, k): v
        for cf in ("status", "journal", "state", "meta")
        for k, v in h.store.scan(cf, b"")
    }


A1 = AnnounceLeader(epoch=1, node="a")
B2 = AnnounceLeader(epoch=2, node="b")
CLEAN = (A1, _proposal(1, 1, _set(b"x", b"1")), _proposal(1, 2, _set(b"y", b"2")))


def test_the_clean_log_applies_every_proposal() -> None:
    tables = _tables(*CLEAN)
    journal = [v for (cf, _), v in tables.items() if cf == "journal"]
    assert len(journal) == 3, "the input entry and two state writes"
    assert _tables(*CLEAN) == tables, "a replay gives the same tables"


def test_a_duplicated_record_is_applied_once() -> None:
    duplicated = (*CLEAN[:2], CLEAN[1], CLEAN[2], CLEAN[2])
    assert _tables(*duplicated) == _tables(*CLEAN)


def test_a_stale_leaders_records_after_a_newer_announcement_are_dropped() -> None:
    zombie = _proposal(1, 3, _set(b"z", b"zombie"))
    clean = (*CLEAN, B2, _proposal(2, 1, _set(b"w", b"3")))
    with_zombie = (*CLEAN, B2, zombie, _proposal(2, 1, _set(b"w", b"3")), zombie)
    assert _tables(*with_zombie) == _tables(*clean)
    assert (("state", b"Obj\x00k\x00z")) not in _tables(*with_zombie)


def test_two_announcements_of_one_epoch_keep_the_first() -> None:
    second = AnnounceLeader(epoch=1, node="b")
    assert _tables(CLEAN[0], second, *CLEAN[1:]) == _tables(*CLEAN)
    # An older epoch announced later changes nothing either.
    assert _tables(*CLEAN, B2, A1) == _tables(*CLEAN, B2)


def test_proposals_of_an_epoch_not_announced_are_dropped() -> None:
    early = _proposal(2, 1, _set(b"e", b"early"))
    assert _tables(*CLEAN, early) == _tables(*CLEAN)


def test_an_aborted_transactions_records_left_visible_are_dropped() -> None:
    """A zombie's records that a transaction should have hidden (Tansu shows aborted ones to
    read_committed readers): stale or repeated proposals, dropped by epoch and sequence."""
    aborted = [_proposal(1, 2, _set(b"y", b"aborted")), _proposal(0, 7, _set(b"q", b"old"))]
    assert _tables(*CLEAN, *aborted) == _tables(*CLEAN)
