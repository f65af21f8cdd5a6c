"""The update codec on its own: unbiased, bounded, smaller, and strict about what it decodes."""

from __future__ import annotations

import json

import pytest
import torch

from fedmodel.compression import (
    INDEX_TENSOR,
    LEVELS,
    META_TENSOR,
    SCALES_TENSOR,
    CompressionError,
    compress_update,
    decompress_update,
    pack_int4,
    quantize,
    unpack_int4,
)
from fedmodel.config import CompressionConfig, ConfigError, ScenarioConfig, parse_config
from fedmodel.crypto.seal import SealError, state_dict_to_bytes
from fedmodel.node_config import SiteCompression
from server import wire


def model_pair(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(reference, trained): a noised update on two layers, a frozen tensor, an int buffer."""
    g = torch.Generator().manual_seed(seed)
    reference = {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "fc.weight": torch.randn(10, 301, generator=g),  # odd count: int4 padding
        "frozen.weight": torch.randn(50, 20, generator=g),
        "steps": torch.tensor([7], dtype=torch.int64),
    }
    trained = {k: v.clone() for k, v in reference.items()}
    for name in ("conv.weight", "fc.weight"):
        trained[name] += 0.05 * torch.randn(reference[name].shape, generator=g)
    return reference, trained


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased(method):
    levels = LEVELS[method]
    x = torch.linspace(-1.0, 1.0, 41)  # peak 1: the scale is 1 / levels for every copy
    draws = 20_000
    codes, scale = quantize(x.repeat(draws), levels, torch.Generator().manual_seed(1))
    assert scale == pytest.approx(1.0 / levels)
    assert int(codes.abs().max()) <= levels
    mean = (codes.double() * scale).view(draws, -1).mean(dim=0)
    # each draw's error is under one step, so its stdev is at most scale / 2
    bound = 5 * (scale / 2) / draws**0.5
    assert torch.allclose(mean, x.double(), atol=bound), (mean - x).abs().max()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_round_trip_error_is_under_one_step_per_tensor(method):
    reference, trained = model_pair()
    cfg = CompressionConfig(method=method)
    decoded, coding = decompress_update(compress_update(trained, reference, cfg, 3), reference)
    assert coding.describe() == method
    for name in ("conv.weight", "fc.weight"):
        delta = trained[name] - reference[name]
        step = float(delta.abs().max()) / LEVELS[method]
        error = (decoded[name] - trained[name]).abs().max()
        assert float(error) < step * 1.0001 + 1e-6
        assert decoded[name].dtype == trained[name].dtype
        assert decoded[name].shape == trained[name].shape
    assert torch.equal(decoded["frozen.weight"], reference["frozen.weight"])  # sent as "same"
    assert torch.equal(decoded["steps"], trained["steps"])  # integer buffers travel as they are


def test_top_k_keeps_the_largest_noised_entries():
    reference, trained = model_pair()
    cfg = CompressionConfig(method="int8", top_k=0.1)
    coded = compress_update(trained, reference, cfg, 3)
    decoded, _ = decompress_update(coded, reference)
    for name in ("conv.weight", "fc.weight"):
        delta = (trained[name] - reference[name]).flatten()
        k = -(-delta.numel() // 10)
        largest = set(torch.topk(delta.abs(), k).indices.tolist())
        changed = (decoded[name] != reference[name]).flatten().nonzero().flatten().tolist()
        assert set(changed) <= largest and len(changed) > 0.9 * k
    assert coded[INDEX_TENSOR].numel() == sum(
        -(-trained[n].numel() // 10) for n in ("conv.weight", "fc.weight")
    )


def test_coded_updates_are_smaller():
    reference, trained = model_pair()
    plain = len(state_dict_to_bytes(trained))
    coded = {
        m: compress_update(trained, reference, CompressionConfig(method=m), 0)
        for m in ("int8", "int4")
    }
    sizes = {m: len(state_dict_to_bytes(c)) for m, c in coded.items()}
    assert plain / sizes["int8"] > 3.5 and sizes["int4"] < 0.6 * sizes["int8"], (plain, sizes)


def test_int4_packing_round_trips():
    codes = torch.tensor([-7, 7, 0, 3, -1], dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.numel() == 3 and torch.equal(unpack_int4(packed, 5), codes)


def test_payload_round_trip_through_the_wire():
    """What a site seals and the server opens: decoded against the round's global model."""
    reference, trained = model_pair()
    coded = compress_update(trained, reference, CompressionConfig(method="int4", top_k=0.5), 9)
    claim = {"name": "node-0", "compression": "lie"}
    payload = wire.update_payload(coded, {"ledger-count": 2}, claim)
    opened = wire.update_from_payload(payload, reference)
    assert opened[wire.NODE]["compression"] == "int4+top-k 0.5"  # read from the payload
    assert set(opened[wire.ARRAYS].keys()) == set(reference)
    with pytest.raises(SealError, match="no global model"):
        wire.update_from_payload(payload)


def tampered(edit) -> dict[str, torch.Tensor]:
    reference, trained = model_pair()
    coded = compress_update(trained, reference, CompressionConfig(method="int8", top_k=0.2), 0)
    meta = json.loads(coded[META_TENSOR].numpy().tobytes())
    edit(coded, meta)
    coded[META_TENSOR] = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
    return coded


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c, m: m.update(stage="before-noise"), "before DP-SGD's noise is refused"),
        (lambda c, m: c[SCALES_TENSOR].__setitem__(1, float("nan")), "non-finite"),
        (lambda c, m: c[INDEX_TENSOR].__setitem__(0, 10**6), "out of range"),
        (lambda c, m: m["tensors"].pop(0), "names differ"),
        (lambda c, m: c.__setitem__("extra", torch.zeros(1)), "not the ones it lists"),
        (lambda c, m: m["tensors"][1].__setitem__(2, 10**9), "does not fit"),
        (lambda c, m: m["tensors"][0].__setitem__(0, "other.weight"), "not a tensor of the model"),
    ],
)
def test_the_server_decodes_only_what_fits_the_model(edit, match):
    reference, _ = model_pair()
    with pytest.raises(CompressionError, match=match):
        decompress_update(tampered(edit), reference)


