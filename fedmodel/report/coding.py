"""How each site's model updates were coded on the wire, and how many bytes left it.

From the server's records (metrics.jsonl): the coding is what the server decoded from each
payload (:func:`server.wire.update_from_payload`), the bytes are each reply envelope's size as
it arrived. Coding (int8/int4 quantisation, top-k) is applied by the site to its update *after*
DP-SGD noised it, with randomness of its own: post-processing of a differentially private
release, so it costs no privacy and changes no epsilon in this report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from fedmodel.report.model import ReleasedValue

UPDATE_CODING = "update-coding"
POST_PROCESSING = "post-processing"
CODINGS = {
    "none": "plain float32 weights",
    "int8": "int8 stochastic quantisation of the noised update, one scale per tensor",
    "int4": "int4 stochastic quantisation of the noised update, one scale per tensor",
}


def coding_values(rows: Sequence[tuple[int, dict[str, Any]]]) -> list[ReleasedValue]:
    """One value per coding a site's accepted training replies used, with their bytes."""
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for rnd, row in rows:
        if row.get("status") == "ok" and "compression" in row:
            groups[str(row["compression"])].append((rnd, row))
    return [_value(coding, replies) for coding, replies in sorted(groups.items())]


def _value(coding: str, replies: list[tuple[int, dict[str, Any]]]) -> ReleasedValue:
    sizes = [int(r["bytes_sent"]) for _, r in replies if isinstance(r.get("bytes_sent"), int)]
    sent = (
        f"{sum(sizes):,} bytes in {len(sizes)} replies (mean {sum(sizes) // len(sizes):,} per "
        "reply), as the server received the envelopes"
        if sizes
        else "bytes not recorded (secure aggregation: SecAgg+'s masked field vectors travel)"
    )
    cost = (
        "Coding is post-processing of the already DP-noised update, with randomness "
        "independent of the data: it costs no privacy and changes no epsilon."
        if coding != "none"
        else "No coding: the DP update itself."
    )
    return ReleasedValue(
        what=UPDATE_CODING,
        label=f"Model update on the wire: {coding}",
        protection=POST_PROCESSING,
        rounds=sorted({rnd for rnd, _ in replies}),
        entries=[],
        detail=f"{_describe(coding)}; {sent}. {cost}",
    )


def _describe(coding: str) -> str:
    """``int8+top-k 0.1`` or, under SecAgg+, ``int8, decoded at the site``, in words."""
    base, _, note = coding.partition(", ")
    method, _, rest = base.partition("+")
    text = CODINGS.get(method, f"coding {method!r}") + (f", {rest}" if rest else "")
    if note:
        text += f" ({note}, then field-quantised and masked by SecAgg+)"
    return text
