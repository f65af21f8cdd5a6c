"""Strategy from config: Flower's own classes, never a home-made aggregation loop."""

from __future__ import annotations

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from fedmodel.config import StrategyConfig


def build_strategy(
    cfg: StrategyConfig,
    num_clients: int,
    *,
    weighted_by_key: str | None = None,
) -> Strategy:
    """Flower strategy for ``cfg``.

    Whether sites evaluate (releasing noised counts, ``clients/evaluate_round.py``) is decided
    by the wrapper that drives every run (``RecordingStrategy(federated_evaluation=...)``), not
    by ``fraction_evaluate = 0``: Flower warns about a zero fraction on every strategy it builds.

    ``weighted_by_key`` replaces FedAvg's ``num-examples`` weighting (every site weighs once;
    ``server.wire.weigh_uniformly``).
    """
    min_nodes = cfg.min_nodes(num_clients)
    common: dict = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": 1.0,  # every site, in the rounds the wrapper asks them to
        "min_train_nodes": min_nodes,
        "min_evaluate_nodes": min_nodes,
        "min_available_nodes": min_nodes,
    }
    if weighted_by_key is not None:
        common["weighted_by_key"] = weighted_by_key
    match cfg.name:
        case "fedavg":
            return FedAvg(**common)
        case "fedprox":
            return FedProx(**common, proximal_mu=cfg.proximal_mu)
        case "fedadam":
            return FedAdam(
                **common,
                eta=cfg.server_lr,
                beta_1=cfg.server_beta1,
                beta_2=cfg.server_beta2,
                tau=cfg.server_tau,
            )
        case "fedmedian":
            return FedMedian(**common)
        case "fedtrimmedavg":
            return FedTrimmedAvg(**common, beta=cfg.trim_beta)
        case "krum":
            return Krum(**common, num_malicious_nodes=cfg.krum_num_malicious)
    raise AssertionError(f"unhandled strategy {cfg.name}")  # pydantic's Literal forbids this
