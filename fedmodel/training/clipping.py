"""Per-sample gradient clipping that is cheaper than Opacus' defaults on CPU.

Two pieces live here:

* ``conv2d_norm_sample``: a ghost-clipping norm sampler for ``nn.Conv2d``. Opacus 1.6 ships
  norm samplers for ``Linear`` and ``Embedding`` only, so under ``grad_sample_mode="ghost"`` a
  convolution falls back to materialising and storing per-sample gradients. Registering this
  sampler (``register_conv_norm_sampler``) gives convolutions a direct norm computation.

* ``BookKeepingClipper`` ("fast" clipping): the book-keeping trick of Bu et al. (2023). Opacus'
  ghost clipping needs two backward passes (one for per-sample norms, one for the re-weighted
  loss) and its first pass computes weight gradients only to throw them away. Here a single
  ``torch.autograd.grad`` call asks only for the gradients of each trainable layer's *output*,
  so autograd skips every weight gradient; per-sample norms and then the clipped, summed weight
  gradients are computed from the stored activations and output gradients. The result is
  exactly ``sum_i min(1, C / ||g_i||) g_i`` - the same quantity Opacus' ``DPOptimizer`` builds -
  written to ``p.grad`` for ``DPOptimizerFastGradientClipping`` to noise and average.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.grad_sample import GradSampleModule, register_grad_sampler, register_norm_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleHooksFastGradientClipping,
)
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.tensor_utils import unfold2d
from torch import Tensor, nn
from torch.nn import functional as F

from fedmodel.training.errors import TrainingError

# Sequence Linear layers: per-sample weight gradients are materialised only when one example's
# gradient fits in cache (<= 2**18 elements, 1 MiB fp32) and the batch's stays small; past that
# the pass is memory-bound and the ghost (Gram-matrix) norm is faster. Measured on a 2-core CPU
# for MiniLM (T=64, batch 32): 384x384 attention weights 1.8x faster materialised, 384x1536 FFN
# weights 2.2x faster with Gram matrices.
PER_EXAMPLE_ELEMENTS_LIMIT = 2**18
PER_SAMPLE_BYTES_LIMIT = 256 * 2**20
CLIP_EPS = 1e-6  # the same guard Opacus adds to the norm before dividing


def _has_own_trainable_params(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def _simple_conv(layer: nn.Conv2d) -> bool:
    """Convolutions the unfold fast path handles exactly (zero padding, no groups)."""
    return layer.groups == 1 and layer.padding_mode == "zeros"


def conv2d_weight_grad_sample(layer: nn.Conv2d, activations: Tensor, backprops: Tensor) -> Tensor:
    """Per-sample weight gradients ``[B, out, in*kh*kw]`` of a plain convolution via unfold + bmm.

    ``unfold2d`` is Opacus' strided-view im2col, measured ~2x faster than ``F.unfold`` here. It
    needs a contiguous channels-first input (see ``conv_grad_sample``).
    """
    cols = unfold2d(
        activations.contiguous(),
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        stride=layer.stride,
        dilation=layer.dilation,
    )  # [B, in*kh*kw, T]
    return torch.bmm(backprops.flatten(2), cols.transpose(1, 2))


def _channels_last_cols(layer: nn.Conv2d, activations: Tensor) -> Tensor:
    """im2col as ``[B, T, kh*kw*in]`` (kernel offset major, input channel minor).

    Read from a channels-last view, each patch row copies ``kw * in`` contiguous floats, where
    the channels-first ``unfold2d`` gathers single elements ``stride`` apart: measured 2x faster
    for fedmodel's second CNN convolution (16 channels, 4x4), no faster with one input channel.
    """
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = layer.padding  # type: ignore[misc]  (_simple_conv: numeric zero padding)
    dh, dw = layer.dilation
    x = activations.permute(0, 2, 3, 1)  # [B, H, W, in]; a view until padded or made contiguous
    x = F.pad(x, (0, 0, pw, pw, ph, ph)) if ph or pw else x.contiguous()
    n, height, width, channels = x.shape
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    s_n, s_h, s_w, s_c = x.stride()
    patches = x.as_strided(
        (n, out_h, out_w, kh, kw, channels), (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c)
    )
    return patches.reshape(n, out_h * out_w, kh * kw * channels)


def _conv_terms(layer: nn.Conv2d, a: Tensor, g: Tensor) -> _LayerGrads:
    """Plain convolutions: per-sample weight gradients materialised (the Gram form costs
    ``T^2 (d_in + d_out)`` against ``T d_in d_out``: far more for early, wide feature maps).
    Layers with several input channels use the channels-last im2col (``_channels_last_cols``);
    their per-sample gradients are then ``[B, out, kh, kw, in]`` and only the clipped sum, one
    tensor the size of the weight, is permuted back."""
    grads: dict[nn.Parameter, Tensor] = {}
    channels_last = layer.in_channels > 1 and not isinstance(layer.padding, str)
    if layer.weight.requires_grad:
        a = _as_dtype(a, g.dtype)
        if channels_last:
            ws = torch.bmm(g.flatten(2), _channels_last_cols(layer, a))
        else:
            ws = conv2d_weight_grad_sample(layer, a, g)
        grads[layer.weight] = ws
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g.sum(dim=(2, 3))
    terms = _per_sample_terms(grads)
    if not channels_last or not layer.weight.requires_grad:
        return terms  # sums in the weight's own order; backward views them as the weight
    out_c, in_c, kh, kw = layer.weight.shape

    def clipped(coef: Tensor) -> dict[nn.Parameter, Tensor]:
        sums = terms.clipped(coef)
        w = sums[layer.weight].view(out_c, kh, kw, in_c).permute(0, 3, 1, 2)
        return {**sums, layer.weight: w.contiguous()}

    return _LayerGrads(terms.norms, clipped)


def conv_grad_sample(
    layer: nn.Conv2d | nn.Conv3d, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Opacus' convolution grad sampler, on a contiguous copy of the layer's input.

    Opacus' ``unfold2d`` and ``unfold3d`` read the spatial strides as if the input were
    contiguous and channels-first. On a channels-last input (``model.to(memory_format=
    torch.channels_last)``, a common speed setting) they build patches from the wrong elements:
    per-sample gradients and norms come out wrong and the clipping bound no longer holds, with
    no error (``tests/training/test_channels_last_clipping.py``). The copy is a no-op for the
    usual contiguous input.
    """
    return compute_conv_grad_sample(layer, [activations[0].contiguous()], backprops)


