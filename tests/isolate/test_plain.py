"""check_plain / check_picklable: what may cross to or from a worker, and where it went wrong."""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import decimal
import enum
import fractions
import pathlib
import pickle
import re
import uuid
from typing import Any, NamedTuple

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard.integrations.azure_speech._extract import FrozenMap, Segment
from nativeguard.isolate import NotPlainDataError
from nativeguard.isolate._plain import check_picklable, check_plain, describe_type

GENERIC_HINT = "return builtin values, dataclasses or named tuples of them instead"


class Opaque:
    """Not plain: an arbitrary object (pickle would carry it, but nothing says it is data)."""


class Color(enum.Enum):
    RED = 1


class Point(NamedTuple):
    x: int
    y: Any


@dataclasses.dataclass
class Item:
    name: str
    raw: Any = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    segments: list[Any]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def refusal(value: object, path: str = "result", **kwargs: Any) -> NotPlainDataError:
    """The NotPlainDataError check_plain raises, without its traceback.

    The traceback's frames hold the value walked (SDK objects among it) in a
    reference cycle; dropping it lets the value go when the test ends.
    """
    try:
        check_plain(value, path, **kwargs)
    except NotPlainDataError as error:
        error.__traceback__ = None
        return error
    raise AssertionError(f"check_plain accepted {value!r}")


# ------------------------------------------------------------------- passing


def test_scalars_and_containers_of_them_pass() -> None:
    value = {
        "none": None,
        "numbers": [True, 1, 2.5, 3j, decimal.Decimal("1.5"), fractions.Fraction(1, 3)],
        "text": ("s", b"b", bytearray(b"ba")),
        "time": [
            datetime.date(2024, 1, 2),
            datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.timezone.utc),
            datetime.time(1, 2),
            datetime.timedelta(seconds=3),
        ],
        "misc": {uuid.UUID(int=7), pathlib.PurePosixPath("/a"), range(3), Color.RED},
        "frozen": frozenset({1, 2}),
        "point": Point(1, [2, 3]),
        "item": Item("x", {"k": (1, 2)}),
        "map": FrozenMap({"a": "b"}),
        7: "non-str keys are fine",
    }
    check_plain(value, "result")
    assert pickle.loads(check_picklable(value, "result")) == value


def test_an_extracted_sdk_result_passes() -> None:
    segment = Segment(
        text="hello",
        speaker_id=None,
        offset=10_000_000,
        duration=5_000_000,
        reason="RecognizedSpeech",
        result_id="r1",
        properties=FrozenMap({"SpeechServiceResponse_JsonResult": "{}"}),
    )
    check_plain(Outcome([segment, Item("x", segment)]), "result")


# ----------------------------------------------------------- refused, by path


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (Opaque(), "result"),
        ([1, 2, Opaque()], "result[2]"),
        ((1, Opaque()), "result[1]"),
        (Point(1, Opaque()), "result.y"),
        ({"a": 1, "b": Opaque()}, "result['b']"),
        ({1: [0, Opaque()]}, "result[1][1]"),
        (Item("x", Opaque()), "result.raw"),
        (Outcome([Item("a"), Item("b"), Item("c"), Item("d", Opaque())]), "result.segments[3].raw"),
        (
            Outcome([], meta={"deep": [(Point(0, {"x": Opaque()}),)]}),
            "result.meta['deep'][0][0].y['x']",
        ),
    ],
)
def test_the_first_non_plain_part_is_named_by_its_path(value: object, path: str) -> None:
    error = refusal(value)
    assert error.path == path
    assert error.type_name == f"{__name__}.Opaque"
    assert str(error) == f"{path} is a {__name__}.Opaque, not plain data: {GENERIC_HINT}"


def test_the_root_name_is_the_callers() -> None:
    assert refusal([Opaque()], "args").path == "args[0]"
    assert refusal({"k": Opaque()}, "kwargs").path == "kwargs['k']"


def test_the_first_offender_in_order_is_reported() -> None:
    """Depth-first in order: the earlier sibling's subtree before the later sibling."""
    error = refusal([[1, [Opaque()]], ctypes.c_int(1)])
    assert error.path == "result[0][1][0]"


def test_a_dict_key_is_checked_and_named() -> None:
    key = (1, Opaque())
    error = refusal({key: "value"})
    # Keys are named by value only when they read like names (a key may be a secret).
    assert error.path == "result<key (1, <test_plain.Opaque>)>[1]"


def test_a_set_member_is_named_by_its_type() -> None:
    member = Opaque()
    error = refusal({member})
    assert error.path == "result{<test_plain.Opaque>}"
    error = refusal(frozenset({(1, member)}))
    assert error.path == "result{(1, <test_plain.Opaque>)}[1]"


def test_a_frozen_map_value_is_named_by_its_key() -> None:
    """FrozenMap only holds str; forced open, its values are still walked by key."""
    mapping = FrozenMap({"a": "b"})
    object.__setattr__(mapping, "_data", {"a": "b", "raw": Opaque()})
    assert refusal(Item("x", mapping)).path == "result.raw['raw']"


def test_a_dataclass_type_itself_is_not_data() -> None:
    error = refusal([Item])
    assert (error.path, error.type_name) == ("result[0]", "type")


def test_functions_and_generators_are_not_data() -> None:
    assert refusal({"f": len}).type_name == "builtin_function_or_method"
    assert refusal([x for x in ()] + [(x for x in ())]).type_name == "generator"


# --------------------------------------------------------------- hints by kind


