"""Federated evaluation at a site: the global model on the site's own held-out rows, released as
noised counts through the one spend door.

The coordinator never holds a site's rows, so the only way it learns how the model does at a
site is what the site releases: the number of held-out rows, of correct predictions and the sum
of clipped losses, each noised by the Gaussian mechanism (:mod:`fedmodel.privacy.release`) and
charged to the site's ledger as a ``release`` entry before it is computed. A site whose policy
does not opt in (``share_eval_metrics``) refuses; the request is verified exactly as a training
request is, and a request signed for training is never answered here.
"""

from __future__ import annotations

from flwr.app import Context, RecordDict

from clients.policy import delta_violation
from clients.train_round import (
    NodeSession,
    RoundRequest,
    Verified,
    answer,
    policy_reason,
    refuse,
    refused_from,
    seed_secret,
    site_data_refusal,
    site_model,
    verify_request,
)
from fedmodel.data.errors import SiteDataError
from fedmodel.privacy.release import history_entry, release, site_stats
from fedmodel.privacy.spend import Denied, SpendPlan, reserve
from fedmodel.training.loop import predict_proba

EVAL_COUNTS = "eval-counts"
GAUSSIAN = "gaussian/counts"


def run_evaluate_round(content: RecordDict, context: Context) -> RecordDict:
    verified = verify_request(content, context, "evaluate")
    if not isinstance(verified, Verified):
        return verified
    session, request = verified.session, verified.request
    policy = session.node.policy
    if not policy.share_eval_metrics:
        return refuse(session, request, "site policy does not share evaluation counts").record()
    if (reason := policy_reason(session.node, request.scenario)) is not None:
        return refuse(session, request, reason).record()
    model = site_model(session.node, request.scenario)
    if isinstance(model, str):
        return refuse(session, request, model).record()
    if (reason := session.partition_reason(request)) is not None:
        return refuse(session, request, reason).record()
    try:
        dataset = session.rows(request, test=True)
    except SiteDataError as err:
        return refuse(session, request, site_data_refusal(request.scenario, err)).record()
    if reason := delta_violation(policy, request.scenario.dp, len(dataset)):
        quiet = "delta above this site's limit"
        return refuse(session, request, quiet if session.rules.quiet else reason).record()
    decision = reserve(
        session.ledger,
        eval_plan(session, request, len(dataset)),
        session.rules,
        seed_secret=seed_secret(session),
    )
    if isinstance(decision, Denied):
        return refused_from(session, decision.entry, request).record()
    scenario = request.scenario
    model.load_state_dict(verified.channel.global_state())
    labels, probs, _ = predict_proba(
        model, dataset, batch_size=scenario.train.eval_batch_size, device=scenario.train.device
    )
    stats = site_stats(labels, probs, policy.metrics_loss_bound)
    noised = release(stats.values(), stats.bounds(), policy.metrics_noise_multiplier)
    metrics = {
        "eval-count": noised["count"],
        "eval-correct": noised["correct"],
        "eval-loss-sum": noised["loss_sum"],
        "ledger-count": decision.entry.seq + 1,
    }
    node = {"name": session.node.name, "ledger-hash": decision.entry.hash, "releases": EVAL_COUNTS}
    return answer(verified, {}, metrics, node, decision)


def eval_plan(session: NodeSession, request: RoundRequest, n: int) -> SpendPlan:
    """One Gaussian release of three bounded sums; the run's target epsilon caps it too."""
    policy, dp = session.node.policy, request.scenario.dp
    noise = float(policy.metrics_noise_multiplier)
    return SpendPlan(
        run_id=request.run_id,
        round=request.round,
        history=(history_entry(noise),),
        releases=(EVAL_COUNTS,),
        noise_multiplier=noise,
        sample_rate=1.0,
        steps=1,
        max_grad_norm=float(policy.metrics_loss_bound),
        delta=dp.delta,
        dataset_size=n,
        kind="release",
        mechanism=GAUSSIAN,
        planned_rounds=request.num_rounds,
        run_target_epsilon=dp.target_epsilon,
        accountant=dp.accountant,
        request_digest=request.digest,
    )