def register_conv_grad_sampler() -> None:
    """Make Opacus' per-sample modes use ``conv_grad_sample`` for 2-D and 3-D convolutions;
    idempotent and process-wide, like ``register_conv_norm_sampler`` (a correction, not a new
    behaviour: contiguous inputs give the same result as before)."""
    for cls in (nn.Conv2d, nn.Conv3d):
        if GradSampleModule.GRAD_SAMPLERS.get(cls) is not conv_grad_sample:
            register_grad_sampler(cls)(conv_grad_sample)


def conv2d_norm_sample(
    layer: nn.Conv2d, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Ghost-clipping norm sampler for ``nn.Conv2d``: per-sample gradient norms per parameter."""
    if not _simple_conv(layer):
        grads = conv_grad_sample(layer, activations, backprops)
        return {p: g.flatten(1).norm(2, dim=1) for p, g in grads.items()}
    out: dict[nn.Parameter, Tensor] = {}
    if layer.weight.requires_grad:
        ws = conv2d_weight_grad_sample(layer, activations[0].to(backprops.dtype), backprops)
        out[layer.weight] = ws.flatten(1).norm(2, dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3)).norm(2, dim=1)
    return out


def register_conv_norm_sampler() -> None:
    """Make Opacus' ghost clipping use ``conv2d_norm_sample``; idempotent.

    Opacus keeps norm samplers in a class-level table, so this is process-wide by design; it
    only adds a capability (convolutions no longer fall back to stored per-sample gradients).
    """
    if GradSampleHooksFastGradientClipping.NORM_SAMPLERS.get(nn.Conv2d) is not conv2d_norm_sample:
        register_norm_sampler(nn.Conv2d)(conv2d_norm_sample)


@dataclass
class _LayerGrads:
    """One layer's per-sample norms (one per part: parameter, or weight and bias together) and
    how to form its clipped gradient sum."""

    norms: list[Tensor]  # [B] each: the norms of parts whose squares sum to the layer's
    clipped: Callable[[Tensor], dict[nn.Parameter, Tensor]]  # coef [B] -> summed grads


def _rows_2d(per_sample: Tensor) -> Tensor:
    """``[B, ...] -> [B, rest]``; a ``[B, d]`` tensor as it is (see ``_combined_norm``)."""
    return per_sample if per_sample.dim() == 2 else per_sample.flatten(1)


def _norms(per_sample: Tensor) -> Tensor:
    """L2 norm of each example's slice ``[B, ...] -> [B]``."""
    return torch.linalg.vector_norm(_rows_2d(per_sample), dim=1)


def _combined_norm(parts: list[Tensor]) -> Tensor:
    """``[B]`` norm over all parts (``sqrt(sum_k ||part_k||^2)``), given each part's ``[B]``
    norm, as one stack and one reduction. Every layer and parameter contributes a part; summing
    squares one by one would cost several tensor operations per part, and for small models the
    fixed cost of each operation outweighs its arithmetic."""
    return torch.linalg.vector_norm(torch.stack(parts), dim=0)


def _as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the call when it would be a no-op (see ``_total``)."""
    return t if t.dtype == dtype else t.to(dtype)


def _weighted_sum(coef: Tensor, per_sample: Tensor) -> Tensor:
    """``sum_i coef_i * per_sample_i`` as one matrix-vector product."""
    summed = coef @ _rows_2d(per_sample)
    return summed if per_sample.dim() == 2 else summed.view(per_sample.shape[1:])


def _per_sample_terms(grads: dict[nn.Parameter, Tensor]) -> _LayerGrads:
    """Layers whose per-sample gradients are small (norms, biases, convolutions)."""
    norms = [_norms(g) for g in grads.values()]

    def clipped(coef: Tensor) -> dict[nn.Parameter, Tensor]:
        return {p: _weighted_sum(coef, g) for p, g in grads.items()}

    return _LayerGrads(norms, clipped)


def _linear_terms(layer: nn.Linear, a: Tensor, g: Tensor) -> _LayerGrads:
    """Linear layers, flat ``[B, d]`` or sequence ``[B, T, d]`` inputs.

    Flat: ``||g a^T||^2 = ||g||^2 ||a||^2``. Sequences: materialise per-sample gradients when
    the Gram form is not cheaper (``T^2 (d_in + d_out) > d_in d_out``, Li et al. 2022) and the
    gradients are small (see ``PER_EXAMPLE_ELEMENTS_LIMIT``), else ghost norms
    ``sum (a a^T) * (g g^T)``. Without materialised gradients the clipped sum is one weighted
    matmul, the same work as the ordinary weight gradient.
    """
    n = g.shape[0]
    a3 = _as_dtype(a.reshape(n, -1, a.shape[-1]), g.dtype)
    g3 = g.reshape(n, -1, g.shape[-1])
    steps, d_in, d_out = a3.shape[1], a3.shape[2], g3.shape[2]
    weight = layer.weight if layer.weight.requires_grad else None
    bias = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
    parts: list[Tensor] = []
    per_sample_w: Tensor | None = None
    if weight is not None:
        if steps == 1:
            parts.append(_norms(g3) * _norms(a3))
        elif (
            steps * steps * (d_in + d_out) > d_in * d_out
            and d_in * d_out <= PER_EXAMPLE_ELEMENTS_LIMIT
            and n * d_in * d_out * g.element_size() <= PER_SAMPLE_BYTES_LIMIT
        ):
            per_sample_w = torch.bmm(g3.transpose(1, 2), a3)
            parts.append(_norms(per_sample_w))
        else:
            gram = torch.bmm(g3, g3.transpose(1, 2)) * torch.bmm(a3, a3.transpose(1, 2))
            parts.append(gram.sum((1, 2)).clamp(min=0).sqrt())
    bias_ps = g3.sum(1) if bias is not None else None
    if bias_ps is not None:
        parts.append(_norms(bias_ps))

    def clipped(coef: Tensor) -> dict[nn.Parameter, Tensor]:
        out: dict[nn.Parameter, Tensor] = {}
        if weight is not None:
            if per_sample_w is not None:
                out[weight] = _weighted_sum(coef, per_sample_w)
            else:
                scaled = (g3 * coef[:, None, None]).reshape(-1, d_out)
                out[weight] = scaled.t() @ a3.reshape(-1, d_in)
        if bias is not None and bias_ps is not None:
            out[bias] = _weighted_sum(coef, bias_ps)
        return out

    return _LayerGrads(parts, clipped)


def _group_norm_terms(layer: nn.GroupNorm, a: Tensor, g: Tensor) -> _LayerGrads:
    """Opacus' GroupNorm rule (per-sample weight gradient: the normalised input times the
    output gradient, summed over positions; bias: the output gradient summed) with plain sums
    in place of its ``einsum`` calls, which cost several tensor operations each."""
    grads: dict[nn.Parameter, Tensor] = {}
    if layer.weight is not None and layer.weight.requires_grad:
        normalised = F.group_norm(a, layer.num_groups, eps=layer.eps)
        grads[layer.weight] = _sum_positions(normalised * g)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = _sum_positions(g)
    return _per_sample_terms(grads)


def _sum_positions(t: Tensor) -> Tensor:
    """``[B, C, *positions] -> [B, C]``; a ``[B, C]`` input (GroupNorm after a Linear, as
    ``ModuleValidator.fix`` makes of a BatchNorm1d) has no positions to sum."""
    return t if t.dim() == 2 else t.flatten(2).sum(2)


def _layer_terms(layer: nn.Module, a: Tensor, g: Tensor) -> _LayerGrads:
    if type(layer) is nn.Linear:
        return _linear_terms(layer, a, g)
    if type(layer) is nn.Conv2d and _simple_conv(layer):
        return _conv_terms(layer, a, g)
    if type(layer) is nn.GroupNorm:
        return _group_norm_terms(layer, a, g)
    sampler = GradSampleModule.GRAD_SAMPLERS[type(layer)]
    grads = {p: gs for p, gs in sampler(layer, [a], g).items() if p.requires_grad}
    return _per_sample_terms(grads)


def check_fast_supported(model: nn.Module) -> None:
    """Raise ``TrainingError`` naming the first trainable layer fast clipping cannot handle."""
    for name, module in model.named_modules():
        if not _has_own_trainable_params(module):
            continue
        if type(module) in (nn.Linear, nn.Conv2d) or type(module) in GradSampleModule.GRAD_SAMPLERS:
            continue
        raise TrainingError(
            f"dp.clipping fast: layer {name or '(root)'} ({type(module).__name__}) has no "
            "per-sample gradient rule; use dp.clipping = 'per-sample'"
        )


class BookKeepingDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' noise, scaling and accounting for gradients ``BookKeepingClipper`` clipped.

    Two changes, neither in what is computed: ``accumulate`` takes over ``p.grad`` (a tensor
    the clipper allocated for this batch alone) instead of deep-copying it, which Opacus does
    because its ghost clipping reuses ``p.grad``; and ``add_noise`` / ``scale_grad`` add and
    divide all parameters with one ``torch._foreach`` call each instead of several small
    operations per parameter (for a small CNN the per-operation cost is most of the DP step's
    extra time on a fast CPU). Noise is drawn exactly as in Opacus - the same ``torch.normal``
    calls on the same generator in the same order - so the noised gradients are bitwise those
    of ``DPOptimizerFastGradientClipping`` (``tests/training/test_clipping.py``). Secure mode
    and zero noise take Opacus' own path. The price: all noise tensors exist at once (one more
    copy of the trainable weights at peak, where Opacus holds one parameter's noise at a time).
    """

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:  # the clipper's grads carry no graph; detach only what might
                # summed_grad *is* this p.grad: PrivateTraining.step zeroes with
                # set_to_none=True, which drops the reference instead of zeroing the sum
                p.summed_grad = p.grad.detach() if p.grad.requires_grad else p.grad

    def add_noise(self) -> None:
        std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        std = std * self.max_grad_norm
        if self.secure_mode or std == 0 or not self.params:
            super().add_noise()
            return
        summed = [p.summed_grad for p in self.params]
        for s in summed:
            _check_processed_flag(s)
        noise = [
            torch.normal(
                0, std, size=s.shape, device=s.device, generator=self.generator, dtype=s.dtype
            )
            for s in summed
        ]  # as opacus.optimizers.optimizer._generate_noise draws it (non-secure branch)
        for p, grad in zip(self.params, torch._foreach_add(summed, noise), strict=True):
            p.grad = grad if grad.shape == p.shape else grad.view_as(p)
        for s in summed:
            _mark_as_processed(s)

    def scale_grad(self) -> None:
        if self.loss_reduction == "mean" and self.params:
            grads = [p.grad for p in self.params]
            torch._foreach_div_(grads, self.expected_batch_size * self.accumulated_iterations)


