"""The wire format (framing, every message, compression, hostile input) and cookie authentication.

The decoder is the trust boundary of the cluster: besides round trips, most tests here feed it
bytes a hostile or broken peer could send and check that it answers with ``ProtocolError`` (and
nothing else), without buffering or inflating more than its cap. Frames are built by hand with
the layout documented in :mod:`ekv._cluster.wire`, so the tests do not just trust the encoder.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import struct
import time
import zlib
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ekv
from ekv._cluster import auth, wire
from ekv._cluster.messages import (
    PROTOCOL_VERSION,
    Auth,
    Bye,
    Hello,
    Live,
    Members,
    Message,
    Ping,
    Pong,
    Reject,
    Summary,
    SummaryDiff,
    SyncChunk,
    SyncDone,
    SyncRequest,
    TreeMessage,
    merge_live,
)
from ekv._core import plumtree
from ekv._model import Entry

BIG = 64 * 1024 * 1024  # a cap that never gets in the way of a round trip
SMALL = 64 * 1024  # the pre-authentication cap
I64 = st.integers(-(2**63), 2**63 - 1)
U64 = st.integers(0, 2**64 - 1)
TS = 1_767_225_600_000_000_000

# Hypothesis draws the same examples on every run: the suite must be deterministic.
fast = settings(derandomize=True, deadline=None, max_examples=200)
fuzz = settings(derandomize=True, deadline=None, max_examples=1500)


# -- strategies ----------------------------------------------------------------------------------

chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # every plane
keys = st.one_of(
    st.text(chars, min_size=1, max_size=30),
    st.sampled_from(["a", "user/1", "\U0001f600", "\U0010ffff/\uffff", "\u00e9" * 3, "x" * 1000]),
)
origins = st.text(chars, min_size=1, max_size=20)
names = st.text(chars, min_size=1, max_size=30)


def _pattern(size: int) -> bytes:
    return (b"ekv value " * (size // 10 + 1))[:size]


values = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=64),
    st.integers(1_000, 300_000).map(_pattern),  # large and compressible
    st.tuples(st.integers(0, 2**32), st.integers(1_000, 100_000)).map(lambda t: random.Random(t[0]).randbytes(t[1])),
)
entries = st.builds(
    Entry,
    key=keys,
    timestamp_ns=I64,
    origin=origins,
    oseq=st.integers(1, 2**64 - 1),
    expires_at_ns=st.none() | I64,
    value=values,
)
entry_tuples = st.lists(entries, max_size=6).map(tuple)
vvs = st.dictionaries(origins, U64, max_size=5)
shards = st.integers(0, 2**16 - 1)

hellos = st.builds(
    Hello,
    versions=st.lists(st.integers(1, 2**16 - 1), min_size=1, max_size=5).map(tuple),
    features=st.lists(st.text(chars, min_size=1, max_size=10), max_size=4).map(tuple),
    instance=names,
    node_id=origins,
    shards=st.integers(1, 2**16 - 1),
    nonce=st.binary(min_size=16, max_size=64),
    listen=st.none() | names,
    wall_ns=I64,
)
messages: st.SearchStrategy[Message] = st.one_of(
    hellos,
    st.builds(Auth, st.binary(min_size=1, max_size=64)),
    st.builds(Reject, st.text(chars)),
    st.builds(Bye, st.text(chars)),
    st.builds(Ping, I64),
    st.builds(Pong, I64, I64),
    st.builds(Members, st.lists(st.tuples(origins, names), max_size=4).map(tuple)),
    st.builds(SyncRequest, shards, U64, vvs),
    st.builds(SyncChunk, shards, U64, U64, entry_tuples),
    st.builds(SyncDone, shards, U64, vvs, st.sampled_from(["delta", "full"]), U64, U64),
    st.builds(Live, shards, entry_tuples),
    st.builds(Summary, U64, st.lists(st.binary(min_size=8, max_size=8), max_size=5).map(tuple)),
    st.builds(SummaryDiff, U64, st.sets(shards, max_size=5).map(lambda s: tuple(sorted(s)))),
    st.builds(
        TreeMessage,
        st.builds(plumtree.Gossip, origins, U64, st.integers(1, 255), st.binary(max_size=64))
        | st.builds(plumtree.IHave, st.lists(st.tuples(origins, U64), min_size=1, max_size=3).map(tuple))
        | st.builds(plumtree.Neighbor, st.booleans())
        | st.just(plumtree.Prune()),
    ),
)
thresholds = st.sampled_from([None, 0, 1, 64, 4096])


def roundtrip(message: Message, compress_threshold: int | None = None, cap: int = BIG) -> Message:
    return wire.decode(wire.encode(message, compress_threshold=compress_threshold), max_frame_size=cap)


def frame(code: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, code) + body


def live_frame(
    key: bytes = b"k",
    *,
    origins: tuple[bytes, ...] = (b"n1",),
    flags: int = 2,
    index: int = 0,
    ts: int = TS,
    oseq: int = 1,
    expires: int = 0,
    value: bytes = b"v",
    value_len: int | None = None,
    count: int = 1,
    shard: int = 0,
) -> bytes:
    """A Live frame built from the documented layout, any field overridable (to break it)."""
    table = struct.pack(">H", len(origins)) + b"".join(bytes((len(o),)) + o for o in origins)
    vlen = len(value) if value_len is None else value_len
    entry = struct.pack(">BIHqQqI", flags, len(key), index, ts, oseq, expires, vlen) + key + value
    return frame(16, struct.pack(">H", shard) + table + struct.pack(">I", count) + entry)


def rejected(data: bytes, cap: int = BIG, match: str | None = None) -> None:
    with pytest.raises(ekv.ProtocolError, match=match):
        wire.FrameDecoder(cap).feed(data)


# -- round trips ---------------------------------------------------------------------------------


@fast
@given(messages, thresholds)
@example(Live(0, (Entry("\U0001f600", 0, "n", 1, None, None),)), None)
@example(SyncChunk(2**16 - 1, 2**64 - 1, 2**64 - 1, (Entry("k" * 65_536, -1, "o" * 255, 2**64 - 1, -(2**63), b""),)), 0)
def test_every_message_round_trips(message: Message, threshold: int | None) -> None:
    assert roundtrip(message, threshold) == message


@fast
@given(entry_tuples)
def test_entries_round_trip_byte_identical_with_and_without_compression(batch: tuple[Entry, ...]) -> None:
    for threshold in (None, 0):
        decoded = roundtrip(Live(1, batch), threshold)
        assert isinstance(decoded, Live)
        for got, sent in zip(decoded.entries, batch, strict=True):
            assert got == sent
            assert type(got.value) is (bytes if sent.value is not None else type(None))


def test_values_stay_opaque_bytes_even_when_they_are_pickles() -> None:
    loaded: list[bool] = []
    evil = pickle.dumps(_Trap(loaded))
    decoded = roundtrip(Live(0, (Entry("k", TS, "n1", 1, None, evil),)))
    assert isinstance(decoded, Live)
    assert decoded.entries[0].value == evil
    assert not loaded


class _Trap:
    def __init__(self, loaded: list[bool]) -> None:
        self.loaded = loaded

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Trap._sprung, ())

    @staticmethod
    def _sprung() -> None:  # pragma: no cover - would mean something unpickled a value
        raise AssertionError("a value was unpickled")


def test_compression_shrinks_compressible_values_and_is_flagged_per_entry() -> None:
    batch = (
        Entry("big", TS, "n1", 1, None, _pattern(100_000)),
        Entry("small", TS, "n1", 2, None, b"tiny"),
        Entry("random", TS, "n1", 3, None, random.Random(7).randbytes(5_000)),
        Entry("gone", TS, "n1", 4, TS, None),
    )
    plain = wire.encode(Live(0, batch))
    packed = wire.encode(Live(0, batch), compress_threshold=1024)
    assert len(packed) < len(plain) - 90_000
    assert wire.decode(packed, max_frame_size=BIG) == Live(0, batch)
    # incompressible data is sent as is, so compression never makes a frame bigger
    noise = Live(0, (batch[2],))
    assert len(wire.encode(noise, compress_threshold=0)) == len(wire.encode(noise))


def test_a_frame_must_fit_the_cap_as_if_it_were_uncompressed() -> None:
    message = Live(0, (Entry("k", TS, "n1", 1, None, bytes(200_000)),))
    uncompressed_size = len(wire.encode(message)) - wire.HEADER_SIZE
    packed = wire.encode(message, compress_threshold=0)
    assert len(packed) < 1_000
    assert wire.decode(packed, max_frame_size=uncompressed_size) == message
    rejected(packed, cap=uncompressed_size - 1, match="inflates past")


# -- framing -------------------------------------------------------------------------------------


@fast
@given(st.lists(messages, min_size=1, max_size=4), st.lists(st.integers(0, 10**6), max_size=8))
def test_any_split_of_the_stream_gives_the_same_messages(batch: list[Message], cuts: list[int]) -> None:
    stream = b"".join(wire.encode(m, compress_threshold=256) for m in batch)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = wire.FrameDecoder(BIG)
    got: list[Message] = []
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    assert got == batch
    assert decoder.buffered == 0


def test_byte_by_byte_and_all_at_once() -> None:
    batch: list[Message] = [
        Ping(1),
        Live(3, (Entry("a/\U0001f600", TS, "n1", 7, TS + 5, b"x" * 300),)),
        Bye("done"),
    ]
    stream = b"".join(wire.encode(m) for m in batch)
    decoder = wire.FrameDecoder(SMALL)
    got: list[Message] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == batch
    assert wire.FrameDecoder(SMALL).feed(stream) == batch
    assert wire.FrameDecoder(SMALL).feed(bytearray(stream)) == batch
    assert wire.FrameDecoder(SMALL).feed(memoryview(stream)) == batch


def test_a_partial_frame_waits_for_the_rest() -> None:
    whole = wire.encode(Ping(5))
    decoder = wire.FrameDecoder(SMALL)
    assert decoder.feed(whole + whole[:3]) == [Ping(5)]
    assert decoder.buffered == 3
    assert decoder.feed(whole[3:-1]) == []
    assert decoder.feed(whole[-1:] + whole) == [Ping(5), Ping(5)]
    assert decoder.buffered == 0


def test_an_oversized_frame_is_rejected_from_its_header_alone() -> None:
    decoder = wire.FrameDecoder(SMALL)
    with pytest.raises(ekv.ProtocolError, match="limit"):
        decoder.feed(struct.pack(">I", SMALL + 1))
    decoder = wire.FrameDecoder(SMALL)
    assert decoder.feed(b"\xff\xff") == []
    with pytest.raises(ekv.ProtocolError, match="limit"):
        decoder.feed(b"\xff\xff")


def test_a_declared_size_allocates_nothing_until_the_bytes_arrive() -> None:
    decoder = wire.FrameDecoder(2**32 - 1)
    assert decoder.feed(struct.pack(">IB", 2**32 - 1, 16)) == []
    assert decoder.buffered == 5


def test_zero_length_frame_and_unknown_types_are_rejected() -> None:
    rejected(b"\x00\x00\x00\x00", match="limit")
    for code in (0, 14, 15, 27, 200, 255):
        rejected(frame(code, b"{}"), match="unknown message type")


def test_the_cap_can_be_raised_after_authentication_and_applies_to_buffered_frames() -> None:
    big = wire.encode(Live(0, (Entry("k", TS, "n1", 1, None, bytes(100_000)),)))
    decoder = wire.FrameDecoder(SMALL)
    with pytest.raises(ekv.ProtocolError):
        decoder.feed(big[:4])
    decoder = wire.FrameDecoder(SMALL)
    decoder.feed(wire.encode(Ping(1))[:4])
    decoder.set_max_frame_size(BIG)
    assert decoder.max_frame_size == BIG
    assert decoder.feed(wire.encode(Ping(1))[4:] + big) == [Ping(1), wire.decode(big, max_frame_size=BIG)]
    decoder.feed(big[:10])
    decoder.set_max_frame_size(SMALL)
    with pytest.raises(ekv.ProtocolError):
        decoder.feed(b"")
    with pytest.raises(ekv.InvalidArgument):
        decoder.set_max_frame_size(0)


def test_after_an_error_the_decoder_stays_failed() -> None:
    decoder = wire.FrameDecoder(SMALL)
    with pytest.raises(ekv.ProtocolError):
        decoder.feed(frame(99, b""))
    with pytest.raises(ekv.ProtocolError, match="already rejected"):
        decoder.feed(wire.encode(Ping(1)))


def test_decode_wants_exactly_one_frame() -> None:
    one = wire.encode(Ping(1))
    with pytest.raises(ekv.ProtocolError):
        wire.decode(one + one, max_frame_size=SMALL)
    with pytest.raises(ekv.ProtocolError):
        wire.decode(one[:-1], max_frame_size=SMALL)


@fast
@given(messages, st.data())
def test_a_body_shorter_or_longer_than_its_message_is_rejected(message: Message, data: st.DataObject) -> None:
    body = wire.encode(message)[4:]
    cut = data.draw(st.integers(1, len(body) - 1), label="cut")
    rejected(struct.pack(">I", cut) + body[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=8), label="extra")
    rejected(struct.pack(">I", len(body) + len(extra)) + body + extra)


# -- hostile input -------------------------------------------------------------------------------


def _never_anything_but_protocol_error(data: bytes, cap: int = SMALL) -> None:
    with contextlib.suppress(ekv.ProtocolError):
        wire.FrameDecoder(cap).feed(data)


@fuzz
@given(st.binary(max_size=300))
def test_garbage_streams_raise_only_protocol_error(data: bytes) -> None:
    _never_anything_but_protocol_error(data)


@fuzz
@given(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 24, 25]), st.binary(max_size=300))
def test_garbage_bodies_of_every_type_raise_only_protocol_error(code: int, body: bytes) -> None:
    _never_anything_but_protocol_error(frame(code, body))


@fuzz
@given(messages, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("xid")), max_size=4))
def test_mutated_frames_raise_only_protocol_error(message: Message, edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(wire.encode(message, compress_threshold=16))
    for where, byte, how in edits:
        at = where % len(data)
        if how == "x":
            data[at] ^= byte or 1
        elif how == "i":
            data.insert(at, byte)
        elif len(data) > 1:
            del data[at]
    _never_anything_but_protocol_error(bytes(data), BIG)
    if len(data) >= 4:  # (a tree message's frame can be 5 bytes: edits may leave less than a header)
        _never_anything_but_protocol_error(struct.pack(">I", len(data) - 4) + bytes(data[4:]), BIG)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["versions", "features", "instance", "node_id", "shards", "nonce", "listen", "wall_ns",
                               "mac", "reason", "echo_wall_ns", "members", "shard", "sync_id", "vv", "kind",
                               "chunks", "entries"])  # fmt: skip


@settings(fuzz, max_examples=500)
@given(st.sampled_from(range(1, 10)), st.dictionaries(field_names | st.text(max_size=4), json_values, max_size=9))
def test_json_bodies_of_the_wrong_shape_raise_only_protocol_error(code: int, obj: dict[str, Any]) -> None:
    _never_anything_but_protocol_error(frame(code, json.dumps(obj).encode()))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b' {"wall_ns":1}', "not valid JSON"),
        (b'{"wall_ns":1} ', "trailing"),
        (b'{"wall_ns":1.5}', "integer in"),
        (b'{"wall_ns":NaN}', "integer in"),
        (b'{"wall_ns":1e3}', "integer in"),
        (b'{"wall_ns":true}', "integer"),
        (b'{"wall_ns":1,"wall_ns":2}', "duplicate"),
        (b'{"wall_ns":' + b"9" * 5000 + b"}", "integer in"),
        (b'{"wall_ns":9223372036854775808}', "integer in"),
        (b'{"wall_ns":1,"extra":0}', "unknown fields"),
        (b"{}", "lacks wall_ns"),
        (b"[1]", "not a JSON object"),
        (b"[" * 100_000, "RecursionError"),
        (b'{"wall_ns":"\xff"}', "UnicodeDecodeError"),
    ],
)
def test_control_bodies_are_strict_json(body: bytes, match: str) -> None:
    rejected(frame(5, body), match=match)


def test_hello_ignores_fields_from_future_versions_but_checks_its_own() -> None:
    hello = Hello((1, 2), ("zlib", "future"), "kv", "n1", 8, bytes(32), None, 5)
    obj = json.loads(wire.encode(hello)[5:])
    obj["added_in_v7"] = {"anything": [1, 2.5]}
    assert wire.decode(frame(1, json.dumps(obj).encode()), max_frame_size=SMALL) == hello
    for field, bad in [("versions", []), ("shards", 0), ("nonce", "00" * 8), ("nonce", "AB" * 16), ("node_id", "")]:
        rejected(frame(1, json.dumps({**obj, field: bad}).encode()), match=field)


def test_other_control_fields_are_checked() -> None:
    rejected(frame(9, b'{"shard":0,"sync_id":0,"vv":{},"kind":"half","chunks":0,"entries":0}'), match="kind")
    rejected(frame(8, b'{"shard":0,"sync_id":0,"vv":{"n1":-1}}'), match="vv")
    rejected(frame(8, b'{"shard":65536,"sync_id":0,"vv":{}}'), match="shard")
    rejected(frame(7, b'{"members":[["n1"]]}'), match="pair")
    rejected(frame(3, b'{"reason":"\\ud800"}'), match="UTF-8")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"key": b""}, "key length"),
        ({"key": b"a\x00b"}, "NUL"),
        ({"key": b"\xff"}, "UTF-8"),
        ({"key": b"\xed\xa0\x80"}, "UTF-8"),  # an encoded surrogate
        ({"key": b"k" * 65_537}, "key length"),
        ({"origins": (b"",)}, "empty origin"),
        ({"origins": (b"\xc3",)}, "origin is not valid UTF-8"),
        ({"index": 1}, "origin index"),
        ({"oseq": 0}, "oseq"),
        ({"flags": 8}, "flags"),
        ({"flags": 4}, "flags"),  # compressed without a value
        ({"flags": 0, "value": b"", "value_len": 0, "expires": 5}, "absent"),
        ({"flags": 0, "value": b"x"}, "absent"),
        ({"value_len": 2}, "truncated"),
        ({"count": 2}, "entries declared"),
        ({"count": 2**32 - 1}, "entries declared"),
        ({"count": 0}, "trailing"),
        ({"flags": 6, "value": b"not zlib"}, "Error"),
        ({"flags": 6, "value": zlib.compress(b"abc")[:-2]}, "truncated or padded"),
        ({"flags": 6, "value": zlib.compress(b"abc") + b"!"}, "truncated or padded"),
    ],
)
def test_invalid_entries_from_the_wire_are_rejected(overrides: dict[str, Any], match: str) -> None:
    rejected(live_frame(**overrides), match=match)


def test_the_hand_built_frame_is_valid_to_begin_with() -> None:
    decoded = wire.decode(live_frame(b"k\xc3\xa9"), max_frame_size=SMALL)
    assert decoded == Live(0, (Entry("k\u00e9", TS, "n1", 1, None, b"v"),))


def test_decompression_bombs_are_cut_off_at_the_cap() -> None:
    bomb = zlib.compress(bytes(50_000_000), 9)  # about 50 kB that inflate to 50 MB
    t0 = time.perf_counter()
    rejected(live_frame(flags=6, value=bomb), cap=1_000_000, match="inflates past")
    assert time.perf_counter() - t0 < 1.0
    # many small bombs share one budget: together they may not exceed the cap either
    each = zlib.compress(bytes(300_000), 9)
    body = b"".join(struct.pack(">BIHqQqI", 6, 1, 0, TS, i + 1, 0, len(each)) + b"k" + each for i in range(10))
    data = frame(16, b"\x00\x00" + b"\x00\x01\x02n1" + struct.pack(">I", 10) + body)
    rejected(data, cap=1_000_000, match="inflates past")
    (accepted,) = wire.FrameDecoder(4_000_000).feed(data)
    assert isinstance(accepted, Live) and len(accepted.entries) == 10


def test_encode_refuses_what_the_decoder_would_reject() -> None:
    bad_entries = [
        Entry("", TS, "n1", 1, None, b""),
        Entry("a\x00", TS, "n1", 1, None, b""),
        Entry("\ud800", TS, "n1", 1, None, b""),
        Entry("k" * 65_537, TS, "n1", 1, None, b""),
        Entry("k", TS, "", 1, None, b""),
        Entry("k", TS, "o" * 256, 1, None, b""),
        Entry("k", TS, "n1", 0, None, b""),
        Entry("k", 2**63, "n1", 1, None, b""),
        Entry("k", TS, "n1", 2**64, None, b""),
        Entry("k", TS, "n1", 1, 2**63, b""),
        Entry("k", TS, "n1", 1, None, "str"),  # type: ignore[arg-type]
    ]
    for entry in bad_entries:
        with pytest.raises(ekv.InvalidArgument):
            wire.encode(Live(0, (entry,)))
    for message in [
        Live(2**16, ()),
        SyncChunk(0, -1, 0, ()),
        Hello((1,), (), "kv", "n1", 8, b"short", None, 0),
        Hello((), (), "kv", "n1", 8, bytes(32), None, 0),
        Ping(True),
        SyncRequest(0, 0, {"n1": -1}),
        SyncDone(0, 0, {}, "half", 0, 0),
        "not a message",
    ]:
        with pytest.raises(ekv.InvalidArgument):
            wire.encode(message)  # type: ignore[arg-type]


def test_free_text_reasons_are_always_sendable() -> None:
    assert roundtrip(Reject("bad \udcff byte")) == Reject("bad ? byte")
    assert roundtrip(Bye("\U0001f600")) == Bye("\U0001f600")


def test_speed_of_entries(capsys: pytest.CaptureFixture[str]) -> None:
    batch = tuple(Entry(f"user/{i}", TS + i, "node-a", i + 1, None, b"v" * 40) for i in range(1000))
    decoder = wire.FrameDecoder(BIG)
    timings = {}
    for label, message in [("1000-entry Live", Live(0, batch)), ("1-entry Live", Live(0, batch[:1]))]:
        n = 20 if len(message.entries) > 1 else 5000
        t0 = time.perf_counter()
        for _ in range(n):
            frame_bytes = wire.encode(message)
        t1 = time.perf_counter()
        for _ in range(n):
            decoder.feed(frame_bytes)
        t2 = time.perf_counter()
        per = n * len(message.entries) / 1e6
        timings[label] = f"encode {(t1 - t0) / per:.2f} us + decode {(t2 - t1) / per:.2f} us per entry"
    with capsys.disabled():
        print("\nwire speed:", "; ".join(f"{k}: {v}" for k, v in timings.items()))


# -- negotiation and authentication --------------------------------------------------------------


def hello(node_id: str, *, versions: tuple[int, ...] = (1,), features: tuple[str, ...] = wire.FEATURES) -> Hello:
    return Hello(versions, features, "kv", node_id, 8, auth.new_nonce(), f"{node_id}:4370", TS)


def test_negotiate_picks_the_highest_common_version_and_common_features() -> None:
    assert PROTOCOL_VERSION in hello("a").versions
    assert "zlib" in wire.FEATURES
    mine = hello("a", versions=(1, 2, 3), features=("zlib", "x"))
    assert wire.negotiate(mine, hello("b", versions=(2, 1), features=("x", "y"))) == (2, frozenset({"x"}))
    assert wire.negotiate(mine, hello("b", versions=(1,), features=())) == (1, frozenset())
    with pytest.raises(ekv.ProtocolError, match="no common protocol version"):
        wire.negotiate(mine, hello("b", versions=(4, 5)))


@pytest.mark.parametrize("cookie", [b"s3cret", "s3cret \u00e9", b"", ""])
def test_both_proofs_verify(cookie: bytes | str) -> None:
    a, b = hello("a"), hello("b")
    auth.verify(cookie, auth.proof(cookie, mine=b, theirs=a), mine=a, theirs=b)  # A checks B
    auth.verify(cookie, auth.proof(cookie, mine=a, theirs=b), mine=b, theirs=a)  # B checks A
    assert len(auth.proof(cookie, mine=a, theirs=b)) == auth.MAC_SIZE


def test_str_and_empty_cookies() -> None:
    a, b = hello("a"), hello("b")
    assert auth.proof("\u00e9", mine=a, theirs=b) == auth.proof("\u00e9".encode(), mine=a, theirs=b)
    auth.verify(b"", auth.proof("", mine=b, theirs=a), mine=a, theirs=b)
    with pytest.raises(ekv.AuthenticationError):
        auth.verify(b"", auth.proof("x", mine=b, theirs=a), mine=a, theirs=b)


def test_a_wrong_cookie_fails() -> None:
    a, b = hello("a"), hello("b")
    with pytest.raises(ekv.AuthenticationError, match="cookie"):
        auth.verify(b"right", auth.proof(b"wrong", mine=b, theirs=a), mine=a, theirs=b)


def test_a_proof_is_bound_to_its_role() -> None:
    a, b = hello("a"), hello("b")
    mine = auth.proof(b"c", mine=a, theirs=b)
    with pytest.raises(ekv.AuthenticationError):  # A's own proof reflected back to A
        auth.verify(b"c", mine, mine=a, theirs=b)
    assert mine != auth.proof(b"c", mine=b, theirs=a)


def test_a_recorded_proof_is_useless_with_a_fresh_nonce() -> None:
    a, b = hello("a"), hello("b")
    recorded = auth.proof(b"c", mine=b, theirs=a)
    a2 = Hello(a.versions, a.features, a.instance, a.node_id, a.shards, auth.new_nonce(), a.listen, a.wall_ns)
    with pytest.raises(ekv.AuthenticationError):
        auth.verify(b"c", recorded, mine=a2, theirs=b)


def test_an_edited_hello_breaks_the_proof() -> None:
    a, b = hello("a", versions=(1, 2)), hello("b", versions=(1, 2))
    downgraded = Hello((1,), (), b.instance, b.node_id, b.shards, b.nonce, b.listen, b.wall_ns)
    proof_b = auth.proof(b"c", mine=b, theirs=a)
    with pytest.raises(ekv.AuthenticationError):
        auth.verify(b"c", proof_b, mine=a, theirs=downgraded)


def test_a_peer_with_our_node_id_or_nonce_is_refused() -> None:
    a = hello("a")
    twin = hello("a")
    with pytest.raises(ekv.AuthenticationError, match="own node id"):
        auth.verify(b"c", auth.proof(b"c", mine=twin, theirs=a), mine=a, theirs=twin)
    echo = Hello(a.versions, a.features, a.instance, "b", a.shards, a.nonce, a.listen, a.wall_ns)
    with pytest.raises(ekv.AuthenticationError, match="nonce"):
        auth.verify(b"c", auth.proof(b"c", mine=echo, theirs=a), mine=a, theirs=echo)


def test_nonces_are_fresh_and_proofs_must_be_bytes() -> None:
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == auth.NONCE_SIZE for n in nonces)
    a, b = hello("a"), hello("b")
    good = auth.proof(b"c", mine=b, theirs=a)
    for bad in (good[:-1], good + b"\0", bytearray(good), good.hex()):
        with pytest.raises(ekv.AuthenticationError):
            auth.verify(b"c", bad, mine=a, theirs=b)  # type: ignore[arg-type]
    with pytest.raises(ekv.InvalidArgumentType):
        auth.proof(42, mine=a, theirs=b)  # type: ignore[arg-type]


def test_the_handshake_over_the_wire() -> None:
    """Hello and Auth survive the wire unchanged, so both sides MAC the same transcript."""
    a, b = hello("a"), hello("b")
    a_seen_by_b, b_seen_by_a = roundtrip(a, cap=SMALL), roundtrip(b, cap=SMALL)
    assert isinstance(a_seen_by_b, Hello) and isinstance(b_seen_by_a, Hello)
    proof_a = roundtrip(Auth(auth.proof(b"c", mine=a, theirs=b_seen_by_a)), cap=SMALL)
    assert isinstance(proof_a, Auth)
    auth.verify(b"c", proof_a.mac, mine=b, theirs=a_seen_by_b)


def test_client_request_and_reply_round_trip() -> None:
    from ekv._cluster.messages import Reply, Request

    for message in (
        Request(7, "put", '{"key": "a", "value": {"x": 1.5}, "ttl": 0.25}'),
        Reply(7, True, '{"version": [1, "n"]}'),
        Reply(8, False, "null", "KeyError: nope"),
    ):
        assert wire.decode(wire.encode(message), max_frame_size=BIG) == message


def test_merge_live_joins_runs_of_live_messages_per_shard_and_keeps_everything_else_in_place() -> None:
    """The receiver applies a run of Live messages from one read as one Live per shard: entries
    keep their order within a shard, and a non-Live message ends the run (nothing moves past it)."""

    def e(key: str, oseq: int) -> Entry:
        return Entry(key, 1000 + oseq, "o", oseq, None, b"v")

    ping, done = Ping(5), SyncDone(0, 1, {"o": 2}, "delta", 0, 0)
    messages: list[Message] = [
        Live(0, (e("a", 1),)),
        Live(1, (e("b", 2),)),
        Live(0, (e("c", 3), e("d", 4))),
        ping,
        Live(1, (e("f", 5),)),
        done,
        Live(0, (e("g", 6),)),
        Live(0, (e("h", 7),)),
    ]
    assert merge_live(messages) == [
        Live(0, (e("a", 1), e("c", 3), e("d", 4))),
        Live(1, (e("b", 2),)),
        ping,
        Live(1, (e("f", 5),)),
        done,
        Live(0, (e("g", 6), e("h", 7))),
    ]
    alone: list[Message] = [Live(0, (e("a", 1),)), ping]
    assert merge_live(alone) is alone  # nothing to merge: the same list back


def test_probe_messages_with_a_wrong_count_order_or_digest_size_are_rejected() -> None:
    head = struct.pack(">QH", 7, 2)
    rejected(frame(24, head + b"\x00" * 15))  # two digests of 8 bytes declared, 15 bytes follow
    rejected(frame(24, head[:5]))  # truncated header
    rejected(frame(25, head + struct.pack(">HH", 3, 3)))  # shards not strictly ascending
    rejected(frame(25, head + struct.pack(">HH", 4, 3)))
    assert wire.decode(frame(25, head + struct.pack(">HH", 3, 4)), max_frame_size=SMALL) == SummaryDiff(7, (3, 4))
    for bad in (Summary(1, (b"\x00" * 7,)), SummaryDiff(1, (2, 1)), SummaryDiff(-1, ()), SummaryDiff(1, (1 << 16,))):
        with pytest.raises(ekv.InvalidArgument):
            wire.encode(bad)


def test_tree_messages_are_checked_like_every_frame() -> None:
    """A TreeMessage frame carries one plumtree_wire message: garbage in it is a ProtocolError
    (the session closes), one that cannot be sent is an InvalidArgument (never sent)."""
    gossip = TreeMessage(plumtree.Gossip("n1", 3, 1, wire.encode(Live(0, (Entry("a", TS, "n1", 1, None, b"v"),)))))
    assert roundtrip(gossip) == gossip
    rejected(frame(26, b"\x63"), match="unknown broadcast message kind")
    rejected(frame(26, b"\x01\x02n1"))  # a truncated Gossip
    rejected(frame(26, b"\x04\x00"), match="trailing")  # a Prune with a byte after it
    with pytest.raises(ekv.InvalidArgument):
        wire.encode(TreeMessage(plumtree.Gossip("n1", 3, 0, b"")))  # a hop count of 0


@pytest.mark.parametrize(
    ("code", "body", "named"),
    [
        (7, {"members": [["a", "h:1"], ["", "h:2"]]}, "Members.members[1] node id"),
        (7, {"members": [["a", "h:1"], ["b", ""]]}, "Members.members[1] address"),
        (7, {"members": [["a", "h:1"], "b"]}, "Members.members[1] must be"),
        (8, {"shard": 0, "sync_id": 1, "vv": {"a": 1, "b": -1}}, "SyncRequest.vv['b']"),
        (8, {"shard": 0, "sync_id": 1, "vv": {"a": 1, "": 2}}, "SyncRequest.vv origin"),
        (8, {"shard": 0, "sync_id": "x", "vv": {}}, "SyncRequest.sync_id"),
    ],
)
def test_a_bad_field_is_named_in_the_error(code: int, body: dict[str, Any], named: str) -> None:
    """The checks name a field only when it fails (formatting every item's name cost more than
    checking it, on the member lists every session start carries): the name is still exact."""
    with pytest.raises(ekv.ProtocolError) as caught:
        wire.FrameDecoder(BIG).feed(frame(code, json.dumps(body).encode()))
    assert named in str(caught.value)
