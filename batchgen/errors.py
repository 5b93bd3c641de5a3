"""batchgen's exceptions, one tree; the CLI turns each into an exit code.

BatchgenError                 any error batchgen reports to the user (exit 1 unless stated)
├── ManifestInvalid           validation problems, all of them (exit 1)
├── WouldOverwrite            `init` found files of its own names in DIR (starter.py; exit 1)
├── LedgerError               the ledger file cannot be used
│   ├── JobConflict           a job changed under the same id (exit 1)
│   ├── NoLedger              none where one was looked for: no file, an empty file or
│   │                         database (`plan` then counts every job as new)
│   ├── LedgerWriteFailed     one write failed (locked, disk full, I/O): the run retries it
│   └── VerdictRefused        a review verdict that cannot be recorded (ledger/review.py)
├── DownloadError             one result file could not be saved; its message goes to the
│                             ledger and the run goes on (download.py)
├── SigningUnavailable        c2pa-python or cryptography is not installed
│                             (provenance/sign.py)
├── UsageProblem              an option's value cannot be used: a --notify URL, a --log
│   │                         file (exit 2)
│   └── SigningProblem        the team's certificate or key cannot sign
│                             (provenance/sign.py; exit 2)
└── AuthError                 no API key, or every key refused (exit 4)
    └── AuthFailed            the service refused every key during a run (driving.py); the
                              runner says which keys, as an AuthError

Caught where they are raised, never shown to the user as such (each an Exception):
- Abandoned                   the run ended while a ledger write was failing (writer.py)
- TooLarge                    a workbook beyond a limit, told as a problem (workbooks.py)
- ExportFailed                one file not exported, said in its manifest row and on
                              stderr (provenance/export.py)
- XmpUnavailable              XMP cannot be written into this file here (provenance/xmp.py)

A run that stops with work remaining (exit 3) or interrupted (130) is not an error:
the runner returns those codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchgen.problems import Problem


class BatchgenError(Exception):
    exit_code = 1


class ManifestInvalid(BatchgenError):
    def __init__(self, problems: list[Problem], campaign: str | None = None):
        self.problems = problems
        self.campaign = campaign  # the campaign's name when the manifest gives a valid one
        super().__init__(f"{len(problems)} problem(s) in the manifest")


class LedgerError(BatchgenError):
    pass


class JobConflict(LedgerError):
    pass


class NoLedger(LedgerError):
    pass


class LedgerWriteFailed(LedgerError):
    pass


class UsageProblem(BatchgenError):
    exit_code = 2


class AuthError(BatchgenError):
    exit_code = 4
