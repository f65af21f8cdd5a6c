"""Dynamically quantised (int8) copies of an exported model, stored without pickle.

torch's own dynamic quantisation (``torch.ao.quantization.quantize_dynamic``) replaces every
``nn.Linear`` (and LSTM/GRU) with a version whose weights are int8 with one per-tensor scale;
activations are quantised on the fly at each call, so no calibration data is needed and no
row of anyone's data is read. Convolutions, GroupNorm and embeddings stay float32: dynamic
quantisation has no Conv or GroupNorm kernels (static quantisation would need calibration rows
and fused modules). For the MNIST CNN that means its two Linear layers (about two thirds of the
weights) shrink four-fold and its two convolutions do not; for MiniLM every attention and
feed-forward projection is int8 and the word embeddings (half the model) stay float.

**How it is stored.** A quantised module's ``state_dict`` holds quantised tensors and a packed
``(weight, bias)`` tuple, neither of which safetensors (or any non-pickle format) can hold, and
``torch.save`` would pickle. So each packed weight is split into plain tensors - the int8
values, its scale and zero point - under ``<module>.weight.int8/.scale/.zero_point`` plus the
float bias; the sidecar names the quantised modules. Loading rebuilds the float architecture
from the sidecar, quantises it the same way (so the module types come from torch, never from
the file), puts the quantised weights back together with torch's own constructor and loads them
through the modules' own ``load_state_dict``, strictly. Storing the float weights plus a flag
and quantising at load would have been simpler, but the point of the export is a smaller file
to ship to a modest machine, so the int8 values are what goes on disk.

``torch.ao.quantization`` is deprecated in torch 2.13 in favour of torchao (a separate
package, CPU kernels through torch.compile); it still ships and works, so it is used here, and
every call to it is in this one module.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fedmodel.training.checkpoint import save_weights
from fedmodel.training.errors import TrainingError

QUANTIZATION_FORMAT = "torch-dynamic-int8/1"
QUANTIZED_TYPES = (nn.Linear, nn.LSTM, nn.GRU)
PACKED = "._packed_params._packed_params"
PACKED_DTYPE = "._packed_params.dtype"
INT8, SCALE, ZERO_POINT, BIAS = ".weight.int8", ".weight.scale", ".weight.zero_point", ".bias"


class QuantizationError(TrainingError):
    """A model or file that cannot be quantised or loaded as quantised."""


@contextmanager
def _torch_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (one per call) for the calls made here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        yield


def quantize_model(model: nn.Module) -> nn.Module:
    """An int8 dynamically quantised copy of ``model`` (eval mode, CPU); ``model`` is unchanged."""
    float_model = _cpu_copy(model)
    with _torch_ao():
        quantized = torch.ao.quantization.quantize_dynamic(
            float_model, {nn.Linear}, dtype=torch.qint8
        )
    if not quantized_modules(quantized):
        raise QuantizationError("quantize: the model has no Linear layer to quantise")
    return quantized.eval()


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to("cpu").eval()


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the Linear modules dynamic quantisation replaced (int8 packed weights)."""
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    return [name for name, m in model.named_modules() if isinstance(m, dynamic)]


def float_modules(model: nn.Module) -> list[str]:
    """Names of leaf modules with weights that stayed float (convolutions, norms, embeddings)."""
    return [
        name
        for name, m in model.named_modules()
        if not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def to_plain_tensors(quantized: nn.Module) -> dict[str, Tensor]:
    """The quantised model's state as plain tensors safetensors can hold (see the module doc)."""
    out: dict[str, Tensor] = {}
    for key, value in quantized.state_dict().items():
        if key.endswith(PACKED_DTYPE):
            continue  # always qint8 here; the sidecar says so
        if key.endswith(PACKED):
            prefix = key[: -len(PACKED)]
            weight, bias = value
            if weight.qscheme() != torch.per_tensor_affine:
                raise QuantizationError(f"quantize: {prefix}: unsupported {weight.qscheme()}")
            out[prefix + INT8] = weight.int_repr()
            out[prefix + SCALE] = torch.tensor(weight.q_scale(), dtype=torch.float64)
            out[prefix + ZERO_POINT] = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
            if bias is not None:
                out[prefix + BIAS] = bias
            continue
        if not isinstance(value, Tensor) or value.is_quantized:
            raise QuantizationError(f"quantize: {key}: cannot store {type(value).__name__}")
        out[key] = value
    return out


def from_plain_tensors(
    state: Mapping[str, Tensor], modules: list[str], source: str
) -> dict[str, Any]:
    """Inverse of ``to_plain_tensors``: the state dict the quantised modules load themselves."""
    out: dict[str, Any] = dict(state)
    for prefix in modules:
        try:
            values = out.pop(prefix + INT8)
            scale, zero_point = out.pop(prefix + SCALE), out.pop(prefix + ZERO_POINT)
        except KeyError:
            raise QuantizationError(f"{source}: no int8 weight for module {prefix!r}") from None
        if values.dtype != torch.int8:
            raise QuantizationError(f"{source}: {prefix}: weight is {values.dtype}, not int8")
        with _torch_ao():
            weight = torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero_point))
        out[prefix + PACKED] = (weight, out.pop(prefix + BIAS, None))
        out[prefix + PACKED_DTYPE] = torch.qint8
    return out


def load_quantized_state(
    model: nn.Module, meta: Mapping[str, Any], state: Mapping[str, Tensor], source: str
) -> nn.Module:
    """Quantise the freshly built float ``model`` as the export did, then load ``state``."""
    info = meta.get("quantization") or {}
    if info.get("format") != QUANTIZATION_FORMAT:
        raise QuantizationError(f"{source}: unknown quantisation {info.get('format')!r}")
    quantized = quantize_model(model)
    modules = quantized_modules(quantized)
    if sorted(modules) != sorted(info.get("modules") or []):
        raise QuantizationError(f"{source}: quantised modules do not match the model")
    loadable = OrderedDict(from_plain_tensors(state, modules, source))
    # the modules' own loaders read their format version from the metadata a state_dict carries
    loadable._metadata = getattr(quantized.state_dict(), "_metadata", {})  # type: ignore[attr-defined]
    try:
        with _torch_ao():
            quantized.load_state_dict(loadable, strict=True)
    except (RuntimeError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise QuantizationError(f"{source}: weights do not fit the model: {first}") from None
    return quantized.eval()


def export_quantized(
    out_dir: Path, model: nn.Module, meta: Mapping[str, Any], source_sha256: str
) -> Path:
    """Write ``out_dir/model.safetensors`` (int8 Linear weights) and its sidecar."""
    from fedmodel.training.export import WEIGHTS_NAME

    quantized = quantize_model(model)
    info = {
        "format": QUANTIZATION_FORMAT,
        "method": "torch.ao.quantization.quantize_dynamic (weights int8 per tensor, "
        "activations quantised at run time)",
        "modules": quantized_modules(quantized),
        "float_modules": float_modules(quantized),
        "source_weights_sha256": source_sha256,
        "torch": torch.__version__,
    }
    sidecar = {k: v for k, v in meta.items() if k not in _CHECKPOINT_KEYS}
    return save_weights(
        out_dir / WEIGHTS_NAME, to_plain_tensors(quantized), {**sidecar, "quantization": info}
    )


_CHECKPOINT_KEYS = ("format", "weights_file", "weights_sha256")
