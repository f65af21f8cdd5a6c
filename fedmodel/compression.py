"""DP-safe update compression: a site encodes its *noised* update; the server decodes it.

Why it is free in privacy terms: DP-SGD's guarantee covers the trained weights a site releases.
Anything computed from them, the public global model they started from and randomness
independent of the training data is post-processing, and post-processing cannot weaken a DP
guarantee. The encoder sees only ``trained - reference`` (the noised update) and a random stream
of its own (``seed``, a stream distinct from DP-SGD's noise: a correlated stream would not be
independent randomness). Compressing the clipped per-example gradients *before* the noise is
added would change the sensitivity the noise is calibrated to; :class:`CompressionConfig`
refuses it and this module has no such path.

Encoding, per floating-point tensor of the update ``d = trained - reference``:

* all zeros (a frozen tensor, e.g. MiniLM's public trunk): nothing is sent, the server keeps
  its own global tensor;
* ``top_k``: only the ``ceil(top_k * numel)`` entries of largest ``|d|`` are kept (int32
  indices sent alongside); the rest count as zero (biased, by design: it is a sparsifier);
* ``int8`` / ``int4``: one float scale per tensor, ``s = max|d| / L`` with ``L = 127`` / ``7``,
  and stochastic rounding ``q = floor(d / s + u)``, ``u ~ U[0, 1)``: ``E[q s] = d`` (unbiased)
  and ``|q s - d| < s``. int4 codes are packed two per byte.
* ``none`` (with ``top_k``): the kept values as float32.

Non-floating tensors (integer buffers) are sent as they are. The scales, kinds and counts
travel in one JSON tensor (:data:`META_TENSOR`) inside the same signed, possibly sealed,
payload (:func:`server.wire.update_payload`), so the relay can change none of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from fedmodel.config import CompressionConfig
from fedmodel.errors import FedmodelError

META_TENSOR = "__fedmodel_compression__"  # a dunder name cannot collide with a parameter
INDEX_PREFIX = "__fedmodel_topk__/"  # top-k indices of tensor NAME: INDEX_PREFIX + NAME
LEVELS = {"int8": 127, "int4": 7}
FORMAT_VERSION = 1
MAX_META_BYTES = 4 * 2**20  # one small record per tensor; anything larger is refused unread
SAME, RAW, CODED = "same", "raw", "coded"


class CompressionError(FedmodelError):
    """A compressed update that cannot be decoded against the global model."""


def compress_update(
    trained: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    cfg: CompressionConfig,
    seed: int,
) -> dict[str, Tensor]:
    """The tensors a site puts in its payload instead of ``trained``: coded noised updates plus
    the :data:`META_TENSOR` record. ``reference``: the weights training started from."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, tensor in trained.items():
        entries[name] = _encode_one(name, tensor, reference[name], cfg, generator, out)
    meta = {
        "version": FORMAT_VERSION,
        "method": cfg.method,
        "top_k": cfg.top_k,
        "stage": cfg.stage,
        "tensors": entries,
    }
    out[META_TENSOR] = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
    return out


def _encode_one(
    name: str,
    tensor: Tensor,
    base: Tensor,
    cfg: CompressionConfig,
    generator: torch.Generator,
    out: dict[str, Tensor],
) -> dict[str, Any]:
    """Write tensor ``name``'s code into ``out``; return its metadata."""
    if not tensor.is_floating_point():
        out[name] = tensor.detach().cpu().contiguous()
        return {"kind": RAW}
    delta = (tensor.detach().cpu().float() - base.detach().cpu().float()).flatten()
    if not bool(delta.any()):
        return {"kind": SAME}
    values = delta
    if cfg.top_k is not None:
        k = max(1, math.ceil(cfg.top_k * delta.numel()))
        index = torch.topk(delta.abs(), k, sorted=False).indices.sort().values
        values = delta[index]
        out[INDEX_PREFIX + name] = index.to(torch.int32)
    entry: dict[str, Any] = {"kind": CODED, "count": int(values.numel())}
    if cfg.method == "none":
        out[name] = values.contiguous()
        return entry
    codes, scale = quantize(values, LEVELS[cfg.method], generator)
    out[name] = pack_int4(codes) if cfg.method == "int4" else codes
    entry["scale"] = scale
    return entry


