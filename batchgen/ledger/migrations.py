"""The ledger's schema, as recorded migrations: one `mNNN_` function per change, applied once.

A migration never changes once released; a new column is a new migration. `migrate`
records each applied name in `_migrations`, so an old ledger file is brought up to date
by the next batchgen that opens it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

from batchgen.ledger.db import POSTGRESQL, SQLITE_DIALECT, Connection, Dialect, dialect_of

JOB_STATUSES = ("queued", "submitting", "running", "completed", "failed", "held")

# What an attempt's state means for money (see docs/ledger.md):
#   sending    request intent committed, no answer yet (a crash leaves it: unknown outcome)
#   running    task created and charged, not finished        -> in_flight
#   completed  task completed                                 -> spent
#   failed     task failed (refunded: cost 0, refunded = price) -> spent (cost) / refunded
#   unknown    request left, no usable answer                 -> unknown (possible cost)
#   rejected   400: the service refused it                    -> nothing
#   error      500: answered, no task                         -> nothing
#   not_sent   429, 401, 402, connect error: no task          -> nothing (not an attempt)
ATTEMPT_STATES = (
    "sending",
    "running",
    "completed",
    "failed",
    "unknown",
    "rejected",
    "error",
    "not_sent",
)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    """`column IN (...)` spelled as an OR chain: the same rule, but SQLite builds an IN
    list's lookup table again for every row it checks (1.6 µs a row: a sixth of a
    100,000-job ingest), and compares an OR chain at once."""
    return " OR ".join(f"{column} = '{value}'" for value in values)


def m001_initial(db: Connection) -> None:
    statuses = _one_of("status", JOB_STATUSES)
    states = _one_of("state", ATTEMPT_STATES)
    _run_script(
        db,
        f"""
    CREATE TABLE campaigns (
        name             TEXT PRIMARY KEY,
        manifest_path    TEXT NOT NULL,
        manifest_sha256  TEXT NOT NULL,
        budget_micro_usd INTEGER,            -- NULL: no cap
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL
    );
    CREATE TABLE jobs (
        campaign         TEXT NOT NULL REFERENCES campaigns(name),
        id               TEXT NOT NULL,
        position         INTEGER NOT NULL,   -- order of ingestion within the campaign
        model            TEXT NOT NULL,
        kind             TEXT NOT NULL,      -- video | image
        prompt           TEXT NOT NULL,
        duration         INTEGER,
        ratio            TEXT,
        variant          TEXT,
        ref_mode         TEXT,
        resolution       TEXT,
        media            TEXT,               -- JSON list of {{type, url}}
        tags             TEXT NOT NULL DEFAULT '[]',  -- JSON list
        request          TEXT NOT NULL,      -- the JSON body POSTed
        fingerprint      TEXT NOT NULL,      -- SHA-256 of request + tags
        price_micro_usd  INTEGER NOT NULL,   -- what one accepted attempt costs
        status           TEXT NOT NULL DEFAULT 'queued' CHECK ({statuses}),
        reason           TEXT,               -- why it waits or failed (budget, balance, ...)
        task_id          TEXT,               -- the current attempt's task
        progress         INTEGER,
        result_urls      TEXT,               -- JSON list
        cost_micro_usd   INTEGER NOT NULL DEFAULT 0,  -- charged for its completed task
        attempts         INTEGER NOT NULL DEFAULT 0,  -- attempts counted since ingest or retry
        last_error       TEXT,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        submitted_at     TEXT,               -- when its current task was created
        finished_at      TEXT,
        PRIMARY KEY (campaign, id)
    );
    CREATE INDEX jobs_by_status ON jobs (status, campaign, position);
    CREATE INDEX jobs_by_position ON jobs (campaign, position);
    CREATE TABLE attempts (
        id                   INTEGER PRIMARY KEY,
        campaign             TEXT NOT NULL,
        job_id               TEXT NOT NULL,
        started_at           TEXT NOT NULL,  -- committed before the request is sent
        answered_at          TEXT,
        fingerprint          TEXT NOT NULL,  -- of the job content sent
        http_status          INTEGER,
        outcome              TEXT,           -- what the answer meant, in words
        counted              INTEGER NOT NULL DEFAULT 1,  -- counts toward --max-attempts
        task_id              TEXT,
        unit_price_micro_usd INTEGER NOT NULL,
        cost_micro_usd       INTEGER NOT NULL DEFAULT 0,  -- charged and kept
        refunded_micro_usd   INTEGER NOT NULL DEFAULT 0,
        state                TEXT NOT NULL CHECK ({states}),
        error                TEXT,
        finished_at          TEXT,
        FOREIGN KEY (campaign, job_id) REFERENCES jobs (campaign, id)
    );
    CREATE INDEX attempts_by_job ON attempts (campaign, job_id);
    CREATE INDEX attempts_by_state ON attempts (state, campaign);
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        at       TEXT NOT NULL,
        campaign TEXT,
        job_id   TEXT,
        kind     TEXT NOT NULL,
        detail   TEXT
    );
    CREATE INDEX events_by_job ON events (campaign, job_id);
    CREATE TABLE files (
        campaign      TEXT NOT NULL,
        job_id        TEXT NOT NULL,
        n             INTEGER NOT NULL,      -- index in the job's result_urls
        url           TEXT NOT NULL,
        path          TEXT,
        size          INTEGER,
        sha256        TEXT,
        downloaded_at TEXT,
        error         TEXT,
        PRIMARY KEY (campaign, job_id, n)
    );
    CREATE TABLE runner (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        pid        INTEGER NOT NULL,
        host       TEXT NOT NULL,
        command    TEXT NOT NULL,
        started_at TEXT NOT NULL
    );
    """,
    )


def _run_script(db: Connection, script: str) -> None:
    # Not executescript(): it commits first, and a migration must stay in one transaction.
    for statement in script.split(";"):
        if statement.strip():
            _ddl(db, statement)


# --- one schema, two databases -------------------------------------------------------------
#
# Every migration is written once, in SQLite's words, and runs on PostgreSQL too: a table's
# column types are rendered for PostgreSQL (64-bit integers, an identity for an integer
# primary key, double precision, and text compared byte by byte as SQLite does, so both
# sort alike), triggers become PL/pgSQL functions (`_trigger`), and the few other things
# spelled differently are dialect methods (batchgen/ledger/db.py). A PostgreSQL ledger is
# always made by this code, from its first migration.

_PG_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\)\s*WITHOUT ROWID\s*$"), ")"),
)


def _ddl(db: Connection, statement: str) -> None:
    """Run one statement of a migration; a table's definition rendered for the database."""
    if _on_postgres(db) and re.match(r"\s*(--[^\n]*\n\s*)*(CREATE|ALTER) TABLE", statement):
        for pattern, replacement in _PG_TYPES:
            statement = pattern.sub(replacement, statement)
    db.execute(statement)


