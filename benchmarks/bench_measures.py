"""Speed of the measures of repanalysis.measures against PyPI references and a lower bound.

    python benchmarks/bench_measures.py            # full run (n=10000, d=1024), writes measures.md
    python benchmarks/bench_measures.py --quick    # small sizes, < 1 minute, prints only

For each measure on a pair of float32 [n, d] activation matrices this times, in
the same process and interleaved repetition by repetition,

* ours (the public function of repanalysis.measures),
* the fastest reference implementation installed from PyPI (every candidate is
  tried on a small input first, the fastest one is timed at full size),
* the lower bound: the float64 matrix products (and, where the measure is a
  spectral quantity, the d×d factorisation) that any implementation needs,
  on already-converted, already-centred float64 data.

and reports medians and ratios. A second part compares streaming with
in-memory computation and measures the peak memory of streaming over a large
HDF5 file in a subprocess (deleted afterwards).

Reference packages (test/benchmark extras, not dependencies):
    pip install repsim ckatorch cca-zoo rsatoolbox
Missing ones are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg as sla

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fixtures import FIXTURES  # noqa: E402

import repanalysis.measures as A  # noqa: E402
from repanalysis.measures import RepanalysisWarning  # noqa: E402

warnings.simplefilter("ignore", RepanalysisWarning)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def make_pair(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related float32 activation matrices (ReLU features of a shared input)."""
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, d), dtype=np.float32)
    w1 = g.standard_normal((d, d), dtype=np.float32) / np.float32(math.sqrt(d))
    w2 = g.standard_normal((d, d), dtype=np.float32) / np.float32(math.sqrt(d))
    x = np.maximum(z @ w1, 0, dtype=np.float32) + 0.1 * g.standard_normal((n, d), dtype=np.float32)
    y = np.maximum(z @ w2, 0, dtype=np.float32) + 0.1 * g.standard_normal((n, d), dtype=np.float32)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)


# --------------------------------------------------------------------------
# lower bounds (float64, centred, converted beforehand)
# --------------------------------------------------------------------------

def _t(f, *a):
    t0 = time.perf_counter()
    out = f(*a)
    return time.perf_counter() - t0, out


def _best_threads(f, *a):
    """Time of a d×d factorisation: the faster of one BLAS thread and the default."""
    from repanalysis.measures._linalg import small_lapack

    t_default, _ = _t(f, *a)
    with small_lapack(0):
        t_one, _ = _t(f, *a)
    return min(t_default, t_one)


def lb_products(xc, yc):
    t, (a, b, c) = _t(lambda: (xc.T @ xc, yc.T @ yc, xc.T @ yc))
    return t, a, b, c


def lb_cka(xc, yc):
    return lb_products(xc, yc)[0]


def lb_cca(xc, yc):
    t, _, _, c = lb_products(xc, yc)
    return t + _best_threads(lambda: sla.svd(c, compute_uv=False, check_finite=False))


def lb_svcca(xc, yc):
    t, a, b, c = lb_products(xc, yc)
    return t + _best_threads(lambda: (sla.eigh(a, check_finite=False, driver="evd"),
                                      sla.eigh(b, check_finite=False, driver="evd"),
                                      sla.svd(c, compute_uv=False, check_finite=False)))


def lb_pwcca(xc, yc):
    t, _, _, c = lb_products(xc, yc)
    return t + _best_threads(lambda: sla.svd(c, full_matrices=False, check_finite=False))


def lb_procrustes(xc, yc):
    t, c = _t(lambda: xc.T @ yc)
    return t + _best_threads(lambda: sla.svd(c, compute_uv=False, check_finite=False))


def lb_erank(xc, yc):
    t, a = _t(lambda: xc.T @ xc)
    return t + _best_threads(lambda: sla.eigh(a, eigvals_only=True, check_finite=False,
                                              driver="evr"))


