"""`python -m batchgen.sandbox`: the sandbox without the CLI, e.g. for tests that need it
in another process (`--port 0` picks a free port; read it from the first stdout line)."""

from __future__ import annotations

import argparse

from batchgen.progress_curves import PROGRESS_MODES
from batchgen.sandbox.config import DEFAULT_KEY, DEFAULT_PORT, RATE_KNOBS, parse_keys
from batchgen.sandbox.standalone import main


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m batchgen.sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--key",
        action="append",
        metavar="KEY[=USD]",
        help=f"a key the sandbox accepts, optionally with its own balance; repeatable "
        f"(default: {DEFAULT_KEY})",
    )
    parser.add_argument("--balance", default="100.00", help="starting balance of each key, USD")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--time-scale", type=float)
    for name in RATE_KNOBS:
        parser.add_argument("--" + name.replace("_", "-"), type=float)
    parser.add_argument("--latency", type=float, nargs=2, metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--retry-after", type=int, help="seconds, sent with every 429")
    parser.add_argument("--progress", choices=PROGRESS_MODES, help="how tasks report progress")
    parser.add_argument(
        "--provenance",
        action="store_true",
        default=None,
        help="sign result files with a C2PA manifest, as a provider would",
    )
    parser.add_argument("--verbose", action="store_true", help="one line per request")
    args = parser.parse_args()
    args.key = args.key or [DEFAULT_KEY]
    try:
        parse_keys(args.key, args.balance)
    except ValueError as e:
        parser.error(str(e))
    return args


if __name__ == "__main__":
    args = vars(_arguments())
    main(args.pop("port"), args.pop("key"), args.pop("balance"), **args)