def _on_postgres(db: Connection) -> bool:
    return dialect_of(db).name == POSTGRESQL


_TRIGGER = re.compile(
    r"(?P<head>(?P<timing>BEFORE|AFTER) (?P<event>.*?) ON (?P<table>\w+))"
    r"(?: WHEN (?P<when>.*?))? BEGIN (?P<body>.*)",
    re.DOTALL,
)


def _trigger(db: Connection, name: str, spec: str) -> None:
    """Create the trigger `name` from SQLite's words (`AFTER INSERT ON t [WHEN c] BEGIN
    statements;`): as they are on SQLite, as a PL/pgSQL function and its trigger on
    PostgreSQL (the same statements, for each row)."""
    if not _on_postgres(db):
        db.execute(f"CREATE TRIGGER {name} {spec} END")
        return
    found = _TRIGGER.fullmatch(spec.strip())
    if not found:
        raise RuntimeError(f"cannot render trigger {name} for PostgreSQL")
    if found["timing"] == "AFTER":
        result = "NULL"
    else:  # a BEFORE trigger's row goes on as it is
        result = "OLD" if "DELETE" in found["event"] else "NEW"
    db.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN {found['body']} RETURN {result}; END $$"
    )
    when = f" WHEN ({found['when']})" if found["when"] else ""
    db.execute(
        f"CREATE TRIGGER {name} {found['head']} FOR EACH ROW{when} EXECUTE FUNCTION {name}()"
    )


def _drop_trigger(db: Connection, name: str, table: str) -> None:
    if _on_postgres(db):
        db.execute(f"DROP TRIGGER {name} ON {table}")
        db.execute(f"DROP FUNCTION {name}()")
    else:
        db.execute(f"DROP TRIGGER {name}")


def m002_observed_times(db: Connection) -> None:
    """The generation time one process saw a task take, followed without a break from
    its submission's answer to its completion: what pacing learns from. NULL for a task
    taken over on resume (its time since submission includes the time no process ran)
    and for every attempt recorded before this column existed."""
    _run_script(
        db,
        """
    ALTER TABLE attempts ADD COLUMN observed_seconds REAL;
    CREATE INDEX attempts_observed ON attempts (id) WHERE observed_seconds IS NOT NULL
    """,
    )


def m003_runner_identity(db: Connection) -> None:
    """Enough about the runner to tell whether it still runs when its pid was reused or its
    host renamed (see batchgen/processes.py): its machine, and its process's start."""
    _run_script(
        db,
        """
    ALTER TABLE runner ADD COLUMN machine TEXT;        -- hash of machine id + pid namespace
    ALTER TABLE runner ADD COLUMN process_start TEXT;  -- when the pid's process started
    """,
    )


VERDICTS = ("approved", "rejected")


def m004_verdicts(db: Connection) -> None:
    """The morning review's verdicts (PRODUCT §12): every approval, rejection, note and
    withdrawal is a row, so the history stays; a result's verdict is its latest row."""
    verdicts = ", ".join(f"'{v}'" for v in VERDICTS)
    _run_script(
        db,
        f"""
    CREATE TABLE verdicts (
        id         INTEGER PRIMARY KEY,
        campaign   TEXT NOT NULL,
        job_id     TEXT NOT NULL,
        task_id    TEXT NOT NULL,            -- the result judged: the job's task at the time
        attempt_id INTEGER REFERENCES attempts (id),  -- the attempt that made that result
        verdict    TEXT CHECK (verdict IN ({verdicts})),  -- NULL: verdict withdrawn
        note       TEXT,
        at         TEXT NOT NULL,
        FOREIGN KEY (campaign, job_id) REFERENCES jobs (campaign, id)
    );
    CREATE INDEX verdicts_by_result ON verdicts (campaign, job_id, task_id, id);
    CREATE INDEX verdicts_by_attempt ON verdicts (attempt_id, id);
    -- one row per judged result: its latest verdict and note
    CREATE VIEW current_verdicts AS
        SELECT v.campaign, v.job_id, v.task_id, v.attempt_id, v.verdict, v.note, v.at
        FROM verdicts v
        WHERE v.id = (SELECT MAX(w.id) FROM verdicts w WHERE w.campaign = v.campaign
                      AND w.job_id = v.job_id AND w.task_id = v.task_id);
    """,
    )


# --- m005: a single-column link to jobs, and views in dollars for people ----------------
#
# Datasette and other SQL browsers follow single-column foreign keys only; attempts and
# files named their job by (campaign, job_id). m005 gives jobs an integer key `ref` (its
# old rowid, so ingestion order is kept) and attempts and files a `job_ref` pointing at
# it, filled for existing rows and, by triggers, for every row written later (whoever
# writes it). SQLite adds a primary key only by rebuilding the table: done here in the
# migration's one transaction, with foreign keys checked before it commits (`migrate`).
#
# The views answer a person's first questions in dollars (REAL, from integer micro-dollar
# sums divided once: exact to the micro-dollar as shown; the *_micro_usd columns of the
# tables stay the exact record). Money follows the attempt-state rules above:
#   spent     completed and failed attempts' cost (a failed task's cost is 0: refunded)
#   in flight running attempts' cost
#   unknown   the unit price of attempts of unknown outcome (or left `sending` by a crash)
#   refunded  what failed tasks were refunded
#
# All of the views' SQL is M005_VIEWS below, one entry per view, built on `attempt_costs`
# (one row per attempt in dollars); `job_costs` also gives each job's current verdict.

_USD = "{} / 1000000.0"  # micro-dollars (an integer sum) -> dollars


def _usd(expression: str) -> str:
    return _USD.format(f"COALESCE({expression}, 0)")


_MONEY_COLUMNS = ", ".join(
    f"{_usd(f'SUM({name}_micro)')} AS {name}_usd"
    for name in ("spent", "in_flight", "unknown", "refunded")
)
_JOB_COUNTS = """
    COUNT(*) AS jobs,
    SUM(j.status = 'completed') AS completed,
    SUM(j.status = 'failed') AS failed,
    SUM(j.status = 'queued') AS queued,
    SUM(j.status IN ('submitting', 'running')) AS running,
    SUM(j.status = 'held') AS held"""
_OUTPUT = """
    SUM(CASE WHEN j.status = 'completed' AND j.kind = 'video'
        THEN COALESCE(j.duration, 0) ELSE 0 END) AS video_seconds,
    SUM(j.status = 'completed' AND j.kind = 'image') AS images"""
