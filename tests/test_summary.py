"""The end-of-run summary, case by case (PRODUCT.md §6, §7): one pure function from what
the ledger says, how the scheduler says the run ended and the options, to the exit code,
the title and the lines shown on the screen, written to the log and sent as the message."""

from __future__ import annotations

import dataclasses

import pytest

from batchgen.scheduler import Summary
from batchgen.summary import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RESUMABLE,
    Closing,
    EndOfRun,
    JobNote,
    LedgerFacts,
    end_of_run,
    held_why,
    stopped_by_error,
)

RUN = Closing(command="run", selection=["spring"])


def counts(**given: int) -> dict[str, int]:
    base = dict.fromkeys(("queued", "submitting", "running", "completed", "failed", "held"), 0)
    return {**base, **given}


def facts(**given: object) -> LedgerFacts:
    values: dict[str, object] = {"campaigns": ["spring"], "counts": counts(completed=4)}
    values.update(given)
    return LedgerFacts(**values)  # type: ignore[arg-type]


def notes(status: str, n: int) -> list[JobNote]:
    return [JobNote("spring", f"job-{i}", f"{status} because {i}") for i in range(1, n + 1)]


def test_all_done_exits_0_says_so_and_ends_with_where_the_files_are():
    end = end_of_run(facts(spent=400_000, budget=1_000_000), Summary(), RUN)
    assert end.exit_code == EXIT_OK and end.kind == "success"
    assert end.title == "batchgen run spring: all jobs completed (exit 0)"
    assert end.lines == [
        "4 completed, 0 failed, 0 held, 0 queued, 0 running; spent $0.40 of $1.00 budget",
        "files in out/",
        "look at the results, approve or reject them: `batchgen review`",
    ]
    assert end.body == "\n".join(end.lines)


def test_failed_jobs_exit_1_each_named_with_its_reason_the_first_five_then_a_count():
    end = end_of_run(
        facts(counts=counts(completed=2, failed=7), failed=notes("failed", 5)), Summary(), RUN
    )
    assert end.exit_code == EXIT_FAILED and end.kind == "failure"
    assert end.title == "batchgen run spring: ended with 7 failed job(s) (exit 1)"
    named = [line for line in end.lines if line.startswith("failed: ")]
    assert named == [f"failed: spring/job-{i}: failed because {i}" for i in range(1, 6)]
    assert "and 2 more failed job(s): `batchgen status --campaign spring`" in end.lines
    assert end.lines[-1] == (
        "some jobs failed: see `batchgen status --campaign spring`; "
        "`batchgen retry --campaign spring` requeues them"
    )


def test_no_count_of_more_jobs_when_all_are_named():
    end = end_of_run(facts(counts=counts(failed=2), failed=notes("failed", 2)), Summary(), RUN)
    assert not any(line.startswith("and ") for line in end.lines)


def test_interrupted_exits_130_with_the_exact_command_that_goes_on():
    end = end_of_run(
        facts(counts=counts(completed=1, running=2, queued=3), in_flight=200_000),
        Summary(stopped_for="interrupted"),
        RUN,
    )
    assert end.exit_code == EXIT_INTERRUPTED and end.kind == "warning"
    assert "interrupted (exit 130)" in end.title
    assert end.lines[0].endswith("spent $0.00, $0.20 in flight")
    assert end.lines[-1] == (
        "interrupted: run `batchgen resume --campaign spring` to go on (tasks in flight are kept)"
    )


@pytest.mark.parametrize(
    "stopped, counted",
    [("interrupted", {}), ("unreachable", {}), (None, {"queued": 2}), (None, {"held": 1})],
)
def test_a_sandbox_run_is_resumed_in_the_sandbox(stopped, counted):
    """Its tasks are kept beside the ledger: `resume --sandbox` polls them; plain `resume`
    has no key for them."""
    end = end_of_run(
        facts(counts=counts(**counted), lost=counted.get("held", 0)),
        Summary(stopped_for=stopped, message="cannot reach the service"),
        dataclasses.replace(RUN, sandbox=True),
    )
    assert "`batchgen resume --sandbox --campaign spring`" in end.lines[-1]
    assert "`batchgen resume --campaign" not in end.body


