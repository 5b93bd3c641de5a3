"""Ingest benchmark: a manifest of 100,000 jobs, validated and written to a ledger by the
whole `batchgen ingest` command, next to a bare sqlite3 `executemany` of the same rows
(PRODUCT.md §11: at most 2x, peak memory under 300 MB).

How it measures, in one run, for each of two manifests written to a temporary folder
(a matrix 100 x 100 x takes 10, and 100,000 rows of a CSV file):
- the command: `batchgen ingest MANIFEST` in a subprocess on a fresh ledger, its wall time
  from launch to exit (interpreter start-up and imports included) and its peak RSS
  (ru_maxrss of that process alone, from os.wait4 in a small launcher);
- bare: the very rows that command wrote (read back beforehand), inserted with one
  `executemany` and a commit into a plain table of the same 18 columns, no index, no
  constraint, in a fresh file with sqlite3's defaults: what the target compares with;
- for the record, the same rows into batchgen's own `jobs` table (its constraints and
  indexes, WAL, synchronous=FULL), and in process: `check_manifest` (YAML, schema,
  expansion, catalog checks) and `Ledger.ingest` (rows, fingerprints, one transaction);
- with --year, the command again into a copy of the 1,000,000-job year ledger
  (bench/year_ledger.py): a new campaign added beside a year of others.
Each figure is the best of --repeat runs (the median is shown beside it).

With --postgres (issue 23: at most 4x, COPY allowed) every ledger is a new PostgreSQL
database (bench/common.py: a throwaway cluster, or the server of --postgres URL), and
bare is psycopg's `executemany` of the same rows into a plain table of the same columns
and types in a new database, and a commit; a bare COPY of them is shown beside it, and
"the same rows into batchgen's jobs table" is a COPY, as ingest writes them there.

Run: python bench/ingest.py [--repeat 3] [--jobs 100000] [--only matrix|rows] [--year]
     [--postgres [URL]]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import common  # noqa: I001  (puts the repository on sys.path first)
import year_ledger

from batchgen.job import Job, canonical_json
from batchgen.ledger import JOB_INSERT_COLUMNS, Ledger
from batchgen.validate import check_manifest

TIME_TARGET = 2.0
POSTGRES_TIME_TARGET = 4.0  # issue 23
MEMORY_TARGET_MB = 300


def matrix_manifest(folder: Path, n: int) -> Path:
    """One job with a matrix of 100 subjects x (n / 1000) styles, 10 takes each."""
    styles = max(n // 1000, 1)
    subjects = ", ".join(f"s{i:03d}" for i in range(100))
    style_list = ", ".join(f"st{i:03d}" for i in range(styles))
    path = folder / "matrix.yaml"
    path.write_text(
        "version: 1\n"
        "campaign: bench-matrix\n"
        'defaults: {model: grok-video-3, duration: 5, ratio: "1:1", tags: [bench]}\n'
        "jobs:\n"
        '  - id: "shot-{subject}-{style}-{take}"\n'
        '    prompt: "A {subject} on a turntable, {style} lighting, take {take}"\n'
        f"    matrix: {{subject: [{subjects}], style: [{style_list}]}}\n"
        "    takes: 10\n",
        encoding="utf-8",
    )
    return path


def rows_manifest(folder: Path, n: int) -> Path:
    """n rows of a spreadsheet export: sku, description, and a per-row duration."""
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "description", "duration"])
        for i in range(n):
            writer.writerow(
                [f"sku{i:06d}", f"Product {i} on a marble table, slow pan", (5, 10, 15)[i % 3]]
            )
    path = folder / "rows.yaml"
    path.write_text(
        "version: 1\n"
        "campaign: bench-rows\n"
        'defaults: {model: grok-video-3, ratio: "2:3", tags: [catalog]}\n'
        "jobs:\n"
        '  - id: "row-{sku}"\n'
        "    rows: prompts.csv\n"
        '    prompt: "{description}, studio light"\n',
        encoding="utf-8",
    )
    return path


def in_process(
    manifest: Path, ledger_path: common.Location, n: int
) -> tuple[float, float, list[Job]]:
    """(validate seconds, ingest seconds, the jobs) on a fresh ledger."""
    started = time.perf_counter()
    result = check_manifest(manifest, max_jobs=n)
    validated = time.perf_counter()
    ledger = Ledger(ledger_path)
    opened = time.perf_counter()
    added = ledger.ingest(result.campaign, result.jobs)
    ingested = time.perf_counter()
    ledger.close()
    assert added.new == n, added
    return validated - started, ingested - opened, result.jobs


def check_rows(ledger_path: common.Location, jobs: list[Job], every: int = 97) -> int:
    """The rows written hold what each Job says of itself (request body, fingerprint,
    price, tags), checked the slow, obvious way on every `every`-th job; how many."""
    db = common.connect(ledger_path)
    written = {
        job_id: rest
        for job_id, *rest in db.execute(
            "SELECT id, request, fingerprint, price_micro_usd, tags, duration, ratio FROM jobs"
        )
    }
    db.close()
    checked = 0
    for job in jobs[::every]:
        request = job.request()
        expected = [
            canonical_json(request),
            job.fingerprint(),
            job.cost_micros(),
            json.dumps(job.tags),
            request.get("duration"),
            request.get("ratio"),
        ]
        assert written[job.id] == expected, (job, written[job.id], expected)
        checked += 1
    return checked


def cli(manifest: Path, ledger_path: common.Location, n: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `batchgen ingest` in a subprocess."""
    return common.measure("ingest", "--max-jobs", str(n), str(manifest), ledger=ledger_path)