LOWER_BOUNDS = {
    "linear CKA": (lb_cka, "XᵀX, YᵀY (syrk), XᵀY (gemm)"),
    "debiased CKA": (lb_cka, "XᵀX, YᵀY, XᵀY"),
    "CCA": (lb_cca, "XᵀX, YᵀY, XᵀY + singular values of a d×d matrix"),
    "SVCCA": (lb_svcca, "XᵀX, YᵀY, XᵀY + eigh(XᵀX), eigh(YᵀY) + singular values of d×d"),
    "PWCCA": (lb_pwcca, "XᵀX, YᵀY, XᵀY + SVD (with vectors) of d×d"),
    "Procrustes": (lb_procrustes, "XᵀY + singular values of d×d"),
    "effective rank": (lb_erank, "XᵀX + eigenvalues of d×d"),
}


# --------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------

OURS = {
    "linear CKA": lambda x, y: A.linear_cka(x, y),
    "debiased CKA": lambda x, y: A.linear_cka(x, y, debiased=True),
    "CCA": lambda x, y: A.cca(x, y),
    "SVCCA": lambda x, y: A.svcca(x, y),
    "PWCCA": lambda x, y: A.pwcca(x, y),
    "Procrustes": lambda x, y: A.procrustes(x, y),
    "effective rank": lambda x, y: A.effective_rank(x),
}


# --------------------------------------------------------------------------
# references (each returns the comparable value, or raises ImportError)
# --------------------------------------------------------------------------

def _torch():
    import torch

    return torch


def ref_ckatorch(debiased):
    from ckatorch import cka_base

    torch = _torch()

    def f(x, y):
        return float(cka_base(torch.from_numpy(x), torch.from_numpy(y), unbiased=debiased))
    return f


def ref_repsim(kind):
    import repsim

    def f(x, y):
        if kind == "cka":
            return float(repsim.cka([x, y], "linear")[0, 1])
        if kind == "cca":
            return float(repsim.cca([x, y], "pillai")[0, 1])
        if kind == "svcca":
            return float(repsim.svcca([x, y], "pillai")[0, 1])
        if kind == "pwcca":
            return float(repsim.pwcca([x, y])[0, 1])
        raise ValueError(kind)
    return f


def ref_cca_zoo():
    from cca_zoo.linear import CCA

    def f(x, y):
        k = min(x.shape[1], y.shape[1])
        z1, z2 = CCA(n_components=k).fit_transform([x.astype(np.float64), y.astype(np.float64)])
        z1 = z1 - z1.mean(0)
        z2 = z2 - z2.mean(0)
        r = np.einsum("ij,ij->j", z1, z2) / np.sqrt(np.einsum("ij,ij->j", z1, z1)
                                                    * np.einsum("ij,ij->j", z2, z2))
        return float(np.abs(r).mean())
    return f


def ref_scipy_procrustes():
    from scipy.spatial import procrustes

    def f(x, y):
        _, _, disparity = procrustes(x.astype(np.float64), y.astype(np.float64))
        return math.sqrt(max(1.0 - disparity, 0.0))
    return f


def ref_numpy_erank():
    def f(x, y):
        x64 = x.astype(np.float64)
        s = np.linalg.svd(x64 - x64.mean(0), compute_uv=False)
        p = s / s.sum()
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()))
    return f


REFERENCES = {
    "linear CKA": [("ckatorch.cka_base", lambda: ref_ckatorch(False)),
                   ("repsim.cka", lambda: ref_repsim("cka"))],
    "debiased CKA": [("ckatorch.cka_base(unbiased)", lambda: ref_ckatorch(True))],
    "CCA": [("repsim.cca(pillai)", lambda: ref_repsim("cca")),
            ("cca_zoo CCA", ref_cca_zoo)],
    "SVCCA": [("repsim.svcca(pillai)", lambda: ref_repsim("svcca"))],
    "PWCCA": [("repsim.pwcca", lambda: ref_repsim("pwcca"))],
    "Procrustes": [("scipy.spatial.procrustes", ref_scipy_procrustes)],
    "effective rank": [("numpy svd (no PyPI package)", ref_numpy_erank)],
}

# Values that are not the same quantity as ours (see the notes in measures.md).
DIFFERENT_CONVENTION = {"repsim.svcca(pillai)", "repsim.pwcca"}


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------

def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def wait_quiet(max_load: float | None, timeout: float = 1800.0) -> None:
    """Block until the 1-minute load average is below `max_load` (shared machines)."""
    if max_load is None:
        return
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with open("/proc/loadavg") as fh:
                if float(fh.read().split()[0]) < max_load:
                    return
        except OSError:
            return
        time.sleep(10)


