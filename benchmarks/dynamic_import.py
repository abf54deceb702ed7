"""Case study: does ``import librosa`` inside a request handler leak?

Written up in docs/case-studies/dynamic-import.md.

One field write-up blamed an ``import librosa`` inside a request method for a
memory leak. Three handlers, each computing the same MFCCs of one second of
16 kHz audio, are soaked with ``nativeguard soak``:

- ``import_inside``: ``import librosa`` inside the call (the blamed pattern);
- ``import_once`` (with ``--setup dynamic_import:load_librosa``): librosa
  imported once, before the soak's baseline, and passed in;
- ``reimport``: librosa's modules dropped from ``sys.modules`` and imported
  again in every call, what hot-reload code and some plugin loaders do.

Run (needs ``pip install librosa 'nativeguard[plot]'``; about 3 minutes)::

    python benchmarks/dynamic_import.py [--iterations 30] [--out docs/case-studies]

It runs the command itself (``python -m nativeguard soak ...``) for each,
writing ``dynamic-import-<variant>.png`` and ``.json`` and the comparison
charts ``dynamic-import-inside-vs-once.png`` and
``dynamic-import-inside-vs-reimport.png`` into ``--out``, and prints the
verdict tables.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
SIGNAL = (0.1 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)


def _mfcc(librosa: Any) -> int:
    return int(librosa.feature.mfcc(y=SIGNAL, sr=SAMPLE_RATE, n_mfcc=13).shape[1])


def import_inside() -> int:
    import librosa  # noqa: PLC0415 - the pattern under test

    return _mfcc(librosa)


def load_librosa() -> ModuleType:
    """``--setup``: the import done once, at start-up, before the baseline."""
    import librosa  # noqa: PLC0415

    return librosa


def import_once(librosa: ModuleType) -> int:
    return _mfcc(librosa)


def reimport() -> int:
    for name in [n for n in sys.modules if n == "librosa" or n.startswith("librosa.")]:
        del sys.modules[name]
    import librosa  # noqa: PLC0415

    return _mfcc(librosa)


VARIANTS = {
    "inside": ("dynamic_import:import_inside", None, "import inside the call"),
    "once": ("dynamic_import:import_once", "dynamic_import:load_librosa", "import once"),
    "reimport": ("dynamic_import:reimport", None, "re-import every call"),
}


def _soak(variant: str, out: Path, iterations: int) -> int:
    target, setup, label = VARIANTS[variant]
    command = [
        sys.executable, "-m", "nativeguard", "soak", target, "--warmup", "0",
        "--iterations", str(iterations), "--label", label, "-q",
        "--json", str(out / f"dynamic-import-{variant}.json"),
        "--plot", str(out / f"dynamic-import-{variant}.png"),
    ]  # fmt: skip
    if setup:
        command += ["--setup", setup]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent))
    print(f"$ nativeguard soak {target}" + (f" --setup {setup}" if setup else ""), flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("docs/case-studies"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    status = {variant: _soak(variant, args.out, args.iterations) for variant in VARIANTS}
    for first, second in (("inside", "once"), ("inside", "reimport")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nativeguard",
                "soak",
                "--compare",
                str(args.out / f"dynamic-import-{first}.json"),
                str(args.out / f"dynamic-import-{second}.json"),
                "--plot",
                str(args.out / f"dynamic-import-{first}-vs-{second}.png"),
            ],
            check=True,
        )
    print("exit status per variant (0 no leak, 1 leak):", status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
