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

Non-floating tensors (integer buffers) are sent as they are. The coded values of all tensors
travel back to back in one flat tensor (:data:`CODES_TENSOR`), with one float64 scale per tensor
(:data:`SCALES_TENSOR`) and the top-k indices (:data:`INDEX_TENSOR`): one safetensors header
entry each instead of one per layer, which matters for a small model. Names, kinds and counts
travel in one compact JSON tensor (:data:`META_TENSOR`). All of it is inside the same signed,
possibly sealed, payload (:func:`server.wire.update_payload`), so the relay can change none of it.
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

META_TENSOR = "__fedmodel_compression__"  # dunder names cannot collide with a parameter
CODES_TENSOR = "__fedmodel_codes__"  # every coded tensor's values, back to back
SCALES_TENSOR = "__fedmodel_scales__"  # float64, one per coded tensor (int8/int4)
INDEX_TENSOR = "__fedmodel_topk__"  # int32 top-k indices, back to back
LEVELS = {"int8": 127, "int4": 7}
FORMAT_VERSION = 2
MAX_META_BYTES = 4 * 2**20  # one small record per tensor; anything larger is refused unread
SAME, RAW, CODED = "s", "r", "c"


class CompressionError(FedmodelError):
    """A compressed update that cannot be decoded against the global model."""


def compress_update(
    trained: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    cfg: CompressionConfig,
    seed: int,
) -> dict[str, Tensor]:
    """The tensors a site puts in its payload instead of ``trained``: the coded noised update,
    packed into a few flat tensors (one safetensors header entry each, not one per layer), and
    the :data:`META_TENSOR` record. ``reference``: the weights training started from."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    entries: list[list[Any]] = []
    values: list[Tensor] = []
    indices: list[Tensor] = []
    for name in sorted(trained):  # one order, so a seed gives one coding whatever the dict's
        tensor = trained[name]
        kind, kept, index = _select(tensor, reference[name], cfg)
        entries.append([name, kind, 0 if kept is None else int(kept.numel())])
        if kind == RAW:
            out[name] = tensor.detach().cpu().contiguous()
        if kept is not None:
            values.append(kept)
        if index is not None:
            indices.append(index)
    out |= _packed(values, indices, cfg, generator)
    meta = {"v": FORMAT_VERSION, "method": cfg.method, "top_k": cfg.top_k, "stage": cfg.stage}
    meta["tensors"] = entries
    record = json.dumps(meta, separators=(",", ":")).encode()
    out[META_TENSOR] = torch.frombuffer(bytearray(record), dtype=torch.uint8)
    return out


def _select(
    tensor: Tensor, base: Tensor, cfg: CompressionConfig
) -> tuple[str, Tensor | None, Tensor | None]:
    """(kind, the update values to code, their top-k indices) of one tensor."""
    if not tensor.is_floating_point():
        return RAW, None, None
    delta = (tensor.detach().cpu().float() - base.detach().cpu().float()).flatten()
    if not bool(delta.any()):
        return SAME, None, None
    if cfg.top_k is None:
        return CODED, delta, None
    k = max(1, math.ceil(cfg.top_k * delta.numel()))
    index = torch.topk(delta.abs(), k, sorted=False).indices.sort().values
    return CODED, delta[index], index.to(torch.int32)


def _packed(
    values: list[Tensor], indices: list[Tensor], cfg: CompressionConfig, gen: torch.Generator
) -> dict[str, Tensor]:
    """The flat code, scale and index tensors for the coded tensors, in order."""
    if not values:
        return {}
    out: dict[str, Tensor] = {}
    if indices:
        out[INDEX_TENSOR] = torch.cat(indices)
    if cfg.method == "none":
        out[CODES_TENSOR] = torch.cat(values).contiguous()
        return out
    coded = [quantize(v, LEVELS[cfg.method], gen) for v in values]
    codes = torch.cat([c for c, _ in coded])
    out[CODES_TENSOR] = pack_int4(codes) if cfg.method == "int4" else codes
    out[SCALES_TENSOR] = torch.tensor([s for _, s in coded], dtype=torch.float64)
    return out


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
    coded. Every name, count, index, scale and code is checked against ``reference`` (the
    global model the server sent) before it is used; anything that does not fit raises
    :class:`CompressionError`."""
    meta = _read_meta(tensors.get(META_TENSOR))
    cfg = _config_of(meta)
    entries = _entries(meta["tensors"], reference, cfg)
    coded = [(name, count) for name, kind, count in entries if kind == CODED]
    raw = {name for name, kind, _ in entries if kind == RAW}
    values = _values(tensors, [c for _, c in coded], cfg)
    index = _indices(tensors, coded, reference, cfg)
    expected = {META_TENSOR, *raw, *(_flat_names(cfg) if coded else ())}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[:3]
        raise CompressionError(f"compressed update's tensors are not the ones it lists: {odd}")
    out: dict[str, Tensor] = {}
    offset = 0
    for name, kind, count in entries:
        base = reference[name]
        if kind == SAME:
            out[name] = base.clone()
        elif kind == RAW:
            out[name] = _raw(name, tensors[name], base)
        else:
            delta = _delta(values[offset : offset + count], index, offset, base.numel())
            out[name] = (base.detach().cpu().float().flatten() + delta).view(base.shape)
            out[name] = out[name].to(base.dtype)
            offset += count
    return out, cfg


