"""The table of every recorded demo run, from the ``demo_results.json`` files kept in ``benchmarks/results/``.

``scripts/demo.py`` writes one record per run (``OUTPUT_ROOT/demo_results.json``); a copy kept as
``benchmarks/results/demo_<commit>.json`` is the source of each demo figure the READMEs quote. This
prints them oldest first as a markdown table, with the figures the demo printed (accuracy to 0.1%,
the gain over the student alone to 0.1 point), so that the READMEs' history of the demo is read
off the records, not typed.

    python benchmarks/demo_records.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("teacher", "student alone", "distilled student")


def row(record: dict, name: str) -> str:
    results = record["results"]
    top1 = [f"{100 * results[step]['accuracy']:.1f}%" for step in STEPS]
    gain = 100 * (results["distilled student"]["accuracy"] - results["student alone"]["accuracy"])
    return (f"| {record['commit']} | {record['date']} | {record['machine']} | {' | '.join(top1)} | {gain:+.1f} | "
            f"{record['total_seconds']:.0f} | `{name}` |")


def table(folder: Path) -> str:
    records = [(json.loads(path.read_text(encoding="utf-8")), path.name) for path in folder.glob("demo_*.json")]
    records.sort(key=lambda pair: pair[0]["date"])
    head = ("| commit | date | machine | teacher | student alone | distilled student | gain (points) | total s | record |\n"
            "|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(row(record, name) for record, name in records)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of demo_*.json records")
    folder = parser.parse_args().results
    if not any(folder.glob("demo_*.json")):  # a mistyped folder printed the table's header alone, exit 0
        parser.error(f"--results {folder} holds no demo_*.json record; give the folder the records are kept in")
    print(table(folder))


if __name__ == "__main__":
    main()
