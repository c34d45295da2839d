"""Benchmark: mutation score of the security modules (how many refusal paths tests pin).

Runs mutmut over the modules listed in ``[tool.mutmut]`` of pyproject.toml (crypto/,
bundle/, runtime/state.py, guard/voting.py, guard/eventlog.py) with the tests named
there, in a scratch copy of this checkout so the working tree is never touched. It
prints, per module, the mutants killed, survived, timed out and not covered, and the
score: killed / all (a mutant no test covers is not killed), target 90 %. The
surviving mutants are listed in the JSON record (module, mutant, the changed line) so a
reviewer can tell equivalent mutants from missing tests.

    python benchmarks/bench_mutation.py [--only edgeguard/guard/voting.py] [--json-out PATH]

Slow: several thousand mutants, about 2-3 per second on two cores. ``make mutation``
runs it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_out, make_record, write_record

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.90
# mutmut 3's status words (``mutmut results --all true``)
KILLED = {"killed"}
SURVIVED = {"survived"}
TIMEOUT = {"timeout"}
NO_TESTS = {"no tests"}


def _module(mutant: str) -> str:
    """``edgeguard.guard.voting.x_vote__mutmut_3`` -> ``edgeguard/guard/voting.py``."""
    dotted = mutant.split(".x_")[0].split(".xǁ")[0]
    return dotted.replace(".", "/") + ".py"


def _copy(dst: Path) -> None:
    """The tracked files of this checkout (what a fresh clone has), without mutmut's dirs."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = Path(raw.decode())
        src = ROOT / rel
        if not src.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def _limit(pyproject: Path, only: list[str]) -> None:
    """Narrow ``only_mutate`` to ``only`` (for a quick run on one module)."""
    text = pyproject.read_text(encoding="utf-8")
    pattern = re.compile(r"^only_mutate = \[[^\]]*\]", re.MULTILINE)
    if not pattern.search(text):
        raise SystemExit("bench_mutation: pyproject.toml has no only_mutate in [tool.mutmut]")
    pyproject.write_text(pattern.sub("only_mutate = " + _toml_list(only), text, 1), "utf-8")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _changed_line(work: Path, mutant: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", mutant],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    minus = [ln[1:].strip() for ln in shown.splitlines() if ln.startswith("-") and ln[1:2] != "-"]
    plus = [ln[1:].strip() for ln in shown.splitlines() if ln.startswith("+") and ln[1:2] != "+"]
    return f"{' / '.join(minus)[:160]} -> {' / '.join(plus)[:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="FILE.py")
    parser.add_argument("--children", type=int, default=2, help="mutmut --max-children")
    add_json_out(parser)
    args = parser.parse_args()
    if shutil.which("mutmut") is None and not (Path(sys.executable).parent / "mutmut").exists():
        print("bench_mutation: mutmut is not installed (pip install mutmut)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eg-mutation-") as td:
        work = Path(td)
        _copy(work)
        if args.only:
            _limit(work / "pyproject.toml", args.only)
        run = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.children)],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            sys.stderr.write(run.stdout[-3000:] + run.stderr[-3000:])
            print(f"bench_mutation: mutmut run failed ({run.returncode})", file=sys.stderr)
            return 1
        listing = subprocess.run(
            [sys.executable, "-m", "mutmut", "results", "--all", "true"],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        per: dict[str, Counter[str]] = defaultdict(Counter)
        survivors: list[dict[str, str]] = []
        for line in listing.splitlines():
            name, sep, status = line.strip().partition(": ")
            if not sep or "__mutmut_" not in name:
                continue
            module = _module(name)
            per[module][status] += 1
            if status in SURVIVED:
                survivors.append(
                    {"module": module, "mutant": name, "change": _changed_line(work, name)}
                )
    seconds = time.perf_counter() - started
    modules: dict[str, Any] = {}
    total = Counter[str]()
    for module in sorted(per):
        c = per[module]
        total.update(c)
        modules[module] = _score(c)
    overall = _score(total)
    head = ("module", "mutants", "killed", "survived", "no tests", "score")
    print(f"{head[0]:38} {head[1]:>8} {head[2]:>7} {head[3]:>8} {head[4]:>8} {head[5]:>7}")
    for module, row in {**modules, "all": overall}.items():
        print(
            f"{module:38} {row['mutants']:>8} {row['killed']:>7} {row['survived']:>8} "
            f"{row['no_tests']:>8} {100 * row['score']:>6.1f}%"
        )
    print(f"target: >= {100 * TARGET:.0f} % killed; {seconds / 60:.1f} min")
    record = make_record(
        "mutation",
        params={"only": args.only, "children": args.children, "tool": "mutmut"},
        results={
            "modules": modules,
            "overall": overall,
            "target": TARGET,
            "seconds": round(seconds, 1),
            "survivors": survivors,
        },
        libs=("mutmut", "pytest", "hypothesis"),
    )
    write_record(record, args.json_out)
    return 0


def _score(c: Counter[str]) -> dict[str, Any]:
    killed = sum(c[s] for s in KILLED) + sum(c[s] for s in TIMEOUT)
    survived = sum(c[s] for s in SURVIVED)
    no_tests = sum(c[s] for s in NO_TESTS)
    mutants = sum(c.values())
    return {
        "mutants": mutants,
        "killed": killed,
        "survived": survived,
        "no_tests": no_tests,
        "other": mutants - killed - survived - no_tests,
        # a mutant no test runs is not killed: it counts against the score
        "score": killed / mutants if mutants else 0.0,
    }


if __name__ == "__main__":
    raise SystemExit(main())
