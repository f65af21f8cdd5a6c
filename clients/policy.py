"""Site policy: what a node refuses to do, whatever the coordinator asks."""

from __future__ import annotations

from fedmodel.config import DPConfig, ScenarioConfig
from fedmodel.node_config import SitePolicy
from fedmodel.privacy.budget import default_delta_limit


def policy_violation(policy: SitePolicy, scenario: ScenarioConfig) -> str | None:
    """The first reason this request breaks the site's policy, or ``None`` if it may run."""
    dp = scenario.dp
    if policy.require_dp and not dp.enabled:
        return "site policy requires DP-SGD; the run asked for training without DP"
    if policy.allowed_models is not None and scenario.model.name not in policy.allowed_models:
        return f"site policy does not allow model {scenario.model.name!r}"
    factory = scenario.model.factory
    if scenario.model.name == "custom" and factory not in policy.allowed_model_factories:
        return f"site policy does not allow model factory {factory}"
    if (reason := _data_violation(policy, scenario)) is not None:
        return reason
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


def _data_violation(policy: SitePolicy, scenario: ScenarioConfig) -> str | None:
    """A packaged dataset the site does not allow, or a declared task it does not serve."""
    task = scenario.task
    if task is None:
        allowed = policy.allowed_datasets
        if allowed is not None and scenario.data.dataset not in allowed:
            return f"site policy does not allow dataset {scenario.data.dataset!r}"
        return None
    if policy.allowed_tasks is not None and task.name not in policy.allowed_tasks:
        return f"site policy does not allow task {task.name!r}"
    return None


def delta_limit(policy: SitePolicy, num_examples: int) -> float:
    """The largest delta this site allows: its own ``max_delta``, else ``1 / (10 n)``."""
    if policy.max_delta is not None:
        return policy.max_delta
    return default_delta_limit(num_examples)


def delta_violation(policy: SitePolicy, dp: DPConfig, num_examples: int) -> str | None:
    limit = delta_limit(policy, num_examples)
    if dp.delta > limit:
        rule = "site policy max_delta" if policy.max_delta is not None else "1/(10 n)"
        return f"delta {dp.delta:g} above this site's limit {limit:.3g} ({rule})"
    return None
