"""Run every benchmark in bench/ (bench_*.py), each in its own subprocess, in name order.

`make bench` calls this. common.py (shared helpers) and reference.py (the public code's loops,
the baselines) are not benchmarks. Arguments after `--` go to every bench (e.g. `-- --threads 2`); `--only core`
runs the files whose name contains "core". Exits non-zero if any bench failed.

    python bench/run_all.py
    python bench/run_all.py --only core -- --repeats 1
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benches(only: str | None = None) -> list[Path]:
    files = sorted(HERE.glob("bench_*.py"))  # common.py and reference.py are helpers, study_*.py quality studies
    return [p for p in files if only is None or only in p.stem]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    ours = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="run only the benches whose file name contains this")
    p.add_argument("--timeout", type=float, default=900, help="seconds per bench")
    args = p.parse_args(ours)
    files = benches(args.only)
    if not files:
        print(f"no bench/bench_*.py matches {args.only!r}")
        return 1
    results = []
    for path in files:
        cmd = [sys.executable, str(path), *extra]
        print(f"\n{'=' * 78}\n== {path.name}   ({' '.join([Path(cmd[0]).name, *cmd[1:]])})\n{'=' * 78}", flush=True)
        start = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=HERE.parent, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        results.append((path.name, rc, time.perf_counter() - start))
    print(f"\n{'=' * 78}\n== summary\n{'=' * 78}")
    for name, rc, secs in results:
        print(f"  {name:<36} {'ok' if rc == 0 else f'FAILED ({rc})':<14} {secs:7.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
