"""Line coverage with the stdlib only: run the unittest suite under `trace`.

Usage: python3 tools/coverage.py [--min PERCENT] [--xml FILE]

Prints a per-module table (statements, missed, percent, missing lines) for the
service's own modules and fails when the total is below --min (default: the
COVERAGE_MIN environment variable, else 75). Threads started by the tests are
traced too; subprocesses are not. With --xml, writes a Cobertura-style summary
that CI systems understand.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import trace
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def service_modules() -> list[Path]:
    return sorted(p for p in ROOT.glob("*.py"))


def executable_lines(path: Path) -> set[int]:
    finder = getattr(trace, "_find_executable_linenos", None)
    if finder is not None:
        return {line for line in finder(str(path)) if line > 0}
    code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    lines: set[int] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        lines |= {line for _, _, line in current.co_lines() if line and line > 0}
        stack.extend(c for c in current.co_consts if hasattr(c, "co_lines"))
    return lines


def run_suite(tracer: trace.Trace) -> bool:
    sys.path.insert(0, str(ROOT))
    result: list[unittest.TestResult] = []

    def go() -> None:
        # Discover inside the traced call, so module-level lines count too.
        suite = unittest.defaultTestLoader.discover(str(ROOT / "tests"), top_level_dir=str(ROOT))
        result.append(unittest.TextTestRunner(verbosity=1).run(suite))

    threading.settrace(tracer.globaltrace)
    try:
        tracer.runfunc(go)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    return bool(result and result[0].wasSuccessful())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--min", type=float, default=float(os.environ.get("COVERAGE_MIN", "75")))
    parser.add_argument("--xml", type=Path)
    args = parser.parse_args(argv)

    tracer = trace.Trace(count=1, trace=0, ignoredirs=[sys.prefix, sys.exec_prefix])
    ok = run_suite(tracer)
    counts = tracer.results().counts
    hit_by_file: dict[str, set[int]] = {}
    for (filename, line), _ in counts.items():
        hit_by_file.setdefault(os.path.realpath(filename), set()).add(line)

    total = missed_total = 0
    rows = []
    for module in service_modules():
        lines = executable_lines(module)
        hit = hit_by_file.get(os.path.realpath(module), set())
        missed = sorted(lines - hit)
        total += len(lines)
        missed_total += len(missed)
        pct = 100.0 * (len(lines) - len(missed)) / len(lines) if lines else 100.0
        rows.append((module.name, len(lines), len(missed), pct, missed))
    percent = 100.0 * (total - missed_total) / total if total else 100.0

    print(f"\n{'module':<24}{'stmts':>7}{'miss':>7}{'cover':>8}  missing")
    for name, stmts, miss, pct, missing in rows:
        shown = ",".join(map(str, missing[:15])) + (",..." if len(missing) > 15 else "")
        print(f"{name:<24}{stmts:>7}{miss:>7}{pct:>7.1f}%  {shown}")
    print(f"{'TOTAL':<24}{total:>7}{missed_total:>7}{percent:>7.1f}%")

    if args.xml:
        args.xml.write_text(
            '<?xml version="1.0" ?>\n'
            f'<coverage line-rate="{percent / 100:.4f}" lines-valid="{total}" '
            f'lines-covered="{total - missed_total}" version="stdlib-trace"/>\n',
            encoding="utf-8",
        )
    if not ok:
        print("coverage: tests failed")
        return 1
    if percent < args.min:
        print(f"coverage: {percent:.1f}% is below the minimum {args.min:.1f}%")
        return 2
    print(f"coverage: {percent:.1f}% (minimum {args.min:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