def test_interrupted_wins_over_failed_jobs_and_work_remaining():
    end = end_of_run(
        facts(counts=counts(failed=1, queued=2), failed=notes("failed", 1)),
        Summary(stopped_for="interrupted"),
        RUN,
    )
    assert end.exit_code == EXIT_INTERRUPTED


def test_a_redirect_exits_1_naming_it():
    message = "the service redirects submissions (302 to https://elsewhere/), so the base URL ..."
    end = end_of_run(
        facts(counts=counts(queued=4)), Summary(stopped_for="redirect", message=message), RUN
    )
    assert end.exit_code == EXIT_FAILED
    assert end.lines[-1] == f"stopped: {message}"


def test_an_empty_balance_exits_3_top_up_then_resume():
    end = end_of_run(
        facts(counts=counts(completed=4, queued=4)), Summary(stopped_for="balance"), RUN
    )
    assert end.exit_code == EXIT_RESUMABLE
    assert "okaypic balance exhausted" in end.title
    assert end.lines[-1] == (
        "the okaypic balance is exhausted: top it up, then `batchgen resume --campaign spring`"
    )


def test_an_unreachable_service_exits_3():
    end = end_of_run(
        facts(counts=counts(queued=4)),
        Summary(stopped_for="unreachable", message="cannot reach the service: refused"),
        RUN,
    )
    assert end.exit_code == EXIT_RESUMABLE
    assert end.lines[-1] == (
        "cannot reach the service: refused; run `batchgen resume --campaign spring` when it is back"
    )


def test_the_budget_exits_3_naming_the_manifest_to_edit_and_the_command_that_reads_it():
    end = end_of_run(
        facts(
            counts=counts(completed=3, queued=3),
            spent=300_000,
            budget=350_000,
            manifests={"spring": "manifests/spring launch.yaml"},
        ),
        Summary(budget_blocked={("spring", "a"), ("spring", "b"), ("spring", "c")}),
        RUN,
    )
    assert end.exit_code == EXIT_RESUMABLE
    assert "budget reached" in end.title
    assert end.lines[0].endswith("spent $0.30 of $0.35 budget")
    assert end.lines[-1] == (
        "3 job(s) wait: the campaign budget_usd would be exceeded; raise budget_usd in "
        "manifests/spring launch.yaml, then `batchgen run 'manifests/spring launch.yaml'`"
    )


def test_a_held_jobs_reason_is_said_once():
    assert held_why("lost", "lost: no usable answer for 3.2s (last: 404)") == (
        "lost: no usable answer for 3.2s (last: 404)"
    )
    assert held_why("unknown outcome", "timed out") == "unknown outcome: timed out"
    assert held_why("unknown outcome", None) == "unknown outcome"
    assert held_why(None, None) == "unknown outcome"


def test_lost_tasks_exit_3_with_their_reasons_how_long_and_both_ways_on():
    held = [JobNote("spring", "job-1", "lost: no usable answer for 1s (last: 404)")]
    end = end_of_run(
        facts(counts=counts(completed=3, held=1), lost=1, held=held, unknown=100_000),
        Summary(),
        Closing(command="run", selection=["spring"], lost_after=1.0),
    )
    assert end.exit_code == EXIT_RESUMABLE
    assert end.title == "batchgen run spring: stopped: 1 job(s) held (lost) (exit 3)"
    assert end.lines[0].endswith("spent $0.00, $0.10 of unknown outcome")
    assert "held: spring/job-1: lost: no usable answer for 1s (last: 404)" in end.lines
    assert end.lines[-1] == (
        "1 job(s) lost: their task gave no usable answer for over 1s; `batchgen resume "
        "--campaign spring` polls them once more, `batchgen retry --unknown --campaign "
        "spring` submits them anew"
    )


def test_jobs_held_after_an_unknown_outcome_exit_3():
    end = end_of_run(
        facts(counts=counts(completed=3, held=2), held=notes("held", 2)), Summary(), RUN
    )
    assert end.exit_code == EXIT_RESUMABLE
    assert end.lines[-1].startswith("2 job(s) held after an unknown outcome")


