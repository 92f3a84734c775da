"""What a 16-bit recording dtype (``train --record-dtype``) saves, and what it changes in every measure.

1. *Bytes per checkpoint* of the paper preset's depth-50 runs (MNIST, width 256,
   batch norm, probe 500; backprop and sg with its module in the middle), in
   each dtype: every run is trained twice, with 3 and with 5 checkpoints
   (``--record-every 1``), and a checkpoint's bytes are the difference of the
   two files' sizes over 2 (the resume slots are a fixed size and cancel out);
   also the size of a run of 3000 steps recorded every 300 (11 checkpoints)
   from these, and the file's fixed part.
2. *The effect on every measure*: one backprop and one sg run at depth 20 (the
   same settings, ``--steps``, checkpoints every ``--record-every``), trained
   once per dtype (recording changes no parameter, so they are one run
   recorded in each dtype); ``analyze`` with every measure (synthetic losses
   included: they rebuild the network from ``/params``) and the linear and
   k-NN probes on each; per measure, the largest absolute difference of a
   16-bit run's value from the float32 run's (and the largest relative one),
   against the targets (CKA, CCA, RSA and gradient cosines within 1e-3). CCA
   and PWCCA need more probe inputs than the two layers' values (256 + 256):
   ``--probe-size 1000`` for them.

    python benchmarks/bench_record_dtype.py [--data-dir DIR] [--steps 600] [--record-every 300] [--skip-bytes]
    python benchmarks/bench_record_dtype.py --skip-bytes --skip-probes --probe-size 1000 --measures cca,pwcca,svcca
    python benchmarks/bench_record_dtype.py --dtypes int16   # float32 against int16 only
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch
from common import parser

from repanalysis.analysis.runs import MEASURES, analyze
from repanalysis.config import TrainConfig
from repanalysis.datasets import load
from repanalysis.probes.table import probe_runs
from repanalysis.runfile.dtypes import RECORD_DTYPES
from repanalysis.training.train import train

#: The paper preset's settings (presets/paper.toml) for ReLU.
PAPER = dict(dataset="mnist", model="mlp", width=256, batch_norm=True, init="orthogonal", batch_size=256,
             optimizer="adam", lr=1e-3, lr_schedule="cosine", probe_size=500, activation="relu", bn_beta_init=2.0)
TARGETS = {"linear_cka": 1e-3, "linear_cka_debiased": 1e-3, "linear_cka_to_first_checkpoint": 1e-3,
           "linear_cka_to_last_checkpoint": 1e-3, "cca": 1e-3, "svcca": 1e-3, "pwcca": 1e-3, "rsa": 1e-3,
           "rsa_to_last_layer_euclidean": 1e-3, "rsa_to_last_layer_correlation": 1e-3, "grad_cosine": 1e-3}
KEYS = ["measure", "rule_a", "layer_a", "step_a", "rule_b", "layer_b", "step_b"]


def bytes_per_checkpoint(data, folder: Path, dtypes) -> pd.DataFrame:
    rows = []
    for rule in ("backprop", "sg"):
        for dtype in dtypes:
            sizes = {}
            for steps in (2, 4):
                path = folder / f"{rule}-{dtype}-{steps}.h5"
                config = TrainConfig(rule=rule, depth=50, steps=steps, record_every=1, eval_every=steps,
                                     record_dtype=dtype, **PAPER)
                train(config, path, quiet=True, data=data)
                sizes[steps] = path.stat().st_size
                path.unlink()
            per = (sizes[4] - sizes[2]) / 2
            fixed = sizes[2] - 3 * per
            rows.append(dict(rule=rule, dtype=dtype, mib_per_checkpoint=per / 2**20, fixed_mib=fixed / 2**20,
                             mib_11_checkpoints=(fixed + 11 * per) / 2**20))
    table = pd.DataFrame(rows)
    base = table[table.dtype == "float32"].set_index("rule")
    table["ratio_per_checkpoint"] = table.mib_per_checkpoint / table.rule.map(base.mib_per_checkpoint)
    table["ratio_11_checkpoints"] = table.mib_11_checkpoints / table.rule.map(base.mib_11_checkpoints)
    return table


def measure_effects(data, folder: Path, steps: int, record_every: int, probe_size: int, measures,
                    with_probes: bool, dtypes) -> tuple[pd.DataFrame, pd.DataFrame]:
    tables, probes = {}, {}
    for dtype in dtypes:
        paths = []
        for rule in ("backprop", "sg"):
            path = folder / f"{rule}-{dtype}.h5"
            config = TrainConfig(rule=rule, depth=20, steps=steps, record_every=record_every,
                                 eval_every=max(1, steps // 4), sg_warmup=min(200, steps // 10),
                                 record_dtype=dtype, **{**PAPER, "probe_size": probe_size})
            train(config, path, quiet=True, data=data)
            paths.append(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tables[dtype] = analyze(paths, measures=measures, quiet=True)
            if with_probes:
                probes[dtype] = probe_runs(paths)
    out = []
    exact = tables["float32"].drop(columns=["run_a", "run_b", "seed_a", "seed_b"])
    exact_probes = probes["float32"][["rule", "layer", "step", "probe", "accuracy"]] if with_probes else None
    for dtype in dtypes[1:]:
        other = tables[dtype].drop(columns=["run_a", "run_b", "seed_a", "seed_b"])
        joined = exact.merge(other, on=KEYS, how="outer", suffixes=("", "_16"), indicator=True)
        unmatched = joined[joined["_merge"] != "both"].groupby("measure").size()
        joined["diff"] = (joined["value_16"] - joined["value"]).abs()
        joined["relative"] = joined["diff"] / joined["value"].abs()
        for measure, rows in joined.groupby("measure"):
            out.append(dict(dtype=dtype, measure=measure, rows=len(rows), max_abs_diff=rows["diff"].max(),
                            median_abs_diff=rows["diff"].median(), max_rel_diff=rows["relative"].max(),
                            unmatched=int(unmatched.get(measure, 0)), target=TARGETS.get(measure)))
        if not with_probes:
            continue
        p = exact_probes.merge(probes[dtype][["rule", "layer", "step", "probe", "accuracy"]],
                               on=["rule", "layer", "step", "probe"], suffixes=("", "_16"))
        for probe, rows in p.groupby("probe"):
            diff = (rows["accuracy_16"] - rows["accuracy"]).abs()
            out.append(dict(dtype=dtype, measure=f"probe_{probe}_accuracy", rows=len(rows), max_abs_diff=diff.max(),
                            median_abs_diff=diff.median(), max_rel_diff=(diff / rows["accuracy"]).max(), unmatched=0,
                            target=None))
    effects = pd.DataFrame(out)
    effects["within_target"] = [None if t is None or pd.isna(t) else bool(d <= t)
                                for d, t in zip(effects.max_abs_diff, effects.target)]
    sizes = pd.DataFrame([dict(dtype=d, mib=sum((folder / f"{r}-{d}.h5").stat().st_size for r in ("backprop", "sg"))
                               / 2**20) for d in dtypes])
    return effects, sizes


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(steps=600)
    p.add_argument("--record-every", type=int, default=300)
    p.add_argument("--skip-bytes", action="store_true", help="leave out the depth-50 bytes per checkpoint")
    p.add_argument("--skip-measures", action="store_true", help="leave out the depth-20 effect on the measures")
    p.add_argument("--probe-size", type=int, default=500, help="probe inputs of the depth-20 runs (CCA and PWCCA "
                   "need more than the two layers' 512 values: 1000)")
    p.add_argument("--measures", help="the measures compared, comma-separated (default: all) ")
    p.add_argument("--skip-probes", action="store_true", help="leave out the linear and k-NN probes")
    p.add_argument("--dtypes", default=",".join(RECORD_DTYPES[1:]),
                   help="the 16-bit record dtypes compared with float32, comma-separated (default: all)")
    args = p.parse_args()
    dtypes = ["float32", *args.dtypes.split(",")]
    if not set(dtypes[1:]) <= set(RECORD_DTYPES[1:]):
        p.error(f"--dtypes takes some of {', '.join(RECORD_DTYPES[1:])}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = load("mnist", data_dir=args.data_dir)
    pd.set_option("display.width", 200)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_bytes:
            print("Bytes per checkpoint, paper preset at depth 50 (MiB):")
            print(bytes_per_checkpoint(data, folder, dtypes).to_string(index=False, float_format="%.3f"))
        if not args.skip_measures:
            measures = args.measures.split(",") if args.measures else MEASURES
            effects, sizes = measure_effects(data, folder, args.steps, args.record_every, args.probe_size, measures,
                                             not args.skip_probes, dtypes)
            print(f"\nEffect on every measure, depth 20, {args.steps} steps, checkpoints every {args.record_every}, "
                  f"probe {args.probe_size}:")
            print(effects.to_string(index=False, float_format="%.2e"))
            print("\nThe two runs' files (MiB):")
            print(sizes.to_string(index=False, float_format="%.1f"))


if __name__ == "__main__":
    main()
