"""BoundedMap: the per-process memory the library keeps of verified cookies, touch times, dead
session IDs and cached sessions, each bounded so that no client can grow it. (The cache's record
of notifications is bounded otherwise: when full it is forgotten whole, see cache.py.)"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(dict[K, V]):
    """A dict of at most `limit` keys: adding a key when it is full first drops the oldest
    insertion (first in, first out; a read does not refresh a key, so a hit costs a plain dict
    lookup). Only ``m[key] = value`` is bounded; the other ways a dict grows are not.

    :param limit: the most keys it holds, at least 1.
    :raises ValueError: when `limit` is below 1.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit and key not in self:
            del self[next(iter(self))]
        super().__setitem__(key, value)
