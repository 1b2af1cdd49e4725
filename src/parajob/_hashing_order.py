"""Decide when a dict's keys or a set's elements can take their canonical order by value.

Sorting by value is the fast way to a canonical order, but it is only sound when the items
share one type whose order is total and the same in every process. This module holds that
rule and nothing else: it needs no pickler and no hash object. When the rule says no, the
pickler orders the items by their digests instead
(``_CanonicalPickler._sorted_items`` in :mod:`parajob._hashing_pickler`).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

# Keys and set elements of these types (all of one type) are sorted by value; their order is
# total and independent of the process. bool is its own type here, so {0, True} does not mix.
_SORTABLE_TYPES = frozenset({str, bytes, int, float, bool})


def _sortable_kind(items: Collection[Any]) -> type | None:
    """Return the one type all ``items`` share if its sort order is total, else None.

    NaN breaks the order of floats, so floats with a NaN among them are not sortable.
    """
    kinds = set(map(type, items))
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind in _SORTABLE_TYPES:
        if kind is float and any(map(math.isnan, items)):
            return None
        return kind
    if kind is tuple:
        # Tuples compare position by position, so their order is total when each position
        # holds one sortable type in every tuple: {(i, "name"): ...} keys sort by value.
        signatures = set(map(_type_signature, items))
        if len(signatures) != 1:
            return None
        signature = signatures.pop()
        if not all(k in _SORTABLE_TYPES for k in signature):
            return None
        if any(
            math.isnan(item[position])
            for position, k in enumerate(signature)
            if k is float
            for item in items
        ):
            return None
        return tuple
    return None


def _uniformly_sortable(items: Collection[Any]) -> bool:
    return _sortable_kind(items) is not None


def _type_signature(item: tuple[Any, ...]) -> tuple[type, ...]:
    return tuple(map(type, item))
