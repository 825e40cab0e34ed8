"""Frame splitting and the content-type check of the invoker: what a handler's bytes become
before they reach the log, without sockets."""

from __future__ import annotations

import pytest

from sluice import protocol as p
from sluice.broker.invoker._invoker import MalformedFrame, split_frames, version_mismatch


def test_complete_frames_are_cut_off_and_a_partial_one_waits() -> None:
    out = p.encode(p.OutputCommand(value=b'"x"'))
    end = p.encode(p.EndMessage())
    buf = bytearray(out + end[:5])
    frames, terminal = split_frames(buf)
    assert frames == out and not terminal and bytes(buf) == end[:5]
    buf += end[5:]
    frames, terminal = split_frames(buf)
    assert frames == end and terminal and not buf


def test_custom_entries_pass() -> None:
    custom = p.encode_raw(0xFC01, b"anything")
    assert split_frames(bytearray(custom)) == (custom, False)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"GARBAGE! not a frame", "unknown message type 0x4741"),
        (p.encode(p.OutputCommand(value=b"1")) + b"\x7f\x7f" + b"\0" * 10, "at byte 13"),
        (b"\x04\x01\x00\x00\xff\xff\xff\xff", "exceeds"),
    ],
)
def test_a_header_no_handler_can_send_is_refused_at_once(data: bytes, says: str) -> None:
    # Waiting for the rest of such a "frame" would hold the attempt until the inactivity timeout.
    with pytest.raises(MalformedFrame, match="malformed frame") as e:
        split_frames(bytearray(data))
    assert says in str(e.value)


def test_content_type_must_name_the_advertised_version() -> None:
    assert version_mismatch(5, "application/vnd.restate.invocation.v5") == ""
    assert version_mismatch(6, "application/vnd.restate.invocation.v6; charset=x") == ""
    for wrong in ("application/vnd.restate.invocation.v6", "application/json", ""):
        assert "unsupported protocol version" in version_mismatch(5, wrong)
