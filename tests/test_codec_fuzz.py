"""Property-based fuzzing of the codec (hypothesis): whatever bytes arrive, decoding returns a
value or raises CodecError; nothing else escapes, nothing hangs, nothing over-allocates.

Three families of input: valid messages cut short or with one bit flipped (the CRC must catch
every one), and crafted headers behind a *valid* CRC (so only the decoder's own bounds stand
between the bytes and torch): arbitrary dtype codes, flags, dimension counts, shapes and
scales, nested or malformed JSON, and message headers whose counts and lengths lie.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitft.errors import CodecError
from splitft.wire.codec import (
    MAX_JSON_DEPTH,
    Entry,
    bytes_by_kind,
    decode_message,
    decode_tensor,
    encode_message,
)

# SPLITFT_FUZZ_EXAMPLES raises the count for a long fuzzing session (the suite runs 200 a test).
FUZZ = settings(
    max_examples=int(os.environ.get("SPLITFT_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


@st.composite
def tensors(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    values = (
        torch.randint(0, 2, shape, generator=gen)
        if dtype == torch.bool
        else torch.randn(shape, generator=gen) * 50
    )
    return values.to(dtype)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def messages(draw) -> bytes:
    values = draw(st.lists(tensors() | json_values, min_size=1, max_size=4))
    kinds = ("activations", "gradients", "labels", "adapters", "control")
    entries = [Entry(f"e{i}", draw(st.sampled_from(kinds)), v) for i, v in enumerate(values)]
    return encode_message(entries).data


def frame(
    entries: list[tuple[bytes, int, int, bytes]], count: int | None = None, extra: bytes = b""
) -> bytes:
    """A message around raw entries (name, kind, value type, payload) with a valid CRC."""
    body = (
        b"".join(
            struct.pack("<H", len(name)) + name + struct.pack("<BBQ", kind, vtype, len(payload)) + payload
            for name, kind, vtype, payload in entries
        )
        + extra
    )
    total = 4 + 1 + 4 + 8 + len(body) + 4
    head = struct.pack("<4sBIQ", b"SFTm", 1, len(entries) if count is None else count, total)
    return head + body + struct.pack("<I", zlib.crc32(head + body))


def decodes_or_codec_error(data: bytes) -> None:
    try:
        decoded = decode_message(data)
    except CodecError:
        return
    assert isinstance(decoded, dict)
    assert sum(bytes_by_kind(data).values()) == len(data)


@FUZZ
@given(messages(), st.data())
def test_truncated_messages_are_codec_errors(data, draw):
    cut = draw.draw(st.integers(0, len(data) - 1))
    with pytest.raises(CodecError):
        decode_message(data[:cut])


@FUZZ
@given(messages(), st.data())
def test_every_bit_flip_is_caught(data, draw):
    position = draw.draw(st.integers(0, len(data) * 8 - 1))
    flipped = bytearray(data)
    flipped[position // 8] ^= 1 << (position % 8)
    with pytest.raises(CodecError):
        decode_message(bytes(flipped))


@FUZZ
@given(st.lists(tensors() | json_values, min_size=1, max_size=4))
def test_valid_messages_round_trip(values):
    """The bounds reject nothing a real message holds."""
    entries = [
        Entry(f"e{i}", "adapters" if isinstance(v, torch.Tensor) else "control", v)
        for i, v in enumerate(values)
    ]
    decoded = decode_message(encode_message(entries).data)
    assert list(decoded) == [e.name for e in entries]
    for value, back in zip(values, decoded.values(), strict=True):
        if isinstance(value, torch.Tensor):
            assert back.dtype == value.dtype and torch.equal(back, value)
        else:
            assert back == value


dims = st.one_of(st.integers(0, 8), st.sampled_from([0, 2**31, 2**32 + 1, 2**62, 2**64 - 1]))


@FUZZ
@given(
    code=st.integers(0, 255),
    flags=st.integers(0, 255),
    shape=st.lists(dims, max_size=12),
    ndim_lie=st.integers(-2, 2),
    scale=st.sampled_from([1.0, 0.0, -1.0, float("nan"), float("inf"), 2.0**100, 1e-40]),
    data=st.binary(max_size=96),
)
def test_crafted_tensor_headers_behind_a_valid_crc(code, flags, shape, ndim_lie, scale, data):
    ndim = min(max(len(shape) + ndim_lie, 0), 255)
    payload = (
        struct.pack("<4sBBBf", b"SFTt", code, flags, ndim, scale)
        + struct.pack(f"<{len(shape)}Q", *shape)
        + data
    )
    decodes_or_codec_error(frame([(b"t", 0, 1, payload)]))
    with contextlib.suppress(CodecError):
        assert isinstance(decode_tensor(payload), torch.Tensor)


def nested(depth: int, leaf: str = "0") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=64),
        st.integers(1, 100_000).map(nested),
        st.integers(1, 2000).map(lambda d: ('{"a":' * d + "0" + "}" * d).encode()),
        st.sampled_from([b"NaN", b"[Infinity]", b'{"loss": -Infinity}', b"\xff\xfe", b"", b"[" * 50]),
    ),
    kind=st.integers(0, 255),
    vtype=st.integers(0, 255),
)
def test_crafted_json_and_entry_heads_behind_a_valid_crc(payload, kind, vtype):
    decodes_or_codec_error(frame([(b"c", kind, vtype, payload)]))
    decodes_or_codec_error(frame([(b"c", 4, 2, payload)]))


@FUZZ
@given(
    count=st.integers(0, 2**32 - 1),
    extra=st.binary(max_size=32),
    name=st.binary(max_size=8),
)
def test_lying_message_headers_behind_a_valid_crc(count, extra, name):
    decodes_or_codec_error(frame([(name, 4, 2, b"1")], count=count, extra=extra))


def test_the_bounds_the_issue_found():
    """A zero dimension next to a huge one (an overflow in reshape), JSON nested 1000 deep,
    absurd dimensions of an empty tensor, and non-finite JSON constants: all CodecErrors."""
    zero_huge = struct.pack("<4sBBBf", b"SFTt", 1, 0, 2, 1.0) + struct.pack("<2Q", 0, 2**63)
    with pytest.raises(CodecError, match="out of bounds"):
        decode_message(frame([(b"t", 0, 1, zero_huge)]))
    with pytest.raises(CodecError, match="nested deeper|not valid JSON"):
        decode_message(frame([(b"c", 4, 2, nested(1000))]))
    with pytest.raises(CodecError, match=f"deeper than {MAX_JSON_DEPTH}"):
        decode_message(frame([(b"c", 4, 2, nested(MAX_JSON_DEPTH))]))
    assert decode_message(frame([(b"c", 4, 2, nested(MAX_JSON_DEPTH - 1))]))["c"] is not None
    many_dims = struct.pack("<4sBBBf", b"SFTt", 1, 0, 9, 1.0) + struct.pack("<9Q", *[0] * 9)
    with pytest.raises(CodecError, match="dimensions"):
        decode_message(frame([(b"t", 0, 1, many_dims)]))
    with pytest.raises(CodecError, match="not valid JSON"):
        decode_message(frame([(b"c", 4, 2, json.dumps({"loss": float("nan")}).encode())]))
