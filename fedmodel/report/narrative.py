"""The prose of the report: threat model and DPIA (GDPR art. 35) text built from the numbers.

The text is generated from the collected facts rather than written once, so a data-protection
officer can lift it into a DPIA and it will state this run's parameters, this run's safeguards
(including the ones that were off) and each site's verdict, not a generic template's.
"""

from __future__ import annotations

import math

from fedmodel.report import fmt
from fedmodel.report.model import CentralDP, ClientReport, RunIdentity, Section, Transport

MIA_FPR = 0.01  # the false-positive rate at which membership-inference power is quoted


def membership_tpr_bound(epsilon: float, delta: float, fpr: float = MIA_FPR) -> float:
    """Highest true-positive rate any membership-inference test can reach at ``fpr``.

    (epsilon, delta)-DP means TPR <= e^epsilon * FPR + delta for every test; quoting it at a
    fixed low FPR turns an abstract epsilon into a statement a non-specialist can weigh.
    """
    if epsilon > 700:  # e^epsilon overflows; the bound is vacuous long before
        return 1.0
    return min(1.0, math.exp(epsilon) * fpr + delta)


def threat_model_sections(transport: Transport, central: CentralDP) -> list[Section]:
    """Who is assumed to attack, what the run's mechanisms protect, and what they do not."""
    return [
        Section(
            title="Threat model",
            paragraphs=[
                "Adversaries considered: an honest-but-curious aggregation server that sees every "
                "update it receives; other participating sites; a network observer; and anyone "
                "who later obtains the trained model. Record-level DP-SGD bounds what any of "
                "them can learn about a single training record from everything a site sends, "
                "whatever their computing power, because all later processing of a "
                "differentially private output keeps the guarantee.",
                "Not covered: a site that runs modified code (the accountant and the budget run "
                "at the site, so the guarantee rests on the site's own software); attacks that "
                "corrupt the model (poisoning) rather than read it; properties of a site's "
                "population as a whole, which DP does not hide.",
            ],
            bullets=[
                f"TLS between sites and server: {fmt.flag(transport.tls)}",
                f"Node authentication: {fmt.flag(transport.node_auth)}",
                f"Sealed (end-to-end encrypted) updates: {fmt.flag(transport.sealed_updates)}",
                f"Secure aggregation: {fmt.flag(transport.secure_aggregation)}"
                + ("" if transport.secure_aggregation else " — the server sees each update"),
                f"Central (client-level) DP: {'used' if central.used else 'not used'}",
            ],
        )
    ]


def dpia_sections(
    run: RunIdentity, transport: Transport, central: CentralDP, clients: list[ClientReport]
) -> list[Section]:
    """DPIA building blocks in the order of art. 35(7): processing, data flows, measures, risks."""
    return [
        _processing(run, clients),
        _stays(),
        _leaves(transport, central),
        _safeguards(transport, central, clients),
        _residual_risks(clients, transport),
        _verdicts(clients),
    ]


def _processing(run: RunIdentity, clients: list[ClientReport]) -> Section:
    return Section(
        title="Description of the processing",
        paragraphs=[
            f"Run {run.run_id} (scenario {run.scenario or 'unnamed'}, engine "
            f"{run.engine or 'not recorded'}) trained one shared model across {len(clients)} "
            "sites by federated learning, from "
            f"{run.started or 'an unrecorded start'} to {run.finished or 'an unrecorded end'}. "
            "Purpose: a model that benefits from every site's records without any site "
            "disclosing those records to the server or to another site.",
        ],
    )


def _stays() -> Section:
    return Section(
        title="What data stays where",
        bullets=[
            "Raw records never leave the site: loading, preprocessing and training run on the "
            "site's own machine.",
            "Each site keeps its privacy ledger and its signing key on its own disk; the "
            "data owner sets the site's privacy cap in its own node configuration.",
        ],
    )


