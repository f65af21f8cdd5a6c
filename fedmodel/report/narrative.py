"""The prose of the report: threat model and DPIA (GDPR art. 35) text built from the numbers.

The text is generated from the collected facts rather than written once, so a data-protection
officer can lift it into a DPIA and it will state this run's parameters, this run's safeguards
(including the ones that were off) and each site's verdict, not a generic template's.
"""

from __future__ import annotations

import math

from fedmodel.report import fmt
from fedmodel.report.model import (
    CentralDP,
    ClientReport,
    Evaluation,
    ReleasedValue,
    RunIdentity,
    Section,
    Transport,
)
from fedmodel.report.released import accountant_name

DP_PROTECTIONS = ("dp-sgd", "gaussian")

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
                "who later obtains the trained model. Record-level DP bounds what any of them "
                "can learn about a single record from a site's model updates and noised "
                "releases, whatever their computing power, because all later processing of a "
                "differentially private output keeps the guarantee. What else leaves a site "
                "(public configuration, ledger heads, signed refusals) is listed per site in "
                "'What left each site'.",
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


def coverage_section(
    clients: list[ClientReport], accountant: str, evaluation: Evaluation
) -> Section:
    """Exactly what the record-level guarantee covers, by which accountant, at which delta, and
    where the model was evaluated: the sentence a reader should not have to assemble."""
    bullets = [_covered_bullet(c) for c in clients]
    return Section(
        title="What differential privacy covers",
        paragraphs=[
            "Record-level differential privacy, for neighbouring datasets that differ in one "
            "record (add or remove one record at one site), covers exactly the values each "
            "site released under a DP mechanism and charged to its "
            "signed ledger: its model updates (DP-SGD) and the releases listed below (Gaussian "
            "mechanism), each at the site's own delta. Each epsilon covers everything the "
            "site's ledger records, in this run and any before it.",
            f"Accountant: the run used the {accountant_name(accountant)}; the sites checked "
            "their caps with it and sign its figure into every spend. This report recomputes "
            "both accountants from the signed history and cross-checks PRV with Google "
            "dp-accounting (PLD).",
            "Not covered by DP: the accounting parameters each reply carries (public "
            "configuration; where a site's signed policy treats its dataset size as public, "
            "the sample rate reveals its row count to within a batch), the ledger heads, signed "
            "refusals and their timing, and which sites took part (only central DP, if used, "
            "covers participation).",
            _evaluation_sentence(evaluation),
        ],
        bullets=bullets,
    )


def _covered_bullet(c: ClientReport) -> str:
    covered = [v for v in c.released if v.protection in DP_PROTECTIONS]
    names = ", ".join(_release_phrase(v) for v in covered) or "no DP release in this run"
    figure = (
        "epsilon UNBOUNDED (a release without DP noise)"
        if c.unbounded
        else f"epsilon {fmt.num(c.epsilon_accounted)} ({c.accountant.upper()})"
    )
    bare = [f"{v.what} (rounds {fmt.rounds(v.rounds)})" for v in c.released if v.flagged]
    tail = f"; released WITHOUT DP: {', '.join(bare)}" if bare else ""
    return f"{c.node}: {names}; {figure} at delta {fmt.num(c.delta)}{tail}"


def _release_phrase(v: ReleasedValue) -> str:
    sigma = "" if v.noise_multiplier is None else f", σ {fmt.num(v.noise_multiplier)}"
    return f"{v.label.lower()} (rounds {fmt.rounds(v.rounds)}{sigma})"


def _evaluation_sentence(evaluation: Evaluation) -> str:
    if evaluation.oracle:
        server = (
            "the server evaluated the model as a SIMULATION-ONLY ORACLE on the sites' own "
            "held-out rows, which no coordinator holds in a deployment; these figures are not "
            "a privacy-preserving evaluation"
        )
    elif evaluation.server == "public":
        server = f"the server evaluated the model on {evaluation.server_data or 'public data'}"
    elif evaluation.server == "none":
        server = "the server did not evaluate the model (the test rows are the sites' own)"
    else:
        server = "run.json does not record where the server evaluated the model"
    federated = (
        "; the sites evaluated it on their held-out rows and released only noised counts, "
        "charged to their ledgers (federated evaluation)"
        if evaluation.federated
        else ""
    )
    return f"Evaluation: {server}{federated}."


