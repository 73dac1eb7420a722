"""One exception type that the CLI turns into a single line on stderr and an exit code.

Exit codes (documented in README and `--help`):
  0 success, 1 internal error, 2 bad usage or input (flags, unknown interface, bad files),
  3 environment (no privileges, no kernel headers, no bcc), 4 conflict (a foreign XDP program,
  another arp-sensor already on the interface).
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_ENV = 3
EXIT_CONFLICT = 4


class SensorError(Exception):
    """An expected failure: the message is one line an operator can act on."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
