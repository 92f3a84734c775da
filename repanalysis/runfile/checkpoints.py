"""Which checkpoints a command reads: ``all``, ``last``, or a list of steps (``--checkpoints`` of analyze,
probe and figures).

A choice is ``"all"``, ``"last"`` or a tuple of steps in increasing order; ``parse_checkpoints`` reads the
command line's spelling (or a Python value) and ``chosen_checkpoints`` applies a choice to one run's steps,
refusing a step the run has no checkpoint at.
"""

from __future__ import annotations

from collections.abc import Sequence

from repanalysis.errors import UserError

NAMED = ("all", "last")
HELP = ("the checkpoints read: all, last (each run's last), or steps like 0,500,1000 (each run must have a "
        "checkpoint at every one; repanalysis inspect lists them)")

Choice = str | tuple[int, ...]


def parse_checkpoints(value) -> Choice:
    """``value`` (``"all"``, ``"last"``, ``"0,500"`` or a sequence of steps) as a choice; refuses anything else."""
    if isinstance(value, str):
        text = value.strip()
        if text in NAMED:
            return text
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts or not all(part.isdigit() for part in parts):
            raise UserError(f"--checkpoints takes all, last or steps like 0,500,1000; got {value!r}")
        steps = [int(part) for part in parts]
    elif isinstance(value, Sequence) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                       for s in value):
        steps = list(value)
    else:
        raise UserError(f"--checkpoints takes all, last or steps like 0,500,1000; got {value!r}")
    if len(set(steps)) != len(steps):
        raise UserError(f"--checkpoints names a step more than once: {value!r}")
    return tuple(sorted(steps))


def chosen_checkpoints(steps: Sequence[int], choice: Choice, run: str) -> list[int]:
    """The indices, in order, of the checkpoints of ``steps`` (one run's, by checkpoint) that ``choice`` picks
    (a step recorded twice: its first checkpoint). ``run`` names the run in the refusal of a missing step."""
    steps = [int(s) for s in steps]
    if choice == "all":
        return list(range(len(steps)))
    if choice == "last":
        return [len(steps) - 1] if steps else []
    first: dict[int, int] = {}
    for c, step in enumerate(steps):
        first.setdefault(step, c)
    missing = [step for step in choice if step not in first]
    if missing:
        have = ", ".join(map(str, first)) or "none"
        raise UserError(f"{run}: no checkpoint at step {', '.join(map(str, missing))} (its checkpoints' steps: "
                        f"{have})")
    return [first[step] for step in choice]