def dpia_sections(
    run: RunIdentity,
    transport: Transport,
    central: CentralDP,
    clients: list[ClientReport],
    accountant: str = "prv",
) -> list[Section]:
    """DPIA building blocks in the order of art. 35(7): processing, data flows, measures, risks."""
    return [
        _processing(run, clients),
        _stays(),
        _leaves(transport, central, clients),
        _safeguards(transport, central, clients, accountant),
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
            "data owner sets the site's privacy cap and policy in its own node configuration, "
            "and the site signs them into its ledger before deciding under them.",
        ],
    )


def _leaves(transport: Transport, central: CentralDP, clients: list[ClientReport]) -> Section:
    """From the signed entries: every kind of value some site released, and how."""
    sealed = " sealed (encrypted to the aggregator)," if transport.sealed_updates else ""
    kinds: dict[str, list[str]] = {}
    for c in clients:
        for v in c.released:
            kinds.setdefault(v.what, []).append(c.node)
    text = {
        "model-update": "Model updates: the change in model weights after local training, "
        f"computed with per-record gradient clipping and Gaussian noise (DP-SGD);{sealed} TLS "
        f"{fmt.flag(transport.tls)}.",
        "train-metrics": "Training metrics, noised: example count, accuracy and loss, each a "
        "Gaussian release charged to the site's ledger with its round (sites whose signed "
        "policy opts in).",
        "eval-counts": "Evaluation counts, noised: held-out rows, correct predictions and loss "
        "sum of the global model at the site, a Gaussian release charged to its ledger.",
        "accounting-parameters": "Accounting parameters (public configuration, not noised): "
        "noise multiplier, clipping norm and delta, and, unless a site's signed policy keeps "
        "its dataset size private, sample rate, steps and epsilon.",
        "ledger-heads": "Ledger heads: the hash and entry count of the site's privacy ledger, "
        "so the server can later detect a rewritten ledger. They reveal no record.",
        "refusals": "Refusals: when a round would exceed the cap or break the site's policy, "
        "the site sends only the signed reason and the projected epsilon, no update.",
        "update-coding": "Update coding: how each site's DP update travelled (plain float32, or "
        "int8/int4 quantisation and top-k applied by the site after the DP noise) and the bytes "
        "that arrived; coding is post-processing of the DP release and costs no privacy.",
    }
    order = [*text, *sorted(set(kinds) - set(text))]
    bullets = [
        f"{text.get(what, what)} ({', '.join(kinds[what])})" for what in order if what in kinds
    ]
    bullets += [
        f"{c.node}: {v.what} released WITHOUT DP in rounds {fmt.rounds(v.rounds)}: no guarantee."
        for c in clients
        for v in c.released
        if v.flagged
    ]
    if not bullets:
        bullets.append("No site's ledger records anything that left it in this run.")
    if central.used:
        bullets.append("The server additionally clips and noises the aggregate (central DP).")
    return Section(title="What leaves a site and in what form", bullets=bullets)


def _safeguards(
    transport: Transport, central: CentralDP, clients: list[ClientReport], accountant: str
) -> Section:
    bullets = [_safeguard_bullet(c) for c in clients]
    bullets += [
        f"Accounting: the {accountant_name(accountant)} over each site's full history; this "
        "report recomputes PRV and RDP and re-derives PRV's figure with Google dp-accounting "
        "(PLD).",
        f"Transport: TLS {fmt.flag(transport.tls)}, node authentication "
        f"{fmt.flag(transport.node_auth)}, sealed updates {fmt.flag(transport.sealed_updates)}, "
        f"secure aggregation {fmt.flag(transport.secure_aggregation)}.",
        "Privacy ledger: a hash-chained, Ed25519-signed record per site of every spend (DP-SGD "
        "rounds and noised releases), what left with it, every refusal and every change of its "
        "cap or policy; each ledger was verified before this report was produced.",
        "Budget caps are enforced by the data owner at the site: a round whose projected "
        "epsilon would exceed the cap is refused before any training. The site signs its cap "
        "and policy into its ledger before deciding under them; this report reads caps only "
        "from those signed entries, never from a node configuration file.",
    ]
    if central.used:
        bullets.append("Central DP (client-level) on the server's aggregate; see its section.")
    return Section(title="Safeguards", bullets=bullets)


def _safeguard_bullet(c: ClientReport) -> str:
    figure = (
        f"epsilon {fmt.num(c.epsilon_accounted)} ({c.accountant.upper()}) at delta "
        f"{fmt.num(c.delta)} over its whole ledger"
    )
    if not c.noise_multipliers:
        return f"{c.node}: trained no DP-SGD round in this run; {figure}"
    return (
        f"{c.node}: DP-SGD with noise multiplier {fmt.nums(c.noise_multipliers)}, clipping "
        f"norm {fmt.nums(c.max_grad_norms)}, sampling rate {fmt.nums(c.sample_rates)}, "
        f"{c.steps} steps; {figure}"
    )


