"""The report's two figures, as PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: no global figure registry, no GUI backend, safe to call from a server or a test in
parallel. They return bytes so the writer can place every output file atomically at the end.

Site names come from ledgers and replies, so they are drawn as written: never parsed as
mathtext (``$\\foo$`` would stop the report; ``$x^2$`` would print as x squared), and passed to
the legend explicitly (matplotlib drops a label starting with ``_`` from an automatic legend).
"""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedmodel.report.model import ClientReport, Report

DPI = 150
SIZE = (7.0, 3.6)  # inches; fits an A4 text column at full width


def render_plots(report: Report) -> dict[str, bytes]:
    """``{"epsilon": png, "accuracy": png}``; the keys are also the file stems."""
    return {"epsilon": epsilon_plot(report.clients), "accuracy": accuracy_plot(report)}


def epsilon_plot(clients: list[ClientReport]) -> bytes:
    return _png(epsilon_figure(clients))


def epsilon_figure(clients: list[ClientReport]) -> Figure:
    """Cumulative epsilon per site per round, its cap dashed in the same colour, refusals as x."""
    fig, ax = _figure()
    colours = _palette(len(clients))
    handles, names = [], []
    for i, (client, colour) in enumerate(zip(clients, colours, strict=True)):
        points = sorted((p.round, p.epsilon) for p in client.epsilon_by_round)
        if points:
            xs, ys = zip(*points, strict=True)
            # earlier sites drawn wider underneath: sites that spent the same epsilon (the usual
            # case with one calibrated target) show as concentric rings, not one line
            (line,) = ax.plot(
                xs, ys, marker="o" if len(xs) <= 30 else None, color=colour,
                markersize=4 + 2.5 * (len(clients) - 1 - i), linewidth=1 + (len(clients) - 1 - i),
            )  # fmt: skip
            handles.append(line)
            names.append(client.node)
        _mark_refusals(ax, client, points, colour)
    _draw_caps(ax, clients, colours)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε (PRV)")
    ax.set_title("Privacy spent per site (dashed: site cap, x: refused round)")
    ax.set_ylim(0, 1.12 * max(_highest(clients), 1e-3))
    _integer_rounds(ax)
    if handles:
        legend = ax.legend(handles, names, loc="best", fontsize=8, ncols=len(names) // 6 + 1)
        for text in legend.get_texts():
            text.set_parse_math(False)
    return fig


def _draw_caps(ax, clients: list[ClientReport], colours: list) -> None:
    """One dashed line and one label per distinct cap, naming every site that has it: sites
    sharing a cap would otherwise print their labels on top of each other."""
    by_cap: dict[float, list[int]] = {}
    for i, client in enumerate(clients):
        if client.cap is not None:
            by_cap.setdefault(client.cap.epsilon, []).append(i)
    for cap, members in sorted(by_cap.items()):
        colour = colours[members[0]] if len(members) == 1 else "#444444"
        ax.axhline(cap, color=colour, linestyle="--", linewidth=1.2)
        names = ", ".join(clients[i].node for i in members)
        ax.annotate(
            f"cap {cap:g}: {names}",
            xy=(0.01, cap),
            xycoords=("axes fraction", "data"),
            xytext=(0, 2),
            textcoords="offset points",
            color=colour,
            fontsize=7,
            parse_math=False,  # site names, as written
        )


def _highest(clients: list[ClientReport]) -> float:
    values = [p.epsilon for c in clients for p in c.epsilon_by_round]
    values += [c.cap.epsilon for c in clients if c.cap]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=0.0)


def _mark_refusals(ax, client: ClientReport, points: list[tuple[int, float]], colour) -> None:
    """A refused round spends nothing: mark it at the epsilon the site already had."""
    for refusal in client.refusals:
        before = [eps for rnd, eps in points if rnd < refusal.round]
        ax.plot(
            refusal.round,
            before[-1] if before else 0.0,
            marker="x",
            markersize=9,
            markeredgewidth=2,
            color=colour,
            linestyle="none",
        )


def accuracy_plot(report: Report) -> bytes:
    """Server-side accuracy after each round; an explicit note when none was recorded."""
    fig, ax = _figure()
    points = [(r.round, r.server["accuracy"]) for r in report.rounds if "accuracy" in r.server]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", color="#1f77b4")
        ax.set_ylim(0, 1.0 if max(ys) <= 1 else None)
    else:
        ax.text(
            0.5,
            0.5,
            "no server accuracy recorded",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title("Global model accuracy on the server's evaluation set")
    _integer_rounds(ax)
    return _png(fig)


def _figure():
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _palette(n: int) -> list:
    """Tab10 for up to ten sites (distinct, colour-blind tolerable); a continuous map beyond."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]


def _integer_rounds(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
