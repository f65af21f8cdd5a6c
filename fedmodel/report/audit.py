"""The run's audit log in the report: verified with the server's key, summarised in counts.

The log's format and verification belong to the server (``server/audit.py``); the report only
asks for the verdict. A broken or unverifiable log does not stop the report (the ledgers carry
the privacy figures); it is flagged in the trust chapter and listed among the warnings.
"""

from __future__ import annotations

from pathlib import Path

from fedmodel.report.model import AuditSummary

AUDIT_FILE = "audit.jsonl"


def audit_summary(run_dir: Path, server_key: Path | None = None) -> AuditSummary | None:
    """``None`` when the run kept no audit log (runs from before it existed). ``server_key``:
    the server's published verify key; default the run folder's copy of it."""
    if not (Path(run_dir) / AUDIT_FILE).is_file():
        return None
    from server.audit import AuditError, verify_audit  # the server owns the log's format

    try:
        report = verify_audit(run_dir, server_key)
    except AuditError as err:
        return AuditSummary(False, 0, 0, 0, 0, 0, 0, None, "none", str(err))
    c = report.counts
    return AuditSummary(
        verified=report.ok,
        entries=report.total,
        accepted=c["accepted"],
        rejected=c["rejected"],
        refused=c["refused"],
        errors=c["errors"],
        checkpoints=c["checkpoints"],
        signer=report.signer,
        key_source=report.key_source,
        first_break=report.first_break.describe() if report.first_break else None,
    )


def audit_warnings(summary: AuditSummary | None) -> list[str]:
    if summary is None or summary.verified:
        return []
    return [f"audit log does not verify: {summary.first_break}"]
