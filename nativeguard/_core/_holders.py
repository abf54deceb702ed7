"""Who keeps an object alive: the shortest chain of referrers from a root.

A breadth-first search backwards over :func:`gc.get_referrers`, one heap walk
per level (all objects of a level looked up at once), bounded by
:data:`MAX_CHAIN_DEPTH` links and :data:`MAX_VISITED` objects. Roots are
module globals, locals of running frames, live threads and classes. The
chain is described link by link, leaf first, with type, attribute, function
and variable names only, never values: a holder may well contain a key.

When nothing outside the object's own graph holds it, the search proves it
with reference counts (every reference accounted for by a referrer gc can
see) and says "unreachable cycle": garbage the collector has not reached yet,
not a holder to remove. That is the naive SDK callback pattern.
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import sys
import threading
import types
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import wrapt

__all__ = [
    "INVISIBLE",
    "MAX_CHAIN_DEPTH",
    "MAX_VISITED",
    "UNREACHABLE",
    "HolderChain",
    "holder_chain",
    "holder_chains",
]

MAX_CHAIN_DEPTH = 12
"""Links searched from the object towards a root."""
MAX_VISITED = 400
"""Objects examined per search. Each level costs one walk of the whole heap
plus ~0.6 ms per object looked up per million live objects."""

UNREACHABLE = "unreachable cycle: waits for the garbage collector"
INVISIBLE = (
    "held by a reference gc cannot see (another thread's running frame, native code "
    "or a C extension)"
)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# The search's own frames: their locals hold the objects while we look.
_SEARCH_FILES = frozenset(
    os.path.join(_PACKAGE_DIR, name)
    for name in (os.path.join("_core", "_holders.py"), os.path.join("verify", "_report.py"))
)
# References our bookkeeping holds to each non-leaf object when they are
# counted: the `nodes` dict, the loop variable, getrefcount's argument.
_OURS = 3
# Python 3.13 (PEP 667): f_locals is a live proxy, reading it keeps nothing.
_LOCALS_ARE_SNAPSHOTS = sys.version_info < (3, 13)

_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python
_RANK_NAMED, _RANK_FRAME, _RANK_GLOBAL, _RANK_CLASS, _RANK_THREAD, _RANK_MODULE = range(6)


@dataclass(frozen=True)
class HolderChain:
    """One object's chain, leaf first; the last link is the root or a verdict."""

    links: tuple[str, ...]
    unreachable: bool
    """Only a cycle of garbage holds it: ``gc.collect()`` would free it."""
    through: int | None = None
    """Index in the searched objects of the nearest other one on the chain."""


def holder_chain(
    obj: object,
    *,
    max_depth: int = MAX_CHAIN_DEPTH,
    max_visited: int = MAX_VISITED,
    ignore: Iterable[object] = (),
    roots: Iterable[tuple[object, str]] = (),
) -> tuple[str, ...]:
    """The shortest chain of referrers from a root to ``obj``, leaf first.

    ``ignore``: containers and frames that are not holders (a checker's own
    lists, a registry); they are neither followed nor reported. ``roots``:
    ``(holder, text)`` pairs the caller knows to be roots, named by ``text``
    (a checker's box holding a call's return value: "return value").
    """
    return holder_chains(
        [obj], max_depth=max_depth, max_visited=max_visited, ignore=ignore, roots=roots
    )[0].links


def holder_chains(
    objs: Sequence[object],
    *,
    max_depth: int = MAX_CHAIN_DEPTH,
    max_visited: int = MAX_VISITED,
    ignore: Iterable[object] = (),
    roots: Iterable[tuple[object, str]] = (),
) -> list[HolderChain]:
    """:func:`holder_chain` for several objects, sharing the scan of frames."""
    if max_depth < 1 or max_visited < 1:
        raise ValueError("max_depth and max_visited must be >= 1")
    context = _Context((objs, *ignore), roots)
    try:
        index = {id(obj): i for i, obj in enumerate(objs)}
        return [
            _chain(
                objs[i],
                position=i,
                index=index,
                context=context,
                max_depth=max_depth,
                max_visited=max_visited,
            )
            for i in range(len(objs))
        ]
    finally:
        context.close()


# -- what every search shares ---------------------------------------------------