def _per_sample_norms(
    pairs: list[tuple[nn.Module, Tensor, Tensor]], losses: Tensor
) -> tuple[Tensor, list[_LayerGrads]]:
    """``[B]`` per-sample gradient norms over every trainable layer, with each layer's terms."""
    terms = [_layer_terms(layer, a, g) for layer, a, g in pairs]
    parts = [_as_dtype(n, losses.dtype) for t in terms for n in t.norms]
    if not parts:
        return torch.zeros(losses.shape[0], dtype=losses.dtype, device=losses.device), terms
    return _combined_norm(parts), terms


def _finite_examples(losses: Tensor, norms: Tensor) -> Tensor:
    """``[B]`` mask of the examples whose loss and per-sample gradient norm are finite.

    A model chosen to overflow on some rows would otherwise put NaN into the clipped sum, and
    NaN survives any noise: the update would reveal which rows overflowed. A dropped example
    contributes zero, which is within the clipping bound, so the guarantee is unchanged.

    The norm is the check: every activation and output gradient a layer's clipped gradient is
    built from also enters that layer's per-sample norm (products and sums, where inf and NaN
    propagate: inf * 0 and inf - inf are NaN, and a norm of an inf is inf), so a non-finite
    value that could reach the sum makes the norm non-finite. Checking the ``[B]`` norms instead
    of every recorded tensor element by element is what keeps the common, all-finite step cheap.
    """
    return torch.isfinite(losses.detach()) & torch.isfinite(norms)