def timed(f, *args):
    t0 = time.perf_counter()
    v = f(*args)
    return time.perf_counter() - t0, v


def pick_reference(name, xs, ys):
    """Fastest available reference for `name`, by one timing on the small pair."""
    best = None
    for label, factory in REFERENCES[name]:
        try:
            f = factory()
        except ImportError:
            continue
        try:
            f(xs[:200, :16], ys[:200, :16])     # warm-up: imports, first-call costs
            t, _ = timed(f, xs, ys)
        except Exception as exc:    # pragma: no cover - report and move on
            print(f"  {label}: failed on the screening input ({exc})", file=sys.stderr)
            continue
        if best is None or t < best[2]:
            best = (label, f, t)
    return best


def reduced_size(t_screen, ns, ds, n, d, cap):
    """Largest [n', d'] (same aspect) at which the reference should take about `cap` seconds.

    The prediction from the screening time assumes the worst of O(n d²), O(n² d) and
    O(n³) (some references multiply n×n centring matrices).
    """
    grow = max((n / ns) * (d / ds) ** 2, (n / ns) ** 2 * (d / ds), (n / ns) ** 3)
    predicted = t_screen * grow
    if predicted <= cap:
        return n, d, predicted
    scale = (cap / predicted) ** (1 / 3)
    return max(int(n * scale), ns), max(int(d * scale), ds), predicted


def bench_measure(name, x, y, xc, yc, reps, ref, ref_size, ref_total=120.0):
    ours = OURS[name]
    lb, _ = LOWER_BOUNDS[name]
    ours(x[:200, :16], y[:200, :16])
    t_o, t_l = [], []
    v_o = None
    for _ in range(reps):
        t, v_o = timed(ours, x, y)
        t_o.append(t)
        t_l.append(lb(xc, yc))
    row = {"measure": name, "ours_s": statistics.median(t_o), "lb_s": statistics.median(t_l),
           "ours_value": v_o, "reps": reps, "ref": None, "ref_s": None, "ref_value": None,
           "ref_reps": 0, "ref_size": None, "ours_at_ref_s": None}
    if ref is None:
        return row
    label, f, _ = ref
    rn, rd = ref_size
    xr, yr = np.ascontiguousarray(x[:rn, :rd]), np.ascontiguousarray(y[:rn, :rd])
    t_r, t_or = [], []
    v_r, v_or = None, v_o
    deadline = time.perf_counter() + 10 * 60
    for i in range(reps):
        t, v_r = timed(f, xr, yr)
        t_r.append(t)
        if (rn, rd) != x.shape:
            t, v_or = timed(ours, xr, yr)
            t_or.append(t)
        if time.perf_counter() + t_r[-1] > deadline or sum(t_r) > ref_total:
            break
    row.update(ref=label, ref_s=statistics.median(t_r), ref_value=v_r, ours_value_at_ref=v_or,
               ref_reps=len(t_r), ref_size=(rn, rd),
               ours_at_ref_s=statistics.median(t_or) if t_or else None)
    return row


def bench_ill_conditioned(x, y, xc, yc, reps):
    """CCA of an input whose centred condition number is ~1e7: the QR route."""
    from repanalysis.measures import similarity as S

    g = np.random.default_rng(4)
    xi = x.copy()
    xi[:, :16] = x[:, 16:32] + np.float32(1e-6) * g.standard_normal((x.shape[0], 16),
                                                                    dtype=np.float32)
    xi64 = xi.astype(np.float64)
    xic = xi64 - xi64.mean(0)
    route = S._cca_result(xi, y, ridge=0.0, allow_degenerate=False, method="auto", rtol=None,
                          where=None, what="CCA").route
    t_o, t_l, t_g = [], [], []
    for _ in range(reps):
        t_o.append(timed(A.cca, xi, y)[0])
        t_l.append(lb_cca(xic, yc))
        t_g.append(timed(lambda: A.cca(xi, y, method="gram"))[0])
    cond = float(np.linalg.cond(xic[:2000]))
    return {"route": route, "ours_s": statistics.median(t_o), "lb_s": statistics.median(t_l),
            "gram_s": statistics.median(t_g), "cond": cond,
            "exact": A.cca(xi, y), "gram": A.cca(xi, y, method="gram")}


