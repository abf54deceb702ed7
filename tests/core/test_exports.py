"""The exported names: what each public module promises, pinned, and every one resolves.

A name added to or dropped from an ``__all__`` must be a decision (and a
CHANGELOG entry), not an accident of the layout: moving modules under
``_core/``, ``verify/`` or ``integrations/`` keeps these lists as they are.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

EXPORTS: dict[str, list[str]] = {
    "nativeguard": [
        "Adapter",
        "Allow",
        "AsyncReleaseRequired",
        "CallbackError",
        "Cancellation",
        "ClosedResourceError",
        "Extracted",
        "FrozenMap",
        "GuardStatistics",
        "Integration",
        "IntegrationError",
        "LeakCheck",
        "LeakError",
        "LeakReport",
        "Managed",
        "NativeDiagnosticsFormatError",
        "NativeDiagnosticsUnavailable",
        "NativeGuardError",
        "ProtocolError",
        "ReleaseError",
        "ReleaseMode",
        "ReleaseStep",
        "ReleaseTimeout",
        "RequestTimeout",
        "Scope",
        "ScopeStatistics",
        "Segment",
        "ServiceError",
        "SessionEvent",
        "SpeechDetected",
        "Survivor",
        "SurvivorReport",
        "SynthesisResult",
        "Transcript",
        "WordBoundary",
        "__version__",
        "arecognize_once",
        "assert_no_leaks",
        "asynthesize",
        "atranscribe",
        "bind",
        "check",
        "configure",
        "creation_tracebacks_enabled",
        "current_scope",
        "detach_traceback",
        "extract",
        "guarded",
        "integrations",
        "isolate",
        "leak_check",
        "managed",
        "managed_connection",
        "managed_credential",
        "managed_executor",
        "managed_recognizer",
        "managed_synthesizer",
        "managed_transcriber",
        "managed_translation_recognizer",
        "monitor",
        "plain",
        "quick_step",
        "recognize_once",
        "redact",
        "register_adapter",
        "register_integration",
        "run_bounded",
        "scopes_released",
        "set_creation_tracebacks",
        "synthesize",
        "transcribe",
        "verify",
    ],
    "nativeguard.verify": [
        "Allow",
        "Delta",
        "HeapStats",
        "LeakCheck",
        "LeakReport",
        "MemoryBreakdown",
        "Snapshot",
        "assert_no_leaks",
        "check",
        "heap_stats",
        "leak_check",
        "memory_breakdown",
        "snapshot",
        "trim",
    ],
    "nativeguard.isolate": [
        "DEFAULT_PRELOAD",
        "MB",
        "NotPlainDataError",
        "PoolStatistics",
        "RemoteTaskError",
        "Retirement",
        "TaskFuture",
        "TaskInfo",
        "TaskTimeout",
        "WorkerCrashed",
        "WorkerPool",
        "WorkerStartError",
        "WorkerStatistics",
        "check_plain",
        "in_worker",
        "isolated",
        "shutdown_isolated_pools",
    ],
    "nativeguard.pytest_plugin": ["LeakChecker", "clear_finished_frames", "parse_repeat"],
    "nativeguard.integrations": [
        "azure_identity",
        "azure_speech",
        "executors",
        "grpc",
        "onnxruntime",
    ],
}


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_all_is_exactly_the_promised_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(EXPORTS[module_name])
    assert len(set(module.__all__)) == len(module.__all__), "a name is listed twice"


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_every_exported_name_resolves_and_is_listed_by_dir(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    assert set(module.__all__) <= set(dir(module))


def test_no_export_comes_from_a_module_outside_the_package() -> None:
    """Everything nativeguard exports is its own (a stray SDK class re-export would show)."""
    import nativeguard

    foreign = []
    for name in nativeguard.__all__:
        value = getattr(nativeguard, name)
        if inspect.ismodule(value):
            module = value.__name__
        elif inspect.isclass(value) or inspect.isfunction(value):
            module = value.__module__
        else:
            continue  # __version__, typing aliases (ReleaseMode, Extracted, ReleaseStep)
        if not module.startswith("nativeguard"):
            foreign.append((name, module))
    assert foreign == []


def test_the_lazy_speech_names_load_the_sdk_only_when_read() -> None:
    code = (
        "import sys, nativeguard\n"
        "names = [n for n in nativeguard.__all__ if n != 'monitor']\n"
        "eager = [n for n in names if n in vars(nativeguard)]\n"
        "print('azure.cognitiveservices.speech' in sys.modules, len(names) - len(eager))\n"
        "[getattr(nativeguard, n) for n in names]\n"
        "print('azure.cognitiveservices.speech' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n")[:2]
    assert first == "False 21"  # 21 Speech names are lazy
    assert second == "True"
