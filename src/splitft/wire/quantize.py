"""Compressed tensor formats for what crosses the cut and the adapter exchange.

A compressed tensor travels as one codec tensor entry of dtype uint8 holding a packed payload
(the codec frames, checksums and counts it like any other tensor, so the ledger and the
virtual clock see the bytes actually sent)::

    offset  size      field
    0       4         magic b"SFTq"
    4       1         format code (1 int8, 2 int4, 3 int2, 4 top-k)
    5       1         ndim
    6       4         group size (int formats) or k (top-k), uint32
    10      8 * ndim  shape, uint64 per dim
    then    int formats: one float32 scale per group, then the codes packed 8 / bits per byte
            top-k: a float32 power-of-two scale, k int32 indices (ascending), k float16 values

Formats (``spec`` strings, config.CUT_FORMATS):

* ``fp32`` / ``fp16`` / ``bf16``: the codec's own casts (``wire_dtype``), nothing packed.
* ``int8``: symmetric, one scale per row of the last dimension (per token for activations);
  rows shorter than 64 values share a scale with their neighbours. ``int4`` / ``int2``: a scale
  per 64 consecutive values. Error per value <= the group's absmax / (2 * (2**(bits-1) - 1)).
  Deterministic (round to nearest).
* ``topk:<fraction>``: the ``ceil(fraction * numel)`` largest magnitudes, their values in fp16
  after a power-of-two scale (relative error <= 2**-11); every other value is sent as 0.
  Deterministic (ties are broken by torch.topk, then indices sorted).

A NaN or infinity is a :class:`CodecError` at the sender, never sent; the decoder checks every
length, code and index, so a defective payload is a CodecError too.
"""

from __future__ import annotations

import math
import struct

import torch

from splitft.config_codec import WIRE_DTYPES, topk_fraction
from splitft.errors import NON_FINITE, CodecError
from splitft.wire.codec import WIRE_DTYPES as CAST_DTYPES
from splitft.wire.codec import tensor_header_size

MAGIC = b"SFTq"
_HEAD = struct.Struct("<4sBBI")  # magic, format code, ndim, group size or k
_INT_BITS = {"int8": 8, "int4": 4, "int2": 2}
_CODES = {"int8": 1, "int4": 2, "int2": 3, "topk": 4}
_NAMES = {code: name for name, code in _CODES.items()}
GROUP = 64
"""Values per scale of int4 / int2 (and the shortest row int8 gives its own scale)."""


def is_packed(spec: str) -> bool:
    """Whether ``spec`` packs (int / top-k) rather than casting (fp32 / fp16 / bf16)."""
    return spec not in WIRE_DTYPES