# Per job, its attempts' money in micro-dollars (a job without attempts: zeros).
_JOB_MONEY = """
    SELECT j.*, COUNT(a.id) AS attempt_count,
        COALESCE(SUM(a.spent_micro), 0) AS spent_micro,
        COALESCE(SUM(a.in_flight_micro), 0) AS in_flight_micro,
        COALESCE(SUM(a.unknown_micro), 0) AS unknown_micro,
        COALESCE(SUM(a.refunded_micro), 0) AS refunded_micro
    FROM jobs j LEFT JOIN _attempt_money a ON a.job_ref = j.ref
    GROUP BY j.ref"""

M005_VIEWS: dict[str, str] = {
    # The money rules, once: each attempt's money in micro-dollars (a helper of the others).
    "_attempt_money": """
    SELECT a.*,
        CASE WHEN a.state IN ('completed', 'failed') THEN a.cost_micro_usd ELSE 0 END
            AS spent_micro,
        CASE WHEN a.state = 'running' THEN a.cost_micro_usd ELSE 0 END AS in_flight_micro,
        CASE WHEN a.state IN ('unknown', 'sending') THEN a.unit_price_micro_usd ELSE 0 END
            AS unknown_micro,
        a.refunded_micro_usd AS refunded_micro
    FROM attempts a""",
    # Every attempt in dollars, with its job: what was sent when, and what it cost.
    "attempt_costs": f"""
    SELECT a.id AS attempt, a.job_ref, a.campaign, a.job_id, j.position, j.model,
        a.started_at, date(COALESCE(a.answered_at, a.started_at)) AS day,
        a.http_status, a.outcome, a.state, a.task_id,
        {_usd("a.unit_price_micro_usd")} AS unit_price_usd,
        {_usd("a.spent_micro")} AS spent_usd, {_usd("a.in_flight_micro")} AS in_flight_usd,
        {_usd("a.unknown_micro")} AS unknown_usd, {_usd("a.refunded_micro")} AS refunded_usd,
        a.error
    FROM _attempt_money a JOIN jobs j ON j.ref = a.job_ref
    ORDER BY a.campaign, j.position, a.id""",
    # Every job in manifest order: its prompt, status, cost and saved files.
    "job_costs": f"""
    SELECT j.ref, j.campaign, j.position, j.id, j.model, j.status, j.prompt, j.tags,
        j.duration, j.variant, j.resolution, j.attempt_count AS attempts,
        {_usd("j.spent_micro")} AS spent_usd, {_usd("j.in_flight_micro")} AS in_flight_usd,
        {_usd("j.unknown_micro")} AS unknown_usd, {_usd("j.refunded_micro")} AS refunded_usd,
        (SELECT json_group_array(f.path) FROM
            (SELECT path FROM files WHERE job_ref = j.ref AND path IS NOT NULL
             AND error IS NULL ORDER BY n) f) AS files,
        j.task_id, j.last_error AS error, j.finished_at,
        cv.verdict, cv.note AS verdict_note
    FROM ({_JOB_MONEY}) j
    LEFT JOIN current_verdicts cv ON cv.campaign = j.campaign AND cv.job_id = j.id
        AND cv.task_id = j.task_id AND j.status = 'completed'
    ORDER BY j.campaign, j.position""",
    # Per campaign: jobs by status, money, what is left of the budget, what was made.
    "campaign_costs": f"""
    SELECT c.name AS campaign, {_USD.format("c.budget_micro_usd")} AS budget_usd,
        {_JOB_COUNTS},
        {_MONEY_COLUMNS},
        CASE WHEN c.budget_micro_usd IS NULL THEN NULL ELSE
            {
        _USD.format(
            "(c.budget_micro_usd - SUM(j.spent_micro + j.in_flight_micro + j.unknown_micro))"
        )
    }
        END AS budget_left_usd, {_OUTPUT}
    FROM campaigns c JOIN ({_JOB_MONEY}) j ON j.campaign = c.name
    GROUP BY c.name ORDER BY c.name""",
    # Per campaign and model (sum over campaigns for a model's total).
    "model_costs": f"""
    SELECT j.campaign, j.model, {_JOB_COUNTS}, {_MONEY_COLUMNS}, {_OUTPUT}
    FROM ({_JOB_MONEY}) j
    GROUP BY j.campaign, j.model ORDER BY j.campaign, j.model""",
    # Per campaign and tag: a job with several tags counts in each ('(none)': no tag).
    "tag_costs": f"""
    SELECT j.campaign, COALESCE(t.tag, '(none)') AS tag, {_JOB_COUNTS}, {_MONEY_COLUMNS},
        {_OUTPUT}
    FROM ({_JOB_MONEY}) j
    LEFT JOIN (SELECT DISTINCT jobs.ref, value AS tag FROM jobs, json_each(jobs.tags)) t
        ON t.ref = j.ref
    GROUP BY j.campaign, COALESCE(t.tag, '(none)') ORDER BY j.campaign, tag""",
    # Per day (UTC, when the service answered the attempt) and campaign.
    "daily_costs": f"""
    SELECT a.day, a.campaign, COUNT(*) AS attempts, {_MONEY_COLUMNS}
    FROM (SELECT *, date(COALESCE(answered_at, started_at)) AS day FROM _attempt_money) a
    GROUP BY a.day, a.campaign ORDER BY a.day, a.campaign""",
}


def m005_views(db: Connection) -> None:
    if _on_postgres(db):
        _pg_integer_key(db)
    else:
        _add_integer_key(db, "jobs", "ref", "PRIMARY KEY (campaign, id)", "UNIQUE (campaign, id)")
    for table, key in (("attempts", "id"), ("files", "rowid"), ("verdicts", "id")):
        _ddl(db, f"ALTER TABLE {table} ADD COLUMN job_ref INTEGER REFERENCES jobs (ref)")
        db.execute(
            f"UPDATE {table} SET job_ref = (SELECT ref FROM jobs"
            f" WHERE jobs.campaign = {table}.campaign AND jobs.id = {table}.job_id)"
        )
        db.execute(f"CREATE INDEX {table}_by_job_ref ON {table} (job_ref)")
        # Whoever inserts a row names its job by (campaign, job_id); the link follows.
        if _on_postgres(db):  # set before the row is written: PostgreSQL has no rowid
            spec = (
                f"BEFORE INSERT ON {table} WHEN NEW.job_ref IS NULL BEGIN NEW.job_ref :="
                " (SELECT ref FROM jobs WHERE jobs.campaign = NEW.campaign"
                " AND jobs.id = NEW.job_id);"
            )
        else:
            spec = (
                f"AFTER INSERT ON {table} WHEN NEW.job_ref IS NULL"
                f" BEGIN UPDATE {table} SET job_ref = (SELECT ref FROM jobs"
                "  WHERE jobs.campaign = NEW.campaign AND jobs.id = NEW.job_id)"
                f" WHERE {key} = NEW.{key};"
            )
        _trigger(db, f"{table}_job_ref", spec)
    for name, select in M005_VIEWS.items():
        # PostgreSQL sums no booleans: its money views are m008's (which replaces these).
        if name == "_attempt_money" or not _on_postgres(db):
            db.execute(f"CREATE VIEW {name} AS {select}")


