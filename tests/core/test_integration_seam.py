"""The integration seam, proved with an SDK nativeguard has never heard of.

The "SDK" is a tiny native allocator (``toy_new/toy_free/toy_count``) that
the tests compile with the system C compiler and load with ctypes, wrapped
by a Python module the way real SDKs wrap their handles: an object owns a
native block until ``free()`` (or its ``__del__``) and holds one callback
slot. Its integration is written only against nativeguard's public API and
reaches the core two ways:

- :func:`nativeguard.register_integration`, in this process;
- the ``nativeguard.integrations`` entry point of a throwaway distribution
  (a ``.dist-info`` directory with ``entry_points.txt`` on ``PYTHONPATH``),
  in a fresh interpreter and in a pytester session, where nothing imports
  the module by hand before nativeguard needs it.

Nothing in nativeguard's core changes for it: ``@guarded`` tracks its
objects, ``Scope`` releases them with its steps and disconnects its
callbacks, snapshots and leak reports count its native blocks under its own
counter name, and the pytest plugin fails a test that leaks one. A last test
parses the core's imports: none of them reaches an integration.
"""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import nativeguard
from nativeguard import Integration, IntegrationError, LeakError, Scope, guarded, verify

C_SOURCE = r"""
#include <stdlib.h>

static long live = 0;

void *toy_new(size_t size) {
    void *block = malloc(size ? size : 1);
    if (block) live++;
    return block;
}

void toy_free(void *block) {
    if (block) {
        live--;
        free(block);
    }
}

long toy_count(void) { return live; }
"""

MODULE_TEMPLATE = '''
"""{name}: a native allocator wrapped the way an SDK wraps its handles (test fixture)."""

import ctypes

from nativeguard import Integration

_lib = ctypes.CDLL({library!r})
_lib.toy_new.restype = ctypes.c_void_p
_lib.toy_new.argtypes = [ctypes.c_size_t]
_lib.toy_free.restype = None
_lib.toy_free.argtypes = [ctypes.c_void_p]
_lib.toy_count.restype = ctypes.c_long
_lib.toy_count.argtypes = []


class Signal:
    def __init__(self):
        self._callbacks = []

    def connect(self, callback):
        self._callbacks.append(callback)

    def disconnect_all(self):
        self._callbacks.clear()

    def is_connected(self):
        return bool(self._callbacks)


class {cls}:
    def __init__(self, size=64):
        self._block = _lib.toy_new(size)
        self.on_event = Signal()

    def free(self):
        block, self._block = self._block, None
        if block:
            _lib.toy_free(block)

    def __del__(self):
        self.free()


def live_blocks():
    return _lib.toy_count()


def _free(obj, timeout_s):
    obj.free()


INTEGRATION = Integration(
    name={name!r},
    modules=({name!r},),
    release=(("{name} block", {cls}, (_free,)),),
    classes=lambda: ({cls},),
    holds_native=lambda obj: obj._block is not None,
    counters=lambda: {{"{name}.blocks": _lib.toy_count()}},
    callbacks=lambda obj: [obj.on_event] if isinstance(obj, {cls}) else [],
)
'''


@dataclass(frozen=True)
class Toy:
    """The compiled library and the directory holding the two wrapper modules (each its copy)."""

    library: Path
    site: Path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:  # pragma: no cover - gcc is part of the CI image
        pytest.skip("no C compiler on PATH")
    root = tmp_path_factory.mktemp("toy")
    source = root / "toy.c"
    source.write_text(C_SOURCE)
    library = root / "libtoy.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    site = root / "site"
    site.mkdir()
    for name, cls in (("toy_api", "ToyApiBlock"), ("toy_ep", "ToyEpBlock")):
        # One copy each: dlopen() of one file twice would share its counter.
        own = shutil.copy(library, root / f"lib{name}.so")
        (site / f"{name}.py").write_text(
            MODULE_TEMPLATE.format(name=name, cls=cls, library=str(own))
        )
    # The throwaway distribution: only metadata and its entry point.
    dist_info = site / "toy_ep-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-ep\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[nativeguard.integrations]\ntoy_ep = toy_ep:INTEGRATION\n"
    )
    return Toy(library, site)