def bare(rows: list[tuple[object, ...]], path: Path) -> float:
    """Seconds to insert `rows` with one executemany, and commit, into a plain table of
    the same columns (no index, no constraint) in a new file, with sqlite3's defaults."""
    columns = ", ".join(JOB_INSERT_COLUMNS)
    marks = ", ".join("?" * len(JOB_INSERT_COLUMNS))
    started = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE jobs ({columns})")
    db.executemany(f"INSERT INTO jobs ({columns}) VALUES ({marks})", rows)
    db.commit()
    db.close()
    return time.perf_counter() - started


def bare_postgres(rows: list[tuple[object, ...]], url: str, types: list[str], copy: bool) -> float:
    """Seconds to insert `rows` into a plain table of the same columns and types (no index,
    no constraint) in a new database, with psycopg's executemany (or COPY), and commit."""
    import psycopg

    columns = ", ".join(JOB_INSERT_COLUMNS)
    started = time.perf_counter()
    with psycopg.connect(url) as db:
        spelled = ", ".join(f"{c} {t}" for c, t in zip(JOB_INSERT_COLUMNS, types, strict=True))
        db.execute(f"CREATE TABLE jobs ({spelled})")  # type: ignore[arg-type]
        with db.cursor() as cursor:
            if copy:
                with cursor.copy(f"COPY jobs ({columns}) FROM STDIN") as writing:  # type: ignore[arg-type]
                    for row in rows:
                        writing.write_row(row)
            else:
                marks = ", ".join(["%s"] * len(JOB_INSERT_COLUMNS))
                cursor.executemany(f"INSERT INTO jobs ({columns}) VALUES ({marks})", rows)  # type: ignore[arg-type]
        db.commit()
    return time.perf_counter() - started


def column_types(url: str) -> list[str]:
    """The types of batchgen's `jobs` columns that ingest writes, in that order."""
    db = common.connect(url)
    found = dict(
        db.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'jobs'"
        ).fetchall()
    )
    db.close()
    return [found[column] for column in JOB_INSERT_COLUMNS]


def into_jobs(
    rows: list[tuple[object, ...]], campaign: tuple[object, ...], path: common.Location
) -> float:
    """Seconds to insert `rows` the same way into batchgen's own `jobs` table: a new ledger
    (schema, indexes, WAL, synchronous=FULL, foreign keys), one transaction. On
    PostgreSQL: a COPY, as ingest writes them, in one transaction."""
    Ledger(path).close()
    if isinstance(path, str):
        pg = common.connect(path)
        started = time.perf_counter()
        pg.execute("BEGIN")
        pg.execute("INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?)", campaign)
        pg.copy_rows("jobs", JOB_INSERT_COLUMNS, rows)
        pg.execute("COMMIT")
        pg.close()
        return time.perf_counter() - started
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    columns = ", ".join(JOB_INSERT_COLUMNS)
    marks = ", ".join("?" * len(JOB_INSERT_COLUMNS))
    started = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?)", campaign)
    db.executemany(f"INSERT INTO jobs ({columns}) VALUES ({marks})", rows)
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - started


def written_rows(
    ledger_path: common.Location,
) -> tuple[list[tuple[object, ...]], tuple[object, ...]]:
    db = common.connect(ledger_path)
    rows = [
        tuple(row)
        for row in db.execute(
            f"SELECT {', '.join(JOB_INSERT_COLUMNS)} FROM jobs ORDER BY position"
        ).fetchall()
    ]
    campaign = tuple(db.execute("SELECT * FROM campaigns").fetchone())
    db.close()
    return rows, campaign


