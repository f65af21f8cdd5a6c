"""Central, client-level DP: Flower's server-side fixed clipping and Flower's RDP accountant.

Record-level DP-SGD (each node's own, enforced by its ledger) bounds what a model reveals about
one patient; this bounds what it reveals about one whole site. Both are Flower's and Opacus's
code: :class:`DifferentialPrivacyServerSideFixedClipping` clips every update and noises the
mean, and Flower's :class:`RdpAccountant` (Google's ``dp-accounting`` underneath) composes one
Gaussian release per round. What this module adds is what a run needs around them:

- a budget check before the first round, so a run that would pass ``max_epsilon`` fails with
  one line instead of stopping half-way with Flower's ``PrivacyBudgetExhausted``;
- uniform weights: the clipped-mean sensitivity Flower's noise assumes holds only when every
  site counts once, so each accepted reply's weight is set by the server (never trusted from a
  node, which could otherwise claim a large weight and break Flower's equal-weight check);
- the accountant's state in ``run.json`` after every round, so ``--resume`` continues the
  composition and the compliance report shows the client-level epsilon apart from the ledgers.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from fedmodel.config import CentralDPConfig, ConfigError, ScenarioConfig

INFO_KEY = "central_dp"  # run.json


def sampled_per_round(scenario: ScenarioConfig) -> int:
    """How many nodes Flower's FedAvg samples each round (its own formula)."""
    fed, strategy = scenario.federation, scenario.strategy
    min_nodes = max(1, min(strategy.min_train_nodes, fed.num_clients))
    return max(int(fed.num_clients * strategy.fraction_train), min_nodes)


def new_accountant(scenario: ScenarioConfig, state: dict[str, Any] | None = None) -> RdpAccountant:
    """Flower's accountant for this scenario; ``state`` (from run.json) continues a resumed run.

    Flower's fixed-clipping accounting supports only ``no-amplification``: the sampling of
    sites is not credited, so the figure is an upper bound whatever ``fraction_train`` is.
    """
    cfg = scenario.central_dp
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=cfg.delta,
            population_size=scenario.federation.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=cfg.max_epsilon,
        )
    )
    if state is not None:
        try:
            accountant.load_state_dict(state)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"run.json: {INFO_KEY}.accountant_state: {err}") from None
    return accountant


def projected_epsilon(scenario: ScenarioConfig, accountant: RdpAccountant, rounds: int) -> float:
    """Client-level epsilon after ``rounds`` more releases, without touching ``accountant``."""
    projected = new_accountant(scenario, accountant.state_dict())
    if rounds > 0:
        projected.compose(_event(scenario), count=rounds)
    return projected.get_epsilon(scenario.central_dp.delta)


def check_budget(scenario: ScenarioConfig, accountant: RdpAccountant, rounds: int) -> None:
    """Refuse, before anything trains, a run whose planned rounds would pass ``max_epsilon``."""
    cap = scenario.central_dp.max_epsilon
    if cap is None:
        return
    epsilon = projected_epsilon(scenario, accountant, rounds)
    if epsilon > cap:
        raise ConfigError(
            f"central_dp: {rounds} more round(s) would reach client-level epsilon "
            f"{epsilon:.3f} > max_epsilon {cap:g} (raise noise_multiplier or run fewer rounds)"
        )


def wrap(
    inner: Strategy, scenario: ScenarioConfig, accountant: RdpAccountant
) -> DifferentialPrivacyServerSideFixedClipping:
    cfg: CentralDPConfig = scenario.central_dp
    return DifferentialPrivacyServerSideFixedClipping(
        inner,
        noise_multiplier=cfg.noise_multiplier,
        clipping_norm=cfg.clipping_norm,
        num_sampled_clients=sampled_per_round(scenario),
        accountant=accountant,
    )


def run_info(scenario: ScenarioConfig, accountant: RdpAccountant) -> dict[str, Any]:
    """What run.json records (and the report reads): settings, epsilon so far, state."""
    cfg = scenario.central_dp
    spent = accountant.get_privacy_spent()
    return {
        "enabled": True,
        "mechanism": "Gaussian on the uniform mean of clipped updates (client-level)",
        "clipping": "server-side fixed (Flower DifferentialPrivacyServerSideFixedClipping)",
        "accountant": "Flower RdpAccountant (dp-accounting RDP), no amplification",
        "noise_multiplier": cfg.noise_multiplier,
        "clipping_norm": cfg.clipping_norm,
        "num_sampled_clients": sampled_per_round(scenario),
        "population_size": scenario.federation.num_clients,
        "sample_rate": 1.0,  # no amplification is credited; the report's cross-check agrees
        "rounds": spent.num_releases,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "max_epsilon": cfg.max_epsilon,
        "accountant_state": accountant.state_dict(),
    }


def _event(scenario: ScenarioConfig) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(
        noise_multiplier=scenario.central_dp.noise_multiplier,
        sample_size=sampled_per_round(scenario),
        population_size=scenario.federation.num_clients,
    )
