"""BoundedMap: the per-process memory the library keeps of verified cookies, touch times, dead
session IDs and cached sessions, each bounded so that no client can grow it; WeighedMap, the
cached sessions' kind, bounded in bytes as well. (The cache's record of notifications is bounded
otherwise: when full it is forgotten whole, see cache.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

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


class WeighedMap(BoundedMap[K, V]):
    """A BoundedMap whose values also have a weight (`weigh(value)`, bytes for the cache), the
    total kept at most `max_weight`: adding a value first drops the oldest insertions until it
    fits. `weight` is the total held, kept exact through every way a key goes (``del``, `pop`,
    `clear`, a replaced value); the dict's other ways of changing are refused. A value heavier
    than `max_weight` alone is refused (ValueError): the caller decides what to do instead.

    :param limit: the most keys it holds, at least 1.
    :param max_weight: the most total weight it holds, at least 1.
    :param weigh: a value's weight, a whole number at least 0, the same every time it is asked.
    :raises ValueError: when `limit` or `max_weight` is below 1.
    """

    __slots__ = ("_weigh", "max_weight", "weight")

    def __init__(self, limit: int, max_weight: int, weigh: Callable[[V], int]) -> None:
        if max_weight < 1:
            raise ValueError("max_weight must be at least 1")
        super().__init__(limit)
        self.max_weight = max_weight
        self.weight = 0
        self._weigh = weigh

    def __setitem__(self, key: K, value: V) -> None:
        weight = self._weigh(value)
        if weight > self.max_weight:
            raise ValueError(f"a value of weight {weight} cannot fit in {self.max_weight}")
        self.pop(key, None)  # a replaced value gives its weight back (and the key goes last)
        while self and (len(self) >= self.limit or self.weight + weight > self.max_weight):
            del self[next(iter(self))]
        dict.__setitem__(self, key, value)
        self.weight += weight

    def __delitem__(self, key: K) -> None:
        value = self[key]
        super().__delitem__(key)
        self.weight -= self._weigh(value)

    def pop(self, key: K, *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)  # the default, or KeyError
        value = self[key]
        del self[key]
        return value

    def clear(self) -> None:
        super().clear()
        self.weight = 0

    def _refused(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a WeighedMap changes only by m[key] = value, del, pop and clear")

    popitem = setdefault = update = __ior__ = _refused
