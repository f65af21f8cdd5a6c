"""Empirical privacy audits of a finished run: they test the accountant's epsilon from outside.

* ``bound``: the one-run audit's statistics (guesses from scores, Steinke et al.'s lower bound).
* ``canary``: Dirac canaries trained through the site's real DP-SGD path (an epsilon lower bound).
* ``mia``: membership inference on the run's final model (AUC, TPR at a low FPR).
* ``runfolder``: both, from a run folder, into ``RUN_DIR/privacy-audit.json``.

The accountant gives an upper bound on what DP-SGD can leak; these give lower bounds measured
on the implementation itself. A lower bound above the accounted epsilon means the code or the
accounting is wrong; far below it, that the attack (or the guarantee's worst case) is weak.
"""

from fedmodel.privacy.audit.errors import PrivacyAuditError

PRIVACY_AUDIT_FILE = "privacy-audit.json"  # in the run folder; ``fedmodel report`` reads it

__all__ = ["PRIVACY_AUDIT_FILE", "PrivacyAuditError"]
