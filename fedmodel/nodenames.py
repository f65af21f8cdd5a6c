"""The one rule for a node's name, wherever a name enters or is used as a file name.

A node's name becomes file names (``<name>.ed25519.pub`` in the coordinator's registry, key
files) and is printed in reports. The rule admits 1-64 letters, digits, ``.``, ``_`` and ``-``,
starting with a letter or digit: no path separators, no ``.`` or ``..``, no hidden files, no
markup or mathtext. Configuration (``node.toml``, ``server.toml``, the simulation's virtual nodes)
validates with it; a name that arrives in a reply or a ledger is untrusted and is checked with
:func:`is_node_name` before it is ever joined into a path.
"""

from __future__ import annotations

import re

NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NODE_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_NODE_NAME = re.compile(NODE_NAME_PATTERN)


def is_node_name(name: object) -> bool:
    """Whether ``name`` follows the rule (and so is safe as one path component)."""
    return isinstance(name, str) and _NODE_NAME.fullmatch(name) is not None
