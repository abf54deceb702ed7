"""What may cross a process boundary: plain, picklable data, checked with a named path.

A worker's result must not carry native state back to the parent: an SDK
result object pickles badly or not at all, and even when a wrapper pickles, the
copy points at handles that live in another process. :func:`check_plain` walks a
value and refuses the first part that is not plain data, naming where it is
(``result.segments[3].raw``), so the author sees which field to convert with
:func:`nativeguard.extract` instead of a pickling traceback.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import itertools
import pathlib
import pickle
import re
import uuid
import weakref
from collections.abc import Iterable

from .._core._errors import NotPlainDataError
from .._core._frozen import FrozenMap
from .._core._integration import integration_for_module
from .._core._redact import redact_text

__all__ = ["check_picklable", "check_plain", "describe_type"]

# Leaves: immutable values with no references to anything else.
_SCALARS: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    range,
    datetime.date,  # datetime.datetime subclasses it
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    pathlib.PurePath,
    enum.Enum,
)
# Exactly these types (not subclasses, which may carry a __dict__) are plain
# leaves; skipped before a path is built for them, a large flat list of numbers
# costs a type lookup per item.
_TRIVIAL: frozenset[type] = frozenset({type(None), bool, int, float, complex, str, bytes})
_SEQUENCES: tuple[type, ...] = (list, tuple)
_SETS: tuple[type, ...] = (set, frozenset)

# Deep enough for any real result; a deeper value is a linked structure that
# pickle itself would choke on (recursion limit).
_MAX_DEPTH = 200


def describe_type(value: object) -> str:
    """``module.QualName`` of ``value``'s type (builtins without the module)."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _hint(value: object) -> str:
    owner = integration_for_module(type(value).__module__)
    if owner is not None:
        return (
            f"it holds native state of the {owner.name} SDK that cannot leave the process; "
            "convert it in the worker with nativeguard.extract() (or return only the fields needed)"
        )
    # User Structures, pointers and arrays live in other modules; their bases are _ctypes'.
    if any(kind.__module__ in ("ctypes", "_ctypes") for kind in type(value).__mro__):
        return "a ctypes object points into the worker's memory; copy the data out (bytes, int)"
    return "return builtin values, dataclasses or named tuples of them instead"


# A dict key or set item is shown in a path when it reads like a name; other
# keys may be secrets (a dict keyed by API key or token) and are described.
_SHOWN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_. -]{0,47}")
_SECRET_LIKE = re.compile(r"(?=[^ ]*[0-9])(?=[^ ]*[A-Za-z])[A-Za-z0-9+/=_.~-]{16,}")


def _label(key: object) -> str:
    """How a dict key or set item appears in a path: its repr, unless it might be a secret."""
    kind = type(key)
    if kind in (int, float, bool, type(None)) or isinstance(key, enum.Enum):
        return repr(key)
    if (
        isinstance(key, str)
        and kind is str
        and _SHOWN_KEY.fullmatch(key)
        and not _SECRET_LIKE.search(key)
        and redact_text(key) == key
    ):
        return repr(key)
    if kind is tuple:
        labels = [_label(item) for item in key]  # type: ignore[attr-defined]
        return f"({labels[0]},)" if len(labels) == 1 else f"({', '.join(labels)})"
    if isinstance(key, (str, bytes)):
        unit = "chars" if isinstance(key, str) else "bytes"
        return f"<{describe_type(key)} of {len(key)} {unit}, not shown>"
    return f"<{describe_type(key)}>"


def _refuse(path: str, value: object) -> NotPlainDataError:
    type_name = describe_type(value)
    return NotPlainDataError(
        f"{path} is a {type_name}, not plain data: {_hint(value)}",
        path=path,
        type_name=type_name,
    )


def _children(value: object, path: str) -> Iterable[tuple[str, object]] | None:
    """The named parts of a container, or None if ``value`` is not a plain container.

    Includes the instance attributes of container subclasses and extra
    attributes of dataclasses: pickle carries an object's ``__dict__`` along,
    so an SDK object hidden there would cross too.
    """
    parts = _parts(value, path)
    state = getattr(value, "__dict__", None)
    if parts is None or not isinstance(state, dict) or not state:
        return parts
    fields: frozenset[str] = frozenset()
    if dataclasses.is_dataclass(value):
        fields = frozenset(_field_names(type(value)))
    extra = (
        (f"{path}.{name}", item)
        for name, item in state.items()
        if name not in fields and type(item) not in _TRIVIAL
    )
    return itertools.chain(parts, extra)