def _leaves(transport: Transport, central: CentralDP) -> Section:
    sealed = " sealed (encrypted to the aggregator)," if transport.sealed_updates else ""
    bullets = [
        "Model updates: the change in model weights after local training, computed with "
        f"per-record gradient clipping and Gaussian noise (DP-SGD);{sealed} TLS "
        f"{fmt.flag(transport.tls)}.",
        "Ledger heads: the hash and entry count of the site's privacy ledger, so the server "
        "can later detect a rewritten ledger. They reveal no record.",
        "Per-round metadata (not noised): number of training examples, training loss and "
        "accuracy, the DP parameters used and the epsilon spent so far.",
        "Refusals: when a round would exceed the cap, the site sends only the reason and the "
        "projected epsilon, no update.",
    ]
    if central.used:
        bullets.append("The server additionally clips and noises the aggregate (central DP).")
    return Section(title="What leaves a site and in what form", bullets=bullets)


def _safeguards(transport: Transport, central: CentralDP, clients: list[ClientReport]) -> Section:
    bullets = [
        f"{c.node}: DP-SGD with noise multiplier {fmt.nums(c.noise_multipliers)}, clipping "
        f"norm {fmt.nums(c.max_grad_norms)}, sampling rate {fmt.nums(c.sample_rates)}, "
        f"{c.steps} steps; epsilon {fmt.num(c.epsilon)} at delta {fmt.num(c.delta)}"
        for c in clients
    ]
    bullets += [
        "Accounting: Opacus PRV accountant over each site's full history, independently "
        "re-derived with Google dp-accounting (PLD) in this report.",
        f"Transport: TLS {fmt.flag(transport.tls)}, node authentication "
        f"{fmt.flag(transport.node_auth)}, sealed updates {fmt.flag(transport.sealed_updates)}, "
        f"secure aggregation {fmt.flag(transport.secure_aggregation)}.",
        "Privacy ledger: a hash-chained, Ed25519-signed record per site of every round trained "
        "and every round refused; each ledger was verified before this report was produced.",
        "Budget caps are enforced by the data owner at the site: a round whose projected "
        "epsilon would exceed the cap is refused before any training.",
    ]
    if central.used:
        bullets.append("Central DP (client-level) on the server's aggregate; see its section.")
    return Section(title="Safeguards", bullets=bullets)


def _residual_risks(clients: list[ClientReport], transport: Transport) -> Section:
    bullets = [
        "Interpreting epsilon: DP bounds how much more likely any output becomes because one "
        "record was included, by a factor of at most e^epsilon, except with probability delta. "
        "Small epsilon (about 1 or below) is a strong guarantee; larger values are weaker. "
        "A person with several records is protected with a correspondingly larger epsilon.",
        *(_membership_bullet(c) for c in clients),
        "Model inversion and attribute inference: bounded for individual records by the same "
        "epsilon, but DP does not hide statistics of a site's population as a whole.",
        "Metadata leaving each site is not protected by DP: dataset size, training loss and "
        "accuracy per round, and refusal timing reveal facts about the site's data.",
        "Trust in the site's own code: the ledger proves what the site recorded, not that its "
        "software trained with those parameters; sites must run a reviewed fedmodel release.",
    ]
    if not transport.secure_aggregation:
        bullets.append("Without secure aggregation the server sees each site's noised update.")
    bullets += [_delta_bullet(c) for c in clients if _delta_too_large(c)]
    bullets += [
        f"{c.node} trained without DP noise in rounds {fmt.rounds(c.unprotected_rounds)}: its "
        "updates carried no privacy guarantee."
        for c in clients
        if c.unprotected_rounds
    ]
    return Section(title="Residual risks", bullets=bullets)


def _membership_bullet(c: ClientReport) -> str:
    tpr, fpr = fmt.pct(c.membership_tpr_bound, 1), fmt.pct(MIA_FPR, 0)
    return (
        f"Membership inference at {c.node}: at epsilon {fmt.num(c.epsilon)}, no attack can "
        f"detect a record's presence with a true-positive rate above {tpr} at a {fpr} "
        "false-positive rate."
    )


def _delta_too_large(c: ClientReport) -> bool:
    """delta should be well below 1/n, or "leak one record outright" fits within the guarantee."""
    return bool(c.dataset_size) and c.delta >= 1.0 / c.dataset_size


def _delta_bullet(c: ClientReport) -> str:
    return (
        f"{c.node}: delta {fmt.num(c.delta)} is not below 1/n = {fmt.num(1.0 / c.dataset_size)} "
        "for its dataset size; choose a smaller delta."
    )


def _verdicts(clients: list[ClientReport]) -> Section:
    return Section(
        title="Verdict per site",
        bullets=[f"{c.node}: {c.verdict}" for c in clients],
    )
