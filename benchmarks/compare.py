"""Each figure of a benchmark run against the last committed run that has it; regressions over 10% are flagged.

    python benchmarks/compare.py [RESULTS.json] [--threshold 0.10]

RESULTS.json defaults to the newest file in benchmarks/results/. The committed runs are the results files in git's
HEAD (read from git, so a file changed since is compared as it was committed). A figure is a regression when it moved
the wrong way (see each figure's `better`) by more than the threshold; the exit status is 1 when any did. Benchmarks
without declared figures are compared on their median time (lower is better) and any `*ratio` in their extra_info.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]


def figures_of(bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A benchmark's figures: the declared ones, else its median time and its ratios."""
    info = bench.get("extra_info", {})
    if info.get("figures"):
        return dict(info["figures"])
    out = {"median_s": {"value": bench["stats"]["median"], "unit": "s", "better": "lower"}}
    for key, value in info.items():
        if key.endswith("ratio") and isinstance(value, int | float):
            out[key] = {"value": value, "unit": "x", "better": "higher"}
    return out


def committed_runs(exclude: Path | None) -> list[tuple[str, dict[str, Any]]]:
    """The results files in HEAD, newest run first, as (path, json)."""
    try:
        listed = subprocess.run(
            ["git", "ls-tree", "--name-only", "HEAD", f"{RESULTS.relative_to(REPO)}/"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    runs = []
    for path in listed:
        if not path.endswith(".json") or (exclude is not None and Path(path).name == exclude.name):
            continue
        text = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True, text=True).stdout
        try:
            runs.append((path, json.loads(text)))
        except json.JSONDecodeError:
            continue
    return sorted(runs, key=lambda r: r[1].get("datetime", ""), reverse=True)


def compare(new_file: Path, threshold: float) -> int:
    new = json.loads(new_file.read_text())
    runs = committed_runs(new_file)
    machine = new.get("machine_info", {})
    print(f"{new_file.name}: commit {new.get('commit_info', {}).get('id', '?')[:10]}, {new.get('datetime', '?')}")
    regressions = 0
    for bench in new.get("benchmarks", []):
        name = bench["fullname"]
        last = next(
            ((path, run, b) for path, run in runs for b in run.get("benchmarks", []) if b["fullname"] == name), None
        )
        print(f"\n{name}")
        old: dict[str, dict[str, Any]] = {}
        if last is None:
            print("  no committed run has this benchmark")
        else:
            path, run, old_bench = last
            old = figures_of(old_bench)
            where = f"{Path(path).name} (commit {run.get('commit_info', {}).get('id', '?')[:10]})"
            same = run.get("machine_info", {}).get("node") == machine.get("node")
            print(f"  against {where}" + ("" if same else ", another machine: absolute figures differ by machine"))
        for key, fig in figures_of(bench).items():
            value, unit = fig["value"], fig.get("unit", "")
            line = f"  {key:<32} {value:>12.4g} {unit}"
            if key in old and old[key]["value"]:
                change = value / old[key]["value"] - 1
                worse = -change if fig.get("better", "higher") == "higher" else change
                flag = "  REGRESSION" if worse > threshold else ""
                regressions += bool(flag)
                line += f"   was {old[key]['value']:.4g} ({change:+.1%}){flag}"
            print(line)
    print(f"\n{regressions} figure(s) regressed by more than {threshold:.0%}")
    return 1 if regressions else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="a results file (default: the newest)")
    parser.add_argument("--threshold", type=float, default=0.10, help="the change that counts as a regression")
    args = parser.parse_args()
    new_file = args.results
    if new_file is None:
        files = sorted(RESULTS.glob("*.json"))
        if not files:
            sys.exit(f"no results in {RESULTS}: run `nox -s bench` first")
        new_file = files[-1]  # named by date and time, so the last is the newest
    sys.exit(compare(new_file, args.threshold))


if __name__ == "__main__":
    main()