class _Context:
    """Roots known up front, and the locals of running frames.

    gc cannot see the locals of a running frame (CPython traverses them only
    once the frame has finished), so they are read through ``f_locals``. On
    Python < 3.13 that stores a snapshot dict on the frame which keeps every
    local alive until the frame next syncs it: a later check would then find
    objects the caller had already dropped. So only the current thread's
    frames are read (others run concurrently: clearing their snapshot could
    race a tracer writing it back), and those snapshots are emptied again when
    the search ends, unless a Python tracer might write them back.
    """

    def __init__(self, ignore: Iterable[object], roots: Iterable[tuple[object, str]]) -> None:
        self.ignored = tuple(ignore)
        # Counted as holders (they hold references), never followed.
        self.ignore_ids = {id(obj) for obj in self.ignored}
        self.ignore_ids.update((id(self.ignored), id(gc.garbage)))
        # Held here so their ids stay theirs while the search runs.
        self.named = tuple(roots)
        self.named_ids = {id(holder): text for holder, text in self.named}
        self.ignore_ids.add(id(self.named))
        self.module_dicts: dict[int, str] = {}
        for name, module in list(sys.modules.items()):
            namespace = getattr(module, "__dict__", None)
            if type(namespace) is dict:
                self.module_dicts[id(namespace)] = name
        # id(value) -> (frame, name, locals mapping) for frames outside nativeguard.
        self.frame_locals: dict[int, list[tuple[types.FrameType, str, Mapping[str, Any]]]] = {}
        # Snapshot dicts: referrers gc sees, counted but never followed.
        self.snapshot_ids: set[int] = set()
        # id(value) -> fast locals of nativeguard's own running frames holding it.
        self.fast_refs: Counter[int] = Counter()
        self._snapshots: list[tuple[types.FrameType, dict[str, Any]]] = []
        self._scan_frames()

    def _scan_frames(self) -> None:
        frame: types.FrameType | None = sys._getframe(1)
        frames: list[types.FrameType] = []
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        if not _LOCALS_ARE_SNAPSHOTS:  # pragma: no cover - Python >= 3.13
            me = threading.get_ident()
            for ident, top in sys._current_frames().items():
                other: types.FrameType | None = top if ident != me else None
                while other is not None:
                    frames.append(other)
                    other = other.f_back
            # `top` may be this very frame (the current thread's entry): left in a
            # local, it is a cycle (frame -> its locals -> frame) that keeps this
            # frame, every caller's frame and so the searched objects alive until
            # the collector runs.
            del top
        for frame in frames:
            self._scan(frame)
        del frames

    def _scan(self, frame: types.FrameType) -> None:
        code = frame.f_code
        if _is_search_file(code.co_filename) or id(frame) in self.ignore_ids:
            return
        optimized = bool(code.co_flags & inspect.CO_OPTIMIZED)
        if not optimized and frame.f_locals is frame.f_globals:
            return  # module level: its namespace is a module dict, a root already
        namespace = frame.f_locals
        if optimized and type(namespace) is dict:
            self.snapshot_ids.add(id(namespace))
            self._snapshots.append((frame, namespace))
        if _in_package(code.co_filename):
            # Not a holder (a checker's loop variable), but its references count.
            cells = set(code.co_cellvars)
            for name in code.co_varnames:
                if name not in cells and name in namespace:
                    self.fast_refs[id(namespace[name])] += 1
            return
        for name, value in list(namespace.items()):
            self.frame_locals.setdefault(id(value), []).append((frame, name, namespace))

    def frame_root(self, obj: object) -> tuple[types.FrameType, str] | None:
        for frame, name, namespace in self.frame_locals.get(id(obj), ()):
            if namespace.get(name) is obj:
                return frame, name
        return None

    def close(self) -> None:
        """Empty the snapshot dicts we created, where no tracer can write them back.

        A Python-level tracer (pdb) syncs a frame's snapshot into its locals
        after each trace call, so a cleared snapshot would delete the caller's
        variables; with one active the snapshot is re-synced at every event
        anyway, and is left alone.
        """
        if _no_python_tracer(sys.gettrace()) and _no_python_tracer(sys.getprofile()):
            for frame, snapshot in self._snapshots:
                if frame.f_trace is None:
                    snapshot.clear()
        self._snapshots.clear()
        self.frame_locals.clear()
        self.named_ids.clear()


# Tracers written in C call no trampoline, so they never write snapshots back.
_C_TRACERS = frozenset({("coverage.tracer", "CTracer"), ("_lsprof", "Profiler")})