def test_work_remaining_exits_3():
    end = end_of_run(facts(counts=counts(completed=3, queued=1)), Summary(), RUN)
    assert end.exit_code == EXIT_RESUMABLE
    assert end.lines[-1] == "work remains: run `batchgen resume --campaign spring`"


def test_unsaved_files_exit_3_and_say_so_in_the_last_line_instead_of_where_the_files_are():
    end = end_of_run(
        facts(), Summary(), Closing(selection=["spring"], download_dir="renders"), unsaved=3
    )
    assert end.exit_code == EXIT_RESUMABLE
    assert "3 result file(s) not saved" in end.title
    assert not any("files in" in line for line in end.lines)
    assert end.lines[-1] == (
        "3 result file(s) could not be saved (see above): "
        "`batchgen download --out renders --campaign spring` tries them again"
    )


def test_unsaved_files_keep_the_code_of_failed_jobs_and_stay_the_last_line():
    end = end_of_run(facts(counts=counts(failed=1)), Summary(), RUN, unsaved=1)
    assert end.exit_code == EXIT_FAILED
    assert end.lines[-1].startswith("1 result file(s) could not be saved")


def test_answers_kept_in_a_recovery_file_are_named():
    end = end_of_run(facts(recovery_file="/data/l.db.recovery"), Summary(), RUN)
    assert any("/data/l.db.recovery" in line for line in end.lines)


def test_money_in_flight_or_unknown_is_shown_only_when_not_zero():
    end = end_of_run(facts(spent=100_000), Summary(), RUN)
    assert end.lines[0].endswith("; spent $0.10")


def test_a_ledger_given_on_the_command_line_is_repeated_in_every_command_quoted():
    closing = Closing(command="resume", ledger="/srv/my ledgers/night.db")
    end = end_of_run(facts(counts=counts(completed=1, queued=1)), Summary(), closing)
    assert (
        end.lines[-1] == "work remains: run `batchgen --ledger '/srv/my ledgers/night.db' resume`"
    )
    end = end_of_run(
        facts(), Summary(), Closing(ledger="l.db", download_dir="x", default_out=False)
    )
    assert end.lines[-1].endswith("`batchgen --ledger l.db review --out x`")


def test_no_download_advises_download_except_for_the_in_process_sandbox():
    real = end_of_run(facts(), Summary(), Closing(selection=["spring"], download_dir=None))
    assert real.lines[-1] == (
        "files not saved (--no-download): `batchgen download --campaign spring` saves them; "
        "then `batchgen review`"
    )
    demo = end_of_run(facts(), Summary(), Closing(sandbox=True, download_dir=None))
    assert "download" not in demo.lines[-1].replace("--no-download", "")


def test_text_from_outside_is_shown_plain_in_every_line():
    failed = [JobNote("spring", "odd\x1b[31mid", "rejected:\n[bold]fake line\x07")]
    end = end_of_run(facts(counts=counts(failed=1), failed=failed), Summary(), RUN)
    line = next(line for line in end.lines if line.startswith("failed: "))
    assert line == "failed: spring/odd\\x1b[31mid: rejected:\\n[bold]fake line\\x07"
    assert all("\x1b" not in line and "\n" not in line for line in end.lines)


def test_the_title_names_a_few_campaigns_then_counts_the_rest():
    many = facts(campaigns=["a", "b", "c", "d", "e"])
    end = end_of_run(many, Summary(), Closing(command="resume"))
    assert end.title.startswith("batchgen resume a, b, c and 2 more: ")


@pytest.mark.parametrize(
    "code, kind", [(0, "success"), (1, "failure"), (3, "warning"), (4, "failure"), (130, "warning")]
)
def test_the_kind_of_message_follows_the_exit_code(code, kind):
    assert EndOfRun(code, "t", []).kind == kind