@pytest.fixture(scope="module")
def toy_api(toy: Toy) -> Iterator[ModuleType]:
    """The toy module, registered in this process through the public API only."""
    sys.path.insert(0, str(toy.site))
    try:
        module = importlib.import_module("toy_api")
        assert nativeguard.register_integration(module.INTEGRATION) is module.INTEGRATION
        yield module
    finally:
        sys.path.remove(str(toy.site))


def fresh_env(toy: Toy) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(toy.site), *filter(None, [env.get("PYTHONPATH", "")])])
    return env


def test_guarded_tracks_and_the_scope_releases_with_the_integrations_steps(
    toy_api: ModuleType,
) -> None:
    base = toy_api.live_blocks()
    fired: list[str] = []

    @guarded
    def make() -> object:
        block = toy_api.ToyApiBlock()
        block.on_event.connect(fired.append)
        assert toy_api.live_blocks() == base + 1
        return block  # escapes: the caller holds it, its native block is freed anyway

    kept = make()
    assert toy_api.live_blocks() == base
    assert kept._block is None  # type: ignore[attr-defined]
    assert kept.on_event.is_connected() is False  # type: ignore[attr-defined]
    assert fired == []


def test_scope_runs_the_release_steps_and_counts_the_disconnected_callbacks(
    toy_api: ModuleType,
) -> None:
    base = toy_api.live_blocks()
    scope = Scope()
    blocks = [scope.register(toy_api.ToyApiBlock()) for _ in range(3)]
    for block in blocks:
        block.on_event.connect(print)
    blocks[0].on_event.connect(print)
    assert toy_api.live_blocks() == base + 3
    scope.close()
    assert toy_api.live_blocks() == base
    scope.wait_released(10.0)
    statistics = scope.statistics()
    assert statistics.signals_disconnected == 3
    assert all(block._block is None for block in blocks)
    scope.close()  # idempotent: nothing freed twice
    assert toy_api.live_blocks() == base


def test_snapshot_and_leak_report_count_the_blocks_under_the_integrations_name(
    toy_api: ModuleType,
) -> None:
    before = verify.snapshot()
    assert before.native_handles.get("toy_api.blocks", 0) == toy_api.live_blocks()
    held = [toy_api.ToyApiBlock(), toy_api.ToyApiBlock()]
    during = verify.snapshot()
    assert (
        during.native_handles["toy_api.blocks"]
        == before.native_handles.get("toy_api.blocks", 0) + 2
    )
    assert during.instances["ToyApiBlock"] == before.instances.get("ToyApiBlock", 0) + 2
    with pytest.raises(LeakError) as caught:
        verify.assert_no_leaks(before, threads=False, fds=False, settle_s=0.2)
    report = caught.value.report
    assert dict(report.native_handles) == {"toy_api.blocks": 2}
    assert report.instances["ToyApiBlock"] == 2
    assert "toy_api.blocks +2" in str(report)
    del caught, report
    held[0].free()
    held[1].free()
    del held  # the report named its holder: the local ``held`` of this frame
    assert verify.check(before, threads=False, fds=False, settle_s=1.0) is None


