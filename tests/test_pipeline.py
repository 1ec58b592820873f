"""`lmstack run`: stages in order, headline numbers per stage, --resume skips finished stages."""

import json

import pytest

from lmstack.cli import main
from lmstack.course.pipeline import load_config, run_pipeline
from lmstack.errors import LmstackError


def test_shipped_configs_parse():
    for name in ("tiny-cpu", "small-gpu", "smollm2"):
        assert load_config(name)["stages"]


def test_unknown_stage_and_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - stage: telepathy\n")
    with pytest.raises(LmstackError, match="telepathy"):
        load_config(str(bad))
    with pytest.raises(LmstackError, match="no such pipeline config"):
        load_config("nope")


def test_mini_pipeline_runs_and_resumes(tmp_path, capsys):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text("""
name: mini
stages:
  - stage: data
    size: tiny
    vocab_size: 512
  - stage: pretrain
    preset: llama-tiny
    seq_len: 128
    micro_batch: 4
    steps: 4
    eval_interval: 4
    eval_batches: 2
  - stage: sft
    hold_out: sentiment
    steps: 2
    micro_batch: 4
    seq_len: 128
    eval_items: 2
    safety_repeat: 1
    ckpt_interval: 1
  - stage: reward
    subset: helpful
    sample_rankings: 2
    sample_prompts: 8
    sample_max_new_tokens: 8
    seq_len: 128
    epochs: 0
    steps: 2
    norm_prompts: 4
    norm_max_new_tokens: 8
  - stage: reward
    name: reward_safety
    subset: safety
    sample_rankings: 2
    seq_len: 128
    epochs: 0
    steps: 2
    norm_prompts: 4
    norm_max_new_tokens: 8
  - stage: ppo
    steps: 2
    rollout_batch: 4
    micro_batch: 4
    max_new_tokens: 8
    seq_len: 128
    kl_target: 1.0
  - stage: dpo
    epochs: 0
    steps: 2
    seq_len: 128
  - stage: evaluate
    prompts: 6
    kl_prompts: 4
    limit: 6
    decoding_prompts: 4
    prompting_items: 3
    few_shot: 1
    max_new_tokens: 8
  - stage: report
""")
    out = tmp_path / "run"
    res = run_pipeline(str(cfg), str(out))
    assert list(res) == ["data", "pretrain", "sft", "reward", "reward_safety", "ppo", "dpo", "evaluate", "report"]
    assert res["pretrain"]["val_ppl"] > 1 and 0 <= res["sft"]["sft_zero_shot_acc"] <= 1
    state = json.loads((out / "pipeline.json").read_text())
    assert state["paths"]["sft"].endswith("instructions/model")
    # The safety RM reuses the helpfulness stage's sampled rankings instead of sampling again.
    assert not (out / "reward_safety" / "sampled_rankings_train.jsonl").exists()
    assert state["paths"]["safety_reward_model"].endswith("reward_safety/model")
    safety_cfg = json.loads((out / "reward_safety" / "reward_config.json").read_text())
    dpo_cfg = json.loads((out / "dpo" / "dpo_config.json").read_text())
    for c in (safety_cfg, dpo_cfg):  # both learn from the first reward stage's ranked SFT samples
        assert str(out / "reward" / "sampled_rankings_train.jsonl") in c["data"], c["data"]
    from lmstack.train import log

    assert not log.PIPELINE_BARS  # restored for whatever the caller runs next
    ev = json.loads((out / "evaluate" / "evaluation.json").read_text())
    assert set(ev["win_rates"]) == {"n", "reference", "ppo", "dpo"}
    assert set(ev["alignment"]) == {"base", "sft", "ppo", "dpo"}
    assert set(ev["prompting"]["base"]["strategies"]) == {"zero_shot", "few_shot", "cot", "self_consistency"}
    assert len(ev["decoding"]["settings"]) == 4
    card = (out / "report" / "card.md").read_text()
    for section in ("## Pretraining", "## Instruction tuning", "## Reward model", "## Preference learning",
                    "## Inference: decoding", "## Inference: prompting", "## Truthfulness", "What the course should show"):
        assert section in card
    for png in ("pretrain_loss", "flan_held_out", "reward_training", "ppo", "dpo", "win_rates", "decoding", "prompting",
                "alignment"):
        assert (out / "report" / "plots" / f"{png}.png").stat().st_size > 1000, png
        assert f"plots/{png}.png" in card
    checks = json.loads((out / "report" / "checks.json").read_text())
    assert {c["claim"].split()[0] for c in checks} >= {"SFT", "the", "PPO", "DPO", "PPO's"}
    out_text = capsys.readouterr().out
    assert "[9/9] report" in out_text and "] SFT beats base" in out_text
    again = run_pipeline(str(cfg), str(out), resume=True)
    assert "done earlier" in capsys.readouterr().out
    assert again["pretrain"]["val_ppl"] == res["pretrain"]["val_ppl"]
    # Killed inside a stage: --resume reruns that stage, and its training continues from the last checkpoint
    # (here the final one, so the metrics written before the "kill" are kept, not rewritten from step 1).
    import shutil

    sft_run = out / "sft" / "sft" / "instructions"
    metrics = (sft_run / "metrics.jsonl").read_text()
    (out / "sft" / "stage.json").unlink()
    shutil.rmtree(sft_run / "model")
    run_pipeline(str(cfg), str(out), resume=True)
    assert (sft_run / "model" / "config.json").exists() and (sft_run / "metrics.jsonl").read_text() == metrics
    # --only re-runs the named stages over the run's outputs (and names unknown stages).
    capsys.readouterr()
    run_pipeline(str(cfg), str(out), only=["report"])
    printed = capsys.readouterr().out
    assert "[9/9] report: card=" in printed and "[8/9]" not in printed
    with pytest.raises(LmstackError, match="no such stage"):
        run_pipeline(str(cfg), str(out), only=["telepathy"])
    # `lmstack report` on a run folder renders the same card.
    (out / "report" / "card.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "What the course should show" in (out / "report" / "card.md").read_text()
