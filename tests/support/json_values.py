"""Session values for the tests of session data: hypothesis strategies of JSON values (and of
values with a non-JSON part somewhere inside), the non-JSON leaves by name, and `same`, equality
with the same JSON types throughout."""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)
# "user_id" is reserved (it ties a session to a users row: int or None), tested on its own
# (test_session_data.py::test_user_id_must_be_an_int_id).
keys = st.text(max_size=20).filter(lambda key: key != "user_id")

BAD_LEAVES: dict[str, Any] = {
    "set": {1, 2},
    "empty set": set(),
    "frozenset": frozenset({"a"}),
    "tuple": (1, 2),
    "empty tuple": (),
    "bytes": b"x",
    "bytearray": bytearray(b"x"),
    "object": object(),
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "dict with int key": {1: "a"},
    "dict with None key": {None: "a"},
    "dict with tuple key": {(1, 2): "a"},
    "Decimal": Decimal("1.5"),
    "datetime": datetime(2026, 1, 1),
    "complex": 1j,
    "nested list containing a set": [1, [2, {3}]],
    "integer above 64 bits": 2**64,
    "integer below 64 bits": -(2**63) - 1,
    "lone surrogate": "\ud800",
    "dict key with a lone surrogate": {"\udfff": 1},
}


def _in_list(items: list[Any], bad: Any, at: int) -> list[Any]:
    items = list(items)
    items.insert(at % (len(items) + 1), bad)
    return items


def _in_dict(items: dict[str, Any], key: str, bad: Any) -> dict[str, Any]:
    return {**items, key: bad}


# A value with at least one non-JSON part somewhere inside.
poisoned = st.recursive(
    st.sampled_from(list(BAD_LEAVES.values())) | st.builds(object),
    lambda inner: (
        st.builds(_in_list, st.lists(json_values, max_size=3), inner, st.integers(0, 3))
        | st.builds(_in_dict, st.dictionaries(st.text(), json_values, max_size=3), st.text(), inner)
    ),
    max_leaves=6,
)


def same(a: Any, b: Any) -> bool:
    """Equal with the same JSON types throughout: 1, 1.0 and True differ, and so do 0.0 and -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b
