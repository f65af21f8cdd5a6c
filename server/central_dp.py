"""Central, client-level DP: Flower's server-side fixed clipping and Flower's RDP accountant.

Record-level DP-SGD (each node's own, enforced by its ledger) bounds what a model reveals about
one patient; this bounds what it reveals about one whole site. Both are Flower's and Opacus's
code: :class:`DifferentialPrivacyServerSideFixedClipping` clips every update and noises the
mean, and Flower's :class:`RdpAccountant` (Google's ``dp-accounting`` underneath) composes one
Gaussian release per round. What this module adds is what a run needs around them:

- the epsilon under the scenario's stated neighbouring relation (``central_dp.neighbouring``).
  Flower 1.41 accounts fixed clipping only as ``no-amplification`` + ``add-or-remove-one``
  (its ``PrivacyConfig`` refuses ``no-amplification`` with ``replace-one``, and the wrapper
  refuses any other sampling method), so the wrapper keeps Flower's accountant as its release
  log and for its checks (sample size, equal weights), and :func:`stated_epsilon` re-composes
  that log as Gaussian releases at ``noise_multiplier / sensitivity`` (2 for replace-one: the
  mean moves by up to 2C/m, and Flower's noise sigma*C/m is then sigma/2 of it). For
  add-remove this is exactly Flower's own figure;
- a budget check before the first round, under the stated relation, so a run that would pass
  ``max_epsilon`` fails with one line instead of stopping half-way (Flower's own mid-run check
  sees its add-remove figure, never larger than the stated one, so it cannot fire first);
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

from fedmodel.config import (
    NEIGHBOURING_SENSITIVITY,
    CentralDPConfig,
    ConfigError,
    ScenarioConfig,
)

INFO_KEY = "central_dp"  # run.json


def sampled_per_round(scenario: ScenarioConfig) -> int:
    """How many nodes Flower's FedAvg samples each round (its own formula)."""
    fed, strategy = scenario.federation, scenario.strategy
    min_nodes = strategy.min_nodes(fed.num_clients)
    return max(int(fed.num_clients * strategy.fraction_train), min_nodes)


def new_accountant(scenario: ScenarioConfig, state: dict[str, Any] | None = None) -> RdpAccountant:
    """Flower's accountant, the wrapper's release log; ``state`` (run.json) continues a resumed
    run. Its own epsilon is the add-remove one; :func:`stated_epsilon` is the run's figure.

    Flower's fixed-clipping accounting supports only ``no-amplification``: the sampling of
    sites is not credited, so the figure is an upper bound whatever ``fraction_train`` is.
    """
    accountant = RdpAccountant(_privacy_config(scenario))
    if state is not None:
        try:
            accountant.load_state_dict(state)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"run.json: {INFO_KEY}.accountant_state: {err}") from None
    return accountant


def stated_epsilon(scenario: ScenarioConfig, accountant: RdpAccountant, rounds: int = 0) -> float:
    """Client-level epsilon under ``central_dp.neighbouring`` after the releases ``accountant``
    logged and ``rounds`` more, without touching ``accountant``.

    Each logged release is composed again as a Gaussian at its noise multiplier divided by the
    relation's sensitivity (in units of C/m), with Flower's accountant as the calculator. The
    log stores the noise as applied, so a run resumed under another relation is restated over
    all its releases, not only the new ones.
    """
    cfg = scenario.central_dp
    scale = NEIGHBOURING_SENSITIVITY[cfg.neighbouring]
    releases = [
        (float(c["event"]["noise_multiplier"]), int(c["count"]))
        for c in accountant.state_dict()["compositions"]  # type: ignore[union-attr]
    ]
    releases.append((cfg.noise_multiplier, rounds))
    restated = RdpAccountant(_privacy_config(scenario))
    for noise, count in releases:
        if count > 0:
            restated.compose(_event(scenario, noise / scale), count=count)
    return restated.get_epsilon(cfg.delta)


def projected_epsilon(scenario: ScenarioConfig, accountant: RdpAccountant, rounds: int) -> float:
    """Client-level epsilon (stated relation) after ``rounds`` more releases."""
    return stated_epsilon(scenario, accountant, rounds)


def check_budget(scenario: ScenarioConfig, accountant: RdpAccountant, rounds: int) -> None:
    """Refuse, before anything trains, a run whose planned rounds would pass ``max_epsilon``."""
    cfg = scenario.central_dp
    if cfg.max_epsilon is None:
        return
    epsilon = projected_epsilon(scenario, accountant, rounds)
    if epsilon > cfg.max_epsilon:
        raise ConfigError(
            f"central_dp: {rounds} more round(s) would reach client-level epsilon "
            f"{epsilon:.3f} ({cfg.neighbouring}) > max_epsilon {cfg.max_epsilon:g} "
            "(raise noise_multiplier or run fewer rounds)"
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
    """What run.json records (and the report reads): settings, the relation the epsilon is
    stated for, epsilon so far, and Flower's release log (``accountant_state``: its config says
    add-or-remove-one because that is the only relation Flower's wrapper accounts)."""
    cfg = scenario.central_dp
    scale = NEIGHBOURING_SENSITIVITY[cfg.neighbouring]
    return {
        "enabled": True,
        "mechanism": "Gaussian on the uniform mean of clipped updates (client-level)",
        "clipping": "server-side fixed (Flower DifferentialPrivacyServerSideFixedClipping)",
        "accountant": "Flower RdpAccountant (dp-accounting RDP), no amplification, releases "
        "at noise_multiplier / sensitivity",
        "neighbouring": cfg.neighbouring,
        "sensitivity": f"{scale:g}C/m" if scale != 1 else "C/m",
        "noise_multiplier": cfg.noise_multiplier,
        "accounted_noise_multiplier": cfg.accounted_noise_multiplier,
        "clipping_norm": cfg.clipping_norm,
        "num_sampled_clients": sampled_per_round(scenario),
        "population_size": scenario.federation.num_clients,
        "sample_rate": 1.0,  # no amplification is credited; the report's cross-check agrees
        "rounds": accountant.num_releases,
        "epsilon": stated_epsilon(scenario, accountant),
        "delta": cfg.delta,
        "max_epsilon": cfg.max_epsilon,
        "accountant_state": accountant.state_dict(),
    }


def _privacy_config(scenario: ScenarioConfig) -> PrivacyConfig:
    """The only accounting model Flower's fixed-clipping wrapper takes (see the module note)."""
    cfg = scenario.central_dp
    return PrivacyConfig(
        target_delta=cfg.delta,
        population_size=scenario.federation.num_clients,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=cfg.max_epsilon,
    )


def _event(scenario: ScenarioConfig, noise_multiplier: float) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(
        noise_multiplier=noise_multiplier,
        sample_size=sampled_per_round(scenario),
        population_size=scenario.federation.num_clients,
    )
