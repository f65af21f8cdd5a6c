"""Seal+open cost of a model update against bare one-shot AES-256-GCM on the same bytes.

Question answered: does end-to-end sealing (X25519 + HKDF + AES-256-GCM + Ed25519, see
fedmodel/crypto/seal.py) cost materially more than the cipher alone, and what fraction of a
federated round is it? Both paths run in ONE process, alternating per repeat (ABBA order, so slow
drift on a shared machine hits both equally); medians are reported.

Payloads are safetensors bytes of random state dicts shaped like the real models (no download):
all-MiniLM-L6-v2 + a 2-class head (~22.7M fp32 params, ~91 MB) and the MNIST CNN (~109k params).

    .venv/bin/python benchmarks/sealing.py [--repeats 7] [--out benchmarks/results/sealing.json]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cryptography
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedmodel.crypto.seal import (
    ReplayGuard,
    open_request,
    open_update,
    seal_update,
    sign_request,
    state_dict_to_bytes,
)
from fedmodel.io import atomic_write_json

RUN_ID, ROUND, NODE = "bench-run", 1, "node-0"
# A MiniLM DP round on CPU takes minutes; 60 s is a deliberately low bound for the fraction.
ASSUMED_ROUND_S = 60.0
# Tiny payloads finish in microseconds: time a batch per sample so timer noise stays small.
CNN_BATCH = 20


def minilm_shapes() -> dict[str, tuple[int, ...]]:
    """all-MiniLM-L6-v2 (hidden 384, 6 layers, FFN 1536, vocab 30522) + a 2-class head."""
    h, ffn = 384, 1536
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word": (30522, h),
        "embeddings.position": (512, h),
        "embeddings.token_type": (2, h),
        "embeddings.norm": (2, h),
        "pooler.weight": (h, h),
        "pooler.bias": (h,),
        "classifier.weight": (2, h),
        "classifier.bias": (2,),
    }
    for layer in range(6):
        for proj in ("query", "key", "value", "attn_out"):
            shapes[f"layer{layer}.{proj}.weight"] = (h, h)
            shapes[f"layer{layer}.{proj}.bias"] = (h,)
        shapes[f"layer{layer}.ffn_in.weight"] = (ffn, h)
        shapes[f"layer{layer}.ffn_in.bias"] = (ffn,)
        shapes[f"layer{layer}.ffn_out.weight"] = (h, ffn)
        shapes[f"layer{layer}.ffn_out.bias"] = (h,)
        shapes[f"layer{layer}.norms"] = (4, h)
    return shapes


def cnn_shapes() -> dict[str, tuple[int, ...]]:
    """The 28x28 MNIST CNN: two 3x3 convs, two linear layers."""
    return {
        "conv1.weight": (16, 1, 3, 3),
        "conv1.bias": (16,),
        "conv2.weight": (32, 16, 3, 3),
        "conv2.bias": (32,),
        "fc1.weight": (128, 800),
        "fc1.bias": (128,),
        "fc2.weight": (10, 128),
        "fc2.bias": (10,),
    }


def random_payload(shapes: dict[str, tuple[int, ...]]) -> tuple[bytes, int]:
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    return state_dict_to_bytes(state), sum(t.numel() for t in state.values())


class Keys:
    """The key material of one node and one server, made once outside the timed region."""

    def __init__(self) -> None:
        self.server = X25519PrivateKey.generate()
        self.node = Ed25519PrivateKey.generate()
        self.server_signing = Ed25519PrivateKey.generate()
        self.signers = {NODE: self.node.public_key()}
        self.raw_key = AESGCM.generate_key(bit_length=256)


def raw_once(payload: bytes, keys: Keys) -> bytes:
    """The baseline: what a bare one-shot AESGCM encrypt + decrypt of the same bytes costs."""
    cipher, nonce = AESGCM(keys.raw_key), os.urandom(12)
    return cipher.decrypt(nonce, cipher.encrypt(nonce, payload, None), None)


def seal_once(payload: bytes, keys: Keys) -> bytes:
    """The node's side, as the timed runs and the size measurement both need it."""
    return seal_update(
        payload,
        server_public=keys.server.public_key(),
        signer=keys.node,
        run_id=RUN_ID,
        round=ROUND,
        node_id=NODE,
    )


def seal_open_once(payload: bytes, keys: Keys) -> tuple[float, float, bytes]:
    """Returns (seal seconds, open seconds, opened payload)."""
    start = time.perf_counter()
    envelope = seal_once(payload, keys)
    sealed = time.perf_counter()
    opened = open_update(
        envelope,
        server_private=keys.server,
        known_signers=keys.signers,
        run_id=RUN_ID,
        round=ROUND,
        seen=ReplayGuard(),
    )
    return sealed - start, time.perf_counter() - sealed, opened.payload


def timed(fn: Callable[[], object], batch: int) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        fn()
    return (time.perf_counter() - start) / batch


