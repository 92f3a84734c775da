"""Recurrent networks trained across the truncation of backprop through time.

``model``: an LSTM over token sequences with the hidden-state interfaces ``h``
and ``c``; ``tasks``: Copy and character-level language modelling; ``rules``:
one training step of truncated BPTT, with or without a DNI module at the
window boundaries; ``train``: the loop, its settings and the run file.
"""
