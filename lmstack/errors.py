"""One exception type for user-facing errors.

The CLI prints `error: <message>` and exits 1 for these, with no traceback, so every message must
name the file, field or value at fault on one line.
"""


class LmstackError(Exception):
    pass
