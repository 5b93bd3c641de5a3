"""`batchgen ledger copy` benchmark: a year-shaped ledger of 100,000 jobs (bench/year_ledger.py:
attempts, files, events and verdicts as a year of runs leaves them) copied from SQLite to
PostgreSQL and back, through the real command.

Each figure is the wall time and peak RSS of the `batchgen ledger copy` process (best of
--repeat; a new database and a new file each time). The PostgreSQL server is the one
--server names (an admin URL, e.g. postgresql://batchgen@127.0.0.1:5432/postgres; default:
$BATCHGEN_TEST_POSTGRES); a database is created on it per run, and dropped after.

Run: python bench/ledger_copy.py [--jobs 100000] [--repeat 3] [--server URL]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import common  # noqa: I001  (puts the repository on sys.path first)
import psycopg

from batchgen.ledger import copying


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", default=os.environ.get("BATCHGEN_TEST_POSTGRES"))
    args = parser.parse_args()
    if not args.server:
        parser.error("name a PostgreSQL server: --server URL or BATCHGEN_TEST_POSTGRES")
    common.header(f"ledger copy: {args.jobs:,} jobs, SQLite -> PostgreSQL -> SQLite")
    print(f"pages   : {copying.PAGE} rows")
    import year_ledger

    source, _ = year_ledger.cached_ledger(jobs=args.jobs, campaigns=max(2, args.jobs // 20_000))
    with sqlite3.connect(source) as db:
        rows = {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("jobs", "attempts", "verdicts", "files", "events")
        }
    print(f"source  : {source} ({source.stat().st_size / 2**20:.0f} MB), {rows}")
    print(f"load    : {common.load()}")
    there: list[float] = []
    back: list[float] = []
    memory: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        for n in range(args.repeat):
            name = f"bench_copy_{uuid.uuid4().hex[:8]}"
            admin(args.server, f"CREATE DATABASE {name}")
            url = urlunsplit(urlsplit(args.server)._replace(path=f"/{name}"))
            try:
                wall, rss = common.measure("ledger", "copy", str(source), url, ledger=source)
                there.append(wall)
                memory.append(rss)
                copy = Path(folder) / f"back-{n}.db"
                wall, rss = common.measure("ledger", "copy", url, str(copy), ledger=source)
                back.append(wall)
                memory.append(rss)
            finally:
                admin(args.server, f"DROP DATABASE {name} WITH (FORCE)")
    print(f"SQLite -> PostgreSQL : {common.best(there)}")
    print(f"PostgreSQL -> SQLite : {common.best(back)}")
    print(f"peak RSS             : {max(memory):.0f} MB")
    print(f"load    : {common.load()}")


def admin(server: str, statement: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
