"""Site policy: what a node refuses to do, whatever the coordinator asks."""

from __future__ import annotations

from clients.node_config import SitePolicy
from fedmodel.config import ScenarioConfig


def policy_violation(policy: SitePolicy, scenario: ScenarioConfig) -> str | None:
    """The first reason this request breaks the site's policy, or ``None`` if it may run."""
    dp = scenario.dp
    if policy.require_dp and not dp.enabled:
        return "site policy requires DP-SGD; the run asked for training without DP"
    if policy.allowed_models is not None and scenario.model.name not in policy.allowed_models:
        return f"site policy does not allow model {scenario.model.name!r}"
    if policy.allowed_datasets is not None and scenario.data.dataset not in policy.allowed_datasets:
        return f"site policy does not allow dataset {scenario.data.dataset!r}"
    if (
        dp.enabled
        and dp.noise_multiplier is not None
        and (dp.noise_multiplier < policy.min_noise_multiplier)
    ):
        return (
            f"noise multiplier {dp.noise_multiplier} below the site minimum "
            f"{policy.min_noise_multiplier}"
        )
    if policy.max_grad_norm_cap is not None and dp.max_grad_norm > policy.max_grad_norm_cap:
        return f"clipping norm {dp.max_grad_norm} above the site cap {policy.max_grad_norm_cap}"
    return None
