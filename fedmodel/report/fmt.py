"""Number and flag formatting shared by the prose, the tables, HTML and PDF.

One place decides how an epsilon or an "off" setting reads, so the three documents print the
same figure the same way and a reviewer comparing them sees no spurious differences.
"""

from __future__ import annotations

from collections.abc import Iterable


def num(value: float | int | None, digits: int = 4) -> str:
    """Significant-digit formatting; an em dash for values that were not recorded."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def flag(value: bool | None) -> str:
    """on / off, or "not recorded" — an unknown safeguard must never read as "off" or "on"."""
    if value is None:
        return "not recorded"
    return "on" if value else "off"


def nums(values: Iterable[float], digits: int = 4) -> str:
    """A short list such as ``1.1, 1.2``; several values mean the parameter changed over rounds."""
    items = [num(v, digits) for v in values]
    return ", ".join(items) if items else "—"


def rounds(values: Iterable[int]) -> str:
    items = [str(v) for v in values]
    return ", ".join(items) if items else "none"


def short_hash(value: str | None, length: int = 16) -> str:
    if not value:
        return "—"
    return value if len(value) <= length else value[:length] + "…"
