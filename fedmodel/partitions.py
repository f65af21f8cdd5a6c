"""Packaged partitions are assigned by the coordinator, so two sites cannot claim the same one.

``server.toml`` gives each ``[[nodes]]`` entry a ``partition_id``; ``fedmodel server run``
writes the table beside the registered keys (``partitions.json``) and every signed request
carries it, so a site trains on the rows the coordinator assigned it and refuses a request that
contradicts its own ``node.toml``. The table is public configuration (names and numbers).
A site's own files ([data] path) need no assignment: nobody else holds them.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedmodel.errors import ConfigError

PARTITIONS_FILE = "partitions.json"

Assignment = dict[str, tuple[int, int]]
"""node name -> (partition id, number of partitions)."""


def dump_assignment(assignment: Assignment) -> str:
    return json.dumps({k: list(v) for k, v in sorted(assignment.items())}, sort_keys=True)


def parse_assignment(text: str, source: str) -> Assignment:
    """The table as the coordinator wrote or signed it; anything malformed is one line."""
    try:
        raw = json.loads(text)
        table = {str(k): (int(v[0]), int(v[1])) for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise ConfigError(f"{source}: malformed partition assignment") from None
    check_assignment(table, source)
    return table


def check_assignment(table: Assignment, source: str) -> None:
    seen: dict[int, str] = {}
    for name, (pid, parts) in sorted(table.items()):
        if not 0 <= pid < parts:
            raise ConfigError(f"{source}: {name}: partition {pid} outside 0..{parts - 1}")
        if pid in seen:
            raise ConfigError(f"{source}: {name} and {seen[pid]} are both assigned partition {pid}")
        seen[pid] = name


def read_assignment(folder: Path | None) -> Assignment:
    """``partitions.json`` in the registry folder; no file: no assignment (own files)."""
    if folder is None or not (folder / PARTITIONS_FILE).is_file():
        return {}
    path = folder / PARTITIONS_FILE
    return parse_assignment(path.read_text(encoding="utf-8"), str(path))