def _no_python_tracer(tracer: object) -> bool:
    return tracer is None or any(
        (kind.__module__, kind.__qualname__) in _C_TRACERS for kind in type(tracer).__mro__
    )


@functools.lru_cache(maxsize=1024)
def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


@functools.lru_cache(maxsize=1024)
def _is_search_file(filename: str) -> bool:
    return os.path.abspath(filename) in _SEARCH_FILES


# -- the search -----------------------------------------------------------------


@dataclass
class _Root:
    rank: int
    node: int
    """id of the last object of the chain, the one the root holds."""
    holder: object
    name: str = ""


@dataclass
class _Search:
    leaf: int
    nodes: dict[int, object]
    parent: dict[int, int] = field(default_factory=dict)
    visible: Counter[int] = field(default_factory=Counter)
    """References to each object from referrers gc can see (not the search's own)."""
    root: _Root | None = None
    cycle: tuple[int, int] | None = None
    """(object, its ancestor that refers to it): a cycle through the chain."""
    truncated: bool = False
    leaf_held: bool = False


def _chain(
    obj: object,
    *,
    position: int,
    index: dict[int, int],
    context: _Context,
    max_depth: int,
    max_visited: int,
) -> HolderChain:
    search = _bfs(obj, context, max_depth, max_visited)
    try:
        return _conclude(search, position, index, context)
    finally:
        search.nodes.clear()


def _bfs(obj: object, context: _Context, max_depth: int, max_visited: int) -> _Search:
    """Level by level towards a root; the first level that reaches one wins."""
    search = _Search(leaf=id(obj), nodes={id(obj): obj})
    frontier: list[object] = [obj]
    level = 0
    while frontier:
        candidates: list[_Root] = []
        for node in frontier:
            found = context.frame_root(node)
            if found is not None:
                candidates.append(_Root(_RANK_FRAME, id(node), found[0], found[1]))
        if not candidates and level >= max_depth:
            search.truncated = True
            break
        frontier_ids = {id(node) for node in frontier}
        # Passed as a tuple of our own: Python 3.13's get_referrers (Argument
        # Clinic) no longer skips the caller's argument tuple, so it is a referrer.
        arguments = tuple(frontier)
        referrers = gc.get_referrers(*arguments)
        fresh: list[object] = []
        # The search's own containers of this level (ids of earlier ones may be reused).
        own = {
            id(search.nodes),
            id(frontier),
            id(arguments),
            id(referrers),
            id(fresh),
            id(candidates),
        }
        for referrer in referrers:
            key = id(referrer)
            if key in own:
                continue
            hits = [i for i in map(id, gc.get_referents(referrer)) if i in frontier_ids]
            if not hits:
                continue
            for hit in hits:
                search.visible[hit] += 1
            if search.leaf in hits:
                search.leaf_held = search.leaf_held or (
                    key not in context.ignore_ids and key not in context.snapshot_ids
                )
            named = context.named_ids.get(key)
            if named is not None:
                candidates.append(_Root(_RANK_NAMED, hits[0], referrer, named))
                continue
            if key in context.ignore_ids or key in context.snapshot_ids:
                continue
            rank = _root_rank(referrer, context)
            if rank is not None:
                candidates.append(_Root(rank, hits[0], referrer))
                continue
            if key in search.nodes:
                if search.cycle is None:
                    for hit in hits:
                        if _is_ancestor(search, key, hit):
                            search.cycle = (hit, key)
                            break
                continue
            if len(search.nodes) >= max_visited:
                search.truncated = True
                continue
            search.nodes[key] = referrer
            search.parent[key] = hits[0]
            fresh.append(referrer)
        del referrers, arguments
        if candidates:
            search.root = min(candidates, key=lambda root: root.rank)  # stable: first found
            break
        frontier = fresh
        level += 1
    return search


def _root_rank(obj: object, context: _Context) -> int | None:
    """A root's rank (lower reads better at equal depth), or None if not a root."""
    if type(obj) is dict and id(obj) in context.module_dicts:
        return _RANK_GLOBAL
    if isinstance(obj, type):
        # A class lives as long as its module; its instances all refer to it,
        # so following its referrers would explode the search.
        return _RANK_CLASS
    if isinstance(obj, types.ModuleType):
        return _RANK_MODULE
    if isinstance(obj, threading.Thread) and obj.is_alive():
        return _RANK_THREAD
    return None