def _pg_integer_key(db: Connection) -> None:
    """m005's new key of jobs on PostgreSQL, which alters a primary key in place (the
    foreign keys on the old one are dropped with it and made again on the UNIQUE)."""
    for statement in (
        "ALTER TABLE jobs ADD COLUMN ref BIGINT GENERATED BY DEFAULT AS IDENTITY",
        "ALTER TABLE jobs DROP CONSTRAINT jobs_pkey CASCADE",
        "ALTER TABLE jobs ADD PRIMARY KEY (ref)",
        "ALTER TABLE jobs ADD UNIQUE (campaign, id)",
        "ALTER TABLE attempts ADD FOREIGN KEY (campaign, job_id) REFERENCES jobs (campaign, id)",
        "ALTER TABLE verdicts ADD FOREIGN KEY (campaign, job_id) REFERENCES jobs (campaign, id)",
    ):
        db.execute(statement)


def _add_integer_key(
    db: Connection, table: str, key: str, old_primary_key: str, new_unique: str
) -> None:
    """Rebuild `table` with `key INTEGER PRIMARY KEY` first (taking each row's rowid) and
    its old primary key made a UNIQUE constraint; every column, index and trigger kept,
    including those later migrations of other branches may have added."""
    (sql,) = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    head = f"CREATE TABLE {table} ("
    if not sql.startswith(head) or sql.count(old_primary_key) != 1:
        raise RuntimeError(f"unexpected schema of {table}: {sql[:80]}")
    new_sql = sql.replace(head, f"CREATE TABLE _new_{table} (\n        {key} INTEGER PRIMARY KEY,")
    new_sql = new_sql.replace(old_primary_key, new_unique)
    columns = ", ".join(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
    others = [
        row[0]
        for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger')"
            " AND sql IS NOT NULL",
            (table,),
        )
    ]
    db.execute(new_sql)
    db.execute(f"INSERT INTO _new_{table} ({key}, {columns}) SELECT rowid, {columns} FROM {table}")
    db.execute(f"DROP TABLE {table}")
    db.execute(f"ALTER TABLE _new_{table} RENAME TO {table}")
    for statement in others:
        db.execute(statement)


# --- m006: totals kept as the rows change, for a ledger of a million jobs ---------------
#
# `status`, `resume` and the run's display ask for the money and the review verdicts of
# every campaign, several times a second on a terminal. Summed over a year of attempts
# (a million rows) that is a scan each time, so m006 keeps the sums beside the rows,
# updated by triggers in the same transaction as every write (whoever makes it):
#
#   attempt_totals  per (campaign, attempt state): how many attempts, and the sums of their
#                   cost, unit price and refund. The money rules (spent, in flight, unknown,
#                   refunded) depend on the state only, so they apply to these sums exactly
#                   as to the attempts themselves (LedgerBase._ATTEMPT_MONEY).
#   verdict_totals  per (campaign, verdict): completed jobs whose current result's latest
#                   verdict is this one (the `current_verdicts` of m004, joined as
#                   reads.JOB_VERDICT_JOIN does); `unreviewed` is the rest of the completed.
#
# Job counts need no table: the count of a whole table is SQLite's fast path, and the few
# unfinished, failed and held jobs are counted on `jobs_by_status` (ledger/scheduling.py).
# No trigger is put on inserting jobs: a trigger there, even one that does nothing, slows
# ingest by a quarter, and a job enters the ledger queued, without a result to judge.

# The latest verdict on a job's current result, if it is completed: SQL over the job
# `{j}` (`OLD`, `NEW`, or a jobs row found by campaign and id).
_CURRENT_VERDICT = (
    "(SELECT v.verdict FROM verdicts v WHERE {j}.status = 'completed'"
    " AND v.campaign = {j}.campaign AND v.job_id = {j}.id AND v.task_id = {j}.task_id"
    " ORDER BY v.id DESC LIMIT 1)"
)


def _verdict_total(job: str, change: int) -> str:
    """Add `change` (+1 or -1) to the total of the current verdict of `job` (a job row)."""
    verdict = _CURRENT_VERDICT.format(j=job)
    return (
        f"INSERT INTO verdict_totals (campaign, verdict, results)"
        f" SELECT {job}.campaign, {verdict}, {change} WHERE {verdict} IS NOT NULL"
        " ON CONFLICT (campaign, verdict) DO UPDATE SET"
        f" results = verdict_totals.results + {change};"
        + _emptied("verdict_totals", "results", f"{job}.campaign")
    )


def _verdict_total_of(row: str, change: int, unless_same_as: str | None = None) -> str:
    """The same for the job a verdicts row (`OLD` or `NEW`) names; `unless_same_as`: not
    when the other row (of an UPDATE) names the same job."""
    found = f"(SELECT * FROM jobs WHERE campaign = {row}.campaign AND id = {row}.job_id) j"
    verdict = _CURRENT_VERDICT.format(j="j")
    other = unless_same_as
    same = (
        f" AND NOT ({row}.campaign = {other}.campaign AND {row}.job_id = {other}.job_id)"
        if other
        else ""
    )
    return (
        f"INSERT INTO verdict_totals (campaign, verdict, results)"
        f" SELECT j.campaign, {verdict}, {change} FROM {found} WHERE {verdict} IS NOT NULL"
        f"{same} ON CONFLICT (campaign, verdict) DO UPDATE SET"
        f" results = verdict_totals.results + {change};"
        + _emptied("verdict_totals", "results", f"{row}.campaign")
    )


def _emptied(table: str, count: str, campaign: str) -> str:
    """Drop a campaign's totals that came back to nothing: a total is there only while it
    counts something (so a verdict given and withdrawn leaves the ledger as it was)."""
    return f" DELETE FROM {table} WHERE campaign = {campaign} AND {count} = 0;"


_MONEY = ("cost_micro_usd", "unit_price_micro_usd", "refunded_micro_usd")


