"""Wire codec: everything that crosses the client <-> main-server boundary is encoded here.

Payloads are raw little-endian bytes behind a small header; nothing is pickled or passed through
``torch.save``, so decoding untrusted bytes can never run code.

Tensor payload::

    offset    size      field
    0         4         magic b"SFTt"
    4         1         dtype code (float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool)
    5         1         flags; bit 0 = scaled fp16: decode multiplies by the scale and returns float32
    6         1         ndim
    7         4         scale, float32 (1.0 when unused)
    11        8 * ndim  shape, uint64 per dim
    11+8*ndim n         element bytes in C order (n = numel * itemsize)

Message::

    magic b"SFTm" (4) | version u8 | entry count u32 | total length u64
    per entry: name length u16 | name utf-8 | kind u8 | value type u8 | payload length u64 | payload
    CRC32 u32 of everything before it

Byte accounting (totals per round, client, direction and kind: ``wire/ledger.py``): an entry's payload (tensor header + data, or JSON text) counts under its kind, all
framing under "control", so ``sum(bytes_by_kind.values()) == len(data)``.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from splitft.config_codec import WIRE_DTYPES as WIRE_DTYPE_NAMES
from splitft.errors import CodecError

KINDS = ("activations", "gradients", "labels", "adapters", "control")
DIRECTIONS = ("up", "down")
WIRE_DTYPES: dict[str, torch.dtype] = dict(
    zip(WIRE_DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True)
)
JSONValue = dict[str, Any] | list[Any] | str | int | float | bool | None

_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.float16, 3: torch.bfloat16, 4: torch.float64, 5: torch.int64,
    6: torch.int32, 7: torch.int16, 8: torch.int8, 9: torch.uint8, 10: torch.bool,
}  # fmt: skip
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_SCALED = 1
_TENSOR_MAGIC = b"SFTt"
_TENSOR_FIXED = struct.Struct("<4sBBBf")  # magic, dtype code, flags, ndim, scale

_MSG_MAGIC = b"SFTm"
_VERSION = 1
_MSG_HEAD = struct.Struct("<4sBIQ")  # magic, version, entry count, total length
_NAME_LEN = struct.Struct("<H")
_ENTRY_HEAD = struct.Struct("<BBQ")  # kind code, value type, payload length
_CRC = struct.Struct("<I")
_TENSOR, _JSON = 1, 2

# Bounds on what a decoder accepts, whatever a (CRC-valid) header claims: no payload of
# SplitFT has more than 4 dimensions, a dimension beyond 2**31 or a deeply nested record.
MAX_NDIM = 8
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**34
MAX_JSON_DEPTH = 32


def tensor_header_size(ndim: int) -> int:
    """Bytes of the tensor header, so an encoded tensor is ``numel * itemsize + tensor_header_size(ndim)``."""
    return _TENSOR_FIXED.size + 8 * ndim


def _need(buf: memoryview, offset: int, n: int) -> None:
    if offset + n > len(buf):
        have = max(len(buf) - offset, 0)
        raise CodecError(f"payload truncated: need {n} bytes at offset {offset}, have {have}")


def _pow2_scale(t: torch.Tensor) -> float:
    amax = float(t.abs().max()) if t.numel() else 0.0
    if amax == 0.0 or not math.isfinite(amax):
        return 1.0
    # frexp gives amax = m * 2**e with 0.5 <= m < 1, so |t| / 2**e < 1; a power of two divides and
    # multiplies back exactly. The clamp keeps the scale a normal float32.
    return math.ldexp(1.0, min(max(math.frexp(amax)[1], -126), 127))


def encode_tensor(t: torch.Tensor, wire_dtype: str | None = None, *, scaled: bool = False) -> bytes:
    """Encode ``t`` cast to ``wire_dtype`` ("fp32", "fp16", "bf16", or None to keep its dtype).

    Only floating tensors are cast: labels and masks must cross the wire exactly. With
    ``scaled=True`` and an fp16 wire dtype the tensor is divided by a power-of-two scale first,
    so tiny gradients do not underflow fp16; ``scaled`` has no effect on other wire dtypes.
    """
    if wire_dtype is not None and wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype {wire_dtype!r} is not one of {', '.join(WIRE_DTYPES)} or None")
    t = t.detach()
    target = WIRE_DTYPES[wire_dtype] if wire_dtype is not None and t.is_floating_point() else t.dtype
    if target not in _DTYPE_CODES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in _DTYPE_CODES)
        raise ValueError(f"tensor dtype {t.dtype} cannot be encoded; allowed: {allowed}")
    scale, flags = 1.0, 0
    if scaled and target == torch.float16:
        scale, flags = _pow2_scale(t), _SCALED
        t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32) / scale
    t = t.to(device="cpu", dtype=target).contiguous()
    header = _TENSOR_FIXED.pack(_TENSOR_MAGIC, _DTYPE_CODES[target], flags, t.dim(), scale)
    shape = struct.pack(f"<{t.dim()}Q", *t.shape)
    # reshape(-1) first: a 0-d tensor of a wider dtype cannot be viewed as bytes directly.
    return header + shape + t.reshape(-1).view(torch.uint8).numpy().tobytes()


def decode_tensor(buf: bytes | bytearray | memoryview) -> torch.Tensor:
    """Decode one tensor payload; returns the wire dtype, or float32 for a scaled fp16 payload."""
    mv = memoryview(buf)
    _need(mv, 0, _TENSOR_FIXED.size)
    magic, code, flags, ndim, scale = _TENSOR_FIXED.unpack_from(mv)
    if magic != _TENSOR_MAGIC:
        raise CodecError(f"not a SplitFT tensor: magic {magic!r}, expected {_TENSOR_MAGIC!r}")
    if code not in _DTYPES:
        raise CodecError(f"unknown tensor dtype code {code}")
    if flags & ~_SCALED:
        raise CodecError(f"unknown tensor flags {flags:#x}")
    dtype = _DTYPES[code]
    if ndim > MAX_NDIM:
        raise CodecError(f"tensor has {ndim} dimensions; at most {MAX_NDIM} are allowed")
    _need(mv, _TENSOR_FIXED.size, 8 * ndim)
    shape = struct.unpack_from(f"<{ndim}Q", mv, _TENSOR_FIXED.size)
    # Bounded even when the product is 0: torch overflows on a huge dimension next to a zero one.
    if any(d > MAX_DIM for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise CodecError(
            f"tensor shape {list(shape)} is out of bounds (dims <= {MAX_DIM}, <= {MAX_ELEMENTS} elements)"
        )
    offset, nbytes = tensor_header_size(ndim), math.prod(shape) * dtype.itemsize
    _need(mv, offset, nbytes)
    if len(mv) != offset + nbytes:
        raise CodecError(f"tensor payload has {len(mv) - offset - nbytes} bytes after its data")
    # Copy: frombuffer shares memory, which would tie the tensor to the caller's (maybe read-only) buffer.
    raw = bytearray(mv[offset:])
    flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    if dtype == torch.bool and flat.numel() and int(flat.max()) > 1:
        raise CodecError("bool tensor holds bytes other than 0 and 1")
    try:
        t = flat.view(dtype).reshape(shape)
    except (RuntimeError, ValueError) as err:  # a last guard: the bounds above should leave none
        raise CodecError(f"tensor of shape {list(shape)} cannot be rebuilt: {err}") from None
    if flags & _SCALED:
        if dtype != torch.float16 or not (math.isfinite(scale) and scale > 0):
            raise CodecError(f"invalid scaled tensor: dtype {dtype}, scale {scale}")
        return t.to(torch.float32) * scale
    return t


@dataclass(frozen=True)
class Entry:
    """One named value of a message; ``wire_dtype`` and ``scaled`` apply to tensor values only."""

    name: str
    kind: str
    value: torch.Tensor | JSONValue
    wire_dtype: str | None = None
    scaled: bool = False


@dataclass(frozen=True)
class EncodedMessage:
    data: bytes
    bytes_by_kind: dict[str, int]  # every kind of KINDS; sums to len(data)


def encode_message(entries: Iterable[Entry]) -> EncodedMessage:
    counts = dict.fromkeys(KINDS, 0)
    parts: list[bytes] = []
    names: set[str] = set()
    for e in entries:
        if e.kind not in KINDS:
            raise ValueError(f"entry {e.name!r}: kind {e.kind!r} is not one of {', '.join(KINDS)}")
        name = e.name.encode()
        if e.name in names or len(name) > 0xFFFF:
            raise ValueError(f"entry name {e.name!r} is duplicated or longer than 65535 bytes")
        names.add(e.name)
        if isinstance(e.value, torch.Tensor):
            vtype, payload = _TENSOR, encode_tensor(e.value, e.wire_dtype, scaled=e.scaled)
        else:
            try:
                vtype, payload = _JSON, json.dumps(e.value, separators=(",", ":")).encode()
            except (TypeError, ValueError) as err:
                raise ValueError(f"entry {e.name!r}: value is not a tensor or JSON-able: {err}") from None
        head = _ENTRY_HEAD.pack(KINDS.index(e.kind), vtype, len(payload))
        parts += [_NAME_LEN.pack(len(name)), name, head, payload]
        counts[e.kind] += len(payload)
    total = _MSG_HEAD.size + sum(map(len, parts)) + _CRC.size
    parts.insert(0, _MSG_HEAD.pack(_MSG_MAGIC, _VERSION, len(names), total))
    crc = 0
    for part in parts:  # incremental CRC avoids one extra copy of large activation payloads
        crc = zlib.crc32(part, crc)
    data = b"".join([*parts, _CRC.pack(crc)])
    counts["control"] += len(data) - sum(counts.values())
    return EncodedMessage(data, counts)


def _entries(data: bytes | bytearray | memoryview) -> Iterator[tuple[str, int, int, memoryview]]:
    """Check a message's framing and checksum, then yield (name, kind code, value type, payload)."""
    mv = memoryview(data)
    if bytes(mv[:4]) != _MSG_MAGIC[: len(mv)]:
        raise CodecError(f"not a SplitFT message: magic {bytes(mv[:4])!r}, expected {_MSG_MAGIC!r}")
    _need(mv, 0, _MSG_HEAD.size)
    _, version, count, total = _MSG_HEAD.unpack_from(mv)
    if version != _VERSION:
        raise CodecError(f"not a SplitFT message of a known version: version {version}, expected {_VERSION}")
    # Checking the declared length first reports a cut-off message as truncated, not as corrupted.
    _need(mv, 0, total)
    if len(mv) != total or total < _MSG_HEAD.size + _CRC.size:
        raise CodecError(f"message is {len(mv)} bytes but declares {total}")
    body = mv[: total - _CRC.size]
    if zlib.crc32(body) != _CRC.unpack_from(mv, len(body))[0]:
        raise CodecError("payload corrupted: checksum mismatch")
    seen: set[str] = set()
    offset = _MSG_HEAD.size
    for _ in range(count):
        _need(body, offset, _NAME_LEN.size)
        (name_len,) = _NAME_LEN.unpack_from(body, offset)
        offset += _NAME_LEN.size
        _need(body, offset, name_len + _ENTRY_HEAD.size)
        try:
            name = bytes(body[offset : offset + name_len]).decode()
        except UnicodeDecodeError:
            raise CodecError(f"entry name at offset {offset} is not UTF-8") from None
        kind, vtype, size = _ENTRY_HEAD.unpack_from(body, offset + name_len)
        offset += name_len + _ENTRY_HEAD.size
        if kind >= len(KINDS):
            raise CodecError(f"entry {name!r}: unknown kind code {kind}")
        if vtype not in (_TENSOR, _JSON) or name in seen:
            raise CodecError(f"entry {name!r}: unknown value type {vtype} or duplicate name")
        seen.add(name)
        _need(body, offset, size)
        yield name, kind, vtype, body[offset : offset + size]
        offset += size
    if offset != len(body):
        raise CodecError(f"message has {len(body) - offset} bytes after its {count} entries")