def ill_text(r):
    return (f"CCA of the same pair after making 16 columns of X nearly collinear with 16 others "
            f"(condition number of the centred X about {r['cond']:.0e}): the moment route's "
            f"estimate fails the accuracy test, so `cca` takes the Householder QR + SVD route "
            f"({r['route']}): **{fmt_s(r['ours_s'])}, {r['ours_s'] / r['lb_s']:.1f}× the bound** "
            f"({fmt_s(r['lb_s'])}). Forcing the moment route (`method=\"gram\"`, what "
            f"streaming does) takes {fmt_s(r['gram_s'])} and gives mean ρ "
            f"{r['gram']:.10f} instead of {r['exact']:.10f} (its eigen-whitening keeps only "
            f"directions with σ ≥ 1e-4·σ_max).")


# --------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------

def bench_streaming_speed(n, d, reps):
    x, y = make_pair(n, d, seed=1)
    rows = []
    cases = [
        ("linear CKA", lambda: A.linear_cka(x, y), lambda: A.streaming_linear_cka(x, y)),
        ("debiased CKA", lambda: A.linear_cka(x, y, debiased=True),
         lambda: A.streaming_linear_cka(x, y, debiased=True)),
        ("CCA", lambda: A.cca(x, y), lambda: A.streaming_cca(x, y)),
        ("spectrum", lambda: A.singular_values(x), lambda: A.streaming_singular_values(x)),
    ]
    for name, mem, stream in cases:
        mem()
        stream()
        tm, ts = [], []
        for _ in range(reps):
            t, vm = timed(mem)
            tm.append(t)
            t, vs = timed(stream)
            ts.append(t)
        vm = np.atleast_1d(np.asarray(vm, dtype=float))
        vs = np.atleast_1d(np.asarray(vs, dtype=float))
        rel = float(np.max(np.abs(vs - vm) / np.maximum(np.abs(vm), 1e-300)))
        rows.append({"measure": name, "mem_s": statistics.median(tm),
                     "stream_s": statistics.median(ts), "max_rel_diff": rel})
    return rows


_CHILD = r"""
import json, sys, time, tracemalloc
import h5py
sys.path.insert(0, {root!r})
import warnings
import repanalysis.measures as A
warnings.simplefilter("ignore", A.RepanalysisWarning)

def vm(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")

base = vm("VmHWM")
tracemalloc.start()
t0 = time.perf_counter()
with h5py.File({path!r}, "r") as f:
    m = A.Moments.from_source(f["x"], f["y"])
t_read = time.perf_counter() - t0
out = dict(n=m.n, cka=m.linear_cka(), cka_debiased=m.linear_cka(debiased=True), cca=m.cca(),
           svcca=m.svcca(), procrustes=m.procrustes(), sigma_max=float(m.spectrum().values[0]))
out["seconds"] = time.perf_counter() - t0
out["seconds_accumulate"] = t_read
out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
out["peak_rss_mib"] = vm("VmHWM")
out["baseline_rss_mib"] = base
print(json.dumps(out))
"""