def _attempt_total(row: str, sign: str) -> str:
    """Add (`+`) or take away (`-`) one attempts row (`NEW`/`OLD`) from attempt_totals."""
    values = ", ".join(f"{sign}{row}.{c}" for c in _MONEY)
    sums = ", ".join(f"{c} = attempt_totals.{c} + excluded.{c}" for c in _MONEY)
    return (
        f"INSERT INTO attempt_totals (campaign, state, attempts, {', '.join(_MONEY)})"
        f" VALUES ({row}.campaign, {row}.state, {sign}1, {values})"
        " ON CONFLICT (campaign, state) DO UPDATE SET"
        " attempts = attempt_totals.attempts + excluded.attempts,"
        f" {sums};" + (_emptied("attempt_totals", "attempts", f"{row}.campaign") if sign else "")
    )


def m006_scale_totals(db: Connection) -> None:
    """Money and review totals kept by triggers, so a million-job ledger answers at once.

    (It also spelled m001's status checks as OR chains by editing the schema's text in
    place, with writable_schema. m001 now writes them so; a ledger made before m006 keeps
    its IN lists: the same rules, checked a little slower.)"""
    _run_script(
        db,
        """
    CREATE TABLE attempt_totals (
        campaign             TEXT NOT NULL,
        state                TEXT NOT NULL,
        attempts             INTEGER NOT NULL,
        cost_micro_usd       INTEGER NOT NULL,
        unit_price_micro_usd INTEGER NOT NULL,
        refunded_micro_usd   INTEGER NOT NULL,
        PRIMARY KEY (campaign, state)
    ) WITHOUT ROWID;
    INSERT INTO attempt_totals
        SELECT campaign, state, COUNT(*), SUM(cost_micro_usd), SUM(unit_price_micro_usd),
            SUM(refunded_micro_usd)
        FROM attempts GROUP BY campaign, state;
    CREATE TABLE verdict_totals (
        campaign TEXT NOT NULL,
        verdict  TEXT NOT NULL,
        results  INTEGER NOT NULL,           -- completed jobs whose result has this verdict
        PRIMARY KEY (campaign, verdict)
    ) WITHOUT ROWID;
    INSERT INTO verdict_totals
        SELECT v.campaign, v.verdict, COUNT(*) FROM verdicts v
        JOIN jobs j ON j.campaign = v.campaign AND j.id = v.job_id AND j.task_id = v.task_id
        WHERE j.status = 'completed' AND v.verdict IS NOT NULL
            AND v.id = (SELECT MAX(w.id) FROM verdicts w WHERE w.campaign = v.campaign
                        AND w.job_id = v.job_id AND w.task_id = v.task_id)
        GROUP BY v.campaign, v.verdict
    """,
    )
    money = ", ".join(("campaign", "state", *_MONEY))
    triggers = {
        "attempts_total_insert": f"AFTER INSERT ON attempts BEGIN {_attempt_total('NEW', '')}",
        "attempts_total_delete": f"AFTER DELETE ON attempts BEGIN {_attempt_total('OLD', '-')}",
        "attempts_total_update": f"AFTER UPDATE OF {money} ON attempts"
        f" BEGIN {_attempt_total('OLD', '-')} {_attempt_total('NEW', '')}",
        # A job's result or status changes: its verdict leaves one total, joins another.
        "jobs_verdict_total": "AFTER UPDATE OF campaign, id, status, task_id ON jobs"
        " WHEN OLD.status = 'completed' OR NEW.status = 'completed'"
        f" BEGIN {_verdict_total('OLD', -1)} {_verdict_total('NEW', 1)}",
        "jobs_verdict_total_delete": "AFTER DELETE ON jobs WHEN OLD.status = 'completed'"
        f" BEGIN {_verdict_total('OLD', -1)}",
        # A verdict is added (or, by hand, changed or deleted): its job's current verdict
        # is taken out of the totals before, and put back after.
        "verdicts_total_before_insert": "BEFORE INSERT ON verdicts"
        f" BEGIN {_verdict_total_of('NEW', -1)}",
        "verdicts_total_after_insert": "AFTER INSERT ON verdicts"
        f" BEGIN {_verdict_total_of('NEW', 1)}",
        "verdicts_total_before_delete": "BEFORE DELETE ON verdicts"
        f" BEGIN {_verdict_total_of('OLD', -1)}",
        "verdicts_total_after_delete": "AFTER DELETE ON verdicts"
        f" BEGIN {_verdict_total_of('OLD', 1)}",
        "verdicts_total_before_update": "BEFORE UPDATE OF id, campaign, job_id, task_id,"
        f" verdict ON verdicts BEGIN {_verdict_total_of('OLD', -1)}"
        f" {_verdict_total_of('NEW', -1, unless_same_as='OLD')}",
        "verdicts_total_after_update": "AFTER UPDATE OF id, campaign, job_id, task_id,"
        f" verdict ON verdicts BEGIN {_verdict_total_of('OLD', 1)}"
        f" {_verdict_total_of('NEW', 1, unless_same_as='OLD')}",
    }
    for name, body in triggers.items():
        _trigger(db, name, body)


# --- m007: several API keys --------------------------------------------------------------
#
# Each attempt records the label of the key it was sent with (`attempts.key_label`, never
# the key), so its task is polled with that key. NULL for attempts recorded before: they
# were all sent with the one key of that time.
#
# `status` shows each key's tasks in flight and spend on a ledger of a million jobs, so
# m007 keeps them as m006 keeps attempt_totals, one level finer:
#
#   key_totals  per (campaign, key label, attempt state): how many attempts, and the sums
#               of their cost, unit price and refund. The label of attempts recorded
#               before labels is '' here (a primary key column cannot be NULL, and no
#               label is empty); readers turn it back into NULL. Tasks in flight with a
#               key are its `running` attempts; its money follows the same state rules.
#
# `key_costs` is the view in dollars per campaign and key, read from key_totals.


# 1 for an attempts row (`{row}`) refused for content reasons, else 0, in words both
# databases take (PostgreSQL sums no booleans; SQLite's first spelling was `IS 'refused'`).
_REFUSED = "(CASE WHEN {row}.outcome = 'refused' THEN 1 ELSE 0 END)"


def _key_total(row: str, sign: str, refusals: bool = False) -> str:
    """Add (`+`) or take away (`-`) one attempts row (`NEW`/`OLD`) from key_totals; with
    `refusals` (m009) its refusal too."""
    values = ", ".join(f"{sign}{row}.{c}" for c in _MONEY)
    sums = ", ".join(f"{c} = key_totals.{c} + excluded.{c}" for c in _MONEY)
    columns = ", ".join(_MONEY)
    if refusals:
        values += f", {sign}{_REFUSED.format(row=row)}"
        sums += ", refusals = key_totals.refusals + excluded.refusals"
        columns += ", refusals"
    emptied = (
        f" DELETE FROM key_totals WHERE campaign = {row}.campaign"
        f" AND key_label = COALESCE({row}.key_label, '') AND attempts = 0;"
    )
    return (
        f"INSERT INTO key_totals (campaign, key_label, state, attempts, {columns})"
        f" VALUES ({row}.campaign, COALESCE({row}.key_label, ''), {row}.state, {sign}1, {values})"
        " ON CONFLICT (campaign, key_label, state) DO UPDATE SET"
        f" attempts = key_totals.attempts + excluded.attempts, {sums};" + (emptied if sign else "")
    )


