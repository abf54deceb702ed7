"""Immutable, hashable, picklable mappings: ``FrozenMap`` (results) and their common base.

Why here, apart from any SDK: the worker pools' plain-data check
(``nativeguard.isolate``) accepts a ``FrozenMap`` without importing an SDK,
every integration's extractor can put one in its data, and the snapshot's
``Counts`` (``name -> count``) shares the same immutable base.
``types.MappingProxyType`` would be read-only too, but cannot be pickled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["FrozenMap", "FrozenMapping"]

V = TypeVar("V")


class FrozenMapping(Mapping[str, V]):
    """A ``str``-keyed mapping that cannot change, hashes by its items and pickles.

    It compares equal to any mapping with the same items (a ``dict``
    included) and keeps the items' order. Subclasses check or order the items
    in ``__init__`` and pass them on to this one.
    """

    __slots__ = ("_data",)
    _data: dict[str, V]

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        object.__setattr__(self, "_data", dict(items))

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type[Any], tuple[tuple[tuple[str, V], ...]]]:
        return (type(self), (tuple(self._data.items()),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class FrozenMap(FrozenMapping[str]):
    """An immutable, hashable, picklable ``str -> str`` mapping.

    ``types.MappingProxyType`` cannot be pickled, so results carry this instead.
    It compares equal to any mapping with the same items (a ``dict`` included)
    and keeps insertion order. Enum keys (such as the SDK's ``PropertyId``
    members) are looked up by member name, so code written against an SDK
    result's ``properties`` dict keeps working on an extracted ``Segment``.
    """

    __slots__ = ()

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        data = dict(items)
        for key, value in data.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"FrozenMap maps str to str, got {type(key).__name__} -> {type(value).__name__}"
                )
        object.__setattr__(self, "_data", data)  # already a fresh dict: no second copy

    def __getitem__(self, key: object) -> str:
        name = getattr(key, "name", key) if not isinstance(key, str) else key
        if not isinstance(name, str):
            raise KeyError(key)
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(key) from None
