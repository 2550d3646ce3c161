"""Tests of the wire codec: tensor and message round trips, byte accounting, defect detection."""

from __future__ import annotations

import ast
import inspect
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.errors import CodecError
from splitft.wire import codec
from splitft.wire.codec import (
    KINDS,
    Entry,
    decode_message,
    decode_tensor,
    encode_message,
    encode_tensor,
    tensor_header_size,
)

ALL_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
    torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
]  # fmt: skip
SHAPES = [(), (0,), (1,), (7,), (2, 3), (3, 0, 4), (2, 3, 5), (1, 1, 1, 2)]


def _sample(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensor_round_trip_every_dtype_and_shape(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = _sample(shape, dtype)
    buf = encode_tensor(t)
    assert len(buf) == t.numel() * t.element_size() + tensor_header_size(t.dim())
    out = decode_tensor(buf)
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out, t)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    shape=st.lists(st.integers(0, 4), max_size=4).map(tuple),
    seed=st.integers(0, 2**31),
)
def test_tensor_round_trip_property(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> None:
    t = _sample(shape, dtype, seed)
    assert torch.equal(decode_tensor(memoryview(encode_tensor(t))), t)


def test_non_contiguous_tensor_round_trips() -> None:
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()[:, ::2]
    assert not t.is_contiguous()
    assert torch.equal(decode_tensor(encode_tensor(t)), t)


@pytest.mark.parametrize(
    ("wire", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_wire_cast_returns_wire_dtype(wire: str, dtype: torch.dtype) -> None:
    t = torch.randn(4, 5, dtype=torch.float32)
    out = decode_tensor(encode_tensor(t, wire))
    assert out.dtype == dtype
    assert torch.equal(out, t.to(dtype))


def test_wire_cast_leaves_integer_tensors_exact() -> None:
    labels = torch.tensor([[-100, 5, 70000]], dtype=torch.int64)
    out = decode_tensor(encode_tensor(labels, "fp16"))
    assert out.dtype == torch.int64 and torch.equal(out, labels)


def test_scaled_fp16_keeps_tiny_gradients_that_plain_fp16_loses() -> None:
    g = torch.Generator().manual_seed(1)
    sign = torch.where(torch.rand(64, generator=g) < 0.5, -1.0, 1.0)
    grad = sign * (0.5 + torch.rand(64, generator=g)) * 1e-9
    plain = decode_tensor(encode_tensor(grad, "fp16"))
    assert torch.count_nonzero(plain) == 0  # 1e-9 is below fp16's smallest subnormal (~6e-8)
    scaled = decode_tensor(encode_tensor(grad, "fp16", scaled=True))
    assert scaled.dtype == torch.float32
    assert ((scaled - grad).abs() / grad.abs()).max() < 1e-3


@pytest.mark.parametrize(
    "t", [torch.zeros(3, 4), torch.zeros(0, 2), torch.tensor(1.0), torch.tensor([1e4, -3.0])]
)
def test_scaled_fp16_edge_values(t: torch.Tensor) -> None:
    out = decode_tensor(encode_tensor(t, "fp16", scaled=True))
    assert out.dtype == torch.float32 and out.shape == t.shape
    assert torch.allclose(out, t, rtol=1e-3)


def test_bad_wire_dtype_and_unsupported_dtype_raise_value_error() -> None:
    with pytest.raises(ValueError, match="fp16"):
        encode_tensor(torch.zeros(2), "fp8")
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode_tensor(torch.zeros(2, dtype=torch.complex64))


def test_decode_tensor_rejects_bad_magic_dtype_and_trailing_bytes() -> None:
    buf = bytearray(encode_tensor(torch.ones(2, 2)))
    with pytest.raises(CodecError, match="not a SplitFT tensor"):
        decode_tensor(b"XXXX" + bytes(buf[4:]))
    bad_dtype = bytearray(buf)
    bad_dtype[4] = 99
    with pytest.raises(CodecError, match="unknown tensor dtype code 99"):
        decode_tensor(bytes(bad_dtype))
    with pytest.raises(CodecError, match="after its data"):
        decode_tensor(bytes(buf) + b"\x00")
    for cut in range(len(buf)):
        with pytest.raises(CodecError, match="truncated"):
            decode_tensor(bytes(buf[:cut]))


def _small_message() -> list[Entry]:
    return [
        Entry("h", "activations", torch.randn(2, 3, 4), wire_dtype="bf16"),
        Entry("grad", "gradients", torch.randn(2, 3) * 1e-6, wire_dtype="fp16", scaled=True),
        Entry("labels", "labels", torch.tensor([[1, -100, 7]])),
        Entry("lora_A", "adapters", torch.randn(4, 2, dtype=torch.float64)),
        Entry("meta", "control", {"round": 3, "step": [1, 2], "lr": 0.5, "tag": "ü", "none": None}),
        Entry("empty", "activations", torch.empty(0, 8)),
    ]


def test_message_round_trip_values_and_order() -> None:
    entries = _small_message()
    out = decode_message(encode_message(entries).data)
    assert list(out) == [e.name for e in entries]
    assert torch.equal(out["h"], entries[0].value.to(torch.bfloat16))
    assert out["grad"].dtype == torch.float32
    assert torch.allclose(out["grad"], entries[1].value, rtol=1e-3, atol=0)
    assert torch.equal(out["labels"], entries[2].value)
    assert torch.equal(out["lora_A"], entries[3].value)
    assert out["meta"] == entries[4].value
    assert out["empty"].shape == (0, 8)


def test_empty_message_round_trips() -> None:
    msg = encode_message([])
    assert decode_message(msg.data) == {}
    assert msg.bytes_by_kind == {**dict.fromkeys(KINDS, 0), "control": len(msg.data)}


def test_bytes_by_kind_sums_to_length_and_counts_payloads() -> None:
    entries = _small_message()
    msg = encode_message(entries)
    assert set(msg.bytes_by_kind) == set(KINDS)
    assert sum(msg.bytes_by_kind.values()) == len(msg.data)
    assert msg.bytes_by_kind["labels"] == 3 * 8 + tensor_header_size(2)
    assert msg.bytes_by_kind["adapters"] == 8 * 8 + tensor_header_size(2)
    json_len = len(json.dumps(entries[4].value, separators=(",", ":")).encode())
    assert msg.bytes_by_kind["control"] > json_len  # framing is counted under control as well


@pytest.mark.parametrize(("wire", "itemsize"), [(None, 4), ("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_activation_bytes_are_exact(wire: str | None, itemsize: int) -> None:
    b, t, d = 3, 17, 64
    msg = encode_message(
        [Entry("h", "activations", torch.randn(b, t, d), wire_dtype=wire), Entry("m", "control", {"x": 1})]
    )
    assert msg.bytes_by_kind["activations"] == b * t * d * itemsize + tensor_header_size(3)
    assert sum(msg.bytes_by_kind.values()) == len(msg.data)


def test_every_truncation_raises_codec_error() -> None:
    data = encode_message(_small_message()).data
    for cut in range(len(data)):
        with pytest.raises(CodecError, match="truncated"):
            decode_message(data[:cut])


def test_every_flipped_byte_raises_codec_error() -> None:
    data = encode_message(_small_message()[2:]).data
    for i in range(len(data)):
        corrupted = bytearray(data)
        corrupted[i] ^= 0x5A
        with pytest.raises(CodecError):
            decode_message(bytes(corrupted))


def test_flipped_payload_byte_reports_checksum_mismatch() -> None:
    corrupted = bytearray(encode_message(_small_message()).data)
    corrupted[len(corrupted) // 2] ^= 0x01
    with pytest.raises(CodecError, match="payload corrupted: checksum mismatch"):
        decode_message(bytes(corrupted))


def test_bad_magic_version_and_trailing_bytes_raise() -> None:
    data = encode_message(_small_message()).data
    with pytest.raises(CodecError, match="not a SplitFT message"):
        decode_message(b"PK\x03\x04" + data[4:])
    with pytest.raises(CodecError, match="not a SplitFT message"):
        decode_message(data[:4] + b"\x09" + data[5:])
    with pytest.raises(CodecError, match="declares"):
        decode_message(data + b"\x00")
    with pytest.raises(CodecError, match="not a SplitFT message"):
        decode_message(b"\x80\x04\x95 pickle")


def test_encode_message_rejects_bad_entries() -> None:
    with pytest.raises(ValueError, match="activations"):
        encode_message([Entry("x", "weights", torch.zeros(1))])
    with pytest.raises(ValueError, match="duplicated"):
        encode_message([Entry("x", "control", 1), Entry("x", "control", 2)])
    with pytest.raises(ValueError, match="JSON-able"):
        encode_message([Entry("x", "control", {"a": object()})])


def test_codec_never_uses_pickle_or_torch_load() -> None:
    # Walk the syntax tree rather than grep the text: the docstring is allowed to *say* "pickle".
    tree = ast.parse(inspect.getsource(codec))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pickle", "cPickle", "dill", "marshal", "shelve"}
    calls = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not calls & {"torch.load", "torch.save", "pickle.loads", "np.load", "numpy.load"}
