"""Scaling laws (Kaplan et al. 2020): train a series of sizes and budgets, fit power laws.

    L(N) = (N_c / N) ** alpha_N          loss against non-embedding parameters, data not limiting
    L(D) = (D_c / D) ** alpha_D          loss against training tokens, for one model size
    optionally + E, an irreducible loss (Hoffmann et al. 2022 style)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lmstack.data.defaults import builtin_token_data
from lmstack.errors import LmstackError
from lmstack.model.config import preset
from lmstack.model.info import model_info
from lmstack.train import pretrain
from lmstack.train.recipe import Result


def fit_power_law(x, loss, irreducible: bool = False) -> dict:
    """Least squares in log space. Returns {"scale": X_c, "alpha": a, "E": e} for L = E + (X_c/x)^a."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    if len(x) < 2 or len(x) != len(loss):
        raise LmstackError("scaling fit: need at least 2 (size, loss) points")
    if np.any(x <= 0) or np.any(loss <= 0):
        raise LmstackError("scaling fit: sizes and losses must be positive")

    def fit_given(e):
        slope, intercept = np.polyfit(np.log(x), np.log(loss - e), 1)
        alpha = -slope
        pred = e + np.exp(intercept + slope * np.log(x))
        return alpha, intercept, float(np.sum((np.log(pred) - np.log(loss)) ** 2))

    best_e = 0.0
    if irreducible:
        if len(x) < 3:
            raise LmstackError("scaling fit: the irreducible term needs at least 3 points")
        hi = float(loss.min()) * (1 - 1e-9)
        grid = np.linspace(0.0, hi, 400, endpoint=False)
        errs = [fit_given(e)[2] for e in grid]
        i = int(np.argmin(errs))
        lo_e, hi_e = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        for _ in range(60):  # golden-section refinement around the best grid point
            m1, m2 = lo_e + (hi_e - lo_e) * 0.382, lo_e + (hi_e - lo_e) * 0.618
            if fit_given(m1)[2] < fit_given(m2)[2]:
                hi_e = m2
            else:
                lo_e = m1
        best_e = (lo_e + hi_e) / 2
    alpha, intercept, sse = fit_given(best_e)
    if alpha <= 0:
        return {"scale": float("nan"), "alpha": float(alpha), "E": best_e, "log_sse": sse}
    # A nearly flat curve has a tiny alpha and an x_c beyond float range: report it as infinite, not a crash.
    log_scale = intercept / alpha
    scale = math.exp(log_scale) if log_scale < 700 else float("inf")
    return {"scale": float(scale), "alpha": float(alpha), "E": float(best_e), "log_sse": sse}


def predict(fit: dict, x):
    return fit["E"] + (fit["scale"] / np.asarray(x, float)) ** fit["alpha"]


@dataclass
class ScalingConfig:
    out: str = "runs/scaling"  #: folder for the runs, scaling.json, scaling.md and scaling.png
    data: list[str] = field(default_factory=list)  #: prepared token folders (default: the built-in corpus)
    widths: list[str] = field(default_factory=lambda: ["32", "64", "96", "128"])  #: d_model of each size for L(N)
    layers: int = 4  #: layers of every size
    steps: int = 300  #: training steps of each size, for L(N)
    budget_steps: list[str] = field(default_factory=lambda: ["50", "100", "200", "400"])  #: training steps of each budget for L(D) (none: no L(D) sweep)
    budget_width: int = 96  #: d_model of the model trained for L(D)
    seq_len: int = 128  #: tokens per training sequence
    micro_batch: int = 16  #: sequences per step
    lr: float = 3e-3  #: peak learning rate of every run
    irreducible: bool = True  #: fit an irreducible loss E too (needs 3 or more points)
    builtin_size: str = "small"  #: size of the built-in corpus when no --data: tiny, small, medium, large or e.g. 2MB
    seed: int = 0  #: seed of the data and of every run
    precision: str = "auto"  #: as pretrain's --precision
    bars: bool = False  #: transient progress bars (how lmstack run displays a stage)


