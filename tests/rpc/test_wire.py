"""The wire format (bigmachine/rpc/wire.py): pickles, error descriptions and stream frames, without sockets."""

from __future__ import annotations

import asyncio
import io
import pickle
import threading
from collections.abc import AsyncIterator, Iterator
from fractions import Fraction

import pytest

from bigmachine.errors import NotFound, ProtocolError, RemoteError, SerializationError
from bigmachine.rpc import buffers, wire


# ------------------------------------------------------------------ frames


def test_a_frame_is_its_kind_a_big_endian_length_and_its_payload() -> None:
    assert wire.frame(wire.DATA, b"abc") == b"d" + (3).to_bytes(8, "big") + b"abc"
    assert wire.frame(wire.END) == b"z" + bytes(8)


def test_frames_survive_any_split() -> None:
    data = wire.frame(wire.DATA, b"x" * 1000) + wire.frame(wire.DATA, b"") + wire.frame(wire.END)
    for step in (1, 3, 9, 1000, len(data)):
        reader = wire.FrameReader()
        frames = []
        for i in range(0, len(data), step):
            frames.extend(reader.feed(data[i:i + step]))
        assert frames == [(wire.DATA, b"x" * 1000), (wire.DATA, b""), (wire.END, b"")]
    with pytest.raises(ProtocolError):
        wire.FrameReader().feed(b"q" + bytes(8))


def test_a_long_frame_is_filled_piece_by_piece_into_one_bytes_object() -> None:
    payload = bytes(range(256)) * 4096
    data = wire.frame(wire.DATA, payload) + wire.frame(wire.END)
    reader = wire.FrameReader()
    frames = [f for i in range(0, len(data), 16384) for f in reader.feed(memoryview(data)[i:i + 16384])]
    assert frames == [(wire.DATA, payload), (wire.END, b"")] and type(frames[0][1]) is bytes


def test_a_frame_longer_than_any_sender_makes_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="frame, over the 512 MiB"):
        wire.FrameReader().feed(wire.frame_header(wire.DATA, wire.MAX_REQUEST + 1) + b"x")


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    reader = wire.FrameReader()
    whole = wire.frame(wire.HEAD, b"head") + wire.frame(wire.FAIL, b"why")
    assert reader.feed(whole[:5]) == []  # half a header
    assert reader.feed(whole[5:12]) == []  # the header, part of the payload
    assert reader.feed(whole[12:]) == [(wire.HEAD, b"head"), (wire.FAIL, b"why")]
    assert reader.feed(b"") == []


def test_an_unknown_kind_after_good_frames_is_a_protocol_error() -> None:
    reader = wire.FrameReader()
    with pytest.raises(ProtocolError, match="unknown frame kind b'x'"):
        reader.feed(wire.frame(wire.DATA, b"ok") + b"x" + bytes(8))


# ------------------------------------------------------------------ pickles


def test_remote_error_round_trip() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        payload = wire.encode_error(exc, remote=True)
    with pytest.raises(KeyError) as info:
        wire.raise_error(payload, "https://m:1/")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteError) and cause.machine == "https://m:1/" and "test_remote_error_round_trip" in cause.remote_traceback


def test_library_errors_are_raised_as_themselves() -> None:
    with pytest.raises(NotFound, match="nope"):
        wire.raise_error(wire.encode_error(NotFound("nope"), remote=False), "m")


def test_unpicklable_exception_becomes_remote_error() -> None:
    class Local(Exception):
        def __reduce__(self) -> object:
            raise TypeError("no")

    with pytest.raises(RemoteError, match="Local"):
        wire.raise_error(wire.encode_error(Local("x"), remote=True), "m")


def test_encode_args_names_the_bad_argument() -> None:
    import threading

    with pytest.raises(SerializationError, match=r"S.m: argument 'k' of type lock"):
        wire.encode_args("S.m", (1,), {"k": threading.Lock()})


def test_plain_values_use_the_c_pickler_and_others_cloudpickle() -> None:
    assert pickle.loads(wire.dumps((1, "a", [2.0, None]))) == (1, "a", [2.0, None])
    double = pickle.loads(wire.dumps(lambda x: 2 * x))
    assert double(4) == 8