def test_an_sdk_object_gets_the_extract_hint() -> None:
    config = speechsdk.SpeechConfig(subscription="key", region="westus")
    error = refusal(Item("x", config))
    kind = type(config)
    assert error.path == "result.raw"
    assert error.type_name == f"{kind.__module__}.{kind.__qualname__}"
    assert error.type_name.startswith("azure.cognitiveservices.speech")
    assert str(error) == (
        f"result.raw is a {error.type_name}, not plain data: it holds native state of the "
        "azure_speech SDK that cannot leave the process; convert it in the worker with "
        "nativeguard.extract() (or return only the fields needed)"
    )


CTYPES_HINT = "a ctypes object points into the worker's memory; copy the data out (bytes, int)"


def test_a_ctypes_scalar_gets_the_ctypes_hint() -> None:
    error = refusal({"n": ctypes.c_int(3)})
    assert error.path == "result['n']"
    assert error.type_name == "ctypes.c_int"
    assert str(error) == f"result['n'] is a ctypes.c_int, not plain data: {CTYPES_HINT}"


class Header(ctypes.Structure):
    _fields_ = [("size", ctypes.c_int)]


@pytest.mark.parametrize(
    "value",
    [Header(1), ctypes.pointer(ctypes.c_int(1)), (ctypes.c_char * 4)()],
    ids=["structure", "pointer", "array"],
)
def test_user_ctypes_types_get_the_ctypes_hint(value: object) -> None:
    """Structures, pointers and arrays are ctypes objects too, though their types live
    in the user's module (or are made on the fly)."""
    assert str(refusal(value)).endswith(CTYPES_HINT)


# ------------------------------------------------------------ cycles and depth


class Tagged(dict):  # type: ignore[type-arg]
    """A dict subclass: pickle carries its instance attributes along with its items."""


def test_attributes_of_a_container_subclass_are_walked() -> None:
    """An SDK-ish object hidden in a dict subclass's __dict__ would cross too: it is named."""
    tagged = Tagged(text="hi")
    tagged.raw = Opaque()
    with pytest.raises(NotPlainDataError) as caught:
        check_plain({"segments": [tagged]}, "result")
    assert caught.value.path == "result['segments'][0].raw"


def test_extra_attributes_of_a_dataclass_are_walked_and_fields_once() -> None:
    value = Item("a")
    check_plain(value, "result")
    value.note = [1, Opaque()]  # type: ignore[attr-defined]
    with pytest.raises(NotPlainDataError) as caught:
        check_plain(value, "result")
    assert caught.value.path == "result.note[1]"


def test_self_referencing_containers_terminate() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    check_plain(loop, "result")
    table: dict[str, Any] = {}
    table["self"] = table
    check_plain(table, "result")
    item = Item("x")
    item.raw = [item]
    check_plain(item, "result")


def test_a_cycle_does_not_hide_an_offender() -> None:
    loop: list[Any] = []
    loop.extend([loop, {"bad": Opaque()}])
    assert refusal(loop).path == "result[1]['bad']"


def test_shared_sub_values_are_fine_and_reported_once() -> None:
    shared = [1, 2]
    check_plain([shared, shared, {"again": shared}], "result")
    bad = [Opaque()]
    assert refusal([bad, bad]).path == "result[0][0]"


def _nested(levels: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_up_to_the_limit_passes() -> None:
    """200 levels of containers (the innermost at depth 200) are allowed; a leaf below is too."""
    check_plain(_nested(201), "result")


def test_nesting_beyond_the_limit_is_an_error_not_a_recursion_error() -> None:
    for levels in (202, 50_000):
        error = refusal(_nested(levels))
        assert error.path == "result" + "[0]" * 201
        assert error.type_name == "list"
        assert str(error).endswith(
            "is nested more than 200 levels deep; flatten the data before it crosses the "
            "process boundary"
        )


# ----------------------------------------------------------------- extra types


def test_extra_types_are_trusted_without_walking() -> None:
    holder = Opaque()
    holder.inside = Opaque()  # type: ignore[attr-defined]
    check_plain({"h": holder}, "result", extra_types=(Opaque,))
    # Only instances of those types: others are still refused.
    assert refusal([holder, ctypes.c_int(1)], extra_types=(Opaque,)).path == "result[1]"


def test_extra_types_must_be_types() -> None:
    with pytest.raises(TypeError, match=re.escape("extra_types must be types, got ('Opaque',)")):
        check_plain(1, "result", extra_types=("Opaque",))  # type: ignore[arg-type]


# ----------------------------------------------------------- check_picklable


def test_check_picklable_returns_the_pickle() -> None:
    value = Outcome([Item("a", (1, 2))], meta={"k": None})
    assert pickle.loads(check_picklable(value, "result")) == value


def test_plain_but_unpicklable_is_refused_with_the_reason() -> None:
    """A dataclass defined inside a function passes the walk but cannot be pickled by name."""

    @dataclasses.dataclass
    class Local:
        x: int

    value = [Local(1)]
    check_plain(value, "result")
    with pytest.raises(NotPlainDataError) as caught:
        check_picklable(value, "result")
    error = caught.value
    assert (error.path, error.type_name) == ("result", "list")
    assert str(error).startswith("result (list) cannot be pickled to cross to another process: ")
    assert "Local" in str(error)
    assert isinstance(error.__cause__, (pickle.PicklingError, AttributeError, TypeError))


def test_the_error_survives_pickling_with_its_fields() -> None:
    """The worker sends the error to the parent: path and type name must arrive."""
    error = refusal(Item("x", Opaque()))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is NotPlainDataError
    assert (str(copy), copy.path, copy.type_name) == (str(error), error.path, error.type_name)
    assert isinstance(copy, TypeError)


def test_describe_type() -> None:
    assert describe_type(1) == "int"
    assert describe_type(Opaque()) == f"{__name__}.Opaque"
    assert describe_type(Point(1, 2)) == f"{__name__}.Point"
