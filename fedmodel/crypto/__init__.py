"""Node keys, signed hash chains, the SuperLink PKI and sealed updates.

``keys`` (key files, fingerprints), ``chain`` (signed hash-chained JSON lines, used by the privacy
ledger and the server's audit log), ``pki`` and ``seal``. Import from the modules themselves; this
package imports nothing so that loading one part never pulls in the others.
"""
