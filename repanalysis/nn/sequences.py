"""Sequence tasks: Copy and Repeat Copy (with their curriculum) and character-level language modelling.

A batch is ``Batch(inputs, targets, mask)``, each ``[B, L]``: the tokens read,
the class wanted at each step, and where a loss is taken. Sequence ``n``'s
loss ``L_n`` is the mean cross-entropy over its loss positions; a batch's loss
is the mean of ``L_n`` over its sequences. Losses are reported in bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from repanalysis.errors import UserError


@dataclass
class Batch:
    inputs: torch.Tensor  # int64 [B, L]
    targets: torch.Tensor  # int64 [B, L]
    mask: torch.Tensor  # bool [B, L]

    @property
    def length(self) -> int:
        return self.inputs.shape[1]

    def __len__(self) -> int:
        return self.inputs.shape[0]


def token_losses(logits: torch.Tensor, batch: Batch, start: int = 0) -> torch.Tensor:
    """The part of every sequence's loss ``L_n`` (in nats) taken at steps ``start .. start + W`` of ``batch``,
    where ``logits [B, W, K]`` are those steps' outputs: ``[B]``. The parts of a sequence's windows sum to
    its ``L_n``, since each divides by the sequence's whole number of loss positions."""
    stop = start + logits.shape[1]
    per_step = F.cross_entropy(logits.transpose(1, 2), batch.targets[:, start:stop], reduction="none")
    mask = batch.mask[:, start:stop].to(per_step.dtype)
    return (per_step * mask).sum(1) / batch.mask.sum(1).to(per_step.dtype)


def bits(nats: torch.Tensor | float) -> float:
    """A loss in nats as bits."""
    return float(nats) / math.log(2)


# --- Copy --------------------------------------------------------------------------------------------------


class Copy:
    """Graves et al.'s Copy task in the form of Jaderberg et al. 2016: read ``N`` random symbols (of
    ``symbols``), a delimiter, then ``N`` blanks, during which the symbols must be output in order.

    Tokens: the symbols ``0 .. symbols-1``, the delimiter ``symbols``, the blank ``symbols + 1``; a
    sequence has ``2N + 1`` steps, and a loss at its last ``N``. Outputs: one class per symbol.
    """

    name, title = "copy", "Copy"

    def __init__(self, symbols: int = 8):
        self.symbols = symbols
        self.vocab = symbols + 2
        self.n_outputs = symbols

    @staticmethod
    def length_of(n: int) -> int:
        """Steps of a sequence of ``n`` symbols."""
        return 2 * n + 1

    def batch(self, n: int, size: int, generator: torch.Generator) -> Batch:
        x = torch.randint(0, self.symbols, (size, n), generator=generator)
        delimiter = torch.full((size, 1), self.symbols)
        blanks = torch.full((size, n), self.symbols + 1)
        inputs = torch.cat([x, delimiter, blanks], 1)
        targets = torch.cat([torch.zeros(size, n + 1, dtype=torch.int64), x], 1)
        mask = torch.zeros(size, 2 * n + 1, dtype=torch.bool)
        mask[:, n + 1:] = True
        return Batch(inputs, targets, mask)


class RepeatCopy:
    """Jaderberg et al. 2016's Repeat Copy: read ``N`` random symbols (of ``symbols``) and a repeat count ``R``
    (drawn per sequence, uniformly from ``1 .. repeats``), then output the ``N`` symbols ``R`` times over.

    Tokens: the symbols ``0 .. symbols-1``, the count ``R`` as token ``symbols + R - 1`` (it also ends the
    input), the blank ``symbols + repeats``. Every sequence of a batch has ``N + 1 + N x repeats`` steps, the
    longest ``R`` allows: after the count come blanks, and a loss at the first ``N x R`` of them (the
    rest, where ``R < repeats``, has none). Outputs: one class per symbol. The curriculum moves ``N``;
    ``R`` stays drawn from the same range, so a longer ``N`` is also a longer output at every ``R``.
    """

    name, title = "repeatcopy", "Repeat Copy"

    def __init__(self, symbols: int = 8, repeats: int = 3):
        self.symbols, self.repeats = symbols, repeats
        self.vocab = symbols + repeats + 1
        self.n_outputs = symbols

    def length_of(self, n: int) -> int:
        """Steps of a sequence of ``n`` symbols."""
        return n + 1 + n * self.repeats

    def batch(self, n: int, size: int, generator: torch.Generator) -> Batch:
        x = torch.randint(0, self.symbols, (size, n), generator=generator)
        r = torch.randint(1, self.repeats + 1, (size, 1), generator=generator)
        blanks = torch.full((size, n * self.repeats), self.symbols + self.repeats)
        inputs = torch.cat([x, self.symbols + r - 1, blanks], 1)
        targets = torch.cat([torch.zeros(size, n + 1, dtype=torch.int64), x.repeat(1, self.repeats)], 1)
        mask = torch.zeros(size, self.length_of(n), dtype=torch.bool)
        mask[:, n + 1:] = torch.arange(n * self.repeats) < n * r
        return Batch(inputs, targets, mask)


