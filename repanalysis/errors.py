"""The one exception type for mistakes a user can fix.

The command line prints a ``UserError`` as one line on stderr and exits with
status 2; any other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: unknown names, impossible sizes, unreadable files.

    A ``ValueError``, so that code written for other libraries (scikit-learn's
    ``except ValueError``) catches it too.
    """


def refuse_renamed(names, renamed: dict[str, str], what: str) -> None:
    """A ``UserError`` if any of ``names`` is a former name (a key of ``renamed``), naming the new one.

    One line: ``"{what} {old} was renamed {new}"``, and ``", {old} was renamed {new}"`` for each further one.
    """
    old = [name for name in dict.fromkeys(names) if name in renamed]
    if old:
        raise UserError(f"{what} " + ", ".join(f"{name} was renamed {renamed[name]}" for name in old))
