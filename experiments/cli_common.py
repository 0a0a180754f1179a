"""What every experiments/ entry point shares: absl start-up with exit code 2 on bad flags.

absl exits with status 1 when a flag or validator rejects a value; our command-line contract
is status 2 (a usage error) with one line that says what is accepted.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

USAGE_ERROR = 2


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        prog = os.path.basename(argv[0])
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def usage_error(message: str) -> int:
    """Prints one line to stderr and returns the usage-error status for `main` to return."""
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    return USAGE_ERROR


def run(main) -> None:
    app.run(main, flags_parser=_parse_flags)