def check_finite(t: torch.Tensor, what: str = "tensor") -> None:
    """A NaN or infinity must never be sent: raise CodecError instead."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise CodecError(f"{what} {NON_FINITE}; refusing to send it")


def _int_group(spec: str, shape: torch.Size | tuple[int, ...]) -> int:
    if spec != "int8":
        return GROUP
    row = shape[-1] if len(shape) else 1
    return max(row, 1) * math.ceil(GROUP / max(row, 1)) if 0 < row < GROUP else max(row, 1)


def packed_size(spec: str, shape: tuple[int, ...] | torch.Size) -> int:
    """Bytes of the packed payload of a tensor of ``shape`` (without the codec's tensor header)."""
    numel = math.prod(shape)
    head = _HEAD.size + 8 * len(shape)
    fraction = topk_fraction(spec)
    if fraction is not None:
        k = min(numel, math.ceil(fraction * numel)) if numel else 0
        return head + 4 + 6 * k
    bits, group = _INT_BITS[spec], _int_group(spec, shape)
    groups = math.ceil(numel / group)
    return head + 4 * groups + math.ceil(groups * group * bits / 8)


def wire_size(spec: str, shape: tuple[int, ...] | torch.Size) -> int:
    """Bytes one tensor of ``shape`` takes as a codec tensor payload in format ``spec``."""
    if not is_packed(spec):
        return tensor_header_size(len(shape)) + math.prod(shape) * CAST_DTYPES[spec].itemsize
    return tensor_header_size(1) + packed_size(spec, shape)


def _header(code: int, shape: torch.Size, param: int) -> bytes:
    return _HEAD.pack(MAGIC, code, len(shape), param) + struct.pack(f"<{len(shape)}Q", *shape)


def _pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2**bits, ``8 // bits`` per byte, first value in the low bits."""
    per = 8 // bits
    codes = codes.reshape(-1, per).to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (codes << shifts).sum(dim=1).to(torch.uint8)


def _unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return ((packed.to(torch.int32)[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)


def _encode_int(t: torch.Tensor, spec: str) -> bytes:
    bits, group = _INT_BITS[spec], _int_group(spec, t.shape)
    qmax = 2 ** (bits - 1) - 1
    flat = t.reshape(-1)
    pad = (-flat.numel()) % group
    rows = (
        torch.nn.functional.pad(flat, (0, pad)).reshape(-1, group) if flat.numel() else flat.reshape(0, group)
    )
    scales = rows.abs().amax(dim=1) / qmax if rows.numel() else rows.new_zeros(0)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.clamp(torch.round(rows / safe[:, None]), -qmax, qmax).to(torch.int32)
    if bits == 8:
        body = q.to(torch.int8).reshape(-1).view(torch.uint8)
    else:
        body = (
            _pack_bits((q + qmax + 1).to(torch.uint8), bits)
            if q.numel()
            else q.new_zeros(0, dtype=torch.uint8)
        )
    return scales.numpy().tobytes() + body.numpy().tobytes()


def _encode_topk(t: torch.Tensor, fraction: float) -> tuple[bytes, int]:
    flat = t.reshape(-1)
    if flat.numel() >= 2**31:
        raise CodecError(f"top-k: {flat.numel()} values exceed int32 indices")
    k = min(flat.numel(), math.ceil(fraction * flat.numel())) if flat.numel() else 0
    idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values if k else flat.new_zeros(0).long()
    values = flat[idx]
    amax = float(values.abs().max()) if k else 0.0
    scale = math.ldexp(1.0, min(max(math.frexp(amax)[1], -126), 127)) if amax > 0 else 1.0
    body = struct.pack("<f", scale) + idx.to(torch.int32).numpy().tobytes()
    return body + (values / scale).to(torch.float16).numpy().tobytes(), k


def pack(t: torch.Tensor, spec: str) -> torch.Tensor:
    """``t`` in format ``spec`` (an int or top-k format) as a 1-D uint8 tensor for the codec."""
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    check_finite(t)
    fraction = topk_fraction(spec)
    if fraction is not None:
        body, k = _encode_topk(t, fraction)
        data = _header(_CODES["topk"], t.shape, k) + body
    else:
        data = _header(_CODES[spec], t.shape, _int_group(spec, t.shape)) + _encode_int(t, spec)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _need(buf: bytes, offset: int, n: int, what: str) -> None:
    if offset + n > len(buf):
        raise CodecError(
            f"packed tensor truncated: {what} needs {n} bytes at offset {offset}, have {len(buf) - offset}"
        )


def _decode_int(buf: bytes, offset: int, shape: tuple[int, ...], bits: int, group: int) -> torch.Tensor:
    numel = math.prod(shape)
    if group < 1:
        raise CodecError(f"packed tensor: group size {group} must be >= 1")
    groups = math.ceil(numel / group)
    nbytes = math.ceil(groups * group * bits / 8)
    _need(buf, offset, 4 * groups + nbytes, "scales and codes")
    if len(buf) != offset + 4 * groups + nbytes:
        raise CodecError(f"packed tensor has {len(buf) - offset - 4 * groups - nbytes} bytes after its data")
    scales = (
        torch.frombuffer(bytearray(buf[offset : offset + 4 * groups]), dtype=torch.float32)
        if groups
        else torch.zeros(0)
    )
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        raise CodecError("packed tensor: a scale is negative, NaN or infinite")
    raw = (
        torch.frombuffer(bytearray(buf[offset + 4 * groups :]), dtype=torch.uint8)
        if nbytes
        else torch.zeros(0, dtype=torch.uint8)
    )
    qmax = 2 ** (bits - 1) - 1
    q = raw.view(torch.int8).to(torch.int32) if bits == 8 else _unpack_bits(raw, bits) - (qmax + 1)
    if q.numel() and int(q.abs().max()) > qmax:
        raise CodecError(f"packed tensor: a code is outside [-{qmax}, {qmax}]")
    values = q.reshape(groups, group).float() * scales[:, None]
    return values.reshape(-1)[:numel].reshape(shape)


def _decode_topk(buf: bytes, offset: int, shape: tuple[int, ...], k: int) -> torch.Tensor:
    numel = math.prod(shape)
    if k > numel:
        raise CodecError(f"packed top-k: k = {k} exceeds the {numel} values of shape {shape}")
    _need(buf, offset, 4 + 6 * k, "top-k scale, indices and values")
    if len(buf) != offset + 4 + 6 * k:
        raise CodecError(f"packed tensor has {len(buf) - offset - 4 - 6 * k} bytes after its data")
    (scale,) = struct.unpack_from("<f", buf, offset)
    if not (math.isfinite(scale) and scale > 0):
        raise CodecError(f"packed top-k: invalid scale {scale}")
    out = torch.zeros(numel, dtype=torch.float32)
    if k:
        idx = torch.frombuffer(bytearray(buf[offset + 4 : offset + 4 + 4 * k]), dtype=torch.int32).long()
        if int(idx.min()) < 0 or int(idx.max()) >= numel or (k > 1 and not bool((idx[1:] > idx[:-1]).all())):
            raise CodecError("packed top-k: indices out of range or not strictly ascending")
        values = torch.frombuffer(bytearray(buf[offset + 4 + 4 * k :]), dtype=torch.float16).float()
        if not bool(torch.isfinite(values).all()):
            raise CodecError("packed top-k: a value is NaN or infinite")
        out[idx] = values * scale
    return out.reshape(shape)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The float32 tensor a :func:`pack` payload stands for; CodecError on any defect."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise CodecError(
            f"packed tensor must be 1-D uint8, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    buf = packed.numpy().tobytes()
    _need(buf, 0, _HEAD.size, "header")
    magic, code, ndim, param = _HEAD.unpack_from(buf)
    if magic != MAGIC or code not in _NAMES:
        raise CodecError(f"not a packed SplitFT tensor: magic {magic!r}, format code {code}")
    _need(buf, _HEAD.size, 8 * ndim, "shape")
    shape = struct.unpack_from(f"<{ndim}Q", buf, _HEAD.size)
    if math.prod(shape) > 2**31:
        raise CodecError(f"packed tensor: shape {shape} is too large")
    offset, name = _HEAD.size + 8 * ndim, _NAMES[code]
    if name == "topk":
        return _decode_topk(buf, offset, shape, param)
    return _decode_int(buf, offset, shape, _INT_BITS[name], param)


def encode_value(t: torch.Tensor, spec: str) -> tuple[torch.Tensor, str | None]:
    """What to put in a codec Entry for ``t`` in format ``spec``: (value, wire_dtype)."""
    if is_packed(spec):
        return pack(t, spec), None
    check_finite(t)
    return t, spec


def decode_value(value: torch.Tensor) -> torch.Tensor:
    """A received float tensor as it is, or the tensor a packed payload stands for."""
    return unpack(value) if value.dtype == torch.uint8 else value


def as_received(t: torch.Tensor, spec: str) -> torch.Tensor:
    """What the receiver decodes when ``t`` is sent in format ``spec`` (float32, on ``t``'s device)."""
    if is_packed(spec):
        return unpack(pack(t, spec)).to(t.device)
    return t.detach().to(CAST_DTYPES[spec]).to(torch.float32)