@pytest.mark.parametrize("value", [
    {"blob": b"x" * 100_000, "n": list(range(10))},  # plain data: the blob goes out of band
    {"blob": b"x" * 100_000, "f": Fraction(1, 3)},  # not plain: the blob stays in the pickle
], ids=["out-of-band", "in-band"])
def test_a_body_in_pieces_unpickles_as_the_whole(value: object) -> None:
    data = wire.dumps(value)
    pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    assert wire.loads(pieces) == wire.loads(data) == wire.loads([data]) == value
    assert wire.loads([b"", *pieces, b""]) == value  # empty pieces are skipped


def test_large_bytes_in_plain_data_go_out_of_band_uncopied_and_come_back_as_bytes() -> None:
    big, other = bytes(range(256)) * 1024, b"y" * 70_000
    value = ([big, 1, {"other": other, "small": b"s"}], {"again": big})
    parts = wire.dump_parts(value)
    assert parts[0][:1] == buffers.MAGIC and len(parts) == 3  # the layout and pickle, then each large value once
    assert parts[1] is big and parts[2] is other  # sent from their own memory
    back = wire.loads(b"".join(parts))
    assert back == value and type(back[0][0]) is bytes and type(back[0][2]["other"]) is bytes
    assert back[0][0] is back[1]["again"]  # met twice, one object, as sent


@pytest.mark.parametrize(("args", "kwargs", "out_of_band"), [
    ((1, "a", None, 2.5), {}, False),  # the common call: scalars only
    (([b"x" * 70_000],), {}, True),  # a large value one level down in the arguments
    ((1,), {"blob": b"x" * 70_000}, True),  # or in a keyword argument
    (({1: b"x" * 70_000},), {}, False),  # a dict keyed by other than str: not plain, pickled whole
    ((Fraction(1, 3), b"x" * 70_000), {}, False),  # not plain: the value stays in the pickle
], ids=["scalars", "nested", "keyword", "int-keys", "not-plain"])
def test_call_arguments_round_trip_and_large_plain_values_go_out_of_band(
        args: tuple[object, ...], kwargs: dict[str, object], out_of_band: bool) -> None:
    parts = wire.encode_arg_parts("S.m", args, kwargs)
    assert (parts[0][:1] == buffers.MAGIC) is out_of_band
    assert wire.decode_args("S.m", b"".join(parts)) == (args, kwargs)


def test_a_split_body_unpickles_without_copying_its_buffers() -> None:
    big = b"z" * 100_000
    head, payload = wire.dump_parts((big,))
    size, lengths = buffers.layout(head)  # type: ignore[misc]
    received = bytes(payload)  # what DirectBody reads into a bytes object of its own
    (back,) = wire.loads(buffers.Split(head[size:], [received]))
    assert back is received and lengths == [len(head) - size, len(big)]


@pytest.mark.parametrize("body", [
    buffers.prefix(10, [100_000])[:7],  # ends inside its layout
    buffers.prefix(10, [100_000]) + b"x" * 50,  # shorter than its parts
    buffers.prefix(10, [5]) + b"x" * 50,  # longer than its parts
], ids=["truncated-layout", "short", "long"])
def test_a_body_whose_parts_do_not_add_up_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="body"):
        wire.loads(body)


def test_arguments_round_trip_and_the_stream_argument_stands_in() -> None:
    data = wire.encode_args("S.m", (1, wire.StreamArgument()), {"k": "v"})
    args, kwargs = wire.decode_args("S.m", data)
    assert args[0] == 1 and isinstance(args[1], wire.StreamArgument) and kwargs == {"k": "v"}


def test_encode_args_names_a_bad_positional_argument() -> None:
    with pytest.raises(SerializationError, match=r"S.m: argument 1 of type lock cannot be pickled.*stream it"):
        wire.encode_args("S.m", (1, threading.Lock()), {})


@pytest.mark.parametrize("body", [b"\x00not a pickle", pickle.dumps(5), wire.encode_args("S.m", (1,), {})[:-3]])
def test_arguments_that_do_not_unpickle_to_args_and_kwargs_are_a_serialization_error(body: bytes) -> None:
    with pytest.raises(SerializationError, match="S.m: arguments cannot be unpickled on the machine"):
        wire.decode_args("S.m", body)


def test_encode_result_names_the_method_and_the_type_it_cannot_pickle() -> None:
    with pytest.raises(SerializationError, match=r"S.m: result of type lock cannot be pickled"):
        wire.encode_result("S.m", threading.Lock())
    assert wire.loads(wire.encode_result("S.m", [1, 2])) == [1, 2]