def _is_ancestor(search: _Search, ancestor: int, node: int) -> bool:
    while True:
        if node == ancestor:
            return True
        if node not in search.parent:
            return False
        node = search.parent[node]


def _path(search: _Search, node: int) -> list[object]:
    """Objects from the leaf to ``node``."""
    ids = [node]
    while ids[-1] in search.parent:
        ids.append(search.parent[ids[-1]])
    return [search.nodes[i] for i in reversed(ids)]


def _conclude(
    search: _Search, position: int, index: dict[int, int], context: _Context
) -> HolderChain:
    secrets: tuple[str, ...] = ()
    if search.root is not None:
        path = _path(search, search.root.node)
        links = _describe(path, search.root)
        secrets = _chain_secrets([*path, search.root.holder])
    elif search.truncated:
        path = _path(search, next(reversed(search.nodes)))
        visited = len(search.nodes)
        links = (
            *_describe(path, None),
            f"no root found within {len(path) - 1} links and {visited} objects (search bounded)",
        )
    else:
        unaccounted = _unaccounted(search, context)
        if unaccounted is not None:
            path = _path(search, unaccounted)
            links = (*_describe(path, None), INVISIBLE)
        elif not search.leaf_held:
            # Nothing but the caller (and invisible references) refers to it.
            path = [search.nodes[search.leaf]]
            links = (*_describe(path, None), INVISIBLE)
        else:
            # Every reference to every holder comes from inside the graph.
            end = search.cycle[0] if search.cycle else next(reversed(search.nodes))
            ancestor = search.nodes[search.cycle[1]] if search.cycle else None
            path = _path(search, end)
            links = (*_describe(path, None, ancestor), UNREACHABLE)
            secrets = _chain_secrets(path)
            return HolderChain(_redacted(links, secrets), True, _through(path, position, index))
    if search.root is None:
        secrets = _chain_secrets(path)
    return HolderChain(_redacted(links, secrets), False, _through(path, position, index))


def _unaccounted(search: _Search, context: _Context) -> int | None:
    """The nearest holder with references gc cannot see, or None if there is none.

    gc's own test for garbage: an object is unreachable when every reference
    to it (its refcount) comes from objects in the same unreachable set. The
    leaf is not tested (whoever asked holds it too).
    """
    for key in list(search.nodes):
        if key == search.leaf:
            continue
        node = search.nodes[key]
        extra = sys.getrefcount(node) - _OURS - search.visible[key] - context.fast_refs[key]
        del node
        if extra != 0:
            return key
    return None


def _through(path: list[object], position: int, index: dict[int, int]) -> int | None:
    for obj in path[1:]:
        other = index.get(id(obj))
        if other is not None and other != position:
            return other
    return None


def _redacted(links: tuple[str, ...], secrets: Sequence[str] = ()) -> tuple[str, ...]:
    """Links with credential-shaped text and the chain's own secret values masked."""
    from ._redact import redact_text  # noqa: PLC0415 - keep this module import-light

    return tuple(redact_text(link, secrets) for link in links)


def _chain_secrets(objs: Sequence[object]) -> tuple[str, ...]:
    """String values the chain's holders keep under credential-shaped names.

    ``Holder.password = KEY`` or a frame's local ``token``: a chain names
    attributes and variables, and one of those names (an attribute set with
    ``setattr``, a thread's name) may embed the very value a credential-named
    field holds. Those values are masked wherever they appear in the chain.
    """
    from ._redact import is_secret_name  # noqa: PLC0415 - keep this module import-light

    found: list[str] = []
    for obj in objs:
        try:
            if isinstance(obj, types.FrameType):
                namespace: object = obj.f_locals
            else:
                namespace = _namespace(obj)
            if not isinstance(namespace, Mapping):
                continue
            for name, value in list(namespace.items()):
                if (
                    isinstance(name, str)
                    and isinstance(value, str)
                    and is_secret_name(name)
                    and len(value) >= 4
                    and value not in found
                ):
                    found.append(value)
        except Exception:  # an exotic holder must not cost the whole report
            continue
    return tuple(sorted(found, key=len, reverse=True))


# -- describing a chain -----------------------------------------------------------


