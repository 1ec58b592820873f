"""The report card: everything a run folder measured, in one Markdown file with tables and PNG plots.

`build_report(run_dir)` walks the folder (and its subfolders, so `runs/exp/{pre,sft,dpo,eval}`
works) and renders what it recognises:

- `summary.json`: any stage's summary (pretraining writes steps, losses, tokens/s; SFT and
  preference recipes write theirs the same way): a table of its scalar values;
- `metrics.jsonl`: training curves (every numeric field against `step`) as a PNG;
- `results.json` from `lmstack eval run`: the task metrics with standard errors, and a bar chart;
- `winrate.json` from `lmstack eval winrate`: the win/tie/loss table and a stacked bar chart;
- `safety.json` from `lmstack eval safety`: the InstructGPT-style table;
- other PNGs already in the folders (e.g. `loss_curve.png`) are linked.

A later stage can add its own file kind with `register_section("name.json", fn)`, where
`fn(path, report_dir, run_root) -> markdown` (plots go under report_dir).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from lmstack.data.curves import plot_curves, read_metrics
from lmstack.errors import LmstackError

from .safety import alignment_table

SECTIONS: dict[str, Callable[[Path, Path, Path], str]] = {}
_SKIP_DIRS = {"checkpoints", "trainer_state", "report", "tensorboard", "__pycache__", ".git"}


def register_section(filename: str, fn: Callable[[Path, Path, Path], str]) -> None:
    SECTIONS[filename] = fn


def read_json(path: Path):
    """A JSON file's content; an unreadable or corrupt file is an LmstackError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LmstackError(f"{path}: cannot read ({e})") from None


def fmt(v) -> str:
    """A table cell: None and NaN as a dash, large floats compactly, other floats to four figures."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if abs(v) >= 1e7:
            return f"{v:.3e}"
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def scalars(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """The scalar leaves of a nested dict as (dotted key, value); long strings are left out."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += scalars(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            if not (isinstance(v, str) and len(v) > 80):
                out.append((prefix + k, v))
    return out


def _plot_dir(report_dir: Path) -> Path:
    d = report_dir / "plots"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _slug(path: Path, root: Path) -> str:
    rel = path.parent.relative_to(root).as_posix()
    return (rel.replace("/", "_") or "run") + "_" + path.stem


def section_summary(path: Path, report_dir: Path, root: Path) -> str:
    d = read_json(path)
    if not isinstance(d, dict):
        return ""
    rows = scalars(d)
    lines = ["| field | value |", "| --- | --- |"] + [f"| {k} | {fmt(v)} |" for k, v in rows]
    return "\n".join(lines)