def imports() -> float:
    """Seconds for the interpreter to start and import what `batchgen ingest` imports."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import batchgen.cli, batchgen.validate, batchgen.ledger"],
        check=True,
        cwd=common.ROOT,
        env=common.command_env(Path("unused.db")),
    )
    return time.perf_counter() - started


class Places:
    """Where each ledger of a run goes: new files in the work folder, or new databases on
    a PostgreSQL server."""

    def __init__(self, work: Path, server: common.Postgres | None, year: common.Location | None):
        self.work, self.server, self.year = work, server, year

    def ledger(self, name: str) -> common.Location:
        if self.server is None:
            return self.work / f"{name}.db"
        return self.server.create(f"bench_ingest_{name}".replace("-", "_"))

    def year_copy(self) -> common.Location:
        """A copy of the year ledger, on disk before the ingest: its commit pays only its own."""
        assert self.year is not None
        if self.server is not None:
            template = urlsplit(str(self.year)).path.lstrip("/")
            return self.server.create("bench_ingest_year", template=template)
        copy = self.work / "year.db"
        shutil.copy(self.year, copy)
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())
        return copy

    def size(self, ledger: common.Location) -> str:
        if isinstance(ledger, str):
            assert self.server is not None
            return f"database {self.server.size(urlsplit(ledger).path.lstrip('/'))}"
        return f"ledger file {ledger.stat().st_size / 2**20:.0f} MB"

    def remove(self, name: str) -> None:
        if self.server is not None:
            self.server.drop(f"bench_ingest_{name}".replace("-", "_"))
        for leftover in self.work.glob(f"{name}.db*"):
            leftover.unlink()


def scenario(name: str, manifest: Path, n: int, repeat: int, places: Places) -> bool:
    postgres = places.server is not None
    target = POSTGRES_TIME_TARGET if postgres else TIME_TARGET
    figures: dict[str, list[float]] = {}
    rss: list[float] = []
    rows: list[tuple[object, ...]] = []
    campaign: tuple[object, ...] = ()
    types: list[str] = []
    checked = 0
    size = ""
    for i in range(repeat):
        ledger_path = places.ledger(f"{name}-{i}")
        v, g, jobs = in_process(manifest, ledger_path, n)
        figures.setdefault("check_manifest (validate + expand), in process", []).append(v)
        figures.setdefault("Ledger.ingest, in process", []).append(g)
        if not rows:
            rows, campaign = written_rows(ledger_path)
            checked = check_rows(ledger_path, jobs)
            size = places.size(ledger_path)
            if isinstance(ledger_path, str):
                types = column_types(ledger_path)
        del jobs
        figures.setdefault("interpreter start-up and imports", []).append(imports())
        wall, peak = cli(manifest, places.ledger(f"{name}-cli-{i}"), n)
        figures.setdefault("`batchgen ingest` command, whole", []).append(wall)
        rss.append(peak)
        bare_place = places.ledger(f"{name}-bare-{i}")
        if isinstance(bare_place, str):
            figures.setdefault("bare executemany into a plain table", []).append(
                bare_postgres(rows, bare_place, types, copy=False)
            )
            bare_place = places.ledger(f"{name}-bare-{i}")
            figures.setdefault("bare COPY into a plain table", []).append(
                bare_postgres(rows, bare_place, types, copy=True)
            )
        else:
            figures.setdefault("bare executemany into a plain table", []).append(
                bare(rows, bare_place)
            )
        figures.setdefault(
            "the same rows into batchgen's jobs table" + (" (COPY)" if postgres else ""), []
        ).append(into_jobs(rows, campaign, places.ledger(f"{name}-jobs-{i}")))
        if places.year is not None:
            copy = places.year_copy()
            wall, peak = cli(manifest, copy, n)
            figures.setdefault("`batchgen ingest` into the 1,000,000-job ledger", []).append(wall)
            rss.append(peak)
            places.remove("year")
        for part in ("", "-cli", "-bare", "-jobs"):
            places.remove(f"{name}{part}-{i}")
    ratio = min(figures["`batchgen ingest` command, whole"]) / min(
        figures["bare executemany into a plain table"]
    )
    print(f"-- {name}: {manifest.name}, {n:,} jobs, {size}")
    for label, samples in figures.items():
        print(f"   {label:48s} {common.best(samples)}")
    print(f"   peak RSS of `batchgen ingest`                    {max(rss):.0f} MB")
    print(f"   rows checked against Job.request()/fingerprint()/cost_micros(): {checked:,}")
    print(
        f"   command / bare = {ratio:.2f}x (target <= {target:.0f}x): "
        f"{common.verdict(ratio <= target)}; "
        f"memory < {MEMORY_TARGET_MB} MB: {common.verdict(max(rss) < MEMORY_TARGET_MB)}\n"
    )
    return ratio <= target and max(rss) < MEMORY_TARGET_MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["matrix", "rows"], help="run one manifest only")
    parser.add_argument(
        "--year", action="store_true", help="also ingest into the 1,000,000-job year ledger"
    )
    common.add_postgres_option(parser)
    args = parser.parse_args()
    common.header("ingest: `batchgen ingest` of 100,000 jobs vs a bare executemany")
    server = common.postgres_server(args.postgres)
    try:
        print(f"load before: {common.load()}\n")
        year: common.Location | None = None
        if args.year:
            year = year_ledger.cached_ledger()[0]
            if server is not None:
                year = year_ledger.postgres_ledger(server, year)[0]
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            work = Path(tmp)
            manifests = {
                "matrix": matrix_manifest(work, args.jobs),
                "rows": rows_manifest(work, args.jobs),
            }
            for name, manifest in manifests.items():
                if args.only in (None, name):
                    scenario(name, manifest, args.jobs, args.repeat, Places(work, server, year))
        print(f"load after: {common.load()}")
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
