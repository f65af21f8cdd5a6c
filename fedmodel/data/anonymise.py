"""Direct identifiers, declared per dataset, removed before any other code sees a row.

Loaders call :func:`anonymise` straight after reading a file, so splitting, preprocessing,
statistics and training never handle a patient or customer id. An identifier is either dropped
(the default: nothing downstream needs it) or replaced by a keyed HMAC-SHA256 pseudonym when a site
must still link rows (e.g. to its own records). The key is always an argument: a module-level key
would be shared by every caller and could leak into logs or other sites.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from types import MappingProxyType

import pandas as pd

from fedmodel.data.errors import DataError

IDENTIFIERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "mnist": frozenset(),
        # movie_name names a film, not a person.
        "rotten-tomatoes": frozenset(),
        # Patient number in the UCI file: a direct identifier.
        "heart": frozenset({"id"}),
        # The raw Statlog table has no identifier column (declared empty on purpose).
        "german-credit": frozenset(),
        # fnlwgt is a census sampling weight, not an identifier; the loader leaves it out of the
        # features instead (see credit.adult_task).
        "adult": frozenset(),
        "digits": frozenset(),
        "breast-cancer": frozenset(),
    }
)


def identifiers_for(dataset: str) -> frozenset[str]:
    """The declared direct-identifier columns of ``dataset`` (possibly empty)."""
    try:
        return IDENTIFIERS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r}: no identifier policy declared") from None


def pseudonym(value: object, key: bytes) -> str:
    """Keyed HMAC-SHA256 of ``str(value)``: stable for one key, unlinkable without it."""
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def anonymise(frame: pd.DataFrame, dataset: str, *, key: bytes | None = None) -> pd.DataFrame:
    """Return a copy of ``frame`` without ``dataset``'s direct identifiers.

    With ``key=None`` identifier columns are dropped; with a key each value is replaced by its
    :func:`pseudonym`. A declared identifier missing from the frame is an error: it means the file
    is not the table the policy was written for.
    """
    columns = identifiers_for(dataset)
    absent = sorted(columns - set(frame.columns))
    if absent:
        raise DataError(f"{dataset}: declared identifier column(s) {', '.join(absent)} not found")
    if key is None:
        return frame.drop(columns=sorted(columns))
    if not key:
        raise DataError(f"{dataset}: anonymisation key must not be empty")
    out = frame.copy()
    for column in sorted(columns):
        out[column] = [pseudonym(v, key) for v in out[column]]
    return out