def bench_streaming_memory(gib: float, d: int, tmpdir: str | None):
    import h5py

    n = int(gib * 2 ** 30 / (4 * d))
    fd, path = tempfile.mkstemp(suffix=".h5", dir=tmpdir)
    os.close(fd)
    try:
        t0 = time.perf_counter()
        g = np.random.default_rng(2)
        mix = g.standard_normal((d, d), dtype=np.float32) / np.float32(math.sqrt(d))
        rows = 8192
        with h5py.File(path, "w") as f:
            dx = f.create_dataset("x", shape=(n, d), dtype="f4", chunks=(rows // 2, d))
            dy = f.create_dataset("y", shape=(n, d), dtype="f4", chunks=(rows // 2, d))
            for a in range(0, n, rows):
                m = min(rows, n - a)
                z = g.standard_normal((m, d), dtype=np.float32)
                dx[a:a + m] = np.maximum(z, 0)
                dy[a:a + m] = z @ mix + 0.5 * g.standard_normal((m, d), dtype=np.float32)
        t_write = time.perf_counter() - t0
        size = os.path.getsize(path)
        child = _CHILD.format(root=str(HERE.parent), path=path)
        proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                              check=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res.update(file_gib=size / 2 ** 30, dataset_gib=n * d * 4 / 2 ** 30, d=d,
                   write_seconds=t_write)
        return res
    finally:
        os.remove(path)


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def fmt_s(t):
    if t is None:
        return "—"
    return f"{t * 1e3:.0f} ms" if t < 1 else f"{t:.2f} s"


def machine_line():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch
        tv = torch.__version__
    except ImportError:
        tv = "absent"
    blas = ""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]["name"]
    except Exception:
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy "
            f"{np.__version__} ({blas}), scipy {scipy.__version__}, torch {tv}")


def table(rows, n, d):
    out = [f"Pairs of float32 [{n}, {d}] matrices; median of {rows[0]['reps']} runs. "
           "A reference too slow for that size (predicted above the cap) was timed, with ours, "
           "on the leading block of rows and columns shown; its ratio is at that size.", "",
           "| measure | ours | fastest reference | reference time | ref / ours | lower bound | ours / bound |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = r["ref"] or "none installed"
        if r["ref"] in DIFFERENT_CONVENTION:
            ref += " ¹"
        if r["ref_s"] is None:
            rtime, ratio = "—", "—"
        elif r["ours_at_ref_s"] is not None:
            rn, rd = r["ref_size"]
            rtime = f"{fmt_s(r['ref_s'])} at [{rn}, {rd}] (ours {fmt_s(r['ours_at_ref_s'])})"
            ratio = f"{r['ref_s'] / r['ours_at_ref_s']:.0f}×"
        else:
            rtime = fmt_s(r["ref_s"])
            ratio = f"{r['ref_s'] / r['ours_s']:.1f}×"
        if r["ref_s"] is not None and r["ref_reps"] != r["reps"]:
            rtime += f", {r['ref_reps']} run{'s' if r['ref_reps'] > 1 else ''}"
        out.append(f"| {r['measure']} | {fmt_s(r['ours_s'])} | {ref} | {rtime} | "
                   f"{ratio} | {fmt_s(r['lb_s'])} | {r['ours_s'] / r['lb_s']:.2f}× |")
    return "\n".join(out)


def value_table(rows):
    out = ["| measure | size | ours | reference |", "|---|---|---|---|"]
    for r in rows:
        if r["ref_value"] is None:
            out.append(f"| {r['measure']} | full | {r['ours_value']:.10g} | — |")
            continue
        rn, rd = r["ref_size"]
        out.append(f"| {r['measure']} | [{rn}, {rd}] | {r['ours_value_at_ref']:.10g} | "
                   f"{r['ref_value']:.10g} |")
    return "\n".join(out)


def streaming_table(rows, n, d):
    out = [f"In-memory arrays, float32 [{n}, {d}] (X and Y); streaming reads row chunks of "
           "64 MiB (float64).", "",
           "| measure | in-memory | streaming | streaming / in-memory | max relative difference |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['measure']} | {fmt_s(r['mem_s'])} | {fmt_s(r['stream_s'])} | "
                   f"{r['stream_s'] / r['mem_s']:.2f}× | {r['max_rel_diff']:.1e} |")
    return "\n".join(out)


def memory_text(m, stream_rows=None, stream_n=None):
    extra = ""
    if stream_rows and stream_n:
        per_row = {r["measure"]: r["mem_s"] / stream_n for r in stream_rows}
        est = per_row.get("debiased CKA", 0) * m["n"]
        extra = (f" For scale: in-memory debiased CKA (the same products) at the per-row rate "
                 f"measured above would take about {est:.0f} s for these {m['n']} rows, with "
                 f"all {2 * m['dataset_gib']:.0f} GiB of activations in memory.")
    return (f"HDF5 file of {m['file_gib']:.1f} GiB: datasets `x` and `y`, each float32 "
            f"[{m['n']}, {m['d']}] = {m['dataset_gib']:.1f} GiB, written in chunks to a temporary "
            f"file and deleted afterwards. A fresh subprocess streamed both once "
            f"(`Moments.from_source`, debiased terms included: {m['seconds_accumulate']:.1f} s) and "
            f"then computed linear CKA (biased and debiased), CCA, SVCCA, Procrustes and the "
            f"spectrum ({m['seconds']:.1f} s in all). **Peak resident memory of that process "
            f"(VmHWM): {m['peak_rss_mib']:.0f} MiB**, of which {m['baseline_rss_mib']:.0f} MiB "
            f"were there after importing Python, numpy, scipy, h5py and repanalysis; peak of "
            f"the memory allocated during the computation (tracemalloc): "
            f"{m['tracemalloc_peak_mib']:.0f} MiB. (`ru_maxrss` is not used: on Linux a child "
            f"process inherits its parent's peak.)" + extra)


NOTES = """\
### Lower bounds

The lower bound of a measure is the time of the float64 work that any exact
implementation must do, measured on this machine with the same BLAS/LAPACK,
on data already converted to float64 and centred (so conversion, centring,
checks and the small-matrix algebra of ours count against us). The d×d
factorisations of the bound are timed with one BLAS thread and with the
default two, and the faster counts (ours runs them single-threaded, see
`_linalg.SMALL_LAPACK_MAX_D`):

| measure | lower bound |
|---|---|
{lb_rows}

Ours converts float32 to float64 and centres (one pass each), checks for NaN,
Inf and constant columns, then works from these products: linear CKA
(biased and debiased, feature-space form) needs nothing else; CCA, PWCCA and
SVCCA take the moment route only when it is accurate (condition-number
estimates, see `similarity.py`), otherwise a Householder QR + SVD route that
costs about 3–4× more; the table's inputs are well conditioned.

### Conventions and differences from the references

* **Centring**: every activation measure centres columns; weights are not centred.
* **CCA** (`cca`): mean of all `min(rank X, rank Y)` canonical correlations;
  `squared=True` gives mean ρ². `repsim.cca(..., "pillai")` is the same
  quantity (Σρ / min(dx, dy)) and `"yanai"` the squared one. cca-zoo's
  `CCA(n_components=k)` gives the canonical variates; their per-component
  correlations equal our ρ. Ours refuses `rank X + rank Y >= n` (trivially
  perfect correlations) unless `allow_degenerate=True`.
* **SVCCA** (`svcca`): per side, the fewest top singular directions of the
  *centred* data holding ≥ 99% of Σσ², then mean ρ over `min(kx, ky)`.
  ¹ `repsim.svcca` applies the 99% rule to an orthonormal basis of the
  *uncentred* data (already whitened, so it keeps almost every direction)
  and divides Σρ by `min(dx, dy)` of the inputs: a different quantity,
  timed only for scale.
* **PWCCA** (`pwcca`): Morcos et al. 2018, weights `α_i = Σ_j |<h_i, x_j>|`
  from the first argument's canonical variates `h_i` and its centred
  features `x_j` (`weights="y"` or `"smaller"`, the side with fewer features
  as in the authors' code, are options); not symmetric. ¹ `repsim.pwcca`
  averages both weightings (two PWCCAs per call): equal to
  `(pwcca(X, Y) + pwcca(Y, X)) / 2`.
* **Linear CKA** (`linear_cka`): biased = `||XᵀY||²_F / (||XᵀX||_F ||YᵀY||_F)`
  on centred data, equal to `ckatorch.cka_base` and `repsim.cka(..., "linear")`;
  `debiased=True` uses the unbiased HSIC of Song et al. 2012 for all three
  HSIC terms, as Kornblith et al. 2019 do, equal to
  `ckatorch.cka_base(..., unbiased=True)`. `repsim.cka(..., estimator="song")`
  differs: it normalises the unbiased cross term with *biased* self terms.
  Biased CKA warns when `n` is small against the effective dimensionality
  (chance level `sqrt(px py / ((n+px)(n+py)))` above 0.1, `p` the
  participation ratios; for isotropic data: `n < 9d`).
* **RBF CKA** (`rbf_cka`): bandwidth `sigma × median distance` over pairs
  `i < j`, per side. `repsim.cka(..., "rbf")` is ours with `sigma=1`;
  Kornblith et al.'s code and `ckatorch` take the median of the squared
  distances over the full n×n matrix (zeros on the diagonal included;
  ckatorch takes the lower median): use `rbf_cka(..., bandwidth=...)` to
  match them exactly.
* **Procrustes** (`procrustes`): `||X̂ᵀŶ||_*` with `X̂ = Xc/||Xc||_F`, in
  [0, 1]; `procrustes_distance` is `arccos` of it (Williams et al. 2021).
  `scipy.spatial.procrustes` returns the disparity `1 - procrustes²` (it also
  needs equal widths and computes the aligned matrix).
* **Effective rank** (`effective_rank`): `exp(entropy(σ / Σσ))` (Roy &
  Vetterli 2007) by default, `convention="sigma2"` for `σ² / Σσ²`. No PyPI
  package computes it; the reference row is numpy's SVD of the centred data
  plus the formula.
* **RSA** (`rdm`, `rsa`): `rsatoolbox`'s `"correlation"` RDM equals ours;
  its `"euclidean"` RDM is the *squared* distance divided by the number of
  features (ours: the plain distance, as `scipy.spatial.distance.pdist`);
  `rsatoolbox.rdm.compare(..., "spearman" | "corr")` equals `rsa(...,
  compare="spearman" | "pearson")` on the same RDMs.
* **Streaming**: linear CKA (biased, debiased) and Procrustes agree with the
  in-memory values to ~1e-12; CCA, SVCCA and PWCCA agree to rounding when the
  data are well conditioned (the in-memory function then uses the same moment
  route). For ill-conditioned data the in-memory CCA uses QR (exact to
  ~eps·κ), which moments cannot reproduce: streaming CCA then drops
  directions with σ < 1e-4·σ_max and is accurate to ~eps·κx·κy on the rest.

### Reference packages

Installed for tests and benchmarks only (the tests `importorskip` them):

    pip install repsim ckatorch cca-zoo rsatoolbox

(`repsim` builds a C++ extension: it needs a compiler and CMake. Checked
and not used: `torch-cka` and `cka-pytorch` (model-hook APIs; cka-pytorch
pulls lightning and torchvision), `deep-reps` (its package imports
`open_clip` at import time), `netrep` and `anatome` (not on PyPI).)
"""


def targets_text(rows, stream_rows, mem):
    ref_ok = all(r["ref_s"] is None or r["ref_s"] / (r["ours_at_ref_s"] or r["ours_s"]) >= 2
                 for r in rows)
    worst_ref = min((r["ref_s"] / (r["ours_at_ref_s"] or r["ours_s"]), r["measure"])
                    for r in rows if r["ref_s"])
    worst_lb = max((r["ours_s"] / r["lb_s"], r["measure"]) for r in rows)
    worst_st = max((r["stream_s"] / r["mem_s"], r["measure"]) for r in stream_rows)
    lines = [
        f"* at least 2× faster than every reference: {'yes' if ref_ok else 'NO'} "
        f"(closest: {worst_ref[1]}, {worst_ref[0]:.1f}×)",
        f"* within 2× of the lower bound: {'yes' if worst_lb[0] <= 2 else 'NO'} "
        f"(furthest: {worst_lb[1]}, {worst_lb[0]:.2f}×)",
        f"* streaming within 1.5× of in-memory: {'yes' if worst_st[0] <= 1.5 else 'NO'} "
        f"(slowest: {worst_st[1]}, {worst_st[0]:.2f}×)",
    ]
    if mem:
        lines.append(f"* streaming peak memory under 1 GiB on {mem['dataset_gib']:.1f} GiB "
                     f"datasets: {'yes' if mem['peak_rss_mib'] < 1024 else 'NO'} "
                     f"({mem['peak_rss_mib']:.0f} MiB)")
    return "\n".join(lines)


def write_markdown(path, machine, n, d, rows, stream_rows, stream_nd, mem, ill=None):
    lb_rows = "\n".join(f"| {k} | {v[1]} |" for k, v in LOWER_BOUNDS.items())
    parts = [
        "## Speed of the measures",
        "",
        f"Measured by `python benchmarks/bench_measures.py` on {machine} "
        f"({time.strftime('%Y-%m-%d')}). Ours and the lower bound alternate run by run in one "
        "process; 1-minute load averages after each measure (the benchmark's own two threads count for about 2 of it; other jobs shared the machine at times): "
        + ", ".join(r.get("load", "?").split()[0] for r in rows) + ".",
        "",
        table(rows, n, d),
        "",
        "Targets:",
        "",
        targets_text(rows, stream_rows, mem),
        "",
        ill_text(ill) if ill else "",
        "",
        "Values computed in the same runs (identical quantities agree to rounding):",
        "",
        value_table(rows),
        "",
        "### Streaming",
        "",
        streaming_table(stream_rows, *stream_nd),
        "",
        memory_text(mem, stream_rows, stream_nd[0]) if mem else "(memory test skipped)",
        "",
        NOTES.format(lb_rows=lb_rows),
    ]
    Path(path).write_text("\n".join(parts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 1 minute, no file")
    ap.add_argument("--fixture", choices=["relu"] + list(FIXTURES), default="relu",
                    help="the pair: ReLU features of a shared input plus noise (default), low rank plus "
                         "noise, or sparse ReLU (benchmarks/fixtures.py)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--out", default=None, help="markdown output (default: measures.md "
                    "beside this script for full runs, none for --quick)")
    ap.add_argument("--ref-cap", type=float, default=None,
                    help="seconds one reference run may take at full size (predicted from the "
                    "screening run); slower references are timed on a smaller block")
    ap.add_argument("--memory-gib", type=float, default=None,
                    help="size of each streamed HDF5 dataset (0 skips the memory test)")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--measures", nargs="*", default=None)
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                    help="before each measure, wait until the 1-minute load average is below "
                    "LOAD (for machines shared with other jobs)")
    args = ap.parse_args(argv)

    n = args.n or (2000 if args.quick else 10000)
    d = args.d or (256 if args.quick else 1024)
    reps = args.reps or (3 if args.quick else 5)
    ref_cap = args.ref_cap if args.ref_cap is not None else (2.0 if args.quick else 150.0)
    mem_gib = args.memory_gib if args.memory_gib is not None else (0.25 if args.quick else 4.0)
    out = args.out if args.out is not None else (None if args.quick else str(HERE / "measures.md"))
    names = args.measures or list(OURS)

    machine = machine_line()
    print(f"# {machine}\n# pairs of float32 [{n}, {d}], {reps} repetitions", flush=True)
    pair = make_pair if args.fixture == "relu" else FIXTURES[args.fixture]
    x, y = pair(n, d)
    xs, ys = pair(max(n // 5, 200), max(d // 4, 32), seed=3)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x64 - x64.mean(0), y64 - y64.mean(0)
    del x64, y64
    rows = []
    for name in names:
        wait_quiet(args.wait_quiet)
        ref = pick_reference(name, xs, ys)
        size = None
        if ref is not None:
            rn, rd, predicted = reduced_size(ref[2], xs.shape[0], xs.shape[1], n, d, ref_cap)
            size = (rn, rd)
        row = bench_measure(name, x, y, xc, yc, reps, ref, size, ref_total=min(2 * ref_cap, 100.0))
        row["load"] = loadavg()
        rows.append(row)
        print(f"{name:15s} ours {fmt_s(row['ours_s']):>8s}  bound {fmt_s(row['lb_s']):>8s}  "
              f"ref {row['ref'] or '-'} {fmt_s(row['ref_s'])}  (load {row['load']})", flush=True)
    ill = None
    if "CCA" in names:
        wait_quiet(args.wait_quiet)
        ill = bench_ill_conditioned(x, y, xc, yc, max(2, reps - 2))
        print(f"CCA ill-cond.   ours {fmt_s(ill['ours_s']):>8s}  bound {fmt_s(ill['lb_s']):>8s}  "
              f"route {ill['route']}  (load {loadavg()})", flush=True)
    del xc, yc
    print()
    print(table(rows, n, d))
    if ill:
        print()
        print(ill_text(ill))
    print()
    print(value_table(rows))

    sn, sd = (n, d) if args.quick else (65536, d)
    wait_quiet(args.wait_quiet)
    stream_rows = bench_streaming_speed(sn, sd, max(2, reps - 2))
    print()
    print(streaming_table(stream_rows, sn, sd))
    mem = None
    if mem_gib > 0:
        wait_quiet(args.wait_quiet)
        mem = bench_streaming_memory(mem_gib, d, args.tmpdir)
        print()
        print(memory_text(mem, stream_rows, sn))
    if out:
        write_markdown(out, machine, n, d, rows, stream_rows, (sn, sd), mem, ill)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
