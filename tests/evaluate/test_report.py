"""The report card over a run folder: pretraining output as it exists today, evaluation results,
win rates, safety, and a later stage's summary.json, with PNG plots."""

import json

import pytest

from lmstack.errors import LmstackError
from lmstack.evaluate.report import build_report, register_section


def _run_folder(root):
    pre = root / "pre"
    pre.mkdir(parents=True)
    with open(pre / "metrics.jsonl", "w") as f:
        for step in range(1, 21):
            f.write(json.dumps({"step": step, "time": 1.0 * step, "loss": 5.0 / step, "lr": 1e-3,
                                **({"val_loss": 6.0 / step} if step % 10 == 0 else {})}) + "\n")
    (pre / "summary.json").write_text(json.dumps({"steps": 20, "final_loss": 0.25, "val_loss": 0.3,
                                                  "tokens_per_s": 1234.5}))
    sft = root / "sft"
    sft.mkdir()
    (sft / "summary.json").write_text(json.dumps({"stage": "sft", "steps": 10, "final_loss": 1.1,
                                                  "eval": {"held_out_acc": 0.55}}))
    ev = root / "eval"
    ev.mkdir()
    (ev / "results.json").write_text(json.dumps({"kind": "lmstack-eval", "model": {"name": "runs/sft/model"},
                                                 "results": {"arc_easy": {"metrics": {"acc": 0.5, "acc_stderr": 0.1},
                                                                          "n": 10, "num_fewshot": 0}}}))
    wr = root / "winrate"
    wr.mkdir()
    (wr / "winrate.json").write_text(json.dumps({"label": "sft vs base", "judge": "annotators", "n": 100,
                                                 "win": 0.611, "tie": 0.209, "loss": 0.18, "win_ci": [0.5, 0.7],
                                                 "tie_ci": [0.1, 0.3], "loss_ci": [0.1, 0.25], "n_unparsed": 0}))
    (root / "safety.json").write_text(json.dumps({"models": {"base": {"hallucination_rate": 0.4},
                                                             "sft": {"hallucination_rate": 0.1}}}))


def test_report_card(tmp_path):
    _run_folder(tmp_path)
    md = build_report(tmp_path)
    text = md.read_text()
    assert md == tmp_path / "report" / "report.md"
    assert "## pre" in text and "| final_loss | 0.25 |" in text and "| tokens_per_s | 1234.5 |" in text
    assert "## sft (sft)" in text and "| eval.held_out_acc | 0.55 |" in text
    assert "| arc_easy | 0 | acc | 0.5 | 0.1 | 10 | 0 |" in text
    assert "| sft vs base | annotators | 61.1 [50.0, 70.0] | 20.9 [10.0, 30.0] | 18.0 [10.0, 25.0] | 100 | 0 |" in text
    # safety.json written before answers were counted: the rate is of all items, and says so
    assert ("| hallucination rate among answered (closed-book QA, lower is better) "
            "| 40.0% of all items (answered share not recorded) "
            "| 10.0% of all items (answered share not recorded) |") in text
    pngs = sorted(p.name for p in (tmp_path / "report" / "plots").glob("*.png"))
    assert pngs == ["eval_results.png", "pre_metrics.png", "winrate_winrate.png"]
    assert "](plots/pre_metrics.png)" in text
    for p in (tmp_path / "report" / "plots").glob("*.png"):
        assert p.read_bytes()[:4] == b"\x89PNG"


def test_report_is_extensible_and_needs_something(tmp_path):
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "rewards.json").write_text(json.dumps({"margin": 1.5}))
    with pytest.raises(LmstackError, match="found no summary.json"):
        build_report(tmp_path)
    register_section("rewards.json", lambda path, report_dir, root: f"margin = {json.loads(path.read_text())['margin']}")
    try:
        assert "margin = 1.5" in build_report(tmp_path).read_text()
    finally:
        from lmstack.evaluate.report import SECTIONS
        SECTIONS.pop("rewards.json")


def test_report_on_real_pretraining_output(tmp_path):
    """Pretraining's own files (metrics.jsonl, summary.json, loss_curve.png) as lmstack writes them."""
    from lmstack.train.log import MetricsLogger, plot_curves, read_metrics

    run = tmp_path / "pre"
    log = MetricsLogger(run, total_steps=3, console=False)
    for s in range(1, 4):
        log.log(s, loss=3.0 / s, lr=0.001)
    log.close()
    plot_curves(read_metrics(run / "metrics.jsonl"), ["loss"], run / "loss_curve.png")
    (run / "summary.json").write_text(json.dumps({"steps": 3, "final_loss": 1.0}))
    text = build_report(tmp_path, out=tmp_path / "card.md").read_text()
    assert "![loss_curve](pre/loss_curve.png)" in text and "3 logged steps" in text
