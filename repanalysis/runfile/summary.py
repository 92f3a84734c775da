"""``repanalysis inspect``: a readable summary of one run file."""

from __future__ import annotations

import math

from repanalysis.runfile.hdf5 import RunFile


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def summary(path) -> str:
    """Status, provenance, layers with widths (and a feature map's ``CxHxW``), checkpoints, last metrics and evaluation."""
    with RunFile(path) as run:
        cfg = run.config
        lines = [
            f"{path}",
            f"  status      {run.status}" + (f" ({run.error})" if run.error else ""),
            f"  rule        {run.rule}    model {run.model} ({_model_size(cfg)})"
            f"    data set {run.dataset}    seed {run.seed}",
            f"  created     {run.created}    versions "
            + ", ".join(f"{k} {v}" for k, v in run.versions.items()),
            f"  probe set   {len(run.probe_index)} test inputs",
            f"  stored as   {cfg.get('record_dtype', 'float32')}"
            + (f"; {len(run.layers)} of {len(run.interfaces)} interfaces recorded"
               if len(run.layers) < len(run.interfaces) else ""),
            f"  checkpoints {len(run.steps)}" + (f" at steps {_steps(run.steps)}" if len(run.steps) else ""),
            "  layers",
        ]
        for name in run.layers:
            info = run.layer_info(name)
            arrays = [k for k in ("activations", "true_grad", "signal") if run.has(name, k)]
            width = f"{info['width']}" + (f" ({'x'.join(map(str, info['shape']))})" if len(info["shape"]) > 1 else "")
            lines.append(f"    {name:<6} width {width:<16} {info['kind']:<28} {', '.join(arrays)}")
        lines.append(f"  parameters  {len(run.param_names)} arrays under /params")
        metrics = run.metrics
        if metrics.get("step") is not None and len(metrics["step"]):
            last = ", ".join(f"{k} {_fmt(v[-1])}" for k, v in metrics.items() if k != "step")
            lines.append(f"  last metrics (step {int(metrics['step'][-1])}): {last}")
        evals = run.evals
        if evals.get("step") is not None and len(evals["step"]):
            last = ", ".join(f"{k} {_fmt(v[-1])}" for k, v in evals.items() if k != "step")
            lines.append(f"  last evaluation (step {int(evals['step'][-1])}): {last}")
    return "\n".join(lines)


def _model_size(cfg: dict) -> str:
    if cfg.get("external"):
        return "recorded with Recorder"
    if cfg.get("model") == "lstm":
        return f"hidden {cfg.get('hidden')}, task {cfg.get('task')}, bptt {cfg.get('bptt') or 'full'}"
    if cfg.get("model") == "cnn":
        return f"depth {cfg.get('depth')}, channels {cfg.get('channels')}, kernel {cfg.get('kernel_size')}"
    return f"depth {cfg.get('depth')}, width {cfg.get('width')}"


def _steps(steps) -> str:
    shown = [str(int(s)) for s in steps]
    return ", ".join(shown) if len(shown) <= 12 else ", ".join(shown[:5] + ["..."] + shown[-5:])