def _model_overrides(width: int, layers: int) -> dict:
    heads = max(1, width // 32)
    return {"d_model": width, "n_layer": layers, "n_head": heads, "n_kv_head": heads, "d_ff": int(width * 8 / 3)}


def run(cfg: ScalingConfig) -> Result:
    """The L(N) and L(D) sweeps, their fits, and the report (scaling.md, scaling.png, scaling.json)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    if not data:
        data = [str(builtin_token_data(out / "data", size=cfg.builtin_size, seed=cfg.seed))]
    rows_n, rows_d = [], []

    def train(tag, width, steps):
        pc = pretrain.PretrainConfig(out=str(out / tag), data=list(data), preset="llama-mini",
                            overrides=_model_overrides(width, cfg.layers), seq_len=cfg.seq_len,
                            micro_batch=cfg.micro_batch, steps=steps, lr=cfg.lr, warmup=max(1, steps // 10),
                            eval_interval=steps, eval_batches=20, ckpt_interval=0, seed=cfg.seed, quiet=True,
                            precision=cfg.precision,
                            bars=cfg.bars)
        return pretrain.run(pc).summary

    for w in (int(v) for v in cfg.widths):
        s = train(f"N_w{w}", w, cfg.steps)
        n = model_info(preset("llama-mini", **_model_overrides(w, cfg.layers)))["non_embedding_params"]
        rows_n.append({"width": w, "non_embedding_params": n, "tokens": s["tokens"], "val_loss": s["val_loss"]})
        if not cfg.bars:
            print(f"  L(N): width {w:4d}, N={n:,}: val loss {s['val_loss']:.4f}")
    for st in (int(v) for v in cfg.budget_steps):
        s = train(f"D_s{st}", cfg.budget_width, st)
        rows_d.append({"steps": st, "tokens": s["tokens"], "val_loss": s["val_loss"]})
        if not cfg.bars:
            print(f"  L(D): {s['tokens']:,} tokens: val loss {s['val_loss']:.4f}")
    fit_n = fit_power_law([r["non_embedding_params"] for r in rows_n], [r["val_loss"] for r in rows_n],
                          irreducible=cfg.irreducible and len(rows_n) >= 3)
    result = {"config": asdict(cfg), "L_of_N": {"points": rows_n, "fit": fit_n}}
    if rows_d:
        result["L_of_D"] = {"points": rows_d, "fit": fit_power_law([r["tokens"] for r in rows_d],
                                                                   [r["val_loss"] for r in rows_d],
                                                                   irreducible=cfg.irreducible and len(rows_d) >= 3)}
    (out / "scaling.json").write_text(json.dumps(result, indent=2))
    write_report(result, out)
    return Result(result, {"report": str(out / "scaling.md"), "plot": str(out / "scaling.png"),
                           "results": str(out / "scaling.json")})


def write_report(result: dict, out: Path) -> None:
    import matplotlib  # optional heavy dependency, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    laws = [(k, x, lab) for k, x, lab in (("L_of_N", "non_embedding_params", "non-embedding parameters N"),
                                          ("L_of_D", "tokens", "training tokens D")) if k in result]
    fig, axes = plt.subplots(1, len(laws), figsize=(5 * len(laws), 4), squeeze=False)
    for ax, (key, xkey, label) in zip(axes[0], laws):
        pts, fit = result[key]["points"], result[key]["fit"]
        xs = np.array([p[xkey] for p in pts], float)
        ax.loglog(xs, [p["val_loss"] for p in pts], "o", label="measured")
        if math.isfinite(fit["scale"]):
            grid = np.geomspace(xs.min() * 0.8, xs.max() * 1.25, 50)
            ax.loglog(grid, predict(fit, grid), "-",
                      label=f"fit: {fit['E']:.2f} + ({fit['scale']:.3g}/x)^{fit['alpha']:.3f}")
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    lines = ["# Scaling laws", "", "Fitted L(x) = E + (x_c / x)^alpha (least squares in log space).", "",
             "| law | x_c | alpha | E |", "| --- | --- | --- | --- |"]
    for key, name in (("L_of_N", "L(N)"), ("L_of_D", "L(D)")):
        if key not in result:
            continue
        f = result[key]["fit"]
        lines.append(f"| {name} | {f['scale']:.4g} | {f['alpha']:.4f} | {f['E']:.4f} |")
    lines += ["", "Kaplan et al. (2020), for comparison (paper's figures, not measured here): "
              "alpha_N = 0.076, N_c = 8.8e13; alpha_D = 0.095, D_c = 5.4e13.", "",
              "| N (non-embedding) | tokens | val loss |", "| --- | --- | --- |"]
    lines += [f"| {p['non_embedding_params']:,} | {p['tokens']:,} | {p['val_loss']:.4f} |"
              for p in result["L_of_N"]["points"]]
    if "L_of_D" in result:
        lines += ["", "| tokens D | val loss |", "| --- | --- |"]
        lines += [f"| {p['tokens']:,} | {p['val_loss']:.4f} |" for p in result["L_of_D"]["points"]]
    lines += ["", "![scaling](scaling.png)", ""]
    (out / "scaling.md").write_text("\n".join(lines))