def section_metrics(path: Path, report_dir: Path, root: Path) -> str:
    try:
        recs = read_metrics(path)
    except (json.JSONDecodeError, OSError) as e:
        return f"(could not read {path.name}: {e})"
    if not recs:
        return ""
    keys = sorted({k for r in recs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                  - {"step", "time", "epoch"})
    out = [f"{len(recs)} logged steps (last step {recs[-1].get('step')})."]
    if keys:
        png = _plot_dir(report_dir) / f"{_slug(path, root)}.png"
        plot_curves(recs, keys[:6], png, title=path.parent.name)
        out.append(f"\n![curves]({os.path.relpath(png, report_dir)})")
        last = {k: next((r[k] for r in reversed(recs) if k in r), None) for k in keys}
        out.append("\n| metric | last value |\n| --- | --- |\n" + "\n".join(f"| {k} | {fmt(v)} |" for k, v in last.items()))
    return "\n".join(out)


def section_results(path: Path, report_dir: Path, root: Path) -> str:
    d = read_json(path)
    if not isinstance(d, dict) or d.get("kind") != "lmstack-eval":
        return ""
    rows, bars = [], []
    for name, r in d.get("results", {}).items():
        for m, v in r.get("metrics", {}).items():
            if m.endswith("_stderr"):
                continue
            se = r["metrics"].get(f"{m}_stderr")
            rows.append(f"| {name} | {r.get('num_fewshot', 0)} | {m} | {fmt(v)} | {fmt(se)} | {r.get('n')} | "
                        f"{r.get('n_invalid', 0)} |")
            if m in ("acc", "acc_norm", "exact_match", "mc2"):
                bars.append((f"{name}:{m}", v, se or 0.0))
    model = d.get("model", {}).get("name", "")
    out = [f"Model: `{model}`\n" if model else "",
           "| task | k | metric | value | ± stderr | n | invalid |", "| --- | --- | --- | --- | --- | --- | --- |"] + rows
    if bars:
        png = _plot_dir(report_dir) / f"{_slug(path, root)}.png"
        _bar_chart(bars, png, "accuracy-type metrics (± stderr)")
        out.append(f"\n![results]({os.path.relpath(png, report_dir)})")
    return "\n".join(out)


def section_winrate(path: Path, report_dir: Path, root: Path) -> str:
    d = read_json(path)
    comps = d.get("comparisons", [d]) if isinstance(d, dict) else []
    lines = ["| comparison | judge | win % | tie % | loss % | n | unparsed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in comps:
        cells = []
        for k in ("win", "tie", "loss"):
            lo, hi = c.get(f"{k}_ci", [float("nan")] * 2)
            cells.append(f"{100 * c[k]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        lines.append(f"| {c.get('label', '')} | {c.get('judge', '')} | " + " | ".join(cells)
                     + f" | {c.get('n')} | {c.get('n_unparsed', 0)} |")
    png = _plot_dir(report_dir) / f"{_slug(path, root)}.png"
    stacked_bars([(c.get("label", ""), c) for c in comps], png)
    return "\n".join(lines) + f"\n\n![win rates]({os.path.relpath(png, report_dir)})"


def section_safety(path: Path, report_dir: Path, root: Path) -> str:
    d = read_json(path)
    cols = d.get("models") if isinstance(d, dict) else None
    if not cols:
        return ""
    return alignment_table(cols)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib  # optional: matplotlib, only for the PNGs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_chart(bars, png: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(bars) + 2), 3.6))
    ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def stacked_bars(rows: list[tuple[str, dict]], png: Path, xlabel: str = "%", row_height: float = 0.6,
                 pad: float = 1.4, annotate: bool = True) -> None:
    """Horizontal win / tie / loss bars (percent), one row per (label, {"win", "tie", "loss"} fractions);
    annotate: print each share of 6% or more inside its bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, row_height * len(rows) + pad))
    for i, (_, c) in enumerate(rows):
        left = 0.0
        for k, color in (("win", "#4c72b0"), ("tie", "#c0c0c0"), ("loss", "#dd8452")):
            w = 100 * c[k]
            ax.barh(i, w, left=left, color=color, label=k if i == 0 else None)
            if annotate and w >= 6:
                ax.text(left + w / 2, i, f"{w:.1f}", ha="center", va="center", fontsize=8)
            left += w
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


register_section("summary.json", section_summary)
register_section("metrics.jsonl", section_metrics)
register_section("results.json", section_results)
register_section("winrate.json", section_winrate)
register_section("safety.json", section_safety)


def _folders(root: Path, max_depth: int = 3):
    yield root
    if max_depth == 0:
        return
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name not in _SKIP_DIRS and not p.name.startswith("."):
            yield from _folders(p, max_depth - 1)


def build_report(run_dir, out=None, title: str | None = None) -> Path:
    """Write <run_dir>/report/report.md (or `out`) with plots beside it; returns the Markdown path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise LmstackError(f"{root}: not a run folder")
    md_path = Path(out) if out else root / "report" / "report.md"
    report_dir = md_path.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title or 'Report card: ' + root.resolve().name}\n"]
    n_found = 0
    for folder in _folders(root):
        if report_dir.resolve() == folder.resolve():
            continue
        blocks = []
        stage = _stage(folder)
        for fname, fn in SECTIONS.items():
            p = folder / fname
            if p.is_file():
                body = fn(p, report_dir, root)
                if body:
                    blocks.append(f"### {fname}\n\n{body}\n")
                    n_found += 1
        pngs = [p for p in sorted(folder.glob("*.png"))]
        for p in pngs:
            blocks.append(f"![{p.stem}]({os.path.relpath(p, report_dir)})\n")
        if blocks:
            rel = folder.relative_to(root).as_posix()
            parts.append(f"## {rel if rel != '.' else root.name}" + (f" ({stage})" if stage else "") + "\n")
            parts += blocks
    if not n_found:
        raise LmstackError(f"{root}: found no summary.json, metrics.jsonl, results.json, winrate.json or safety.json "
                           "to report on")
    md_path.write_text("\n".join(parts), encoding="utf-8")
    return md_path


def _stage(folder: Path) -> str | None:
    for cand in (folder / "summary.json", folder / "model" / "lmstack.json", folder / "lmstack.json"):
        if cand.is_file():
            try:
                d = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(d, dict) and isinstance(d.get("stage"), str):
                return d["stage"]
    return None