def _flat_names(cfg: CompressionConfig) -> tuple[str, ...]:
    names = (CODES_TENSOR,) + ((SCALES_TENSOR,) if cfg.method != "none" else ())
    return names + ((INDEX_TENSOR,) if cfg.top_k is not None else ())


def _read_meta(record: Tensor | None) -> dict[str, Any]:
    if record is None or record.dim() != 1 or record.dtype != torch.uint8:
        raise CompressionError("compressed update lacks its coding record")
    if record.numel() > MAX_META_BYTES:
        raise CompressionError("compressed update's coding record is too large")
    try:
        meta = json.loads(record.numpy().tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise CompressionError("compressed update's coding record is not JSON") from None
    if not isinstance(meta, dict) or meta.get("v") != FORMAT_VERSION:
        raise CompressionError("compressed update's coding record has an unknown version")
    if not isinstance(meta.get("tensors"), list):
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


def _entries(
    listed: list[Any], reference: Mapping[str, Tensor], cfg: CompressionConfig
) -> list[tuple[str, str, int]]:
    """``(name, kind, count)`` per model tensor, each name once, each count possible."""
    out = []
    for item in listed:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise CompressionError("compressed update's coding record has a malformed entry")
        name, kind, count = item
        base = reference.get(name)
        if base is None:
            raise CompressionError(f"{name}: not a tensor of the model")
        if kind not in (SAME, RAW, CODED) or (kind == CODED and not base.is_floating_point()):
            raise CompressionError(f"{name}: unknown coding {kind!r}")
        whole = kind == CODED and cfg.top_k is None
        if kind == CODED and (
            not isinstance(count, int) or not 1 <= count <= base.numel() or
            (whole and count != base.numel())
        ):  # fmt: skip
            raise CompressionError(f"{name}: coded count {count!r} does not fit its tensor")
        out.append((name, kind, int(count) if kind == CODED else 0))
    names = [name for name, _, _ in out]
    if len(set(names)) != len(names) or set(names) != set(reference):
        odd = sorted(set(names) ^ set(reference))[:3]
        raise CompressionError(f"compressed update's tensor names differ from the model's: {odd}")
    return out


def _values(tensors: Mapping[str, Tensor], counts: list[int], cfg: CompressionConfig) -> Tensor:
    """Every coded tensor's float32 values, back to back."""
    total = sum(counts)
    if not counts:
        return torch.zeros(0)
    coded = _tensor(tensors, CODES_TENSOR)
    if cfg.method == "none":
        if coded.dtype != torch.float32 or coded.shape != (total,):
            raise CompressionError("float values do not match their counts")
        return coded
    if cfg.method == "int4":
        if coded.dtype != torch.uint8 or coded.shape != ((total + 1) // 2,):
            raise CompressionError("int4 codes do not match their counts")
        codes = unpack_int4(coded, total)
    else:
        if coded.dtype != torch.int8 or coded.shape != (total,):
            raise CompressionError("int8 codes do not match their counts")
        codes = coded
    if int(codes.abs().max()) > LEVELS[cfg.method]:
        raise CompressionError(f"a code outside the {cfg.method} range")
    scales = _tensor(tensors, SCALES_TENSOR)
    if scales.dtype != torch.float64 or scales.shape != (len(counts),):
        raise CompressionError("scales do not match the coded tensors")
    if not bool(torch.isfinite(scales).all()) or bool((scales <= 0).any()):
        raise CompressionError("a scale is non-finite or not positive")
    per_value = torch.repeat_interleave(scales, torch.tensor(counts))
    return (codes.to(torch.float64) * per_value).float()


def _indices(
    tensors: Mapping[str, Tensor],
    coded: list[tuple[str, int]],
    reference: Mapping[str, Tensor],
    cfg: CompressionConfig,
) -> Tensor | None:
    """The top-k indices, back to back, each checked against its own tensor's size."""
    if cfg.top_k is None or not coded:
        return None
    index = _tensor(tensors, INDEX_TENSOR)
    counts = [count for _, count in coded]
    if index.dtype != torch.int32 or index.shape != (sum(counts),):
        raise CompressionError("top-k indices do not match the coded values")
    limits = torch.repeat_interleave(
        torch.tensor([reference[name].numel() for name, _ in coded]), torch.tensor(counts)
    )
    if bool((index < 0).any()) or bool((index.long() >= limits).any()):
        raise CompressionError("a top-k index is out of range")
    return index.long()


def _delta(values: Tensor, index: Tensor | None, offset: int, numel: int) -> Tensor:
    if index is None:
        return values
    delta = torch.zeros(numel, dtype=torch.float32)
    delta[index[offset : offset + values.numel()]] = values
    return delta


def _raw(name: str, raw: Tensor, base: Tensor) -> Tensor:
    if raw.shape != base.shape or raw.dtype != base.dtype:
        raise CompressionError(f"{name}: raw tensor does not match the model's")
    return raw


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
