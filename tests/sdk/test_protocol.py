"""The wire codec against hand-computed protobuf bytes and round trips."""

import pytest

from sluice import protocol as p


def test_varint_and_strings_match_protobuf_encoding() -> None:
    # field 1 (varint) = 300 -> 08 ac 02 ; field 2 (len) "hi" -> 12 02 68 69
    assert p.CommandAckMessage(command_index=300).encode() == b"\x08\xac\x02"
    assert p.Header(key="", value="hi").encode() == b"\x12\x02hi"


def test_value_submessage_distinguishes_empty_from_absent() -> None:
    present = p.OutputCommand(value=b"")
    absent = p.OutputCommand()
    assert present.encode() == b"\x72\x00"  # field 14, empty Value
    assert absent.encode() == b""
    assert p.OutputCommand.decode(present.encode()).value == b""
    assert p.OutputCommand.decode(absent.encode()).value is None


def test_frames_round_trip_through_incremental_decoder() -> None:
    messages = [
        p.StartMessage(id=b"\x01\x02", debug_id="inv_1", known_entries=2, key="k", random_seed=7),
        p.InputCommand(headers=[p.Header(key="a", value="b")], value=b'{"x":1}'),
        p.SleepCommand(wake_up_time=1_700_000_000_000, result_completion_id=1, name="nap"),
        p.SuspensionMessage(waiting_completions=[1, 2], waiting_signals=[17]),
        p.SignalNotification(signal_idx=1, void=True),
    ]
    data = b"".join(p.encode(m) for m in messages)
    decoder = p.FrameDecoder()
    frames = []
    for i in range(0, len(data), 3):  # worst-case chunking
        frames.extend(decoder.feed(data[i : i + 3]))
    assert [f.message for f in frames] == messages
    assert decoder.pending == 0


def test_unknown_fields_are_skipped() -> None:
    extra = p.Header(key="k", value="v").encode() + b"\x18\x05"  # field 3 varint
    assert p.Header.decode(extra) == p.Header(key="k", value="v")


def test_truncated_input_is_a_decode_error() -> None:
    with pytest.raises(p.DecodeError):
        p.Header.decode(b"\x0a\x05ab")
    with pytest.raises(p.DecodeError):
        p.decode_all(p.encode(p.EndMessage()) + b"\x00\x03")


@pytest.mark.parametrize(
    ("header", "version"),
    [
        ("application/vnd.restate.invocation.v5", 5),
        ("application/vnd.restate.invocation.v6; charset=x", 6),
        ("application/json", None),
    ],
)
def test_content_type_parsing(header: str, version: int | None) -> None:
    assert p.parse_content_type(header) == version