def _float32(t: Tensor) -> Tensor:
    """bf16/fp16 activations and gradients (CUDA autocast) in float32: the per-sample norms and
    the clipped sum are then computed from the same values at full precision, so a rounded-down
    norm cannot let an example's clipped gradient exceed the bound."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _rows(t: Tensor, keep: Tensor) -> Tensor:
    """``t`` with the rows of dropped examples set to zero (a ``where``, not a product: 0 times
    NaN is NaN)."""
    if bool(keep.all()):
        return t
    mask = keep.view(-1, *([1] * (t.dim() - 1)))
    return torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device))


class BookKeepingClipper:
    """Clipped per-sample gradient sums from one backward pass (see module docstring).

    Forward hooks record each trainable layer's input (detached) and output (still in the
    graph). ``backward(loss_per_sample)`` then writes ``sum_i c_i g_i`` into every trainable
    parameter's ``.grad`` and returns the per-sample gradient norms. Requires a model whose
    examples do not interact (no BatchNorm: ``ModuleValidator`` enforces this) and whose layers
    run once per forward pass (no weight tying).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        check_fast_supported(model)
        register_conv_grad_sampler()  # grouped convolutions fall back to it (_layer_terms)
        self.max_grad_norm = float(max_grad_norm)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._records: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        self._handles = [
            m.register_forward_hook(self._capture)
            for m in model.modules()
            if _has_own_trainable_params(m)
        ]

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        if module in self._records:
            self._records.clear()
            raise TrainingError(
                f"dp.clipping fast: {type(module).__name__} ran twice in one forward pass "
                "(shared weights); use dp.clipping = 'per-sample'"
            )
        self._records[module] = (inputs[0].detach(), output)

    def backward(self, loss_per_sample: Tensor) -> Tensor:
        """Set ``p.grad`` to the clipped per-sample gradient sum; return per-sample norms."""
        records, self._records = self._records, {}
        if not records:
            raise TrainingError("fast clipping: no training-mode forward pass to back-propagate")
        layers = list(records)
        outputs = [records[m][1] for m in layers]
        out_grads = torch.autograd.grad(loss_per_sample.sum(), outputs, allow_unused=True)
        pairs = [
            (m, _float32(records[m][0]), _float32(g.detach()))
            for m, g in zip(layers, out_grads, strict=True)
            if g is not None
        ]  # fmt: skip  (None: the layer's output does not reach the loss)
        norms, terms = _per_sample_norms(pairs, loss_per_sample)
        keep = _finite_examples(loss_per_sample, norms)
        if not bool(keep.all()):  # rare: rebuild the terms with the dropped rows zeroed
            pairs = [(m, _rows(a, keep), _rows(g, keep)) for m, a, g in pairs]
            norms, terms = _per_sample_norms(pairs, loss_per_sample)
        coef = (self.max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
        for p in self._params:
            p.grad = None
        coef = _as_dtype(coef, loss_per_sample.dtype)
        for term in terms:
            for p, grad in term.clipped(coef).items():
                p.grad = _as_dtype(grad if grad.shape == p.shape else grad.view_as(p), p.dtype)
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return norms.detach()

    def discard(self) -> None:
        """Drop records of a forward pass that will not be back-propagated (e.g. an error)."""
        self._records.clear()

    def remove(self) -> None:
        """Remove the hooks so the model can be trained or wrapped again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._records.clear()