def test_a_second_integration_with_the_same_name_is_refused(toy_api: ModuleType) -> None:
    clash = Integration(name="toy_api")
    with pytest.raises(IntegrationError, match="'toy_api' is already registered"):
        nativeguard.register_integration(clash)
    with pytest.raises(TypeError, match="takes an Integration, got str"):
        nativeguard.register_integration("toy_api")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "not an identifier"}, "name must be an identifier"),
        ({"name": "x", "modules": "toy"}, "modules must be a tuple of module names"),
        ({"name": "x", "preload": ("",)}, "preload must be a tuple of module names"),
        ({"name": "x", "counters": {"a": 1}}, "counters must be callable or None, got dict"),
        ({"name": "x", "release": "close"}, "release must be a sequence"),
        ({"name": "x", "release": [("a", object)]}, r"release\[0\] must be a tuple"),
        ({"name": "x", "release": [("a", 3, ())]}, r"release\[0\] must match with a type"),
        ({"name": "x", "release": [("a", object, ("close",))]}, "steps must be a sequence"),
    ],
)
def test_malformed_integrations_are_refused_by_field(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(IntegrationError, match=message):
        Integration(**fields)  # type: ignore[arg-type]


ENTRY_POINT_SCRIPT = textwrap.dedent(
    """
    import sys

    import nativeguard
    from nativeguard import Scope, guarded, verify

    assert "toy_ep" not in sys.modules  # nobody imported it by hand
    before = verify.snapshot()  # the first need: loads the entry point
    import toy_ep

    assert before.native_handles.get("toy_ep.blocks", 0) == 0

    @guarded
    def make():
        return toy_ep.ToyEpBlock()

    kept = make()
    assert toy_ep.live_blocks() == 0, toy_ep.live_blocks()
    held = toy_ep.ToyEpBlock()
    report = verify.check(before, threads=False, fds=False, settle_s=0.2)
    print(dict(report.native_handles), dict(report.instances))
    with Scope() as scope:
        scope.register(held)
    print(toy_ep.live_blocks())
    """
)


def test_an_installed_distributions_entry_point_is_loaded_on_first_need(toy: Toy) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT_SCRIPT],
        env=fresh_env(toy),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # ``kept`` (freed by the guarded call, still referenced) is a live
    # instance without a native block; ``held`` is both.
    assert done.stdout.splitlines() == [
        "{'toy_ep.blocks': 1} {'ToyEpBlock': 2}",
        "0",
    ]


BROKEN_SCRIPT = textwrap.dedent(
    """
    import sys

    from nativeguard import IntegrationError, verify

    try:
        verify.snapshot()
    except IntegrationError as error:
        print(type(error.__cause__).__name__, str(error))
    print("toy_ep" in sys.modules, verify.snapshot().native_handles.get("toy_ep.blocks", 0))
    """
)


def test_a_broken_entry_point_is_reported_once_by_name_and_the_others_still_load(
    toy: Toy, tmp_path: Path
) -> None:
    broken = tmp_path / "toy_broken-1.0.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-broken\nVersion: 1.0\n")
    (broken / "entry_points.txt").write_text(
        "[nativeguard.integrations]\ntoy_broken = toy_missing_module:INTEGRATION\n"
    )
    env = fresh_env(toy)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith(
        "ModuleNotFoundError 1 of the 'nativeguard.integrations' entry points failed to "
        "load: entry point 'toy_broken' (toy_missing_module:INTEGRATION): "
        "ModuleNotFoundError(\"No module named 'toy_missing_module'\""
    ), first
    assert second == "True 0"


LEAKY_TESTS = textwrap.dedent(
    """
    KEPT = []


    def test_leaks_one_block():
        import toy_ep

        KEPT.append(toy_ep.ToyEpBlock())


    def test_frees_its_block():
        import toy_ep

        block = toy_ep.ToyEpBlock()
        block.free()
    """
)