def test_a_result_too_big_to_carry_whole_says_to_stream_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_REQUEST", 1000)
    with pytest.raises(SerializationError, match=r"S.m: the result of type bytes pickles to .* MiB, over the .*generator"):
        wire.encode_result("S.m", bytes(2000))


def test_a_malformed_error_reply_is_a_protocol_error_naming_the_machine() -> None:
    with pytest.raises(ProtocolError, match="https://m:1/: malformed error reply"):
        wire.raise_error(b"not a pickle", "https://m:1/")


def test_remote_error_says_type_message_and_machine() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        payload = wire.encode_error(exc, remote=True)
    with pytest.raises(ValueError, match="bad value") as info:
        wire.raise_error(payload, "https://m:1/")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteError) and cause.exc_type == "builtins.ValueError"
    assert str(cause).startswith("builtins.ValueError: bad value (raised on https://m:1/)")


# ------------------------------------------------------------------ what streams


def _numbers() -> Iterator[bytes]:
    yield b"1"


async def _anumbers() -> AsyncIterator[bytes]:
    yield b"1"


def test_iterators_stream_and_collections_go_whole() -> None:
    streamed = [_numbers(), iter([b"a"]), map(bytes, [[1]]), io.BytesIO(b"a")]  # a binary file is an iterator too
    whole = [b"ab", bytearray(b"ab"), memoryview(b"ab"), "ab", [b"a"], (b"a",), {"a": 1}, {b"a"}, frozenset(), 1, None]
    assert [wire.is_stream(v) for v in streamed] == [True] * len(streamed)
    assert [wire.is_stream(v) for v in whole] == [False] * len(whole)
    agen = _anumbers()
    assert wire.is_stream(agen)
    asyncio.run(agen.aclose())


class _CountingInt(int):
    """A number that is also an iterator: told by its methods, not by being an int."""

    def __iter__(self) -> _CountingInt:
        return self

    def __next__(self) -> bytes:
        raise StopIteration


def test_scalars_go_whole_by_their_exact_type_and_an_iterating_subclass_still_streams() -> None:
    assert not any(wire.is_stream(v) for v in (0, 1.5, True, 2j, None))
    assert wire.is_stream(_CountingInt(3))


def test_a_fresh_buffer_is_writable_and_becomes_the_bytes_it_was_filled_with() -> None:
    for size in (10, buffers.PREFAULT_FROM + 12_345):  # below and past the size whose pages are made up front
        value, view = buffers.fresh_bytes(size)
        pattern = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        view[:] = pattern
        assert type(value) is bytes and value == pattern


def test_a_fresh_buffers_view_keeps_its_object_alive() -> None:
    size = 4 * buffers.PREFAULT_FROM  # memory of its own, unmapped once freed: writing there would crash
    view = buffers.fresh_bytes(size)[1]  # the object itself is not kept by the caller
    view[:] = b"v" * size
    assert bytes(view[-3:]) == b"vvv" and type(view.obj.owner) is bytes


@pytest.mark.skipif(not (buffers._HUGE_PAGE and buffers._prefaulting), reason="no huge pages or prefaulting here")
def test_a_large_fresh_buffer_asks_for_huge_pages_then_makes_its_pages_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the kernel grants depends on the allocator's state (a buffer from a reused heap keeps its small
    pages), so this checks what is asked: huge pages over exactly the whole ones inside, then every page."""
    asked: list[tuple[int, int, int]] = []
    real = buffers._madvise

    def recording(address: int, length: int, advice: int) -> int:
        asked.append((address, length, advice))
        return real(address, length, advice)  # type: ignore[no-any-return]

    monkeypatch.setattr(buffers, "_madvise", recording)
    huge, page, size = buffers._HUGE_PAGE, buffers._PAGE, 8 * buffers._HUGE_PAGE + 12_345
    value, view = buffers.fresh_bytes(size)
    address = buffers._bytes_data(value)
    first_huge, end_huge = -(-address // huge) * huge, (address + size) // huge * huge
    first_page, end_page = -(-address // page) * page, (address + size) // page * page
    assert asked == [(first_huge, end_huge - first_huge, buffers._MADV_HUGEPAGE),
                     (first_page, end_page - first_page, buffers._MADV_POPULATE_WRITE)]
    view[:] = b"h" * size
    assert value[-1:] == b"h"