# The money rules of m005 (spent, in flight, unknown, refunded) over key_totals' sums.
_KEY_MONEY = {
    "spent": "CASE WHEN t.state IN ('completed', 'failed') THEN t.cost_micro_usd ELSE 0 END",
    "in_flight": "CASE WHEN t.state = 'running' THEN t.cost_micro_usd ELSE 0 END",
    "unknown": "CASE WHEN t.state IN ('unknown', 'sending') THEN t.unit_price_micro_usd ELSE 0 END",
    "refunded": "t.refunded_micro_usd",
}
M007_KEY_COSTS = f"""
    SELECT t.campaign, NULLIF(t.key_label, '') AS key_label,
        SUM(t.attempts) AS attempts,
        SUM(CASE WHEN t.state = 'running' THEN t.attempts ELSE 0 END) AS in_flight,
        {", ".join(f"{_usd(f'SUM({rule})')} AS {name}_usd" for name, rule in _KEY_MONEY.items())}
    FROM key_totals t
    GROUP BY t.campaign, t.key_label ORDER BY t.campaign, t.key_label"""


def m007_key_labels(db: Connection) -> None:
    """Several API keys (PRODUCT §6): the label of the key each attempt was sent with
    (never the key), so its task is polled with that key. NULL for attempts recorded
    before this column existed: their tasks are polled with the first key given.
    And each key's tasks in flight and money, kept by triggers (key_totals)."""
    _run_script(
        db,
        """
    ALTER TABLE attempts ADD COLUMN key_label TEXT;
    CREATE TABLE key_totals (
        campaign             TEXT NOT NULL,
        key_label            TEXT NOT NULL,  -- '': attempts recorded before labels
        state                TEXT NOT NULL,
        attempts             INTEGER NOT NULL,
        cost_micro_usd       INTEGER NOT NULL,
        unit_price_micro_usd INTEGER NOT NULL,
        refunded_micro_usd   INTEGER NOT NULL,
        PRIMARY KEY (campaign, key_label, state)
    ) WITHOUT ROWID;
    INSERT INTO key_totals
        SELECT campaign, COALESCE(key_label, ''), state, COUNT(*), SUM(cost_micro_usd),
            SUM(unit_price_micro_usd), SUM(refunded_micro_usd)
        FROM attempts GROUP BY campaign, COALESCE(key_label, ''), state
    """,
    )
    columns = ", ".join(("campaign", "state", "key_label", *_MONEY))
    triggers = {
        "attempts_key_total_insert": f"AFTER INSERT ON attempts BEGIN {_key_total('NEW', '')}",
        "attempts_key_total_delete": f"AFTER DELETE ON attempts BEGIN {_key_total('OLD', '-')}",
        "attempts_key_total_update": f"AFTER UPDATE OF {columns} ON attempts"
        f" BEGIN {_key_total('OLD', '-')} {_key_total('NEW', '')}",
    }
    for name, body in triggers.items():
        _trigger(db, name, body)
    db.execute(f"CREATE VIEW key_costs AS {M007_KEY_COSTS}")


# --- m008: views whose money sums exactly --------------------------------------------------
#
# A dollar column is a float, and SQLite (3.40 here; Kahan-Babushka-Neumaier summation
# only from 3.43) adds floats in binary: `sum(spent_usd)` over job_costs gave
# 60.00000000000014. No float, and no decimal text (SUM turns it into a float), sums
# exactly; integers do. So m008 recreates every money view with, beside each dollar
# column `X_usd`, its exact twin `X_micro_usd`: the same money in integer micro-dollars.
# A sum over rows is `sum(X_micro_usd)`, exact, and in dollars `sum(X_micro_usd) / 1e6`:
# one division, rounded once, the float nearest the exact amount (60.0, 0.3).
# docs/ledger.md says so ("Browsing the ledger").
#
# Each dollar column is one division of an integer sum, through `_dollars` below: on
# PostgreSQL (NUMERIC, where sums are exact) the same SQL with DOLLAR_TYPE
# 'NUMERIC(20, 6)' is the only difference in the money; job counts are spelled with CASE
# (no boolean sums). What still differs there is not money: json_group_array and
# json_each (job_costs' files, tag_costs' tags) and date() (daily_costs' day).

DOLLAR_TYPE = "REAL"  # NUMERIC(20, 6) on PostgreSQL (Dialect.dollar_type)


def _dollars(micros: str, dollar_type: str = DOLLAR_TYPE) -> str:
    """Dollars from an integer micro-dollar expression (NULL stays NULL)."""
    return f"CAST(({micros}) / 1000000.0 AS {dollar_type})"


_M008_MONEY = ("spent", "in_flight", "unknown", "refunded")


def _money(sums: dict[str, str], dollar_type: str = DOLLAR_TYPE) -> tuple[str, str]:
    """The dollar columns, and their micro-dollar twins, for `name -> integer SQL`."""
    dollars = ", ".join(f"{_dollars(sql, dollar_type)} AS {name}_usd" for name, sql in sums.items())
    micros = ", ".join(f"{sql} AS {name}_micro_usd" for name, sql in sums.items())
    return dollars, micros


def _own(row: str) -> dict[str, str]:
    """Each kind of money of one row (`row`: the alias of a job's or an attempt's money)."""
    return {m: f"{row}.{m}_micro" for m in _M008_MONEY}


def _summed(rows: str) -> dict[str, str]:
    """Each kind of money summed over rows (`rows`: their alias), 0 when there are none."""
    return {m: f"COALESCE(SUM({row}), 0)" for m, row in _own(rows).items()}


_M008_JOB_COUNTS = """
    COUNT(*) AS jobs,
    SUM(CASE WHEN j.status = 'completed' THEN 1 ELSE 0 END) AS completed,
    SUM(CASE WHEN j.status = 'failed' THEN 1 ELSE 0 END) AS failed,
    SUM(CASE WHEN j.status = 'queued' THEN 1 ELSE 0 END) AS queued,
    SUM(CASE WHEN j.status IN ('submitting', 'running') THEN 1 ELSE 0 END) AS running,
    SUM(CASE WHEN j.status = 'held' THEN 1 ELSE 0 END) AS held"""
