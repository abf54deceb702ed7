"""``nativeguard.integrations.grpc._demo.run_demo``: the naive / guarded / isolated table for gRPC.

Run in a subprocess: the demo disables the collector, starts a worker pool
and a server process, and measures this process's threads and fds; the test
session's own must not mix in.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("grpc")

RUN = (
    "import sys; from nativeguard.integrations.grpc._demo import run_demo; "
    "sys.exit(run_demo(sys.stdout, requests=6, as_json={as_json}))"
)


def _run(as_json: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN.format(as_json=as_json)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_json_naive_leaks_guarded_and_isolated_stay_flat() -> None:
    result = _run(as_json=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    naive, after_gc = report["naive"], report["after_gc"]
    # Each naive request left its channel, its poller thread and its connection.
    assert naive["channels"] == 6
    assert naive["grpc_threads"] == 6
    assert naive["sockets"] == 6
    assert naive["threads"] >= 6
    assert naive["fds"] >= 6
    # One collection gives them back (the cycles hold nothing a callback pins).
    assert (after_gc["channels"], after_gc["grpc_threads"], after_gc["sockets"]) == (0, 0, 0)
    for name in ("guarded", "isolated"):
        phase = report[name]
        assert (phase["threads"], phase["fds"], phase["channels"], phase["sockets"]) == (
            0,
            0,
            0,
            0,
        ), name
    assert report["grpcio"].startswith("1.")


def test_demo_table() -> None:
    result = _run(as_json=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("naive", "naive+gc", "guarded", "isolated", "live channels (channelz)"):
        assert text in out
    assert "guarded: managed_channel closed each channel at the end of its block: flat." in out
    assert "this process: flat." in out


def test_demo_refuses_a_bad_count() -> None:
    from nativeguard.integrations.grpc._demo import measure

    for bad in (0, -1, True, "3"):
        with pytest.raises(ValueError, match="requests must be an int >= 1"):
            measure(bad)  # type: ignore[arg-type]
