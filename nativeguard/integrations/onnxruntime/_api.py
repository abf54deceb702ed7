"""``managed_session`` and ``infer``: onnxruntime sessions whose native memory is gone at block end.

Both check their arguments before anything is built (a wrong type is a
TypeError naming the argument, a missing file a :class:`ModelNotFoundError`),
turn onnxruntime's pybind exceptions (which derive from ``Exception`` only)
into nativeguard errors that also are the fitting builtin, raise them without
onnxruntime's traceback (its frames hold the half-built session), and hand
back outputs as numpy arrays that own their memory.

Sessions built here get plain copies of their input/output/model metadata:
onnxruntime's ``NodeArg`` and ``ModelMetadata`` keep the native session alive
through a pybind keep-alive (measured, 1.32), so a ``sess.get_inputs()[0]``
left in a local after the block would otherwise pin its arena.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nativeguard import Managed, ReleaseMode, Scope

from . import _sdk, _table
from ._errors import InferenceError, InvalidFeedError, ModelLoadError, ModelNotFoundError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["ModelInfo", "NodeInfo", "infer", "managed_session", "run"]


@dataclass(frozen=True)
class NodeInfo:
    """An input or output of the model, as plain data (what ``NodeArg`` says)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class ModelInfo:
    """The model's metadata, as plain data (what ``ModelMetadata`` says)."""

    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: Mapping[str, str] = field(default_factory=dict)


def _node(arg: Any) -> NodeInfo:
    return NodeInfo(str(arg.name), str(arg.type), tuple(arg.shape))


def _model_info(meta: Any) -> ModelInfo:
    return ModelInfo(
        producer_name=meta.producer_name,
        graph_name=meta.graph_name,
        domain=meta.domain,
        description=meta.description,
        graph_description=meta.graph_description,
        version=int(meta.version),
        custom_metadata_map=dict(meta.custom_metadata_map),
    )


# -- arguments ---------------------------------------------------------------------


