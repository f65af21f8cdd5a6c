"""report.pdf: the same blocks as the HTML, typeset with reportlab platypus.

Pure Python (no cairo, no browser) so it renders on a locked-down hospital or bank machine.
The text uses DejaVu Sans from matplotlib's bundled fonts because reportlab's built-in
Helvetica has no Greek: every ε, δ and σ would otherwise print as a black box.
"""

from __future__ import annotations

import io
from pathlib import Path
from xml.sax.saxutils import escape

import matplotlib
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    Image,
    ListFlowable,
    ListItem,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.flowables import Flowable

from fedmodel.report import view
from fedmodel.report.model import Report, Section
from fedmodel.report.plots import SIZE as PLOT_SIZE

FONT, BOLD = "DejaVuSans", "DejaVuSans-Bold"
MARGIN = 1.7 * cm
TEXT_WIDTH = A4[0] - 2 * MARGIN
ACCENT = colors.HexColor("#24527a")
MAX_COL_WEIGHT = 28  # characters: a long reason or hash wraps instead of starving other columns


def render_pdf(report: Report, plots: dict[str, bytes]) -> bytes:
    """The whole PDF as bytes."""
    _register_fonts()
    styles = _styles()
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN,
        title=f"Privacy compliance report — run {report.run.run_id}",
        author=report.generator,
        subject="Differential privacy spend, ledger verification and DPIA",
    )
    story = _title(report, styles)
    for block in view.document(report):
        story += _flowables(block, plots, styles)
    footer = f"fedmodel privacy compliance report · run {report.run.run_id}"
    doc.build(story, onFirstPage=_footer(footer), onLaterPages=_footer(footer))
    return buf.getvalue()


def _register_fonts() -> None:
    """Idempotent: reportlab's font registry is process-wide, registering twice is harmless."""
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name in (FONT, BOLD):
        if name not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont(name, str(ttf / f"{name}.ttf")))
    pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=BOLD, italic=FONT, boldItalic=BOLD)


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=FONT, fontSize=9, leading=12, alignment=TA_LEFT)
    return {
        "body": ParagraphStyle("para", base, spaceAfter=4),
        "item": base,
        "title": ParagraphStyle("title", base, fontName=BOLD, fontSize=18, leading=22),
        "subtitle": ParagraphStyle("subtitle", base, textColor=colors.HexColor("#57606a")),
        "h2": ParagraphStyle(
            "h2",
            base,
            fontName=BOLD,
            fontSize=13,
            leading=16,
            textColor=ACCENT,
            spaceBefore=12,
            spaceAfter=4,
            keepWithNext=True,
        ),
        "h3": ParagraphStyle(
            "h3",
            base,
            fontName=BOLD,
            fontSize=10,
            leading=13,
            spaceBefore=8,
            spaceAfter=3,
            keepWithNext=True,
        ),
        "cell": ParagraphStyle("cell", base, fontSize=7.5, leading=9.5),
        "head": ParagraphStyle("head", base, fontName=BOLD, fontSize=7.5, leading=9.5),
        "note": ParagraphStyle(
            "note",
            base,
            fontSize=7.5,
            leading=10,
            textColor=colors.HexColor("#57606a"),
            spaceAfter=4,
        ),
        "alert": ParagraphStyle(
            "alert", base, backColor=colors.HexColor("#fff4e5"), borderPadding=4, spaceAfter=4
        ),
    }


def _title(report: Report, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    sub = (
        f"fedmodel federated run {report.run.run_id} · scenario "
        f"{report.run.scenario or 'unnamed'} · generated {report.generated_at}"
    )
    return [
        Paragraph("Privacy compliance report", styles["title"]),
        Paragraph(escape(sub), styles["subtitle"]),
        Spacer(1, 8),
    ]


def _flowables(
    block: view.Block, plots: dict[str, bytes], styles: dict[str, ParagraphStyle]
) -> list[Flowable]:
    if isinstance(block, view.Heading):
        return [Paragraph(escape(block.title), styles["h2"])]
    if isinstance(block, Section):
        return _section(block, styles)
    if isinstance(block, view.Table):
        return _table(block, styles)
    if isinstance(block, view.Plot):
        return _plot(block, plots[block.name], styles)
    return [Paragraph(escape(block.text), styles["alert" if block.alert else "body"])]


def _section(section: Section, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    out: list[Flowable] = [Paragraph(escape(section.title), styles["h3"])]
    out += [Paragraph(escape(p), styles["body"]) for p in section.paragraphs]
    if section.bullets:
        items = [ListItem(Paragraph(escape(b), styles["item"])) for b in section.bullets]
        out.append(
            ListFlowable(
                items,
                bulletType="bullet",
                start="•",
                leftIndent=12,
                bulletFontName=FONT,
                bulletFontSize=9,
                spaceAfter=4,
            )
        )
    return out


def _table(table: view.Table, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    def cell(text: str, style: str) -> Paragraph:
        return Paragraph(escape(text), styles[style])

    body = [
        [cell(c, "head" if table.key_value and i == 0 else "cell") for i, c in enumerate(r)]
        for r in table.rows
    ]
    data = body if table.key_value else [[cell(h, "head") for h in table.header], *body]
    grid = Table(data, colWidths=_col_widths(table), repeatRows=0 if table.key_value else 1)
    grid.setStyle(_table_style(table))
    out: list[Flowable] = [Paragraph(escape(table.title), styles["h3"])] if table.title else []
    out.append(grid)
    if table.note:
        out += [Spacer(1, 2), Paragraph(escape(table.note), styles["note"])]
    return out


def _col_widths(table: view.Table) -> list[float]:
    """Share the text width by each column's longest cell, capped, so tables never overflow."""
    if table.key_value:
        return [0.3 * TEXT_WIDTH, 0.7 * TEXT_WIDTH]
    columns = list(zip(table.header, *table.rows, strict=True))
    weights = [min(MAX_COL_WEIGHT, max(len(c) for c in col)) + 3 for col in columns]
    return [TEXT_WIDTH * w / sum(weights) for w in weights]


def _table_style(table: view.Table) -> TableStyle:
    offset = 0 if table.key_value else 1
    commands = [
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#d0d7de")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if table.key_value:
        commands.append(("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f6f8fa")))
    else:
        commands.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eaf1f8")))
    commands += [
        ("BACKGROUND", (0, i + offset), (-1, i + offset), colors.HexColor("#ffe3e3"))
        for i in table.flagged
    ]
    return TableStyle(commands)


def _plot(plot: view.Plot, png: bytes, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    width = TEXT_WIDTH
    height = width * PLOT_SIZE[1] / PLOT_SIZE[0]
    image = Image(io.BytesIO(png), width=width, height=height)
    # Chained, not wrapped in KeepTogether: platypus will not chain a heading's keepWithNext
    # into a container, and a heading stranded above its figure is what this prevents.
    image.keepWithNext = True
    return [image, Paragraph(escape(plot.caption), styles["note"])]


def _footer(text: str):
    def draw(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 7.5)
        canvas.setFillColor(colors.HexColor("#57606a"))
        canvas.drawString(MARGIN, MARGIN / 2, text)
        canvas.drawRightString(A4[0] - MARGIN, MARGIN / 2, f"page {doc.page}")
        canvas.restoreState()

    return draw
