"""Networks and losses: what a rule trains and what it is scored by.

``feedforward``: MLPs and CNNs (blocks + head) with named interfaces ``h1..hN``, a forward pass cut where a
rule asks (``Trace``) and ``forward_from(i, h)``; ``recurrent``: the LSTM over token sequences with its
interfaces ``h`` and ``c``; ``losses``: the task losses (batch means) and accuracy; ``sequences``: the
sequence tasks (Copy, Repeat Copy, character-level language modelling) with their batches and loss.
"""
