"""What every command line shares: running a parsed command with one-line errors."""

from __future__ import annotations

import sys

from lmstack.errors import LmstackError


def dispatch(args) -> int:
    """Run a parsed command: a user's error is one line on stderr and exit status 1."""
    try:
        return args.func(args) or 0
    except LmstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
