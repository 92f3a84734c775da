"""The one exception type for mistakes a user can fix.

The command line prints a ``UserError`` as one line on stderr and exits with
status 2; any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: unknown names, impossible sizes, unreadable files."""
