"""`batchgen init [DIR]` (PRODUCT.md §7): a newcomer who installed batchgen with pipx, with
no checkout at hand, gets example manifests and a rows template to start from, and the
first example of `batchgen --help` works as written. Run for real, in a folder of its own."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
from pathlib import Path

from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.starter import names
from tests.e2e import command_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "batchgen" / "examples"


def batchgen_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, run from `folder` (never from the checkout), with no key, on the
    ledger a newcomer gets: the default, a SQLite file in the folder (so these tests are
    SQLite's alone)."""
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        cwd=folder,
        env=command_env(folder / "batchgen.db", None, None),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_the_helps_first_example_runs_as_written_in_an_empty_folder(tmp_path):
    help_text = CliRunner().invoke(cli, ["--help"]).output
    assert "batchgen init && batchgen run --sandbox example.yaml" in help_text
    init = batchgen_in(tmp_path, "init")
    assert init.returncode == 0, init.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names())
    run = batchgen_in(tmp_path, "run", "--sandbox", "example.yaml")
    assert run.returncode == 0, run.stderr
    assert "all jobs completed (exit 0)" in run.stderr
    saved = sorted(p.name for p in (tmp_path / "out" / "example").iterdir())
    assert saved == ["cat-curious.mp4", "cat-grumpy.mp4", "cat-sleepy.mp4", "dance.mp4",
                     "lighthouse.mp4", "poster.png"]  # fmt: skip


def test_every_manifest_init_writes_is_valid_and_reads_both_rows_templates(tmp_path):
    folder = tmp_path / "new" / "campaigns"  # created, parents too
    init = batchgen_in(tmp_path, "init", str(folder))
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines() == [str(folder / name) for name in names()]
    manifests = sorted(folder.glob("*.yaml"))
    assert [m.name for m in manifests] == ["example.yaml", "rows-example.yaml"]
    for manifest in manifests:
        result = batchgen_in(tmp_path, "validate", str(manifest), "--json")
        assert result.returncode == 0, result.stdout
    rows = batchgen_in(tmp_path, "plan", str(folder / "rows-example.yaml"), "--json")
    assert rows.returncode == 0, rows.stderr
    assert '"jobs": 10' in rows.stdout  # 5 rows from prompts.csv, the same 5 from prompts.xlsx
    assert '"cost_usd": "1.40"' in rows.stdout  # durations from both templates' cells


def test_init_never_overwrites_a_file_it_names_them_writes_nothing_and_exits_1(tmp_path):
    mine = tmp_path / "prompts.csv"
    mine.write_text("sku,description\nMY-1,my own prompt\n", encoding="utf-8")
    (tmp_path / "example.yaml").mkdir()  # a folder of that name counts too
    result = batchgen_in(tmp_path, "init", ".")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "example.yaml, prompts.csv" in line and "nothing was written" in line
    assert "Traceback" not in result.stderr
    assert mine.read_text(encoding="utf-8") == "sku,description\nMY-1,my own prompt\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.yaml", "prompts.csv"]


def test_the_examples_are_package_data_so_init_works_from_an_installed_batchgen():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["batchgen"]
    shipped = [p.relative_to(ROOT / "batchgen").as_posix() for p in EXAMPLES.iterdir()]
    assert shipped
    for name in shipped:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_the_example_is_the_quickstart_under_its_own_name():
    import yaml

    example = yaml.safe_load((EXAMPLES / "example.yaml").read_text(encoding="utf-8"))
    quickstart = yaml.safe_load(
        (ROOT / "manifests" / "quickstart.yaml").read_text(encoding="utf-8")
    )
    for manifest in (example, quickstart):
        del manifest["campaign"], manifest["defaults"]["tags"]
    assert example == quickstart