def test_an_error_that_ended_the_run_is_its_summary():
    end = stopped_by_error(
        "run",
        ["spring"],
        "the service refused OKAYPIC_API_KEY (401)",
        EXIT_AUTH,
        "set a valid OKAYPIC_API_KEY, then run the same command again",
    )
    assert end.exit_code == EXIT_AUTH and end.kind == "failure"
    assert end.title == "batchgen run spring: stopped by an error (exit 4)"
    assert end.lines == [
        "error: the service refused OKAYPIC_API_KEY (401)",
        "set a valid OKAYPIC_API_KEY, then run the same command again",
    ]


def test_tasks_left_for_a_key_not_given_exit_3_naming_the_label_and_how_to_go_on():
    summary = Summary(unpolled={"night": 2}, missing_keys={"night"})
    end = end_of_run(facts(counts=counts(completed=4, running=2)), summary, RUN)
    assert end.exit_code == EXIT_RESUMABLE
    assert end.title == "batchgen run spring: stopped: 2 task(s) wait for their key (exit 3)"
    assert "key night: 2 task(s) not polled (the key is not given)" in end.lines
    assert end.lines[-1] == (
        "tasks created with key(s) night are polled only with that key under the same "
        "label: give it again in OKAYPIC_API_KEYS (night: `night=<the key>`), then "
        "`batchgen resume --campaign spring`"
    )


def test_the_advice_for_a_key_not_given_says_exactly_how_to_give_it_for_its_label():
    """A named key's label is its name, an unnamed key's its hash: each is found again
    only as it was given (a key given back unnamed for a named label is another label)."""
    summary = Summary(
        unpolled={"night": 2, "key-1a2b3c4d": 1}, missing_keys={"night", "key-1a2b3c4d"}
    )
    end = end_of_run(facts(counts=counts(completed=4, running=3)), summary, RUN)
    assert end.lines[-1] == (
        "tasks created with key(s) key-1a2b3c4d, night are polled only with that key under "
        "the same label: give it again in OKAYPIC_API_KEYS (key-1a2b3c4d: the key alone, "
        "unnamed; night: `night=<the key>`), then `batchgen resume --campaign spring`"
    )


def test_tasks_of_a_refused_key_say_it_was_refused():
    summary = Summary(keys_out={"night": "refused"}, unpolled={"night": 1})
    end = end_of_run(facts(counts=counts(completed=4, running=1)), summary, RUN)
    assert end.exit_code == EXIT_RESUMABLE
    assert "key night: refused by the service (401)" in end.lines
    assert "key night: 1 task(s) not polled (the key is refused)" in end.lines


def test_a_key_out_of_balance_while_the_others_finish_is_named_and_the_run_exits_0():
    summary = Summary(keys_out={"night": "balance", "studio": "refused"})
    end = end_of_run(facts(), summary, RUN)
    assert end.exit_code == EXIT_OK
    assert end.lines[1:3] == [
        "key night: balance exhausted (402)",
        "key studio: refused by the service (401)",
    ]


def test_an_interrupt_wins_over_tasks_waiting_for_their_key():
    summary = Summary(stopped_for="interrupted", unpolled={"night": 1}, missing_keys={"night"})
    end = end_of_run(facts(counts=counts(running=1)), summary, RUN)
    assert end.exit_code == EXIT_INTERRUPTED


@pytest.mark.parametrize(
    ("summary", "counted", "title"),
    [
        (Summary(stopped_for="interrupted"), {}, "interrupted (exit 130)"),
        (
            Summary(stopped_for="redirect", message="302"),
            {},
            "stopped: the service redirects (wrong base URL) (exit 1)",
        ),
        (Summary(stopped_for="balance"), {}, "stopped: okaypic balance exhausted (exit 3)"),
        (
            Summary(stopped_for="unreachable", message="refused"),
            {},
            "stopped: the service cannot be reached (exit 3)",
        ),
        (Summary(budget_blocked={("spring", "a")}), {}, "stopped: budget reached (exit 3)"),
        (Summary(), {"queued": 1}, "stopped with work remaining (exit 3)"),
    ],
)
def test_the_title_says_how_the_run_ended(summary, counted, title):
    end = end_of_run(facts(counts=counts(**counted)), summary, RUN)
    assert end.title == f"batchgen run spring: {title}"


