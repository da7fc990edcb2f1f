"""Weights of inputs named by (row, feature name), as a table of data and back.

``logreg_lags`` has two such families in river's weight dictionary: its lags' features (row: the
lag) and its trend inputs (row: the scale). A checkpoint holds each as the feature names in use
and one row of weights per lag or scale, so that it stays data of a bounded shape.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, MutableMapping, Sequence
from typing import Any

import numpy as np

from stream_lstm.models.state_data import Fields, damaged

#: The input name of a feature in a row: ``(kind, row, feature name)``.
InputName = Callable[[int, str], tuple[str, int, str]]


def weight_table(
    weights: MutableMapping[Hashable, float], kind: str, rows: Sequence[int], input_name: InputName
) -> dict[str, Any]:
    """The weights of the inputs ``(kind, row, name)``: the names that have one, and per row their
    weights (0 for a name without a weight in that row)."""
    names = list(dict.fromkeys(n[2] for n in weights if isinstance(n, tuple) and n[0] == kind))
    values = np.array(
        [[weights.get(input_name(row, name), 0.0) for name in names] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(names))
    return {"names": names, "values": values}


def read_weight_table(
    fields: Fields,
    field: str,
    rows: Sequence[int],
    input_name: InputName,
    known: Collection[str],
    weights: MutableMapping[Hashable, float],
) -> None:
    """Put the weights of a :func:`weight_table` read from ``field`` into ``weights``
    (:class:`~stream_lstm.errors.CheckpointRejected` if it is not one of these ``rows``, or names
    a feature outside ``known``)."""
    table = fields.nested(field, ("names", "values"))
    names = table.strings("names")
    if not set(names) <= set(known):
        raise damaged(table.path("names"), "a name is not among the feature names")
    values = table.array("values", "float64", (len(rows), len(names)))
    for row, line in zip(rows, values.tolist(), strict=True):
        for name, value in zip(names, line, strict=True):
            weights[input_name(row, name)] = value