def _residual_risks(clients: list[ClientReport], transport: Transport) -> Section:
    bullets = [
        "Interpreting epsilon: DP bounds how much more likely any output becomes because one "
        "record was included, by a factor of at most e^epsilon, except with probability delta. "
        "Small epsilon (about 1 or below) is a strong guarantee; larger values are weaker. "
        "A person with several records is protected with a correspondingly larger epsilon.",
        *(_membership_bullet(c) for c in clients),
        "Model inversion and attribute inference: bounded for individual records by the same "
        "epsilon, but DP does not hide statistics of a site's population as a whole.",
        "Not protected by DP: the accounting parameters each reply carries (where a site "
        "treats its dataset size as public, the sample rate 1/ceil(n/B) reveals n to within a "
        "batch), the ledger heads and the timing of refusals.",
        "Trust in the site's own code: the ledger proves what the site recorded, not that its "
        "software trained with those parameters; sites must run a reviewed fedmodel release.",
    ]
    if not transport.secure_aggregation:
        bullets.append("Without secure aggregation the server sees each site's noised update.")
    bullets += [b for c in clients for b in _delta_bullets(c)]
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
        f"Membership inference at {c.node}: at epsilon {fmt.num(c.epsilon_accounted)}, no "
        f"attack can detect a record's presence with a true-positive rate above {tpr} at a {fpr} "
        "false-positive rate."
    )


def _delta_bullets(c: ClientReport) -> list[str]:
    """delta should be well below 1/n, or "leak one record outright" fits within the guarantee:
    every signed spend above 1/(10 n), said allowed where the site's signed max_delta allowed
    it, and a site known only from metrics judged by its recorded delta and row count."""
    out = [
        f"{c.node}: ledger entry {f.entry} (round {f.round}) uses delta {fmt.num(f.delta)}, "
        + (
            f"not below 1/n = {fmt.num(1.0 / f.dataset_size)} for its {f.dataset_size} rows"
            if f.at_least_one_over_n
            else f"above 1/(10 n) = {fmt.num(f.limit)} for its {f.dataset_size} rows"
        )
        + (f"; allowed by the site's {f.allowed_by}" if f.allowed_by else "; no policy allowed it")
        + "; choose a smaller delta."
        for f in c.delta_flags
    ]
    if c.ledger.verified or not c.dataset_size or c.delta < 1.0 / c.dataset_size:
        return out
    return [
        *out,
        f"{c.node}: delta {fmt.num(c.delta)} is not below 1/n = "
        f"{fmt.num(1.0 / c.dataset_size)} for its dataset size; choose a smaller delta.",
    ]


def _verdicts(clients: list[ClientReport]) -> Section:
    return Section(
        title="Verdict per site",
        bullets=[f"{c.node}: {c.verdict}" for c in clients],
    )


def data_section(info: dict) -> Section | None:
    """Where the rows came from and what shaped the features: the declared task's rules, and
    the only statistics fitted on a site's rows (at that site, on its training rows)."""
    data = info.get("data")
    if not isinstance(data, dict):
        return None
    if data.get("source") != "site files":
        return Section(
            title="Data",
            paragraphs=[
                f"Packaged dataset {data.get('dataset')!r}: each site trained on the "
                "partition the coordinator assigned it."
            ],
        )
    fitted = data.get("fitted_at_each_site") or []
    bullets = [
        f"Task {data.get('task')!r} ({data.get('kind')}), classes: "
        + ", ".join(str(c) for c in data.get("classes", [])),
        "Columns read: " + (", ".join(str(c) for c in data.get("columns", [])) or "none"),
        "Identifiers, never read into features, messages or logs: "
        + (", ".join(str(c) for c in data.get("identifiers_never_read", [])) or "none declared"),
        "Fitted at each site on its own training rows only: "
        + (", ".join(str(f) for f in fitted) or "nothing (all preprocessing is declared)"),
    ]
    return Section(
        title="Data: a declared task over each site's own files",
        paragraphs=[
            "Every site mapped its own files to the task the coordinator declared; no rows "
            "were pooled. Scaling, category order and imputed values come from the "
            "declaration, so no statistic of one site's rows shapes another site's model."
        ],
        bullets=bullets,
    )