def decode_message(data: bytes | bytearray | memoryview) -> dict[str, torch.Tensor | JSONValue]:
    """Decode a message into ``{name: value}`` in encoding order; raises CodecError on any defect."""
    out: dict[str, torch.Tensor | JSONValue] = {}
    for name, _kind, vtype, payload in _entries(data):
        if vtype == _TENSOR:
            out[name] = decode_tensor(payload)
            continue
        out[name] = _decode_json(name, payload)
    return out


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not allowed")


def _decode_json(name: str, payload: memoryview) -> JSONValue:
    """A control value: strict JSON (no NaN or Infinity), nested at most MAX_JSON_DEPTH deep."""
    try:
        value = json.loads(bytes(payload), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # Unicode and JSON decode errors are ValueErrors
        raise CodecError(f"entry {name!r}: control value is not valid JSON ({type(err).__name__})") from None
    level, depth = [value], 0
    while level:  # breadth-first, so a deep value cannot exhaust the stack here either
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise CodecError(f"entry {name!r}: control value is nested deeper than {MAX_JSON_DEPTH}")
        level = [
            c
            for v in level
            if isinstance(v, (dict, list))
            for c in (v.values() if isinstance(v, dict) else v)
        ]
    return value


def bytes_by_kind(data: bytes | bytearray | memoryview) -> dict[str, int]:
    """What a received message counts per kind (the same rule as ``encode_message``)."""
    counts = dict.fromkeys(KINDS, 0)
    for _name, kind, _vtype, payload in _entries(data):
        counts[KINDS[kind]] += len(payload)
    counts["control"] += len(data) - sum(counts.values())
    return counts
