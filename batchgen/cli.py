"""The command line: parse options, call one function, print, turn errors into exit codes.

Exit codes (PRODUCT.md §7): 0 all jobs of the run completed; 1 invalid input or failed
jobs; 2 usage error; 3 stopped with work remaining and resumable; 4 authentication
failed or no key; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from batchgen.errors import BatchgenError, ManifestInvalid
from batchgen.keys import SANDBOX_KEY, Redactor
from batchgen.ledger import DEFAULT_OUT, DEFAULT_PATH
from batchgen.ledger.db import database_errors, is_url
from batchgen.ports import REVIEW_PORT, SANDBOX_PORT
from batchgen.progress_curves import DEFAULT_MODE as DEFAULT_PROGRESS_MODE
from batchgen.progress_curves import PROGRESS_MODES
from batchgen.text import shown

if TYPE_CHECKING:
    from batchgen.companions import Companions
    from batchgen.summary import EndOfRun

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_MAX_JOBS = 100_000


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our exceptions into one clear line on stderr and the exit code they carry."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        redact = Redactor.from_environment()  # no key in any line shown, whatever happens
        root = click.get_current_context().find_root()
        redact.add_ledger((root.obj or {}).get("ledger"))  # nor a ledger URL's password
        try:
            return command(*args, **kwargs)
        except ManifestInvalid as e:
            for problem in e.problems:
                click.echo(shown(redact(str(problem))), err=True)
            click.echo(f"{len(e.problems)} problem(s) found; nothing was written.", err=True)
            sys.exit(e.exit_code)
        except BatchgenError as e:
            click.echo(shown(redact(f"error: {e}")), err=True)
            sys.exit(e.exit_code)
        except database_errors() as e:  # the ledger failed mid-command (damaged, I/O, gone)
            from batchgen.ledger import unusable

            path = str(click.get_current_context().find_root().obj["ledger"])
            click.echo(shown(redact(f"error: {unusable(path, e)}")), err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def ledger_path(ctx: click.Context) -> str:
    return str(ctx.obj["ledger"])


def _ledger_after_command(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["ledger"] = value  # the group's dict: what ledger_path reads
        ctx.obj["ledger_typed"] = True  # as when typed before the command: advice repeats it


class Commands(click.Group):
    """batchgen's command group: every command that uses the ledger also takes `--ledger`
    after its name (`batchgen status --ledger x.db`), same as before it."""

    WITHOUT_LEDGER = frozenset({"validate", "sandbox", "init", "verify", "ledger"})

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if cmd.name not in self.WITHOUT_LEDGER and not any(p.name == "ledger" for p in cmd.params):
            cmd.params.append(
                click.Option(
                    ["--ledger"],
                    type=click.Path(dir_okay=False),
                    expose_value=False,
                    callback=_ledger_after_command,
                    help="The ledger: a SQLite file, or a postgresql:// URL (also accepted "
                    "before the command; "
                    "env BATCHGEN_LEDGER).",
                )
            )
        super().add_command(cmd, name)


def checked(manifest: str, max_jobs: int, as_json: bool) -> Any:
    """The checked manifest; with `as_json`, an invalid one's problems go to stdout as
    JSON, in `validate --json`'s shape (`{"valid": false, "campaign": NAME or null,
    "jobs": null, "problems": [...]}`), and the command exits 1."""
    from batchgen.validate import check_manifest

    try:
        return check_manifest(manifest, max_jobs=max_jobs)
    except ManifestInvalid as e:
        if not as_json:
            raise
        problems = [dataclasses.asdict(problem) for problem in e.problems]
        answer = {"valid": False, "campaign": e.campaign, "jobs": None, "problems": problems}
        click.echo(json.dumps(answer, ensure_ascii=False))
        sys.exit(e.exit_code)


@contextlib.contextmanager
def streaming_stdout() -> Iterator[Callable[[str], object]]:
    """Write text to stdout as it comes. A reader that stops early (`| head`) ends the
    command quietly, as it ends any Unix tool, never with a traceback."""
    out = sys.stdout
    try:
        yield out.write
        out.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit, and complain: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        sys.exit(0)


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")


@click.group(cls=Commands, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--ledger",
    envvar="BATCHGEN_LEDGER",
    default=DEFAULT_PATH,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The ledger: a SQLite file, or a postgresql:// URL (env BATCHGEN_LEDGER).",
)
@click.version_option(package_name="batchgen")
@click.pass_context
def cli(ctx: click.Context, ledger: str) -> None:
    """Run large, resumable, cost-audited batches of okaypic generation jobs.

    \b
    Try it without an account (init writes example manifests into this folder):
        batchgen init && batchgen run --sandbox example.yaml
    """
    ctx.obj = {"ledger": ledger}


max_jobs_option = click.option(
    "--max-jobs",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_JOBS,
    show_default=True,
    help="Refuse manifests that expand to more jobs than this.",
)
manifest_argument = click.argument("manifest", type=click.Path(dir_okay=False))


def complete_campaigns(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Shell completion of `--campaign`: the campaigns of the ledger the command line names
    (or BATCHGEN_LEDGER, or the default), read read-only. Never an error: a completion
    that cannot read the ledger offers nothing."""
    from click.shell_completion import CompletionItem

    from batchgen.ledger import Ledger

    path = (ctx.obj or {}).get("ledger") or ctx.find_root().params.get("ledger") or DEFAULT_PATH
    if not is_url(path) and not Path(path).is_file():
        return []
    try:
        ledger = Ledger.read_only(path, notify=lambda message: None)
        try:
            names = ledger.campaign_names()
        finally:
            ledger.close()
    except Exception:  # a locked, damaged or foreign file: nothing to offer, never a traceback
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


campaign_option = click.option(
    "--campaign",
    "campaigns",
    multiple=True,
    shell_complete=complete_campaigns,
    help="Only this campaign (repeatable).",
)


@cli.command()
@click.argument("folder", metavar="[DIR]", default=".", type=click.Path(file_okay=False))
@reports_errors
def init(folder: str) -> None:
    """Write example manifests and a rows template (CSV and xlsx) into DIR to start from.

    DIR (default: this folder) is created if missing. A file already there is never
    overwritten: init then writes nothing, names them and exits 1.

    \b
    Example:
        batchgen init && batchgen run --sandbox example.yaml
        batchgen init spring && batchgen validate spring/rows-example.yaml
    """
    from batchgen.starter import FIRST_MANIFEST, write_examples

    written = write_examples(folder)
    for name in written.names:
        click.echo(str(written.folder / name))
    first = written.folder / FIRST_MANIFEST
    click.echo(f"try it without an account: batchgen run --sandbox {first}", err=True)


@cli.command()
@manifest_argument
@max_jobs_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object on stdout: valid, campaign, jobs, and the problems (each with "
    "file, line, col, path, message); on an invalid manifest jobs is null, and so is "
    "campaign when the manifest gives no valid name.",
)
@reports_errors
def validate(manifest: str, max_jobs: int, as_json: bool) -> None:
    """Check a manifest: YAML, schema, and every expanded job against the catalog.

    \b
    Examples:
        batchgen validate manifests/spring-launch.yaml
        batchgen validate spring.yaml --json | jq -r '.problems[].message'
    """
    result = checked(manifest, max_jobs, as_json)
    if as_json:
        answer = {"valid": True, "campaign": result.campaign.name, "jobs": len(result.jobs)}
        click.echo(json.dumps({**answer, "problems": []}, ensure_ascii=False))
        return
    click.echo(f"{manifest}: valid, {len(result.jobs)} job(s) in campaign {result.campaign.name}")


class Duration(click.ParamType):
    """A DURATION (PRODUCT.md §7): seconds, or a number with s, m or h (90s, 30m, 8h)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            return float(value)
        from batchgen.durations import parse_duration

        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


@cli.command()
@manifest_argument
@max_jobs_option
@click.option(
    "--within",
    type=Duration(),
    default=None,
    metavar="DURATION",
    help="Say whether the jobs to run fit in this time with the API keys given, and how "
    "many keys would make them fit (3 slots each; DURATION: 3600, 90s, 30m, 8h).",
)
@json_option
@click.pass_context
@reports_errors
def plan(
    ctx: click.Context, manifest: str, max_jobs: int, within: float | None, as_json: bool
) -> None:
    """Show what a manifest would do and cost, without calling the API or writing anything.

    The wall time is estimated for the API keys in OKAYPIC_API_KEYS (or OKAYPIC_API_KEY),
    3 slots each; for one key when none is set. Exits 3 when the jobs to run do not fit
    the budget or --within, so a script can gate on it.

    \b
    Examples:
        batchgen plan manifests/spring-launch.yaml
        batchgen plan spring.yaml --within 8h
        batchgen plan spring.yaml --json | jq .cost_usd
    """
    from batchgen.plan import format_plan, keys_given, make_plan, plan_json

    result = checked(manifest, max_jobs, as_json)
    made = make_plan(result, ledger_path(ctx), keys_given(), within)
    redact = Redactor.from_environment()  # never a key, even in a refused key's message
    click.echo(redact(json.dumps(plan_json(made)) if as_json else format_plan(made)))
    if not made.fits:
        sys.exit(3)  # PRODUCT.md §7: a script can gate on the plan


@cli.command()
@manifest_argument
@max_jobs_option
@click.option("--replace", is_flag=True, help="Replace jobs whose content changed.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object on stdout: campaign, new, unchanged, replaced, ledger (an "
    "invalid manifest: validate --json's answer).",
)
@click.pass_context
@reports_errors
def ingest(ctx: click.Context, manifest: str, max_jobs: int, replace: bool, as_json: bool) -> None:
    """Validate a manifest and add its jobs to the ledger, without submitting anything.

    \b
    Example (load now, run tonight):
        batchgen ingest manifests/spring-launch.yaml
        batchgen resume
    """
    from batchgen.ledger import Ledger

    result = checked(manifest, max_jobs, as_json)
    ledger = Ledger(ledger_path(ctx))
    try:
        added = ledger.ingest(result.campaign, result.jobs, replace=replace)
    finally:
        ledger.close()
    if as_json:
        counts = {"new": added.new, "unchanged": added.unchanged, "replaced": added.replaced}
        answer = {"campaign": result.campaign.name, **counts, "ledger": ledger.name}
        click.echo(json.dumps(answer, ensure_ascii=False))
        return
    click.echo(
        f"campaign {result.campaign.name}: {added.new} new job(s), {added.unchanged} "
        f"already in the ledger, {added.replaced} replaced ({ledger.name})"
    )


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `run` and `resume` share."""
    for option in reversed(_run_options()):
        command = option(command)
    return command


def _run_options() -> list[Callable[..., Any]]:
    return [
        click.option(
            "--concurrency",
            type=click.IntRange(1, 3),
            default=3,
            show_default=True,
            help="Tasks in flight at once (the service allows 3 per key).",
        ),
        click.option(
            "--poll-interval",
            type=click.FloatRange(min=0.01),
            default=None,
            help="Shortest spacing between two polls of a task, in seconds "
            "[default: 5; 0.2 with --sandbox].",
        ),
        click.option(
            "--retry-delay",
            type=click.FloatRange(min=0),
            default=2.0,
            show_default=True,
            help="Base of the exponential backoff (s).",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=4,
            show_default=True,
            help="Attempts per job before it fails.",
        ),
        click.option(
            "--base-url",
            envvar="OKAYPIC_BASE_URL",
            default=None,
            help="The service (env OKAYPIC_BASE_URL; default https://okaypic.com).",
        ),
        click.option(
            "--on-unknown",
            type=click.Choice(["resubmit", "hold"]),
            default="resubmit",
            show_default=True,
            help="What to do after a submission whose outcome is unknown.",
        ),
        click.option(
            "--lost-after",
            type=Duration(),
            default="1h",
            show_default=True,
            help="Give up on a task that answers 404 or nothing usable for this long: its "
            "job is held (reason lost); resume polls it once more (DURATION: 3600, 90s, 30m, "
            "1h).",
        ),
        click.option(
            "--download",
            "download_dir",
            type=click.Path(file_okay=False),
            envvar="BATCHGEN_OUT",
            default=DEFAULT_OUT,
            show_default=True,
            help="Save result files under this folder as each task completes (env BATCHGEN_OUT).",
        ),
        click.option(
            "--no-download",
            is_flag=True,
            help="Do not save result files (`batchgen download` can save them later).",
        ),
        click.option(
            "--lease",
            type=Duration(),
            default="2m",
            show_default=True,
            help="Several runners may share a ledger: one whose heartbeat is older than this "
            "is taken for dead, and a live runner with its keys takes its tasks over "
            "(DURATION: 120, 90s, 2m).",
        ),
        click.option(
            "--log",
            "log_path",
            default=None,
            metavar="FILE",
            help="Also append timestamped lines to FILE: every event, a status line each "
            "minute, the end-of-run summary.",
        ),
        click.option(
            "--notify",
            "notify_urls",
            multiple=True,
            envvar="BATCHGEN_NOTIFY",
            metavar="URL",
            help="Send the end-of-run summary to this Apprise URL, whatever ended the run "
            "(repeatable; env BATCHGEN_NOTIFY, space-separated): ntfy://topic, slack://…, "
            "json://host:port/path, mailto://…",
        ),
    ]


def _schedule(
    ctx: click.Context,
    campaigns: list[str],
    command_name: str,
    companions: Companions,
    no_download: bool = False,
    **options: Any,
) -> EndOfRun:
    from batchgen.runner import RunOptions, run_ledger

    if no_download:
        options["download_dir"] = None
    run_options = RunOptions(log=companions.log, ledger_option=_ledger_option(ctx), **options)
    return run_ledger(ledger_path(ctx), campaigns, run_options, command_name)


def _ledger_option(ctx: click.Context) -> str | None:
    """The ledger path when `--ledger` was typed (the advised commands then repeat it)."""
    root = ctx.find_root()
    given = root.get_parameter_source("ledger") == click.core.ParameterSource.COMMANDLINE
    given = given or bool(ctx.obj.get("ledger_typed"))  # typed after the command
    return ledger_path(ctx) if given and ledger_path(ctx) != DEFAULT_PATH else None


sandbox_option = click.option(
    "--sandbox",
    is_flag=True,
    help="Run against a local simulated service with a demo key (no account); its tasks "
    "are kept beside the ledger, so `resume --sandbox` goes on with them.",
)


@cli.command()
@manifest_argument
@sandbox_option
@max_jobs_option
@click.option("--replace", is_flag=True, help="Replace jobs whose content changed.")
@run_options
@click.pass_context
@reports_errors
def run(
    ctx: click.Context,
    manifest: str,
    sandbox: bool,
    max_jobs: int,
    replace: bool,
    log_path: str | None,
    notify_urls: tuple[str, ...],
    **options: Any,
) -> None:
    """Validate, ingest and run a manifest until nothing is left to do.

    \b
    Examples:
        batchgen run manifests/quickstart.yaml --sandbox
        OKAYPIC_API_KEY=okpk_... batchgen run spring.yaml --download ~/renders
        OKAYPIC_API_KEYS=studio=okpk_...,night=okpk_... batchgen run spring.yaml
    """
    from batchgen.companions import Companions
    from batchgen.keys import api_keys
    from batchgen.ledger import Ledger
    from batchgen.validate import check_manifest

    companions = Companions.open("run", log_path, notify_urls)  # before anything is sent

    def run_manifest() -> EndOfRun:
        result = check_manifest(manifest, max_jobs=max_jobs)
        companions.campaigns = [result.campaign.name]
        if not sandbox:
            api_keys()  # no key, or one unusable: stop before writing or sending anything
        ledger = Ledger(ledger_path(ctx))
        added = ledger.ingest(result.campaign, result.jobs, replace=replace)
        ledger.close()
        click.echo(
            f"campaign {result.campaign.name}: {added.new} new job(s), "
            f"{added.unchanged} already in the ledger",
            err=True,
        )
        return _schedule(ctx, [result.campaign.name], "run", companions, sandbox=sandbox, **options)

    sys.exit(companions.watch(run_manifest).exit_code)


@cli.command()
@campaign_option
@sandbox_option
@run_options
@click.pass_context
@reports_errors
def resume(
    ctx: click.Context,
    campaigns: tuple[str, ...],
    sandbox: bool,
    log_path: str | None,
    notify_urls: tuple[str, ...],
    **options: Any,
) -> None:
    """Go on with every unfinished job in the ledger (after a crash, a top-up, or an ingest).

    \b
    Examples:
        batchgen resume --campaign spring-launch
        batchgen resume --log night.log --notify ntfy://my-renders
        batchgen resume --sandbox     # after an interrupted `run --sandbox`
    """
    from batchgen.companions import Companions

    companions = Companions.open("resume", log_path, notify_urls)  # before anything is sent
    companions.campaigns = list(campaigns)
    end = companions.watch(
        lambda: _schedule(ctx, list(campaigns), "resume", companions, sandbox=sandbox, **options)
    )
    sys.exit(end.exit_code)


@cli.command()
@campaign_option
@json_option
@click.pass_context
@reports_errors
def status(ctx: click.Context, campaigns: tuple[str, ...], as_json: bool) -> None:
    """Counts, spend, running tasks and failures.

    \b
    Examples:
        batchgen status
        batchgen status --json | jq .counts
    """
    from batchgen import status as status_module
    from batchgen.ledger import Ledger

    ledger = Ledger.read_only(ledger_path(ctx))  # a reading command never writes
    redact = Redactor.from_environment()
    if as_json:  # written as it is read: its memory does not grow with the ledger
        with streaming_stdout() as out:
            status_module.write_json(ledger, list(campaigns), lambda text: out(redact(text)))
            out("\n")
    else:
        data = status_module.status_data(ledger, list(campaigns), jobs=False)
        click.echo(redact(status_module.format_status(ledger, data, list(campaigns))))


@cli.command()
@campaign_option
@click.option(
    "--by",
    type=click.Choice(["campaign", "model", "tag", "status", "key", "verdict", "reviewer"]),
    default="campaign",
    show_default=True,
    help="Group rows by this (key: the API key's label; money by the key each attempt "
    "was sent with, jobs by their latest attempt's key; reviewer: who gave the verdict "
    "on each job's current result).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option(
    "--jobs",
    "per_job",
    is_flag=True,
    help="One row per attempt (a job never sent: one row) with its job, task id, key label, "
    "unit price, its own cost, files and verdict; JSON: each job with its attempts, and its "
    "verdict's reviewer.",
)
@click.pass_context
@reports_errors
def report(
    ctx: click.Context,
    campaigns: tuple[str, ...],
    by: str,
    fmt: str,
    as_json: bool,
    per_job: bool,
) -> None:
    """The cost audit: spent, in flight, unknown, refunded, per group with totals.

    \b
    Examples:
        batchgen report --by model
        batchgen report --by key
        batchgen report --format csv > audit.csv
        batchgen report --jobs --json
    """
    from batchgen import report as report_module
    from batchgen.ledger import Ledger

    if as_json:
        given = ctx.get_parameter_source("fmt") == click.core.ParameterSource.COMMANDLINE
        if given and fmt != "json":
            raise click.UsageError(f"--json and --format {fmt} cannot be used together")
        fmt = "json"

    ledger = Ledger.read_only(ledger_path(ctx))  # a reading command never writes
    width = shutil.get_terminal_size().columns  # $COLUMNS, the terminal, else 80
    redact = Redactor.from_environment()
    with streaming_stdout() as out:  # --jobs as CSV or JSON: written as it is read
        for text in report_module.chunks(ledger, list(campaigns), by, fmt, per_job, width):
            out(redact(text))


@cli.command()
@campaign_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    envvar="BATCHGEN_OUT",
    help="Folder for the files (env BATCHGEN_OUT).",
)
@click.pass_context
@reports_errors
def download(ctx: click.Context, campaigns: tuple[str, ...], out_dir: str) -> None:
    """Save every completed job's result files as OUT/<campaign>/<job-id>[+n].<ext>.

    \b
    Example:
        batchgen download --out out
    """
    from batchgen.download import download_all
    from batchgen.ledger import Ledger

    ledger = Ledger(ledger_path(ctx), create=False)
    try:
        code = download_all(ledger, out_dir, list(campaigns))
    finally:
        ledger.close()
    sys.exit(code)


@cli.command()
@campaign_option
@click.option("--unknown", is_flag=True, help="Requeue held jobs (unknown outcome) instead.")
@click.option(
    "--rejected",
    is_flag=True,
    help="Generate again the completed jobs a reviewer rejected (`batchgen review`).",
)
@click.option(
    "--job",
    "job_ids",
    multiple=True,
    metavar="ID",
    help="Only this job, failed, held or completed (a re-roll), whatever its verdict "
    "(repeatable; with --campaign when the id is in several campaigns).",
)
@click.pass_context
@reports_errors
def retry(
    ctx: click.Context,
    campaigns: tuple[str, ...],
    unknown: bool,
    rejected: bool,
    job_ids: tuple[str, ...],
) -> None:
    """Put failed jobs (or, with --unknown, held jobs) back in the queue with fresh attempts.

    With --rejected: the completed jobs whose result was rejected in `batchgen review`.
    With --job ID: that job (failed, held, or completed: generated again). The earlier
    results, their files and their cost stay in the audit.

    \b
    Examples:
        batchgen retry && batchgen resume
        batchgen retry --rejected && batchgen resume
        batchgen retry --job cat-piano --job poster && batchgen resume
    """
    from batchgen.ledger import Ledger

    chosen = [name for name, on in (("--unknown", unknown), ("--rejected", rejected),
                                    ("--job", bool(job_ids))) if on]  # fmt: skip
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} cannot be used together")
    ledger = Ledger(ledger_path(ctx), create=False)
    try:
        if job_ids:
            queued = ledger.requeue_jobs(list(job_ids), list(campaigns))
            click.echo(
                f"{len(queued)} job(s) queued again ({', '.join(queued)}); "
                "run `batchgen resume` to go on."
            )
            return
        if rejected:
            n = ledger.requeue_rejected(list(campaigns))
        else:
            n = ledger.requeue(list(campaigns), "held" if unknown else "failed")
    finally:
        ledger.close()
    click.echo(f"{n} job(s) queued again; run `batchgen resume` to go on.")


@cli.command()
@campaign_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=REVIEW_PORT,
    show_default=True,
    help="Port on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    envvar="BATCHGEN_OUT",
    help="The folder the result files were saved in (env BATCHGEN_OUT).",
)
@click.option(
    "--share",
    is_flag=True,
    help="Also listen on --bind and print a link with an access token, for a teammate on "
    "another machine; without the token that address answers nothing but a refusal.",
)
@click.option(
    "--bind",
    metavar="HOST[:PORT]",
    default=None,
    help="With --share: where to listen (default 0.0.0.0, every interface, on the port "
    "after --port; PORT 0: any free one).",
)
@click.pass_context
@reports_errors
def review(
    ctx: click.Context,
    campaigns: tuple[str, ...],
    port: int,
    out_dir: str,
    share: bool,
    bind: str | None,
) -> None:
    """The morning review: a web page of the results, to approve or reject each.

    Serves on 127.0.0.1 only; with --share also on another address, behind an access token
    carried by the link it prints. Results are grouped by campaign and prompt, so the takes
    and models of one prompt sit side by side; Enter opens one at full size, j/k move,
    a approves, r rejects (with an optional note), p pins one to compare, ? lists the
    rest. The page writes only verdicts, notes and reviewer names (the ledger is opened
    for writing first, so an older one is migrated and its recovery file applied, as by
    every command that writes).

    \b
    Example:
        batchgen review            # then open http://127.0.0.1:8766/
        batchgen review --share    # and send the printed link to a teammate
        batchgen retry --rejected && batchgen resume
    """
    from batchgen.review import DEFAULT_BIND, parse_bind
    from batchgen.review import main as review_main

    if bind is not None and not share:
        raise click.UsageError("--bind goes with --share")
    shared = parse_bind(bind or DEFAULT_BIND, port) if share else None
    review_main(ledger_path(ctx), list(campaigns), out_dir, port, shared)


@cli.command()
@campaign_option
@click.option("--approved", "which", flag_value="approved", default=True,
              help="Only the results approved in review (the default).")  # fmt: skip
@click.option("--all", "which", flag_value="all", help="Every saved result, whatever its verdict.")
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The folder to copy into (made if missing).",
)
@click.option(
    "--layout",
    default="{campaign}/{file}",
    show_default=True,
    metavar="TEMPLATE",
    help="Each copy's path in DIR, from {campaign} {job} {model} {verdict} {file} {stem} "
    "{ext} {n}.",
)
@click.option(
    "--sign-cert",
    type=click.Path(dir_okay=False),
    metavar="PEM",
    help="The team's C2PA signing certificate (PEM: the leaf, then its CA's).",
)
@click.option("--sign-key", type=click.Path(dir_okay=False), metavar="PEM",
              help="The private key of --sign-cert (PEM).")  # fmt: skip
@click.option("--with-prompt", is_flag=True, help="Also write each prompt into the copy's XMP.")
@json_option
@click.pass_context
@reports_errors
def export(
    ctx: click.Context,
    campaigns: tuple[str, ...],
    which: str,
    to: str,
    layout: str,
    sign_cert: str | None,
    sign_key: str | None,
    with_prompt: bool,
    as_json: bool,
) -> None:
    """Hand results to editors: copies with their AI marks, and a manifest (CSV, JSON).

    Each copy carries XMP DigitalSourceType=trainedAlgorithmicMedia and the model (and
    the prompt with --with-prompt) where the format allows, except that a file carrying a
    provider's C2PA manifest is copied byte-exact. With --sign-cert and --sign-key each
    copy is signed with the team's C2PA manifest (a provider's kept as its parent). The
    saved originals are never changed; an export interrupted goes on where it stopped.

    \b
    Examples:
        batchgen export --to handoff
        batchgen export --campaign spring --all --to dam --layout "{campaign}/{verdict}/{file}"
        batchgen export --to handoff --sign-cert team.pem --sign-key team.key
    """
    from batchgen.ledger import Ledger
    from batchgen.provenance import export as export_module
    from batchgen.provenance.sign import TeamSigner

    if (sign_cert is None) != (sign_key is None):
        raise click.UsageError("--sign-cert and --sign-key go together")
    export_module.check_layout(layout)
    signer = None if sign_cert is None else TeamSigner.load(sign_cert, str(sign_key))
    options = export_module.Export(
        to=Path(to),
        campaigns=list(campaigns),
        approved_only=which == "approved",
        layout=layout,
        signer=signer,
        with_prompt=with_prompt,
    )
    ledger = Ledger.read_only(ledger_path(ctx))  # export only reads the ledger
    tally = export_module.run(ledger, options, lambda line: click.echo(shown(line), err=True))
    if not tally.rows and options.approved_only:
        click.echo("no approved result saved: approve in `batchgen review`, or --all", err=True)
    counts = {"copied": tally.copied, "kept": tally.kept, "failed": tally.failed}
    if as_json:
        click.echo(json.dumps({**counts, "manifest": str(Path(to) / "export-manifest.json")}))
    else:
        click.echo(
            f"{tally.copied} copied, {tally.kept} already there, {tally.failed} failed; "
            f"manifest: {Path(to) / 'export-manifest.csv'} and .json"
        )
    sys.exit(1 if tally.failed else 0)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--trust-anchor",
    type=click.Path(dir_okay=False),
    metavar="PEM",
    help="A root certificate (PEM) to trust, e.g. the team's own CA.",
)
@json_option
@reports_errors
def verify(files: tuple[str, ...], trust_anchor: str | None, as_json: bool) -> None:
    """What each file's AI marks say: C2PA manifests, issuers, validation, XMP labels.

    Exit 0 when every file's marks are valid, 1 when one is invalid or forged (changed
    after signing), 3 when one has none.

    \b
    Examples:
        batchgen verify out/spring-launch/*.mp4
        batchgen verify export/poster.png --trust-anchor team-root.pem --json
    """
    from batchgen.provenance import verify as verify_module

    results = verify_module.verify(list(files), trust_anchor)
    if as_json:
        click.echo(json.dumps({"files": results}, ensure_ascii=False))
    else:
        click.echo(verify_module.text(results))
    sys.exit(verify_module.exit_code(results))


@cli.group("ledger", context_settings=CONTEXT_SETTINGS)
def ledger_group() -> None:
    """Work on a whole ledger: copy it between SQLite and PostgreSQL.

    \b
    Example:
        batchgen ledger copy batchgen.db postgresql://render-01/batchgen
    """


@ledger_group.command("copy")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@json_option
@reports_errors
def ledger_copy(source: str, destination: str, as_json: bool) -> None:
    """Copy the ledger SRC into DST, exactly: jobs, attempts, money, verdicts, files, events.

    SRC and DST are each a SQLite file or a postgresql:// URL, in either direction. SRC is
    only read (stop its runners first); DST must be new or empty, and is never written
    over. Afterwards `report` gives the same answers on both (see docs/ledger.md).

    \b
    Examples:
        batchgen ledger copy batchgen.db postgresql://render-01/batchgen
        batchgen ledger copy postgresql://render-01/batchgen backup.db --json
    """
    from batchgen.ledger.copying import copy_ledger

    copied = copy_ledger(source, destination)
    click.echo(json.dumps(copied.as_json()) if as_json else copied.line())


def _sandbox_keys(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    """`--key KEY[=USD]`, repeatable: checked here so a bad one is a usage error (exit 2)."""
    from batchgen.sandbox.config import parse_keys

    try:
        parse_keys(value, "0")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _sandbox_balance(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from batchgen.sandbox.config import parse_balance

    try:
        parse_balance(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=SANDBOX_PORT, show_default=True)
@click.option(
    "--key",
    "keys",
    multiple=True,
    default=[SANDBOX_KEY],
    show_default=True,
    metavar="KEY[=USD]",
    callback=_sandbox_keys,
    help="A key the sandbox accepts, with its own balance after = if given (repeatable: "
    "several keys, 3 tasks at once each).",
)
@click.option(
    "--balance",
    default="100.00",
    show_default=True,
    callback=_sandbox_balance,
    help="Starting balance (USD) of each key given without its own.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Multiplies the typical generation times of the catalog.",
)
@click.option("--submit-500-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--poll-500-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--spurious-429-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Accept and charge a task, then drop the connection.",
)
@click.option("--garbage-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option(
    "--reject-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Answer 400 to a valid submit (a content-policy refusal).",
)
@click.option(
    "--refuse-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Refuse this share of prompts for content reasons, the same prompts every time "
    "(by --seed): half at submit (400), half as tasks failed for their output.",
)
@click.option(
    "--echo-key",
    is_flag=True,
    help="Hostile: repeat the caller's bearer token in every error message.",
)
@click.option(
    "--vanish-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Accept and charge a task, then answer 404 to every poll of it.",
)
@click.option(
    "--retry-after",
    default=None,
    help="Retry-After header sent with each 429, as given (e.g. 5, 0, -1, a date).",
)
@click.option(
    "--latency",
    type=(float, float),
    default=(0.0, 0.0),
    help="MIN MAX seconds added before each answer.",
)
@click.option(
    "--progress",
    type=click.Choice(PROGRESS_MODES),
    default=DEFAULT_PROGRESS_MODE,
    show_default=True,
    help="How a running task reports progress (see docs/sandbox.md).",
)
@click.option(
    "--provenance",
    is_flag=True,
    help="Sign result files with a C2PA manifest as a provider would (a throwaway CA made "
    "at start; needs batchgen[provenance]).",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Keep the tasks and balances in FILE, and start from it when it exists: they "
    "outlive this process (tasks end on their own time meanwhile).",
)
@click.option("--verbose", is_flag=True, help="One line per request on stderr.")
@reports_errors
def sandbox(port: int, keys: tuple[str, ...], balance: str, **knobs: Any) -> None:
    """Serve a local simulator of the okaypic API on 127.0.0.1, for tests and demos.

    Prints OKAYPIC_BASE_URL, OKAYPIC_API_KEY and, with several keys, OKAYPIC_API_KEYS
    lines a shell can source.

    \b
    Example:
        batchgen sandbox --port 8765 --fail-rate 0.1 --progress stuck
        OKAYPIC_BASE_URL=http://127.0.0.1:8765 OKAYPIC_API_KEY=okpk_sandbox_demo \\
            batchgen run manifests/quickstart.yaml
        batchgen sandbox --key okpk_a --key okpk_b=0.50   # 2 keys: okpk_b has $0.50
    """
    from batchgen.sandbox import main as sandbox_main
    from batchgen.sandbox.state import StateUnusable

    try:
        sandbox_main(port=port, keys=keys, balance_usd=balance, **knobs)
    except StateUnusable as e:
        raise BatchgenError(str(e)) from None


def main() -> None:
    cli(prog_name="batchgen")


if __name__ == "__main__":
    main()