def _checked_model(model: object) -> tuple[str | bytes, int]:
    """(model path or serialized model, its size in bytes), checked; raises before building.

    The size is what the ``onnxruntime.session_bytes`` counter adds: read by
    the same ``stat`` that checks the path (one system call, not two).
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        if not data:
            raise ModelLoadError("model is empty (0 bytes); pass a serialized ONNX model or a path")
        return data, len(data)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not isinstance(path, str):
            raise TypeError(
                "model path must be a str or a str os.PathLike; bytes are taken as the "
                "serialized model itself"
            )
        try:
            status = os.stat(path)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            status = None
        if status is None or not stat.S_ISREG(status.st_mode):
            raise ModelNotFoundError(f"model file not found: {path!r}")
        return path, status.st_size
    raise TypeError(
        "model must be a path (str or os.PathLike) or the serialized model (bytes), "
        f"got {type(model).__name__}"
    )


def _checked_feeds(feeds: object) -> dict[str, Any]:
    if not isinstance(feeds, Mapping):
        raise TypeError(
            f"feeds must be a mapping of input name to array, got {type(feeds).__name__}"
        )
    checked: dict[str, Any] = {}
    for name, value in feeds.items():
        if not isinstance(name, str):
            raise TypeError(f"feeds keys must be input names (str), got {type(name).__name__}")
        checked[name] = value
    return checked


def _describe(model: str | bytes) -> str:
    return f"{model!r}" if isinstance(model, str) else f"<{len(model)}-byte model>"


def _onnxruntime_error(error: BaseException) -> bool:
    return type(error).__module__ == _sdk.PYBIND_MODULE


# -- building ----------------------------------------------------------------------


def _build(
    model: str | bytes, size: int, sess_options: object, providers: object, kwargs: Any
) -> Any:
    """Construct the session; an onnxruntime load failure raised as our error, traceback-free."""
    ort = _sdk.sdk()
    if sess_options is not None and not isinstance(sess_options, ort.SessionOptions):
        raise TypeError(
            "sess_options must be None or an onnxruntime.SessionOptions, got "
            f"{type(sess_options).__name__}"
        )
    failure: Exception | None = None
    try:
        session = ort.InferenceSession(
            model, sess_options=sess_options, providers=providers, **kwargs
        )
    except Exception as error:
        if not _onnxruntime_error(error):
            raise
        kind = ModelNotFoundError if type(error).__name__ == "NoSuchFile" else ModelLoadError
        # Built here, raised below, outside this block: no __context__ chaining
        # onnxruntime's traceback (and the frames holding the half-built session).
        failure = kind(
            f"onnxruntime could not load model {_describe(model)}: {type(error).__name__}: {error}"
        )
    if failure is not None:
        raise failure
    namespace = vars(session)
    namespace["_inputs_meta"] = [_node(arg) for arg in session._inputs_meta]
    namespace["_outputs_meta"] = [_node(arg) for arg in session._outputs_meta]
    namespace["_overridable_initializers"] = [
        _node(arg) for arg in session._overridable_initializers
    ]
    namespace["_model_meta"] = _model_info(session._model_meta)
    _table.remember_wrapper(session, size)
    return session


def managed_session(
    model: str | os.PathLike[str] | bytes,
    *,
    sess_options: Any = None,
    providers: Sequence[Any] | None = None,
    scope: Scope | None = None,
    release: ReleaseMode | None = None,
    **kwargs: Any,
) -> Managed[Any]:
    """An ``onnxruntime.InferenceSession`` whose native session is freed at the end of the block.

    ``model`` is a path or the serialized model; ``sess_options``,
    ``providers`` and ``kwargs`` go to ``InferenceSession``. ``scope`` and
    ``release`` as for :func:`nativeguard.managed`; with ``release="inline"``
    the arena is freed (and the heap trimmed) when the block ends.
    """
    checked, size = _checked_model(model)
    return Managed(
        lambda: _build(checked, size, sess_options, providers, kwargs),
        scope=scope,
        release=release,
        description="InferenceSession",
    )


# -- running -----------------------------------------------------------------------


def _as_array(name: str, value: Any) -> Any:
    import numpy as np  # noqa: PLC0415 - numpy is onnxruntime's dependency, loaded with it

    if _sdk.is_ort_value(value):
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        message = f"feeds[{name!r}] is not an array: {type(error).__name__}: {error}"
    else:
        if array.dtype != object:
            return array
        message = f"feeds[{name!r}] is not a numeric array (numpy made an object array of it)"
    raise InvalidFeedError(message)


def _plain(value: Any) -> Any:
    """An output as plain data: numpy arrays that own their memory, lists, dicts."""
    import numpy as np  # noqa: PLC0415

    if isinstance(value, np.ndarray):
        return np.array(value, copy=True, order="K")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    raise InferenceError(
        f"an output of type {type(value).__name__} cannot be copied out as plain data; "
        "use managed_session and convert it inside the block"
    )


def run(
    session: Any, feeds: Mapping[str, Any], *, output_names: Sequence[str] | None = None
) -> dict[str, npt.NDArray[Any]]:
    """``session.run`` with checked feeds, nativeguard errors and outputs copied out by name."""
    return _run(session, _checked_feeds(feeds), output_names)


def _run(
    session: Any, checked: dict[str, Any], output_names: Sequence[str] | None
) -> dict[str, npt.NDArray[Any]]:
    """:func:`run` once ``feeds`` are checked (``infer`` checks them before building)."""
    if output_names is not None and (
        isinstance(output_names, str)
        or not isinstance(output_names, Sequence)
        or not all(isinstance(name, str) for name in output_names)
    ):
        raise TypeError("output_names must be None or a sequence of output names (str)")
    inputs = list(session.get_inputs())
    known = {node.name for node in inputs}
    unknown = sorted(set(checked) - known)
    missing = [
        node.name
        for node in inputs
        if node.name not in checked and not str(node.type).startswith("optional")
    ]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise InvalidFeedError(
            f"feeds do not fit the model: {' and '.join(parts)}; its inputs are "
            f"{[node.name for node in inputs]}"
        )
    names = (
        list(output_names)
        if output_names is not None
        else [node.name for node in session.get_outputs()]
    )
    arrays = {name: _as_array(name, value) for name, value in checked.items()}
    failure: Exception | None = None
    try:
        outputs = session.run(names, arrays)
    except Exception as error:
        if not (_onnxruntime_error(error) or type(error) is ValueError):
            raise
        kind = (
            InvalidFeedError
            if type(error).__name__ in ("InvalidArgument", "ValueError")
            else InferenceError
        )
        failure = kind(f"onnxruntime run failed: {type(error).__name__}: {error}")
    if failure is not None:
        raise failure
    return {name: _plain(value) for name, value in zip(names, outputs, strict=True)}


def infer(
    model: str | os.PathLike[str] | bytes,
    feeds: Mapping[str, Any],
    *,
    output_names: Sequence[str] | None = None,
    sess_options: Any = None,
    providers: Sequence[Any] | None = None,
    **kwargs: Any,
) -> dict[str, np.ndarray[Any, Any]]:
    """Load ``model``, run it once on ``feeds``, release everything, return the outputs by name.

    The outputs are numpy arrays that own their memory. The session's native
    memory is freed (and the heap trimmed, see ``set_trim_threshold``) before
    this returns or raises, whatever happened.
    """
    checked_model, size = _checked_model(model)
    checked_feeds = _checked_feeds(feeds)
    # The session never leaves this function (outputs are copies, errors carry
    # no traceback), so it needs no proxy and no cut: a bare inline Scope runs
    # the same release step managed_session's does. The metadata copies stay:
    # a NodeArg in the frame of a run() that raised would pin the session.
    with Scope(release="inline") as scope:
        session = scope.register(_build(checked_model, size, sess_options, providers, kwargs))
        scope.adopt(session)  # alive until its release step runs, dropped by the scope
        try:
            outputs = _run(session, checked_feeds, output_names)
        finally:
            del session  # the scope's reference must be the last one when it judges
    return outputs