def copy_score(logits: torch.Tensor, batch: Batch) -> tuple[float, float]:
    """Bits per output symbol (the mean cross-entropy over the loss positions, in bits) and the fraction of
    output symbols whose most likely class is wrong, of ``logits [B, L, K]`` on ``batch``."""
    nats = token_losses(logits, batch).mean()
    wrong = (logits.argmax(2) != batch.targets)[batch.mask].double().mean()
    return bits(nats), float(wrong)


class Curriculum:
    """The Copy length ``N``: starts at ``start``; when a score of the current ``N`` is below ``threshold``
    bits per output symbol, ``N`` is solved and the next score is taken at ``N + 1`` (at most ``cap``).
    ``longest`` is the longest ``N`` solved so far (0: none), the run's score."""

    def __init__(self, start: int, cap: int, threshold: float):
        self.length, self.cap, self.threshold = start, cap, threshold
        self.longest = 0

    def update(self, score_bits: float) -> bool:
        """Take the score of the current length; True if it is solved."""
        if score_bits >= self.threshold:
            return False
        self.longest = max(self.longest, self.length)
        self.length = min(self.length + 1, self.cap)
        return True


# --- character-level language modelling --------------------------------------------------------------------

#: Largest text file read (bytes).
MAX_TEXT_BYTES = 256 * 2**20
#: Fraction of the text, from its start, used for training; the rest is held out.
TRAIN_FRACTION = 0.9


def read_text(path) -> str:
    """The text of ``path``, refused (one line) unless it is a UTF-8 text file without NUL characters."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file {path} does not exist or is not a file")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise UserError(f"text file {path} is larger than {MAX_TEXT_BYTES // 2**20} MiB")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file (byte {err.start} cannot be decoded)") from None
    if "\0" in text:
        raise UserError(f"{path} is not a text file (it holds NUL characters)")
    return text


class CharText:
    """Character-level language modelling on one text: predict each next character.

    The vocabulary is the sorted set of the text's characters. The first
    ``TRAIN_FRACTION`` of the characters train; the rest is held out. A
    training sequence is ``length`` characters from a uniformly drawn start
    in the training part, its targets the ``length`` characters one later;
    the held-out part is cut into consecutive, non-overlapping sequences of
    ``length`` steps (the last incomplete one dropped), each started from the
    zero state: bits per character is their mean loss.
    """

    name = "charlm"

    def __init__(self, text: str, length: int, source: str = "text"):
        self.chars = sorted(set(text))
        self.vocab = self.n_outputs = len(self.chars)
        self.length = length
        codes = {ch: i for i, ch in enumerate(self.chars)}
        ids = torch.tensor([codes[ch] for ch in text], dtype=torch.int64)
        cut = int(len(ids) * TRAIN_FRACTION)
        self.train_ids, self.held_ids = ids[:cut], ids[cut:]
        n_held = (len(self.held_ids) - 1) // length
        if len(self.train_ids) < length + 1 or n_held < 1:
            raise UserError(f"{source} has {len(ids)} characters, too few for sequences of {length} in both its "
                            f"training part (the first {TRAIN_FRACTION:.0%}) and its held-out part")
        self.n_held = n_held

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        starts = torch.randint(0, len(self.train_ids) - self.length, (size,), generator=generator)
        return self._sequences(self.train_ids, starts)

    def held_out(self, first: int = 0, count: int | None = None) -> Batch:
        """Held-out sequences ``first .. first + count`` (all by default)."""
        count = self.n_held - first if count is None else count
        starts = (torch.arange(first, first + count) * self.length)
        return self._sequences(self.held_ids, starts)

    def _sequences(self, ids: torch.Tensor, starts: torch.Tensor) -> Batch:
        index = starts[:, None] + torch.arange(self.length + 1)
        window = ids[index]
        inputs, targets = window[:, :-1], window[:, 1:]
        return Batch(inputs, targets, torch.ones_like(inputs, dtype=torch.bool))
