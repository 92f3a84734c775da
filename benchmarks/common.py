"""Shared set-up of the training benchmarks: MNIST, the 6x256 batch-norm MLP, timing."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from repanalysis.config import TrainConfig
from repanalysis.datasets import load

ROOT = Path(__file__).resolve().parents[1]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    default = os.environ.get("REPANALYSIS_DATA", str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--data-dir", default=default, help="folder with the MNIST files (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="digits instead of MNIST, few steps: a smoke run")
    return p


def mnist_config(args, **overrides) -> TrainConfig:
    """The benchmarks' network: 6 hidden layers of 256 units with batch norm, batch 256, Adam."""
    base = dict(dataset="digits" if args.quick else "mnist", model="mlp", depth=6, width=256, batch_norm=True,
                steps=20 if args.quick else args.steps, batch_size=256, lr=1e-3, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


def dataset(args):
    return load("digits") if args.quick else load("mnist", data_dir=args.data_dir)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median(values) -> float:
    return statistics.median(values)