def _describe(path: list[object], root: _Root | None, ancestor: object = None) -> tuple[str, ...]:
    """One link per object, leaf first; the root (if any) as the last link.

    ``ancestor``: for a cycle, the object on the path that holds the last one.
    """
    holders: list[object] = [*path[1:], root.holder if root else ancestor]
    root_text: str | None = None
    if root is not None:
        try:
            path, holders, root_text = _root_text(path, holders, root)
        except Exception:  # an exotic holder must not cost the whole report
            root_text = _type_name(root.holder)
    links: list[str] = []
    skip = 0
    for i, obj in enumerate(path):
        if skip:
            skip -= 1
            continue
        beyond = holders[i + 1 :]
        child = path[i - 1] if i else None
        try:
            text, skip = _link(obj, holders[i], beyond, child, leaf=i == 0)
        except Exception:  # user code (a __dict__ property) ran and failed
            text, skip = _type_name(obj), 0
        links.append(text)
    if root_text is not None:
        links.append(root_text)
    return tuple(links)


def _root_text(
    path: list[object], holders: list[object], root: _Root
) -> tuple[list[object], list[object], str]:
    holder = root.holder
    last = path[-1]
    if root.rank == _RANK_NAMED:
        return path, holders, root.name
    if root.rank == _RANK_FRAME:
        assert isinstance(holder, types.FrameType)
        return path, holders, f"local {root.name} in frame {_frame_text(holder)}"
    if type(holder) is dict:  # a module's namespace, found in sys.modules
        return path, holders, _global_text(holder, last, _module_name_of(holder))
    if isinstance(holder, types.ModuleType):
        if len(path) > 1 and last is getattr(holder, "__dict__", None):
            # Reached the namespace before the module (not in sys.modules).
            return path[:-1], [*holders[:-2], holder], _global_text(last, path[-2], holder.__name__)
        return path, holders, f"module {holder.__name__}"
    if isinstance(holder, type):
        if len(path) > 1 and type(last) is dict and _class_namespace(holder) is last:
            key = _key_of(last, path[-2])
            return (
                path[:-1],
                [*holders[:-2], holder],
                f"class attribute {holder.__qualname__}.{key} in module {holder.__module__}",
            )
        return path, holders, f"class {holder.__qualname__} in module {holder.__module__}"
    if isinstance(holder, threading.Thread):
        return path, holders, f"thread {holder.name} ({type(holder).__qualname__})"
    return path, holders, _type_name(holder)  # pragma: no cover - every rank is above


def _module_name_of(namespace: dict[str, Any]) -> str:
    name = namespace.get("__name__")
    return name if isinstance(name, str) else "?"


def _global_text(namespace: object, value: object, module: str) -> str:
    key = _key_of(namespace, value) if isinstance(namespace, dict) else None
    return f"global {key or '?'} in module {module}"


def _class_namespace(cls: type) -> object:
    # vars(cls) is a mappingproxy; gc shows the dict behind it.
    referents = gc.get_referents(vars(cls))
    return referents[0] if referents else None


def _link(
    obj: object, holder: object, beyond: list[object], child: object, *, leaf: bool
) -> tuple[str, int]:
    """``(text, number of following objects folded into it)``."""
    after = beyond[0] if beyond else None
    if isinstance(obj, types.FrameType) and not leaf:
        # Only finished frames show up as referrers (CPython traverses a running
        # frame's locals from the thread, not the frame), so f_locals is safe here.
        namespace = obj.f_locals
        if not _LOCALS_ARE_SNAPSHOTS:  # pragma: no cover - 3.13: a FrameLocalsProxy
            namespace = dict(namespace)
        name = _key_of(namespace, child)
        del namespace
        where = f"local {name} in " if name else ""
        return f"{where}finished frame {_frame_text(obj)}", 0
    if type(obj) is tuple and isinstance(holder, types.FunctionType) and holder.__defaults__ is obj:
        return f"default arguments of {holder.__qualname__}", 0
    if isinstance(obj, types.CellType):
        # cell <- closure tuple <- function: "cell of f (variable x)"
        if type(holder) is tuple and isinstance(after, types.FunctionType):
            closure = after.__closure__
            if closure is holder:
                names = after.__code__.co_freevars
                position = next(i for i, cell in enumerate(closure) if cell is obj)
                name = names[position] if position < len(names) else "?"
                return f"cell of {after.__qualname__} (variable {name})", 1
        return "cell", 0
    noun = _type_name(obj) if leaf else _noun(obj)
    if type(holder) is dict:
        owner = after
        if owner is not None and _namespace(owner) is holder:
            # An instance's materialised __dict__: report it as the instance.
            key = _key_of(holder, obj)
            return f"{noun} {_type_name(owner)}.{_demangle(owner, key or '?')}", 1
        if len(beyond) >= 2 and type(owner) is dict and isinstance(beyond[1], threading.local):
            # threading.local: value <- per-thread dict <- dict of dicts <- local
            key = _key_of(holder, obj) or "?"
            return f"{noun} thread-local {_type_name(beyond[1])}.{key}", 2
        return noun, 0
    if isinstance(holder, types.FrameType) or holder is None:
        return noun, 0
    attribute = _attribute_name(holder, obj)
    if attribute is not None:
        return f"{noun} {_type_name(holder)}.{attribute}", 0
    return noun, 0


