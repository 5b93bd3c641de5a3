"""The default ports on 127.0.0.1, written once: for the commands' `--port` options and the
servers themselves."""

SANDBOX_PORT = 8765  # `batchgen sandbox`
REVIEW_PORT = 8766  # `batchgen review`, beside the sandbox's