def quantize(values: Tensor, levels: int, generator: torch.Generator) -> tuple[Tensor, float]:
    """Stochastic rounding to ``[-levels, levels]`` with one scale: ``(int8 codes, scale)``.

    ``floor(x / s + u)`` with ``u ~ U[0, 1)`` is ``ceil`` with probability ``frac(x / s)``, so
    its mean is ``x / s`` exactly; ``s = max|x| / levels`` keeps every code in range.
    """
    peak = float(values.abs().max()) if values.numel() else 0.0
    scale = peak / levels if peak > 0 else 1.0
    noise = torch.rand(values.shape, generator=generator, dtype=torch.float64)
    codes = torch.floor(values.double() / scale + noise).clamp_(-levels, levels)
    return codes.to(torch.int8), scale


def dequantize(codes: Tensor, scale: float) -> Tensor:
    return codes.to(torch.float64).mul_(scale).float()


def pack_int4(codes: Tensor) -> Tensor:
    """Codes in ``[-7, 7]``, two per byte (low nibble first); an odd count is padded."""
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, torch.zeros(1, dtype=torch.uint8)])
    pairs = nibbles.view(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).contiguous()


def unpack_int4(packed: Tensor, count: int) -> Tensor:
    """Inverse of :func:`pack_int4`: ``count`` int8 codes."""
    low, high = packed & 0x0F, packed >> 4
    nibbles = torch.stack([low, high], dim=1).flatten()[:count]
    return (nibbles.to(torch.int16) - 8).to(torch.int8)


# --- the server's side ---------------------------------------------------------------------------


def is_compressed(tensors: Mapping[str, Tensor]) -> bool:
    return META_TENSOR in tensors


def decompress_update(
    tensors: Mapping[str, Tensor], reference: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], CompressionConfig]:
    """The site's trained weights, rebuilt as ``reference + decoded update``, and how they were
    coded. Every length, index and scale is checked against ``reference`` (the global model
    the server sent); anything that does not fit raises :class:`CompressionError`."""
    meta = _read_meta(tensors.get(META_TENSOR))
    entries = meta["tensors"]
    cfg = _config_of(meta)
    if set(entries) != set(reference):
        odd = sorted(set(entries) ^ set(reference))[:3]
        raise CompressionError(f"compressed update's tensor names differ from the model's: {odd}")
    expected = {META_TENSOR}
    out: dict[str, Tensor] = {}
    for name, entry in entries.items():
        out[name], used = _decode_one(name, entry, tensors, reference[name], cfg)
        expected |= used
    if set(tensors) != expected:
        extra = sorted(set(tensors) - expected)[:3]
        raise CompressionError(f"compressed update carries unexpected tensors {extra}")
    return out, cfg


