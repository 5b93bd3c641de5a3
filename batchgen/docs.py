"""Write the help texts into docs/commands.md: `python -m batchgen.docs` (`--check`: exit 1
when the page is stale, as a test does). Everything above MARKER is written by hand; the
rest is each command's `--help`, as click prints it at 100 columns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from batchgen.cli import cli

COMMANDS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
MARKER = "<!-- Generated below by `python -m batchgen.docs` from each command's --help. -->"
WIDTH = 100
# Unset, so that no default the help shows comes from this machine's environment.
ENVIRONMENT: dict[str, str | None] = {
    name: None
    for name in ("BATCHGEN_LEDGER", "BATCHGEN_OUT", "BATCHGEN_NOTIFY", "OKAYPIC_BASE_URL")
}


def help_text(command: str | None) -> str:
    """`batchgen COMMAND --help` (COMMAND may be a group's: "ledger copy")."""
    args = [*command.split(), "--help"] if command else ["--help"]
    result = CliRunner().invoke(
        cli, args, prog_name="batchgen", env=ENVIRONMENT, terminal_width=WIDTH
    )
    assert result.exit_code == 0, result.output
    return result.output.rstrip() + "\n"


def help_texts() -> str:
    """The generated part of the page: `batchgen --help`, then each command's (a group's
    commands after it: `batchgen ledger`, `batchgen ledger copy`)."""
    parts = ["## Help texts\n"]
    commands: list[str | None] = [None]
    for name in sorted(cli.commands):
        group = cli.commands[name]
        commands.append(name)
        if isinstance(group, click.Group):
            commands += [f"{name} {sub}" for sub in sorted(group.commands)]
    for command in commands:
        name = f"batchgen {command}" if command else "batchgen"
        parts.append(f"### `{name}`\n\n```text\n{help_text(command)}```\n")
    return "\n".join(parts)


def render(page: str) -> str:
    """The page with its generated part rewritten (the hand-written part kept)."""
    written, found, _ = page.partition(MARKER)
    if not found:
        raise ValueError(f"{COMMANDS_PAGE} has no line {MARKER!r}")
    return f"{written}{MARKER}\n\n{help_texts()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchgen.docs",
        description="Write every command's help text into docs/commands.md (in a checkout).",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    if not COMMANDS_PAGE.is_file():
        print(f"{COMMANDS_PAGE} not found: run this in a checkout of batchgen", file=sys.stderr)
        return 1
    current = COMMANDS_PAGE.read_text(encoding="utf-8")
    try:
        text = render(current)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    if text == current:
        return 0
    if args.check:
        print(f"{COMMANDS_PAGE} is stale: run python -m batchgen.docs", file=sys.stderr)
        return 1
    COMMANDS_PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {COMMANDS_PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
