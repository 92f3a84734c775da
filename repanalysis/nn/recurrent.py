"""An LSTM over token sequences, read out at every time step.

Conventions: tokens are ``int64 [B, L]`` (batch first); the state is the pair
``(h, c)``, each ``[B, H]``, zero at the start of a sequence; the boundary
state a DNI module sees is their concatenation ``[h, c]`` (``[B, 2H]``).
"""

from __future__ import annotations

import torch
from torch import nn

#: The recurrent interfaces, in the order of the concatenated state.
INTERFACES = ("h", "c")

State = tuple[torch.Tensor, torch.Tensor]


class SequenceLSTM(nn.Module):
    """Embedding (``vocab`` tokens, ``hidden`` values) -> one LSTM layer (``hidden`` units) -> a linear
    readout to ``n_outputs`` logits at every time step."""

    def __init__(self, vocab: int, hidden: int, n_outputs: int):
        super().__init__()
        self.vocab, self.hidden, self.n_outputs = vocab, hidden, n_outputs
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, n_outputs)

    def initial_state(self, batch: int) -> State:
        """The zero state of ``batch`` sequences, in the parameters' dtype."""
        zeros = self.readout.weight.new_zeros(batch, self.hidden)
        return zeros, zeros.clone()

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits ``[B, L, n_outputs]`` of ``tokens [B, L]`` run from ``state``, and the state after them."""
        h, c = state
        out, (h_n, c_n) = self.lstm(self.embed(tokens), (h.unsqueeze(0), c.unsqueeze(0)))
        return self.readout(out), (h_n.squeeze(0), c_n.squeeze(0))

    def states(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` and ``c`` after every time step, each ``[B, L, H]`` (one step at a time: the LSTM gives
        ``c`` only at the end)."""
        hs, cs = [], []
        for t in range(tokens.shape[1]):
            _, state = self(tokens[:, t:t + 1], state)
            hs.append(state[0])
            cs.append(state[1])
        return torch.stack(hs, 1), torch.stack(cs, 1)


def joined(state: State) -> torch.Tensor:
    """``[h, c]`` as one ``[B, 2H]`` tensor."""
    return torch.cat(state, 1)


def split(values: torch.Tensor) -> State:
    """A ``[B, 2H]`` tensor as its ``h`` and ``c`` halves."""
    h, c = values.chunk(2, 1)
    return h, c