def _read_meta(record: Tensor | None) -> dict[str, Any]:
    if record is None or record.dim() != 1 or record.dtype != torch.uint8:
        raise CompressionError("compressed update lacks its coding record")
    if record.numel() > MAX_META_BYTES:
        raise CompressionError("compressed update's coding record is too large")
    try:
        meta = json.loads(record.numpy().tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise CompressionError("compressed update's coding record is not JSON") from None
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        raise CompressionError("compressed update's coding record has an unknown version")
    if not isinstance(meta.get("tensors"), dict):
        raise CompressionError("compressed update's coding record lists no tensors")
    return meta


def _config_of(meta: Mapping[str, Any]) -> CompressionConfig:
    """The coding the payload claims, validated as a config: a before-noise claim is refused."""
    try:
        return CompressionConfig(
            method=meta.get("method"), top_k=meta.get("top_k"), stage=meta.get("stage")
        )
    except ValidationError as err:
        reason = err.errors()[0]["msg"]
        raise CompressionError(f"compressed update's coding is not allowed: {reason}") from None


def _decode_one(
    name: str,
    entry: Any,
    tensors: Mapping[str, Tensor],
    base: Tensor,
    cfg: CompressionConfig,
) -> tuple[Tensor, set[str]]:
    """Tensor ``name`` rebuilt, and the payload tensors it used."""
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind == SAME:
        return base.clone(), set()
    if kind == RAW:
        raw = _tensor(tensors, name)
        if raw.shape != base.shape or raw.dtype != base.dtype:
            raise CompressionError(f"{name}: raw tensor does not match the model's")
        return raw, {name}
    if kind != CODED or not base.is_floating_point():
        raise CompressionError(f"{name}: unknown coding {kind!r}")
    count = entry.get("count")
    numel = base.numel()
    if not isinstance(count, int) or not 1 <= count <= numel:
        raise CompressionError(f"{name}: coded count {count!r} does not fit {numel} entries")
    values = _values(name, entry, _tensor(tensors, name), count, cfg)
    delta = torch.zeros(numel, dtype=torch.float32)
    used = {name}
    if cfg.top_k is None:
        if count != numel:
            raise CompressionError(f"{name}: {count} coded values for {numel} entries")
        delta = values
    else:
        index = _tensor(tensors, INDEX_PREFIX + name)
        if index.dtype != torch.int32 or index.shape != (count,):
            raise CompressionError(f"{name}: top-k indices do not match the coded values")
        if count and (int(index.min()) < 0 or int(index.max()) >= numel):
            raise CompressionError(f"{name}: top-k index out of range")
        delta[index.long()] = values
        used.add(INDEX_PREFIX + name)
    rebuilt = base.detach().cpu().float().flatten() + delta
    return rebuilt.view(base.shape).to(base.dtype), used


def _values(
    name: str, entry: Mapping[str, Any], coded: Tensor, count: int, cfg: CompressionConfig
) -> Tensor:
    """The ``count`` decoded float32 values of a coded tensor."""
    if cfg.method == "none":
        if coded.dtype != torch.float32 or coded.shape != (count,):
            raise CompressionError(f"{name}: float values do not match their count")
        return coded
    scale = entry.get("scale")
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not math.isfinite(scale):
        raise CompressionError(f"{name}: missing or non-finite scale")
    if scale <= 0:
        raise CompressionError(f"{name}: scale must be positive")
    if cfg.method == "int4":
        if coded.dtype != torch.uint8 or coded.shape != ((count + 1) // 2,):
            raise CompressionError(f"{name}: int4 codes do not match their count")
        codes = unpack_int4(coded, count)
    else:
        if coded.dtype != torch.int8 or coded.shape != (count,):
            raise CompressionError(f"{name}: int8 codes do not match their count")
        codes = coded
    if int(codes.abs().max()) > LEVELS[cfg.method]:
        raise CompressionError(f"{name}: code outside the {cfg.method} range")
    return dequantize(codes, float(scale))


def _tensor(tensors: Mapping[str, Tensor], name: str) -> Tensor:
    tensor = tensors.get(name)
    if tensor is None:
        raise CompressionError(f"{name}: missing from the compressed update")
    return tensor


def round_trip(
    trained: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    cfg: CompressionConfig,
    seed: int,
) -> dict[str, Tensor]:
    """What the server would rebuild from this site's compressed update: used under SecAgg+,
    where the site masks the dequantised update itself (no single update is ever decoded by
    the server), so every aggregate is a mean of exactly these values."""
    if not cfg.active:
        return dict(trained)
    decoded, _ = decompress_update(compress_update(trained, reference, cfg, seed), reference)
    return decoded


def payload_bytes(tensors: Mapping[str, Any]) -> int:
    """Bytes of a state dict's tensor data (no headers): for benchmarks and records."""
    return sum(int(t.numel()) * t.element_size() for t in tensors.values())