def test_compressing_before_the_noise_is_refused_with_one_line():
    with pytest.raises(ConfigError) as err:
        parse_config(ScenarioConfig, {"compression": {"stage": "before-noise"}}, "s.toml")
    line = str(err.value)
    assert "\n" not in line and line.startswith("s.toml: compression.stage:")
    assert "sensitivity" in line


def test_the_site_decides():
    asked = CompressionConfig(method="int8")
    assert SiteCompression().resolve(asked) == asked  # honours the coordinator's request
    own = SiteCompression(follow_request=False, method="none")
    assert not own.resolve(asked).active  # refuses it: plain weights
    slow_link = SiteCompression(follow_request=False, method="int4", top_k=0.25)
    assert slow_link.resolve(CompressionConfig()).describe() == "int4+top-k 0.25"


def test_the_cli_refuses_compression_before_the_noise(tmp_path):
    from typer.testing import CliRunner

    from fedmodel.cli.main import app as cli

    scenario = tmp_path / "s.toml"
    scenario.write_text('[compression]\nmethod = "int8"\nstage = "before-noise"\n')
    result = CliRunner().invoke(cli, ["simulate", str(scenario), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "compression.stage" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_a_seed_gives_one_coding_whatever_the_order_of_the_state_dict():
    reference, trained = model_pair()
    backwards = dict(reversed(list(trained.items())))
    cfg = CompressionConfig(method="int4")
    one, _ = decompress_update(compress_update(trained, reference, cfg, 5), reference)
    other, _ = decompress_update(compress_update(backwards, reference, cfg, 5), reference)
    assert all(torch.equal(one[name], other[name]) for name in one)