def test_an_interrupt_before_the_run_began_is_titled_interrupted():
    end = stopped_by_error("resume", [], "interrupted", EXIT_INTERRUPTED, None)
    assert end.title == "batchgen resume: interrupted (exit 130)"
    assert end.lines == ["error: interrupted"]


def test_the_defaults_are_a_run_with_tasks_lost_after_an_hour():
    end = end_of_run(facts(counts=counts(held=1), lost=1), Summary(), Closing())
    assert end.title.startswith("batchgen run spring: ")
    assert "no usable answer for over 1h;" in end.lines[-1]


def test_at_most_five_jobs_are_named_even_when_the_ledger_gives_more():
    end = end_of_run(facts(counts=counts(failed=7), failed=notes("failed", 6)), Summary(), RUN)
    assert [line for line in end.lines if line.startswith("failed: ")] == [
        f"failed: spring/job-{i}: failed because {i}" for i in range(1, 6)
    ]
    assert "and 2 more failed job(s): `batchgen status --campaign spring`" in end.lines


def test_three_campaigns_are_all_named_in_the_title():
    end = end_of_run(facts(campaigns=["a", "b", "c"]), Summary(), Closing(command="resume"))
    assert end.title.startswith("batchgen resume a, b, c: ")


@pytest.mark.parametrize(
    ("counted", "left"),
    [({"queued": 1, "submitting": 2, "running": 3}, 6), ({"running": 2}, 2), ({"queued": 1}, 1)],
)
def test_work_left_to_other_live_runners_exits_0_saying_who_has_it(counted, left):
    end = end_of_run(facts(counts=counts(**counted), other_runners=2), Summary(), RUN)
    assert end.exit_code == EXIT_OK
    assert end.title == (
        f"batchgen run spring: nothing left for this runner ({left} job(s) with 2 other "
        "runner(s)) (exit 0)"
    )
    assert end.lines[-1] == (
        "the other runners go on with the rest: `batchgen status --campaign spring` shows them"
    )


def test_jobs_being_submitted_are_counted_as_queued():
    end = end_of_run(facts(counts=counts(queued=1, submitting=2)), Summary(), RUN)
    assert end.lines[0].startswith("0 completed, 0 failed, 0 held, 3 queued, 0 running; ")


def test_unsaved_files_of_the_in_process_sandbox_are_not_advised_a_download():
    end = end_of_run(facts(), Summary(), Closing(sandbox=True), unsaved=2)
    assert end.lines[-1] == (
        "2 result file(s) could not be saved (see above): "
        "the sandbox's result URLs ended with the run"
    )


def test_no_download_in_the_in_process_sandbox_says_the_files_are_gone():
    end = end_of_run(facts(), Summary(), Closing(sandbox=True, download_dir=None))
    assert end.lines[-1] == (
        "files not saved (--no-download); the sandbox's result URLs ended with the run"
    )


def test_tasks_recorded_before_labels_existed_are_polled_with_the_first_key():
    summary = Summary(unpolled={"(unlabelled)": 1}, missing_keys={"(unlabelled)"})
    end = end_of_run(facts(counts=counts(running=1)), summary, RUN)
    assert "((unlabelled): the key first in the list)" in end.lines[-1]


def test_the_budget_advice_without_one_manifest_to_name_is_general():
    end = end_of_run(facts(counts=counts(queued=2)), Summary(budget_blocked={("spring", "a")}), RUN)
    assert end.lines[-1] == (
        "1 job(s) wait: the campaign budget_usd would be exceeded; "
        "raise it in the manifest and re-run"
    )


def test_the_budget_advice_of_a_sandbox_run_runs_the_manifest_in_the_sandbox_again():
    end = end_of_run(
        facts(counts=counts(queued=2), manifests={"spring": "m.yaml"}),
        Summary(budget_blocked={("spring", "a")}),
        dataclasses.replace(RUN, sandbox=True),
    )
    assert end.lines[-1].endswith(
        "raise budget_usd in m.yaml, then `batchgen run m.yaml --sandbox`"
    )
