"""Workbook bomb benchmark: `batchgen validate` on an .xlsx of millions of empty rows (a few
dozen KB on disk), and on an honest 100,000-row workbook for the cost of the checks
(PRODUCT.md §10: a hostile file gets a clear error within seconds and bounded memory).

How it measures: each workbook is written at bench time (the bomb's sheet XML by hand,
with tests/workbooks.py; the honest one with openpyxl), then the real command runs under
`/usr/bin/time -v`: its wall time, CPU time (user + system: less swayed than the wall
time by others' work on a shared machine) and peak RSS ("Maximum resident set size"),
each the best of --repeat runs (the median beside it). `--code DIR` runs the `batchgen`
package found in DIR instead of this checkout's, e.g. the code before a change:

    git archive main batchgen | tar -x -C /tmp/before
    python bench/xlsx_bomb.py --code /tmp/before

Run: python bench/xlsx_bomb.py [--rows 6000000] [--repeat 3] [--code DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import common  # noqa: I001  (puts the repository on sys.path first)
import openpyxl

from tests.workbooks import bomb

MANIFEST = """version: 1
campaign: bomb
defaults: {{model: grok-video-3}}
jobs:
  - {{id: "row-{{sku}}", rows: {rows}, prompt: "{{description}}, studio light"}}
"""


def honest(path: Path, n: int) -> Path:
    """A workbook as a content team keeps it: n rows of sku, prompt, duration, tags."""
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("Prompts")
    sheet.append(["sku", "description", "duration", "tags"])
    for i in range(n):
        sheet.append([f"S{i}", f"Product {i} on a marble table, slow pan", 5, "shoes, red"])
    book.save(path)
    return path


def measure(manifest: Path, code: Path) -> tuple[float, float, float, int, str]:
    """`batchgen validate MANIFEST` under /usr/bin/time -v: (wall s, CPU s, peak MB, exit
    code, what it said on stderr)."""
    env = dict(os.environ, PYTHONPATH=str(code))
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "batchgen", "validate", str(manifest)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=manifest.parent)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    cpu = re.findall(r"(?:User|System) time \(seconds\): (\S+)", done.stderr)
    assert wall and rss and len(cpu) == 2, done.stderr
    *hours, minutes, seconds = wall.group(1).split(":")
    total = float(seconds) + 60 * int(minutes) + 3600 * int(hours[0] if hours else 0)
    said = done.stderr.split("\tCommand being timed")[0].strip()
    cpu_seconds = sum(float(seconds) for seconds in cpu)
    return total, cpu_seconds, int(rss.group(1)) / 1024, int(done.returncode), said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6_000_000, help="empty rows in the bomb")
    parser.add_argument("--honest", type=int, default=100_000, help="rows of the honest one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--code", type=Path, default=common.ROOT, help="where batchgen is")
    args = parser.parse_args()
    common.header(f"validate on a {args.rows:,}-row .xlsx bomb (code: {args.code})")
    print(f"load before: {common.load()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {
            "bomb": bomb(folder / "bomb.xlsx", empty_rows=args.rows),
            "honest": honest(folder / "honest.xlsx", args.honest),
        }
        for name, path in files.items():
            manifest = folder / f"{name}.yaml"
            manifest.write_text(MANIFEST.format(rows=path.name), encoding="utf-8")
            runs = [measure(manifest, args.code) for _ in range(args.repeat)]
            walls, cpus = [run[0] for run in runs], [run[1] for run in runs]
            peak = max(run[2] for run in runs)
            *_, code, said = runs[0]
            size = path.stat().st_size / 1024
            print(f"\n{name}: {path.name}, {size:,.0f} KB on disk")
            print(f"  exit {code}: {said.splitlines()[0][:160] if said else '(nothing said)'}")
            print(f"  wall {common.best(walls)}")
            print(f"  CPU  {common.best(cpus)}, peak RSS {peak:,.0f} MB (max of {len(runs)})")
    print(f"\nload after: {common.load()}")


if __name__ == "__main__":
    main()