def _parts(value: object, path: str) -> Iterable[tuple[str, object]] | None:
    if isinstance(value, _SEQUENCES):
        # Named tuples are tuples; their fields read better by name.
        fields = getattr(type(value), "_fields", None)
        if isinstance(value, tuple) and isinstance(fields, tuple) and len(fields) == len(value):
            return ((f"{path}.{name}", item) for name, item in zip(fields, value, strict=True))
        items: list[object] | tuple[object, ...] = value  # type: ignore[assignment]
        return (
            (f"{path}[{index}]", item)
            for index, item in enumerate(items)
            if type(item) not in _TRIVIAL
        )
    if isinstance(value, dict):
        return (
            part
            for key, item in value.items()
            if type(key) not in _TRIVIAL or type(item) not in _TRIVIAL
            for label in (_label(key),)
            for part in ((f"{path}<key {label}>", key), (f"{path}[{label}]", item))
        )
    if isinstance(value, FrozenMap):
        return ((f"{path}[{_label(key)}]", item) for key, item in value.items())
    if isinstance(value, _SETS):
        return ((f"{path}{{{_label(item)}}}", item) for item in value)  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        values = ((name, getattr(value, name, _UNSET)) for name in _field_names(type(value)))
        return (
            (f"{path}.{name}", item)
            for name, item in values
            if item is not _UNSET and type(item) not in _TRIVIAL
        )
    return None


_UNSET = object()
# Weak keys: a checker must not keep the classes it saw alive.
_FIELD_NAMES: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _field_names(kind: type) -> tuple[str, ...]:
    """A dataclass's field names, looked up once per class (records come by the thousand)."""
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(field.name for field in dataclasses.fields(kind))
    return names


def check_plain(value: object, path: str, extra_types: tuple[type, ...] = ()) -> None:
    """Raise :class:`NotPlainDataError` naming the first part of ``value`` that is not plain.

    Plain: ``None``, numbers, strings, bytes, dates, ``Decimal``, ``UUID``,
    paths, enum members, lists, tuples (named ones too), dicts, sets, frozen
    maps and dataclasses of plain data, and instances of ``extra_types``
    (trusted as they are, not walked). ``path`` names the root
    (``"result"``, ``"args[0]"``).
    """
    if extra_types and not all(isinstance(kind, type) for kind in extra_types):
        raise TypeError(f"extra_types must be types, got {extra_types!r}")
    if _flat(value):
        return
    leaves = _SCALARS + extra_types
    # Iterative walk: a deep value must give a clear error, not a RecursionError.
    stack: list[tuple[str, object, int]] = [(path, value, 0)]
    seen: set[int] = set()
    while stack:
        where, item, depth = stack.pop()
        if isinstance(item, leaves):
            # A subclass of a scalar (class Label(str)) may carry attributes, and
            # pickle carries them along: walk them (enum members pickle by name).
            state = getattr(item, "__dict__", None)
            if (
                not state
                or not isinstance(state, dict)
                or isinstance(item, enum.Enum)
                or (extra_types and isinstance(item, extra_types))
                or depth > _MAX_DEPTH
            ):
                continue
            stack.extend(
                (f"{where}.{name}", child, depth + 1) for name, child in reversed(state.items())
            )
            continue
        if depth > _MAX_DEPTH:
            raise NotPlainDataError(
                f"{where} is nested more than {_MAX_DEPTH} levels deep; "
                "flatten the data before it crosses the process boundary",
                path=where,
                type_name=describe_type(item),
            )
        children = _children(item, where)
        if children is None:
            raise _refuse(where, item)
        # Shared sub-values are fine (pickle keeps the sharing); each container
        # is walked once, which also ends self-referencing cycles.
        if id(item) in seen:
            continue
        seen.add(id(item))
        stack.extend((name, child, depth + 1) for name, child in reversed(list(children)))


def _flat(value: object) -> bool:
    """A scalar, or an exact tuple, list or dict of exact scalars: plain without a walk.

    Most task arguments and results are; the walk's generators cost ~15 us per
    ``submit`` (two checks: args and kwargs) for ``(0.5,)`` and ``{}``. Exact
    types only: a subclass may carry attributes, a named tuple has fields.
    """
    kind = type(value)
    if kind in _TRIVIAL:
        return True
    if kind is tuple or kind is list:
        return all(type(item) in _TRIVIAL for item in value)  # type: ignore[attr-defined]
    if kind is dict:
        return all(
            type(key) in _TRIVIAL and type(item) in _TRIVIAL
            for key, item in value.items()  # type: ignore[attr-defined]
        )
    return False


def check_picklable(value: object, path: str) -> bytes:
    """Pickle ``value`` or raise :class:`NotPlainDataError` saying why it cannot cross."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # pickle raises PicklingError, TypeError, AttributeError...
        type_name = describe_type(value)
        raised = NotPlainDataError(
            redact_text(
                f"{path} ({type_name}) cannot be pickled to cross to another process: "
                f"{type(error).__name__}: {error}"
            ),
            path=path,
            type_name=type_name,
        )
        raise raised from error