def test_the_pytest_plugin_fails_a_test_that_leaks_one_block(
    toy: Toy, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", fresh_env(toy)["PYTHONPATH"])
    pytester.makepyfile(test_toy=LEAKY_TESTS)
    result = pytester.runpytest_subprocess("--nativeguard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    failed = [line for line in result.outlines if line.startswith("FAILED ")]
    assert len(failed) == 1
    assert "test_toy.py::test_leaks_one_block" in failed[0]
    output = result.stdout.str()
    assert "toy_ep.blocks +1" in output
    assert "ToyEpBlock" in output


# -- the import structure --------------------------------------------------------

PACKAGE = Path(nativeguard.__file__).parent
CORE = [
    # _core/__init__.py is a docstring only
    *sorted(str(path.relative_to(PACKAGE)) for path in (PACKAGE / "_core").glob("_[a-z]*.py")),
    *sorted(str(path.relative_to(PACKAGE)) for path in (PACKAGE / "verify").glob("*.py")),
    *sorted(str(path.relative_to(PACKAGE)) for path in (PACKAGE / "isolate").glob("*.py")),
]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ["nativeguard", *path.relative_to(PACKAGE).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("relative", CORE)
def test_no_core_module_imports_an_integration_or_an_sdk(relative: str) -> None:
    imports = imported_modules(PACKAGE / relative)
    assert imports, relative  # the parser found its imports at all
    offending = sorted(
        name for name in imports if name.startswith(("nativeguard.integrations", "azure"))
    )
    assert offending == [], f"{relative} imports {offending}"


def test_the_import_parser_sees_an_integration_import() -> None:
    """The check above can fail: the package face does import the integrations."""
    assert "nativeguard.integrations" in imported_modules(PACKAGE / "__init__.py")
    assert "azure.cognitiveservices.speech" in imported_modules(
        PACKAGE / "integrations" / "azure_speech" / "_extract.py"
    )
    # and sees a core-private module, as the public-faces check below needs
    assert "nativeguard._core._scope" in imported_modules(PACKAGE / "_core" / "_guarded.py")


def _fresh(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_nativeguard_verify_and_isolate_loads_no_sdk() -> None:
    loaded = _fresh(
        "import sys, nativeguard, nativeguard.verify, nativeguard.isolate, "
        "nativeguard.integrations\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('azure', 'onnxruntime', 'grpc', 'numpy')))"
    )
    assert loaded == "[]"


def test_an_sdk_imported_after_the_hook_is_tracked_from_its_first_object() -> None:
    """The Speech integration activates when the SDK is imported, hook already installed."""
    out = _fresh(
        "import sys, nativeguard\n"
        "from nativeguard._core import _construction, _integration\n"
        "seen = []\n"
        "_construction.add_listener(lambda obj: seen.append(type(obj).__name__))\n"
        "speech = next(i for i in _integration.integrations() if i.name == 'azure_speech')\n"
        "before = (_integration.is_active(speech), 'azure' in sys.modules)\n"
        "import azure.cognitiveservices.speech as speechsdk\n"
        "config = speechsdk.SpeechConfig(subscription='k' * 32, region='westus')\n"
        "print(before, _integration.is_active(speech), 'SpeechConfig' in seen)"
    )
    assert out == "(False, False) True True"


def test_a_lazy_speech_name_imports_the_sdk_on_first_use() -> None:
    out = _fresh(
        "import sys, nativeguard\n"
        "before = 'azure.cognitiveservices.speech' in sys.modules\n"
        "fn = nativeguard.managed_transcriber\n"
        "print(before, 'azure.cognitiveservices.speech' in sys.modules, fn.__module__, "
        "'managed_transcriber' in dir(nativeguard))"
    )
    assert out == ("False True nativeguard.integrations.azure_speech._managed True")


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        nativeguard.no_such_thing  # noqa: B018


INTEGRATION_MODULES = sorted(
    str(path.relative_to(PACKAGE)) for path in (PACKAGE / "integrations").rglob("*.py")
)


@pytest.mark.parametrize("relative", INTEGRATION_MODULES)
def test_integrations_use_only_nativeguards_public_faces(relative: str) -> None:
    """Written as an outside author would: `nativeguard`, `.verify`, `.isolate`, `.testing`,
    and the integration's own modules; nothing private of the core."""
    parts = [part for part in Path(relative).with_suffix("").parts[:2] if part != "__init__"]
    own = "nativeguard." + ".".join(parts)
    private = sorted(
        name
        for name in imported_modules(PACKAGE / relative)
        if name.startswith("nativeguard")
        and not name.startswith(own)
        and any(part.startswith("_") for part in name.split(".")[1:])
    )
    assert private == [], f"{relative} imports {private}"