def _noun(obj: object) -> str:
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__qualname__}"
    if isinstance(obj, types.MethodType):
        function = getattr(obj.__func__, "__name__", "?")
        return f"bound method {_type_name(obj.__self__)}.{function}"
    if isinstance(obj, types.BuiltinMethodType) and not isinstance(
        obj.__self__, types.ModuleType | None
    ):
        return f"bound method {_type_name(obj.__self__)}.{obj.__name__}"
    if isinstance(obj, types.FrameType):
        return f"finished frame {_frame_text(obj)}"
    if isinstance(obj, types.GeneratorType):
        return f"generator {_code_name(obj.gi_code)}"
    if isinstance(obj, types.CoroutineType):
        return f"coroutine {_code_name(obj.cr_code)}"
    if isinstance(obj, types.AsyncGeneratorType):
        return f"async generator {_code_name(obj.ag_code)}"
    if isinstance(obj, threading.local):
        return f"thread-local {_type_name(obj)}"
    return _type_name(obj)


def _frame_text(frame: types.FrameType) -> str:
    code = frame.f_code
    return f"{_code_name(code)} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"


def _code_name(code: types.CodeType) -> str:
    return str(getattr(code, "co_qualname", code.co_name))  # co_qualname: 3.11+


def _type_name(obj: object) -> str:
    # type(), not obj.__class__: proxies report the class they stand in for.
    return type(obj).__qualname__


def _key_of(mapping: object, value: object) -> str | None:
    """The identifier under which a namespace holds ``value`` (never other keys)."""
    if type(mapping) is not dict:
        return None
    for key, item in list(mapping.items()):
        if item is value and isinstance(key, str):
            return key
    return None


def _namespace(obj: object) -> object:
    """``obj.__dict__`` without running the class's own ``__getattribute__``."""
    if isinstance(obj, type | types.ModuleType) or not type(obj).__dictoffset__:
        return None
    try:
        return object.__getattribute__(obj, "__dict__")
    except Exception:
        return None


def _attribute_name(holder: object, value: object) -> str | None:
    """How ``holder`` refers to ``value`` by name: attribute, slot or a frame's local."""
    if not type(holder).__flags__ & _HEAP_TYPE and not isinstance(holder, wrapt.ObjectProxy):
        # Builtins (methods, cells, frames, tracebacks) name their fields elsewhere.
        return None
    namespace = _namespace(holder)
    name = _key_of(namespace, value)
    if name is None:
        name = _slot_name(holder, value)
    if name is None and isinstance(holder, wrapt.ObjectProxy):
        try:
            wrapped = object.__getattribute__(holder, "__wrapped__")
        except Exception:
            wrapped = None
        name = "__wrapped__" if wrapped is value else None
    return None if name is None else _demangle(holder, name)


def _slot_name(holder: object, value: object) -> str | None:
    for klass in type(holder).__mro__:
        for name, attribute in list(vars(klass).items()):
            if isinstance(attribute, types.MemberDescriptorType):
                try:
                    if attribute.__get__(holder, type(holder)) is value:
                        return name
                except AttributeError:  # an empty slot
                    continue
    return None


def _demangle(holder: object, name: str) -> str:
    """``_EventSignal__callbacks`` -> ``__callbacks``: the name in the source."""
    if name.startswith("_") and not name.startswith("__"):
        owner, separator, rest = name[1:].partition("__")
        if separator and rest and not rest.endswith("__"):
            for klass in type(holder).__mro__:
                if klass.__name__.lstrip("_") == owner:
                    return f"__{rest}"
    return name
