"""Training: from a ``TrainConfig`` to a run file.

``parts``: what a run is made of (the seeded network and rule, or rebuilt from a run file; batches;
evaluation; state arrays; the run's recorder), shared by every loop and by the analyses that rebuild a
network; ``train``: the in-process loop and ``resume``; ``resume``: the state a checkpoint keeps to continue
exactly; ``pipeline``: update-unlocked training, stages in processes (``train --stages``); ``recurrent``:
the loop of the recurrent networks. Training imports nothing of ``repanalysis.experiments``.
"""
