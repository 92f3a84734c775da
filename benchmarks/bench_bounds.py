"""How close training, recording, evaluation and CCA run to what the hardware allows: one table.

Every figure is a ratio measured within this one process against a reference
doing the same work; each row's two sides alternate repeat by repeat (drifts in
machine speed hit both) and the table gives medians.

1. recording: ``train`` of the 6x256 batch-norm MLP on MNIST with and without
   a run file, default cadence (as ``bench_recording.py``);
2. 6x256 step: ``rule.step`` of each rule against backprop's, same batches;
   dni and cdni also against a plain-PyTorch step of theirs (``plain_synthetic``:
   the same arithmetic, nothing else), which shows what the arithmetic itself
   costs against backprop;
3. depth 50 x 256, batch 256, one step: backprop against a plain
   ``nn.Sequential`` with one Adam; sg and cdni against backprop; cdni against
   its plain-PyTorch step;
4. CCA (mean ρ) and PWCCA of ``repanalysis.measures`` against a plain float64
   numpy Cholesky-whitening CCA, on activation-like fixtures: low rank plus
   noise (``X = Z·A + noise``), sparse ReLU, and activations read from a run
   file (MNIST, 6x256);
5. a paper-scale depth-50 run: the share of evaluations and checkpoints in the
   run's time at two cadences, from the measured time of a step, of one
   evaluation of the test split and of one checkpoint.

    python benchmarks/bench_bounds.py [--repeats 5] [--data-dir DIR] [--device cpu]
    python benchmarks/bench_bounds.py --quick      # digits and small sizes: a smoke run (~1 min)
    python benchmarks/bench_bounds.py --only cca   # some rows: recording, rules, deep, cca, paper
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import bench_recording
import numpy as np
import scipy.linalg as sla
import torch
from common import dataset, median, mnist_config, parser, timed
from fixtures import low_rank_pair, sparse_relu_pair
from torch import nn

import repanalysis.measures as A
from repanalysis.measures import RepanalysisWarning
from repanalysis.measures._linalg import small_lapack
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.parts import build, evaluate
from repanalysis.training.train import train

ROWS = ("recording", "rules", "deep", "cca", "paper")
RULES = ("sg", "dni", "cdni", "fa", "dfa")


def alternate(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, called in turn ``repeats`` times (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: median(v) for k, v in times.items()}


def batches(data, n_batches: int, size: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.x_train), generator=g)
    return [(data.x_train[order[i * size:(i + 1) * size]], data.y_train[order[i * size:(i + 1) * size]])
            for i in range(n_batches)]


def stepper(rule, xs, device):
    xs = [(x.to(device), y.to(device)) for x, y in xs]

    def run():
        for x, y in xs:
            rule.step(x, y)
    return run


# -- 1. recording -------------------------------------------------------------

def row_recording(args, data, out):
    config = mnist_config(args)
    m = bench_recording.measure(config, data, args.device, args.repeats)
    cfg = config.resolved()
    out.append(("recording overhead, 6x256 BN MLP, default cadence "
                f"({cfg.steps} steps, {cfg.steps // cfg.record_every + 1} checkpoints of {cfg.probe_size})",
                f"{m['recorded']:.2f} s / {m['plain']:.2f} s", m["recorded"] / m["plain"], "<= 1.05"))
    out.append((f"the same, 1 + the recording's own time / the plain run (the pairs' median ratio: {m['pairs']:.3f})",
                f"{m['own']:.3f} s / {m['plain']:.2f} s", 1 + m["own"] / m["plain"], "<= 1.05"))


# -- 2. rules at 6x256 --------------------------------------------------------

def row_rules(args, data, out):
    xs = batches(data, 5 if args.quick else 20)
    fns = {}
    for rule in ("backprop",) + RULES:
        config = mnist_config(args, rule=rule).resolved()
        fns[rule] = stepper(build(config, data.task, data.n_features, data.n_outputs, args.device), xs, args.device)
    for rule in ("dni", "cdni"):
        fns[f"plain {rule}"] = plain_synthetic(data, 6, rule == "cdni", xs, args.device)
    t = alternate(fns, args.repeats)
    base = t["backprop"] / len(xs)
    for rule in RULES:
        target = "<= 1.3" if rule in ("dni", "cdni") else ""
        out.append((f"6x256 BN step, {rule} / backprop", f"{1e3 * t[rule] / len(xs):.2f} / {1e3 * base:.2f} ms",
                    t[rule] / t["backprop"], target))
    for rule in ("dni", "cdni"):
        floor = t[f"plain {rule}"]
        out.append((f"6x256 BN step, plain-PyTorch {rule} (its arithmetic alone) / backprop",
                    f"{1e3 * floor / len(xs):.2f} / {1e3 * base:.2f} ms", floor / t["backprop"], ""))
        out.append((f"6x256 BN step, {rule} / plain-PyTorch {rule}", f"{1e3 * t[rule] / len(xs):.2f} / "
                    f"{1e3 * floor / len(xs):.2f} ms", t[rule] / floor, ""))


def plain_synthetic(data, depth: int, conditioned: bool, xs, device, width: int = 256):
    """One step of dni (cdni: ``conditioned``) written plainly: the work our rule's step must do and no more.

    Blocks ``linear -> batch norm -> ReLU`` and a linear head, each block's input cut off from the block
    below; a linear module after every block, zero at first, fed the block's output (and the one-hot label);
    the head learns from the loss, block ``i`` from module ``i``'s prediction / B; module ``i`` regresses
    the gradient that arrives at block ``i + 1``'s input (the top one: the true gradient at the head's
    input), times B; Adam for the blocks and head, another for the modules.
    """
    torch.manual_seed(0)
    blocks, d = [], data.n_features
    for _ in range(depth):
        blocks.append(nn.Sequential(nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU()).to(device))
        d = width
    head = nn.Linear(width, data.n_outputs).to(device)
    modules = [nn.Linear(width + (data.n_outputs if conditioned else 0), width).to(device) for _ in range(depth)]
    for m in modules:
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)
    trained = [q for part in blocks + [head] for q in part.parameters()]
    opt = torch.optim.Adam(trained, lr=1e-3, foreach=True)
    module_opt = torch.optim.Adam([q for m in modules for q in m.parameters()], lr=1e-4, foreach=True)
    dev_xs = [(x.to(device), y.to(device)) for x, y in xs]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        module_opt.zero_grad(set_to_none=True)
        inputs, outputs, h = [], [], x
        for block in blocks:
            h = h.detach().requires_grad_(bool(inputs))
            inputs.append(h)
            h = block(h)
            outputs.append(h)
        top = h.detach().requires_grad_(True)
        nn.functional.cross_entropy(head(top), y).backward()
        one_hot = nn.functional.one_hot(y, data.n_outputs).to(x.dtype) if conditioned else None
        predictions = [m(o.detach() if one_hot is None else torch.cat([o.detach(), one_hot], 1))
                       for m, o in zip(modules, outputs)]
        for o, p in zip(outputs[::-1], predictions[::-1]):
            o.backward(p.detach() / len(y))
        arriving = [h.grad for h in inputs[1:]] + [top.grad]
        sum((p - a * len(y)).pow(2).sum(1).mean() for p, a in zip(predictions, arriving)).backward()
        opt.step()
        module_opt.step()

    def run():
        for x, y in dev_xs:
            step(x, y)
    return run


# -- 3. depth 50 --------------------------------------------------------------

def plain_sequential(n_in: int, n_out: int, depth: int, width: int, device, activation=nn.ReLU):
    torch.manual_seed(0)
    layers, d = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.BatchNorm1d(width), activation()]
        d = width
    net = nn.Sequential(*layers, nn.Linear(d, n_out)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    return net, opt


def row_deep(args, data, out):
    depth = 8 if args.quick else 50
    xs = batches(data, 2 if args.quick else 3)
    fns = {}
    for rule in ("backprop", "sg", "cdni"):
        config = mnist_config(args, rule=rule, depth=depth).resolved()
        fns[rule] = stepper(build(config, data.task, data.n_features, data.n_outputs, args.device), xs, args.device)
    fns["plain cdni"] = plain_synthetic(data, depth, True, xs, args.device)
    net, opt = plain_sequential(data.n_features, data.n_outputs, depth, 256, args.device)
    dev_xs = [(x.to(args.device), y.to(args.device)) for x, y in xs]

    def plain():
        for x, y in dev_xs:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    fns["plain"] = plain
    t = alternate(fns, args.repeats)
    ms = {k: 1e3 * v / len(xs) for k, v in t.items()}
    out.append((f"depth {depth} x 256 BN step, backprop / plain nn.Sequential + one Adam",
                f"{ms['backprop']:.1f} / {ms['plain']:.1f} ms", t["backprop"] / t["plain"], "<= 1.05"))
    for rule, target in (("sg", "<= 1.15"), ("cdni", "<= 1.5")):
        out.append((f"depth {depth} x 256 BN step, {rule} / backprop", f"{ms[rule]:.1f} / {ms['backprop']:.1f} ms",
                    t[rule] / t["backprop"], target))
    out.append((f"depth {depth} x 256 BN step, plain-PyTorch cdni (its arithmetic alone) / plain nn.Sequential",
                f"{ms['plain cdni']:.1f} / {ms['plain']:.1f} ms", t["plain cdni"] / t["plain"], ""))
    out.append((f"depth {depth} x 256 BN step, cdni / plain-PyTorch cdni",
                f"{ms['cdni']:.1f} / {ms['plain cdni']:.1f} ms", t["cdni"] / t["plain cdni"], ""))


# -- 4. CCA and PWCCA ---------------------------------------------------------

def plain_cca(x, y, weights: bool = False) -> float:
    """Reference: float64 numpy, centre, Cholesky-whiten, SVD (PWCCA: with X's projection weights).

    Its d×d factorisations run under the same BLAS thread limit as ours (``small_lapack``),
    so that the ratio compares the work done, not the thread policy on a shared machine.
    """
    xc = x.astype(np.float64)
    xc -= xc.mean(0)
    yc = y.astype(np.float64)
    yc -= yc.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    with small_lapack(sxy.shape[0]):
        rx = np.linalg.cholesky(sxx).T
        ry = np.linalg.cholesky(syy).T
        t = sla.solve_triangular(rx, sxy, trans="T")
        t = sla.solve_triangular(ry, t.T, trans="T").T
        if not weights:
            return float(np.linalg.svd(t, compute_uv=False).mean())
        u, rho, _ = np.linalg.svd(t, full_matrices=False)
    alpha = np.abs(u[:, :rho.size].T @ rx).sum(1)
    return float(alpha @ rho / alpha.sum())


def run_file_pair(args, data, n: int):
    """Activations h2 and h5 of a 6x256 MNIST run (200 steps), recorded on ``n`` test inputs."""
    steps = 50 if args.quick else 200
    config = mnist_config(args, steps=steps, probe_size=n, record_every=steps, eval_every=10**9,
                          width=64 if args.quick else 256)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.h5"
        train(config, path, quiet=True, data=data, device=args.device)
        with RunFile(path) as run:
            return run.activations("h2"), run.activations("h5")


def condition(a) -> float:
    s = np.linalg.svd(a - a.mean(0), compute_uv=False)
    return float(s[0] / s[-1])


def row_cca(args, data, out):
    n, d = (2000, 256) if args.quick else (10000, 1024)
    fixtures = {
        f"low rank + noise [{n}, {d}]": low_rank_pair(n, d),
        f"sparse ReLU [{n}, {d}]": sparse_relu_pair(n, d),
        "run file h2, h5": run_file_pair(args, data, min(n, len(data.x_test))),
    }
    warnings.simplefilter("ignore", RepanalysisWarning)  # constant features of the ReLU fixtures
    for name, (x, y) in fixtures.items():
        keep = (x.std(0) > 0) & (y.std(0) > 0)  # the plain route needs no constant column
        x, y = np.ascontiguousarray(x[:, keep]), np.ascontiguousarray(y[:, keep])
        cond = f"{list(x.shape)}, cond {condition(x):.0f} and {condition(y):.0f}"
        t = alternate({"ours": lambda: A.cca(x, y), "plain": lambda: plain_cca(x, y),
                       "ours pw": lambda: A.pwcca(x, y), "plain pw": lambda: plain_cca(x, y, True)},
                      args.repeats)
        gap = max(abs(A.cca(x, y) - plain_cca(x, y)), abs(A.pwcca(x, y) - plain_cca(x, y, True)))
        for what, a, b in (("CCA", "ours", "plain"), ("PWCCA", "ours pw", "plain pw")):
            out.append((f"{what}, {name}, {cond} (|ours - plain| {gap:.0e})",
                        f"{1e3 * t[a]:.0f} / {1e3 * t[b]:.0f} ms", t[a] / t[b], "<= 1.2"))


# -- 5. a paper-scale run ---------------------------------------------------------

def row_paper(args, data, out):
    depth, probe = (8, 100) if args.quick else (50, 500)
    config = mnist_config(args, depth=depth, steps=4, probe_size=probe, record_every=4, eval_every=10**9)
    xs = batches(data, 5)
    rule = build(config.resolved(), data.task, data.n_features, data.n_outputs, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.h5"
        t = alternate({
            "step": stepper(rule, xs, args.device),
            "evaluation": lambda: evaluate(rule, data, torch.device(args.device)),
            "plain run": lambda: train(config, None, quiet=True, data=data, device=args.device),
            "recorded run": lambda: train(config, path, overwrite=True, quiet=True, data=data, device=args.device),
        }, args.repeats)
    step, ev = t["step"] / len(xs), t["evaluation"]
    ckpt = (t["recorded run"] - t["plain run"]) / 2  # checkpoints at steps 0 and 4
    for steps, every, record in ((1500, 50, 150), (3000, 150, 1500)):
        evals, ckpts = steps // every + 1, steps // record + 1
        extra = evals * ev + ckpts * ckpt
        share = extra / (steps * step + extra)
        out.append((f"depth-{depth} run, {steps} steps, evaluation every {every}, checkpoint every {record} "
                    f"(probe {probe}): share of evaluations and checkpoints",
                    f"step {1e3 * step:.0f} ms, eval {1e3 * ev:.0f} ms, ckpt {1e3 * ckpt:.0f} ms",
                    share, "<= 0.25"))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS))
    args = p.parse_args()
    args.repeats = min(args.repeats, 3) if args.quick else args.repeats
    data = dataset(args)
    print(f"| figure | measured (ours / reference) | ratio | target |   ({args.repeats} repeats, medians, "
          f"device {args.device}, {torch.get_num_threads()} threads)")
    print("|---|---|---|---|", flush=True)
    rows = {"recording": row_recording, "rules": row_rules, "deep": row_deep, "cca": row_cca, "paper": row_paper}
    for row in args.only:
        out: list[tuple[str, str, float, str]] = []
        rows[row](args, data, out)
        for name, detail, ratio, target in out:
            print(f"| {name} | {detail} | {ratio:.2f} | {target} |", flush=True)


if __name__ == "__main__":
    main()