_M008_OUTPUT = """
    SUM(CASE WHEN j.status = 'completed' AND j.kind = 'video'
        THEN COALESCE(j.duration, 0) ELSE 0 END) AS video_seconds,
    SUM(CASE WHEN j.status = 'completed' AND j.kind = 'image' THEN 1 ELSE 0 END) AS images"""


def _m008_views(d: Dialect = SQLITE_DIALECT) -> dict[str, str]:
    """Every money view of m005 and m007 (`_attempt_money` stays as it is), with the
    micro-dollar twins: the same rows, the same columns first, the twins last."""
    dollar = d.dollar_type
    attempt_dollars, attempt_micros = _money(
        {"unit_price": "a.unit_price_micro_usd", **_own("a")}, dollar
    )
    job_dollars, job_micros = _money(_own("j"), dollar)
    summed_dollars, summed_micros = _money(_summed("j"), dollar)
    # NULL without a budget
    budget_left = "c.budget_micro_usd - SUM(j.spent_micro + j.in_flight_micro + j.unknown_micro)"
    _, campaign_micros = _money(
        {"budget": "c.budget_micro_usd", **_summed("j"), "budget_left": budget_left}, dollar
    )
    daily_dollars, daily_micros = _money(_summed("a"), dollar)
    key_dollars, key_micros = _money(
        {name: f"COALESCE(SUM({rule}), 0)" for name, rule in _KEY_MONEY.items()}, dollar
    )
    return {
        "attempt_costs": f"""
    SELECT a.id AS attempt, a.job_ref, a.campaign, a.job_id, j.position, j.model,
        a.started_at, {d.day("COALESCE(a.answered_at, a.started_at)")} AS day,
        a.http_status, a.outcome, a.state, a.task_id, {attempt_dollars}, a.error,
        {attempt_micros}
    FROM _attempt_money a JOIN jobs j ON j.ref = a.job_ref
    ORDER BY a.campaign, j.position, a.id""",
        "job_costs": f"""
    SELECT j.ref, j.campaign, j.position, j.id, j.model, j.status, j.prompt, j.tags,
        j.duration, j.variant, j.resolution, j.attempt_count AS attempts, {job_dollars},
        (SELECT {
            d.json_array_agg(d.json_text("f.path"), order="f.n")
            if d.name == POSTGRESQL
            else "json_group_array(f.path)"
        } FROM
            (SELECT path, n FROM files WHERE job_ref = j.ref AND path IS NOT NULL
             AND error IS NULL ORDER BY n) f) AS files,
        j.task_id, j.last_error AS error, j.finished_at,
        cv.verdict, cv.note AS verdict_note, {job_micros}
    FROM ({_JOB_MONEY}) j
    LEFT JOIN current_verdicts cv ON cv.campaign = j.campaign AND cv.job_id = j.id
        AND cv.task_id = j.task_id AND j.status = 'completed'
    ORDER BY j.campaign, j.position""",
        "campaign_costs": f"""
    SELECT c.name AS campaign, {_dollars("c.budget_micro_usd", dollar)} AS budget_usd,
        {_M008_JOB_COUNTS}, {summed_dollars},
        {_dollars(budget_left, dollar)} AS budget_left_usd, {_M008_OUTPUT}, {campaign_micros}
    FROM campaigns c JOIN ({_JOB_MONEY}) j ON j.campaign = c.name
    GROUP BY c.name, c.budget_micro_usd ORDER BY c.name""",
        "model_costs": f"""
    SELECT j.campaign, j.model, {_M008_JOB_COUNTS}, {summed_dollars}, {_M008_OUTPUT},
        {summed_micros}
    FROM ({_JOB_MONEY}) j
    GROUP BY j.campaign, j.model ORDER BY j.campaign, j.model""",
        "tag_costs": f"""
    SELECT j.campaign, COALESCE(t.tag, '(none)') AS tag, {_M008_JOB_COUNTS},
        {summed_dollars}, {_M008_OUTPUT}, {summed_micros}
    FROM ({_JOB_MONEY}) j
    LEFT JOIN (SELECT DISTINCT jobs.ref, value AS tag FROM jobs, {d.json_values("jobs.tags")}) t
        ON t.ref = j.ref
    GROUP BY j.campaign, COALESCE(t.tag, '(none)') ORDER BY j.campaign, tag""",
        "daily_costs": f"""
    SELECT a.day, a.campaign, COUNT(*) AS attempts, {daily_dollars}, {daily_micros}
    FROM (SELECT *, {d.day("COALESCE(answered_at, started_at)")} AS day
        FROM _attempt_money) a
    GROUP BY a.day, a.campaign ORDER BY a.day, a.campaign""",
        "key_costs": f"""
    SELECT t.campaign, NULLIF(t.key_label, '') AS key_label,
        SUM(t.attempts) AS attempts,
        SUM(CASE WHEN t.state = 'running' THEN t.attempts ELSE 0 END) AS in_flight,
        {key_dollars}, {key_micros}
    FROM key_totals t
    GROUP BY t.campaign, t.key_label ORDER BY t.campaign, t.key_label""",
    }


def m008_exact_dollar_views(db: Connection) -> None:
    """Every money view again, each dollar column with its integer micro-dollar twin
    (`spent_usd` and `spent_micro_usd`), whose SQL sums are exact."""
    for name, select in _m008_views(dialect_of(db)).items():
        db.execute(f"DROP VIEW IF EXISTS {name}")
        db.execute(f"CREATE VIEW {name} AS {select}")


# --- m009: refusals for content reasons --------------------------------------------------
#
# A 400 or a failed task refusing a prompt or its output for content reasons (PRODUCT §2)
# closes its attempt with outcome `refused` (state `rejected` or `failed`, whose money
# rules hold), and its job fails with reason `refused`. Services suspend keys that collect
# many, so `status` and `report` count them per key: key_totals gains `refusals`, the
# attempts of each (campaign, key label, state) whose outcome is `refused`, kept by the
# same triggers, now also on a change of outcome; `key_costs` shows them.


def _m009_key_costs(d: Dialect = SQLITE_DIALECT) -> str:
    """m008's key_costs, and each key's refusals as its last column."""
    key_dollars, key_micros = _money(
        {name: f"COALESCE(SUM({rule}), 0)" for name, rule in _KEY_MONEY.items()}, d.dollar_type
    )
    return f"""
    SELECT t.campaign, NULLIF(t.key_label, '') AS key_label,
        SUM(t.attempts) AS attempts,
        SUM(CASE WHEN t.state = 'running' THEN t.attempts ELSE 0 END) AS in_flight,
        {key_dollars}, {key_micros}, SUM(t.refusals) AS refusals
    FROM key_totals t
    GROUP BY t.campaign, t.key_label ORDER BY t.campaign, t.key_label"""


