"""The quickstart's wall-clock time in one process and with ``--workers``, side by side on the same machine.

    python benchmarks/quickstart.py [--workers 2] [--threads 1] [--suite examples/quickstart.yaml]

Each run is the README's command (``nte-eval run SUITE --out DIR --overwrite --threads T``, progress bars included,
once alone and once with ``--workers N``) in its own process, timed from start to exit: the attacks, the
certification, the merge and the report. It prints both times, their ratio, and whether the two runs printed the
same stdout (out folder aside) and wrote the same results.csv (sorted rows, values equal to 1e-9).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

KEY = ["encoder", "encoder_params", "attack", "attack_params", "model", "metric"]


def timed_run(suite: str, out: Path, threads: int, workers: int) -> tuple[float, str]:
    """Seconds from start to exit of one `nte-eval run`, and its stdout with the out folder replaced."""
    command = [sys.executable, "-m", "nte_eval.cli", "run", suite, "--out", str(out), "--overwrite",
               "--threads", str(threads)] + (["--workers", str(workers)] if workers > 1 else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout.replace(str(out), "OUT")


def results(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv").sort_values(KEY).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="examples/quickstart.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, text_one = timed_run(args.suite, Path(tmp) / "one", args.threads, 1)
        many, text_many = timed_run(args.suite, Path(tmp) / "many", args.threads, args.workers)
        a, b = results(Path(tmp) / "one"), results(Path(tmp) / "many")
        same = a[KEY].equals(b[KEY]) and float((a.value - b.value).abs().max()) <= 1e-9
    print(f"{args.suite}, --threads {args.threads}")
    for what, seconds in (("one process", one), (f"--workers {args.workers}", many)):
        print(f"  {what + ':':<14} {seconds:6.1f} s ({int(seconds // 60)} min {round(seconds % 60)} s)")
    print(f"  ratio (one process / workers): {one / many:.2f}")
    print(f"  same stdout: {text_one == text_many}; same results.csv: {same}")


if __name__ == "__main__":
    main()