def measure(payload: bytes, keys: Keys, repeats: int, batch: int) -> dict[str, float]:
    """Alternate raw and sealed in ABBA order; return medians in seconds per operation."""
    raw, seal, open_ = [], [], []

    def sealed_sample() -> None:
        parts = [seal_open_once(payload, keys)[:2] for _ in range(batch)]
        seal.append(sum(p[0] for p in parts) / batch)
        open_.append(sum(p[1] for p in parts) / batch)

    for i in range(repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                raw.append(timed(lambda: raw_once(payload, keys), batch))
            else:
                sealed_sample()
    seal_open = [s + o for s, o in zip(seal, open_, strict=True)]
    return {
        "raw_aesgcm_s": statistics.median(raw),
        "seal_s": statistics.median(seal),
        "open_s": statistics.median(open_),
        "seal_open_s": statistics.median(seal_open),
    }


def measure_global(payload: bytes, keys: Keys, repeats: int, batch: int) -> dict[str, float]:
    """The server->node direction: sign the request (config and model) once per node and round,
    verify it on the node."""
    config = {"run-id": RUN_ID, "server-round": ROUND, "task": "train", "dst-node-id": 1}
    blob = sign_request(payload, keys.server_signing, config)
    public = keys.server_signing.public_key()

    def sign() -> bytes:
        return sign_request(payload, keys.server_signing, config)

    signs = [timed(sign, batch)]
    verify = [timed(lambda: open_request(blob, public), batch)]
    for _ in range(max(1, repeats // 2) - 1):
        signs.append(timed(sign, batch))
        verify.append(timed(lambda: open_request(blob, public), batch))
    return {"sign_global_s": statistics.median(signs), "verify_global_s": statistics.median(verify)}


def bench_size(name: str, shapes: dict, keys: Keys, repeats: int, batch: int) -> dict:
    payload, params = random_payload(shapes)
    _, _, opened = seal_open_once(payload, keys)
    if opened != payload or raw_once(payload, keys) != payload:
        raise SystemExit(f"{name}: round trip changed the payload")
    envelope_len = len(seal_once(payload, keys))
    row = {"params": params, "payload_bytes": len(payload), "envelope_bytes": envelope_len}
    row["overhead_bytes"] = envelope_len - len(payload)
    row |= measure(payload, keys, repeats, batch)
    row |= measure_global(payload, keys, repeats, batch)
    # What the alternative design (Ed25519 over SHA-256 of the ciphertext) would add, per side.
    row["sha256_payload_s"] = statistics.median(
        timed(lambda: hashlib.sha256(payload).digest(), batch) for _ in range(repeats)
    )
    row["ratio_vs_raw"] = row["raw_aesgcm_s"] / row["seal_open_s"]
    row["seal_open_gb_per_s"] = 2 * len(payload) / row["seal_open_s"] / 1e9
    return row


def print_table(sizes: dict[str, dict]) -> None:
    head = ("size", "params", "payload MB", "raw enc+dec", "seal", "open", "seal+open", "ratio")
    print("{:<7} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>6}".format(*head))
    for name, r in sizes.items():
        print(
            f"{name:<7} {r['params']:>10,} {r['payload_bytes'] / 1e6:>10.2f} "
            f"{_ms(r['raw_aesgcm_s']):>12} {_ms(r['seal_s']):>10} {_ms(r['open_s']):>10} "
            f"{_ms(r['seal_open_s']):>10} {r['ratio_vs_raw']:>6.2f}"
        )
    for name, r in sizes.items():
        print(
            f"{name}: envelope overhead {r['overhead_bytes']} B; global model "
            f"sign {_ms(r['sign_global_s'])}, verify {_ms(r['verify_global_s'])}; "
            f"SHA-256 of payload {_ms(r['sha256_payload_s'])}"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="samples per path (odd is best)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sealing.json"))
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    torch.set_num_threads(1)
    keys = Keys()
    sizes = {
        "minilm": bench_size("minilm", minilm_shapes(), keys, args.repeats, batch=1),
        "cnn": bench_size("cnn", cnn_shapes(), keys, args.repeats * 5, batch=CNN_BATCH),
    }
    print_table(sizes)
    minilm = sizes["minilm"]["seal_open_s"] + sizes["minilm"]["verify_global_s"]
    result = {
        "ratio_vs_raw": min(r["ratio_vs_raw"] for r in sizes.values()),
        "minilm_seal_open_s": sizes["minilm"]["seal_open_s"],
        "cnn_seal_open_s": sizes["cnn"]["seal_open_s"],
        "minilm_round_fraction": minilm / ASSUMED_ROUND_S,
        "assumed_round_s": ASSUMED_ROUND_S,
        "sizes": sizes,
        "repeats": args.repeats,
        "environment": {
            "python": sys.version.split()[0],
            "cryptography": cryptography.__version__,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1min_at_start": load_at_start,
        },
    }
    print(
        f"ratio_vs_raw (min over sizes) {result['ratio_vs_raw']:.2f}; MiniLM seal+open+verify "
        f"= {result['minilm_round_fraction']:.3%} of a {ASSUMED_ROUND_S:.0f} s round"
    )
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