def m009_refusals(db: Connection) -> None:
    """Refusals for content reasons counted per key (PRODUCT §2): key_totals.refusals, kept
    by triggers that now also follow an attempt's outcome, and shown by key_costs."""
    _run_script(
        db,
        """
    ALTER TABLE key_totals ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
    UPDATE key_totals SET refusals = r.refusals FROM (
        SELECT campaign, COALESCE(key_label, '') AS key_label, state, COUNT(*) AS refusals
        FROM attempts WHERE outcome = 'refused'
        GROUP BY campaign, COALESCE(key_label, ''), state) r
    WHERE key_totals.campaign = r.campaign AND key_totals.key_label = r.key_label
        AND key_totals.state = r.state;
    DROP VIEW key_costs
    """,
    )
    for event in ("insert", "delete", "update"):
        _drop_trigger(db, f"attempts_key_total_{event}", "attempts")
    columns = ", ".join(("campaign", "state", "key_label", "outcome", *_MONEY))
    add, take = _key_total("NEW", "", refusals=True), _key_total("OLD", "-", refusals=True)
    triggers = {
        "attempts_key_total_insert": f"AFTER INSERT ON attempts BEGIN {add}",
        "attempts_key_total_delete": f"AFTER DELETE ON attempts BEGIN {take}",
        "attempts_key_total_update": f"AFTER UPDATE OF {columns} ON attempts BEGIN {take} {add}",
    }
    for name, body in triggers.items():
        _trigger(db, name, body)
    db.execute(f"CREATE VIEW key_costs AS {_m009_key_costs(dialect_of(db))}")


def m010_runners(db: Connection) -> None:
    """Several runners on one ledger (PRODUCT §6): each live runner's row and heartbeat,
    and the runner each attempt in flight belongs to. The one-runner lock goes."""
    _run_script(
        db,
        """
    DROP TABLE runner;
    CREATE TABLE runners (
        id            TEXT PRIMARY KEY,   -- random, one per run/resume process
        host          TEXT NOT NULL,
        pid           INTEGER NOT NULL,
        machine       TEXT,               -- hash of machine id + pid namespace
        process_start TEXT,               -- when the pid's process started
        command       TEXT NOT NULL,      -- run | resume
        key_labels    TEXT NOT NULL,      -- JSON list of the labels of its keys
        lease_seconds REAL NOT NULL,      -- dead when its heartbeat is older than this
        started_at    TEXT NOT NULL,
        heartbeat_at  TEXT NOT NULL
    );
    ALTER TABLE attempts ADD COLUMN runner_id TEXT;  -- who sent or follows it (NULL: nobody)
    CREATE INDEX attempts_in_flight ON attempts (runner_id)
        WHERE state = 'sending' OR state = 'running'
    """,
    )


def m011_reviewers(db: Connection) -> None:
    """Who gave each verdict (PRODUCT §12): the name a reviewer gives once per browser.
    Verdicts recorded before keep NULL (nobody named); `current_verdicts` shows it too."""
    _run_script(
        db,
        """
    ALTER TABLE verdicts ADD COLUMN reviewer TEXT;
    CREATE INDEX verdicts_by_reviewer ON verdicts (reviewer)
    """,
    )
    select = """
        SELECT v.campaign, v.job_id, v.task_id, v.attempt_id, v.verdict, v.note, v.at,
            v.reviewer
        FROM verdicts v
        WHERE v.id = (SELECT MAX(w.id) FROM verdicts w WHERE w.campaign = v.campaign
                      AND w.job_id = v.job_id AND w.task_id = v.task_id)"""
    if _on_postgres(db):  # job_costs depends on it: replaced in place, a column added
        db.execute(f"CREATE OR REPLACE VIEW current_verdicts AS {select}")
    else:
        db.execute("DROP VIEW current_verdicts")
        db.execute(f"CREATE VIEW current_verdicts AS {select}")


def m012_provenance(db: Connection) -> None:
    """Each saved file's marks, read on save (PRODUCT §13): its C2PA manifests, XMP and
    other AI labels, as JSON (batchgen/provenance/marks.py); NULL: not read yet."""
    db.execute("ALTER TABLE files ADD COLUMN provenance TEXT")


MIGRATIONS: list[Callable[[Connection], None]] = [
    m001_initial,
    m002_observed_times,
    m003_runner_identity,
    m004_verdicts,
    m005_views,
    m006_scale_totals,
    m007_key_labels,
    m008_exact_dollar_views,
    m009_refusals,
    m010_runners,
    m011_reviewers,
    m012_provenance,
]


def known_migrations() -> set[str]:
    """The names this batchgen knows: a ledger that recorded any other was written by a
    newer one."""
    return {migration.__name__ for migration in MIGRATIONS}


def migrate(db: Connection) -> list[str]:
    """Apply every migration not yet recorded in this file, each in its own transaction.

    Foreign keys are not enforced while a migration runs (a table rebuild drops the table
    others refer to, SQLite's documented way), and are checked before it commits."""
    if _on_postgres(db):  # under the write lock: two processes may create it at once
        _pg_migrations_table(db)
    else:
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
        )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied: list[str] = []
    pending = [migration for migration in MIGRATIONS if migration.__name__ not in done]
    if not pending:
        return applied
    if _on_postgres(db):  # constraints are checked as each statement runs
        for migration in pending:
            if _apply(db, migration):
                applied.append(migration.__name__)
        return applied
    (enforced,) = db.execute("PRAGMA foreign_keys").fetchone()
    db.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before BEGIN
    try:
        for migration in pending:
            if _apply(db, migration):
                applied.append(migration.__name__)
    finally:
        db.execute(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")
    return applied


def _pg_migrations_table(db: Connection) -> None:
    dialect_of(db).begin_write(db)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _apply(db: Connection, migration: Callable[[Connection], None]) -> bool:
    """Apply one migration in one transaction; False if another process just did."""
    dialect_of(db).begin_write(db)
    try:
        # Another process may have migrated between our read and our lock.
        if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (migration.__name__,)).fetchone():
            db.execute("ROLLBACK")
            return False
        migration(db)
        broken = [] if _on_postgres(db) else db.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise sqlite3.IntegrityError(
                f"{migration.__name__} would break foreign keys: {broken[:3]}"
            )
        db.execute(
            "INSERT INTO _migrations VALUES (?, ?)",
            (migration.__name__, datetime.now(UTC).isoformat()),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return True
