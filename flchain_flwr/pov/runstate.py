"""A verifier node's run state as column-oriented config records.

What a verifier node without a state file keeps between messages (the chain
positions it voted at and what it voted on there, the headers and statements
it signed; see :mod:`.lockstate`) is a map from chain id to a tuple.
Flower's :class:`~flwr.app.ConfigRecord` holds lists, so a map is stored as
parallel lists: ``chain_id`` (sorted), then one list per tuple field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord

from .voterequest import config_list

Columns = Mapping[str, Callable[[Any], Any]]
"""A record's columns after ``chain_id``, in tuple order, each with the
function that converts a stored value back."""


def columns_record(
    rows: Mapping[str, tuple[Any, ...]], columns: Iterable[str]
) -> ConfigRecord:
    """``rows`` (a tuple by chain id) as a record: ``chain_id``, then one
    list per name in ``columns`` (the tuple's fields, in order)."""
    chains = sorted(rows)
    lists: dict[str, Any] = {"chain_id": chains}
    for i, name in enumerate(columns):
        lists[name] = [rows[chain][i] for chain in chains]
    return ConfigRecord(lists)


def read_columns(
    record: ConfigRecord | None, columns: Columns
) -> dict[str, tuple[Any, ...]]:
    """Inverse of :func:`columns_record` (empty without a record);
    ``ValueError`` if a column is missing or the lists differ in length."""
    if record is None:
        return {}
    chains = config_list(record, "chain_id")
    lists = [config_list(record, name) for name in columns]
    return {
        str(chain): tuple(
            convert(value)
            for convert, value in zip(columns.values(), values, strict=True)
        )
        for chain, *values in zip(chains, *lists, strict=True)
    }
