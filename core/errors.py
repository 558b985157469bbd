"""User-facing errors.

`MatchLabError` carries one line that names the file or value at fault and what to do about it.
The command line catches it, prints `error: <message>` and exits with status 2, never a stack trace.
"""


class MatchLabError(Exception):
    """A mistake in the user's input (file, folder, value), explained in one line."""


def require(condition: bool, message: str) -> None:
    """Raise MatchLabError(message) unless condition: options come from users' configs."""
    if not condition:
        raise MatchLabError(message)
