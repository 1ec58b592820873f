"""`lmstack run`: stages in order, headline numbers per stage, --resume skips finished stages."""

import json
import math

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


def test_bad_stage_field_is_one_line_naming_stage_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - stage: data\n  - stage: pretrain\n    name: base\n    stepz: 3\n")
    with pytest.raises(LmstackError) as e:
        load_config(str(bad))
    msg = str(e.value)
    assert "\n" not in msg and "stage base" in msg and "'stepz'" in msg and str(bad) in msg, msg
    bad.write_text("stages:\n  - stage: sft\n    lr: 3e-3\n")  # YAML 1.1 reads 3e-3 as a string
    with pytest.raises(LmstackError, match=r"stage sft: field 'lr' expects float, got '3e-3'"):
        load_config(str(bad))
    bad.write_text("stages:\n  - stage: dpo\n    out: elsewhere\n")
    with pytest.raises(LmstackError, match="stage dpo: 'out' is set by the pipeline"):
        load_config(str(bad))
    bad.write_text("sead: 1\nstages: []\n")
    with pytest.raises(LmstackError, match="unknown field 'sead'"):
        load_config(str(bad))
    bad.write_text("claims:\n  wins: [ppo]\nstages: []\n")  # a claim's name or threshold is checked up front too
    with pytest.raises(LmstackError, match=r"bad.yaml: claims: unknown field 'wins'"):
        load_config(str(bad))


def test_run_command_reports_a_bad_field_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - stage: evaluate\n    prompts: many\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "stage evaluate: field 'prompts' expects int" in err
    assert not (tmp_path / "run" / "evaluate").exists()  # checked before any stage runs


def test_every_recipe_takes_the_pipelines_bars():
    import dataclasses

    from lmstack.train.recipe import RECIPES

    for name, r in RECIPES.items():
        cfg_cls, _ = r.load()
        assert "bars" in {f.name for f in dataclasses.fields(cfg_cls)}, name


def _wired(config: str, paths: dict) -> dict:
    """stage name -> the recipe config `lmstack run CONFIG` would build, given these context paths."""
    from pathlib import Path

    from lmstack.course.pipeline import Context, stage_config

    cfg = load_config(config)
    ctx = Context(Path("/run"), cfg, resume=False)
    ctx.paths.update(paths)
    out = {}
    for st in cfg["stages"]:
        name = st.get("name", st["stage"])
        out[name] = stage_config(st, ctx, Path("/run") / name, name)
    return out


def test_tiny_cpu_stages_get_the_values_they_always_got():
    """The defaults the stage functions used to inject (pretrain's preset ... ckpt_interval, sft's hold-out and
    switches, the evaluation's sizes, quiet, seed) reach the recipes from the YAML and the dataclasses."""
    paths = {"suite": "S", "tokens": "T", "base": "B", "sft": "F", "reward_model": "R", "safety_reward_model": "SR",
             "sampled_rankings": "SRk", "sampled_rankings_test": "SRt", "index": "I"}
    c = _wired("tiny-cpu", paths)
    pre = c["pretrain"]
    assert (pre.out, pre.data, pre.preset, pre.seq_len, pre.micro_batch, pre.steps, pre.lr, pre.warmup,
            pre.eval_interval, pre.ckpt_interval, pre.seed, pre.resume, pre.quiet, pre.bars) == \
        ("/run/pretrain", ["T"], "llama-mini", 256, 16, 320, 3e-3, 30, 160, 200, 0, False, True, True)
    sft = c["sft"]
    assert (sft.base, sft.suite, sft.hold_out, sft.steps, sft.ablation, sft.ablation_steps, sft.cluster_study,
            sft.quiet, sft.rag_index, sft.tool_repeat, sft.rag_repeat) == \
        ("B", "S", ["nli", "commonsense"], 240, True, 80, False, True, "I", 1, 1)
    ppo = c["ppo"]
    assert (ppo.model, ppo.reward_model, ppo.safety_reward_model, ppo.safety_threshold, ppo.quiet) == \
        ("F", "R", "SR", 0.15, True)
    assert (ppo.steps, ppo.rollout_batch, ppo.micro_batch, ppo.kl_coef, ppo.kl_target) == (48, 64, 16, 0.2, 0.0)
    assert (c["rejection"].rounds, c["rejection"].prompts_per_round, c["rejection"].samples) == (2, 512, 4)
    # DPO: the ranked SFT samples only (on-policy), validated on the held-out prompts' ranked samples.
    assert (c["dpo"].data, c["dpo"].val_data) == (["SRk"], ["SRt"])
    assert (c["reward_safety"].data, c["reward_safety"].sample_rankings) == \
        (["S/preferences/rankings.jsonl", "SRk"], 0)
    ev = c["evaluate"]
    assert (ev.models, ev.reward_model, ev.sampled_rankings_test, ev.safety_threshold, ev.prompts, ev.win_samples,
            ev.kl_prompts, ev.limit, ev.decoding_prompts, ev.prompting_items, ev.few_shot, ev.max_new_tokens, ev.bars) == \
        ({"base": "B", "sft": "F"}, "R", "SRt", 0.15, 0, 4, 64, 80, 48, 60, 3, 32, True)
    assert (ev.index, ev.rag_k, ev.applications_items, ev.jailbreak_items, ev.closed_models) == ("I", 2, 60, 40, {})
    assert (c["report"].run, c["report"].out) == ("/run", "/run/report")
    # The first reward stage samples itself when no samples exist yet.
    # The claims were measured in fp32: every stage that would autocast on this CPU says so.
    assert {k: c[k].precision for k in ("pretrain", "sft", "dpo", "rejection")} == dict.fromkeys(
        ("pretrain", "sft", "dpo", "rejection"), "fp32")
    first = _wired("tiny-cpu", {k: v for k, v in paths.items() if not k.startswith("sampled")})["reward"]
    assert (first.sample_rankings, first.data, first.sample_prompts, first.tie_margin, first.suite_rankings) == \
        (4, [], 2048, 1.0, False)


def test_mini_pipeline_runs_and_resumes(tmp_path, capsys):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text("""
name: mini
claims:
  win: [ppo, dpo, rejection]
  kl_bound: 10.0
  rag: true
  tools: true
  jailbreak: combination
stages:
  - stage: data
    size: tiny
    vocab_size: 512
  - stage: scaling
    widths: ["16", "32"]
    layers: 1
    steps: 3
    budget_steps: []
    seq_len: 64
    micro_batch: 2
    irreducible: false
  - stage: pretrain
    preset: llama-tiny
    seq_len: 128
    micro_batch: 4
    steps: 4
    eval_interval: 4
    eval_batches: 2
    ckpt_interval: 200
  - stage: sft
    hold_out: sentiment
    steps: 2
    ablation: false
    cluster_study: false
    micro_batch: 4
    seq_len: 128
    eval_items: 2
    safety_repeat: 1
    tool_repeat: 1
    rag_repeat: 1
    ckpt_interval: 1
  - stage: reward
    subset: helpful
    sample_rankings: 2
    sample_prompts: 8
    sample_max_new_tokens: 8
    tie_margin: 0.0      # the 8 prompts' samples of a 4-step model must give DPO (trained on them only) a pair
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
  - stage: rejection
    rounds: 1
    prompts_per_round: 4
    samples: 2
    max_new_tokens: 8
    seq_len: 128
  - stage: evaluate
    best_of_n: 4
    best_of_n_prompts: 3
    prompts: 6
    win_samples: 2
    kl_prompts: 4
    limit: 6
    decoding_prompts: 4
    prompting_items: 3
    few_shot: 1
    max_new_tokens: 8
    applications_items: 4
    jailbreak_items: 2
  - stage: report
""")
    out = tmp_path / "run"
    res = run_pipeline(str(cfg), str(out))
    assert list(res) == ["data", "scaling", "pretrain", "sft", "reward", "reward_safety", "ppo", "dpo", "rejection",
                         "evaluate", "report"]
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
    assert len(dpo_cfg["data"]) == 1  # DPO: those samples only, not the suite's written pairs
    assert dpo_cfg["val_data"] == [str(out / "reward" / "sampled_rankings_test.jsonl")]
    for c in (safety_cfg, dpo_cfg):  # progress bars are the pipeline's setting of each recipe, not a global
        assert c["bars"] is True
    ev = json.loads((out / "evaluate" / "evaluation.json").read_text())
    assert set(ev["win_rates"]) == {"n", "reference", "ppo", "dpo", "rejection"}
    sampled = ev["win_rates"]["ppo"]["sampled"]  # two draws per prompt, judged pairwise, SE over prompts
    n = ev["win_rates"]["n"]  # 6 task prompts + the suite's safety requests
    assert (sampled["draws"], sampled["prompts"], sampled["n"]) == (2, n, 2 * n) and n > 6 and sampled["se"] >= 0
    assert set(ev["alignment"]) == {"base", "sft", "ppo", "dpo", "rejection"}
    assert [r["n"] for r in ev["best_of_n"]["rows"]] == [1, 2, 4]
    rows = ev["best_of_n"]["rows"]
    assert rows[0]["kl"] == 0 and rows[1]["kl"] == pytest.approx(math.log(2) - 0.5)  # best-of-n's closed-form KL
    assert all(r["gold_oracle"] >= r["gold"] for r in rows)  # picking by gold itself is the ceiling
    assert [r["proxy"] for r in rows] == sorted(r["proxy"] for r in rows)  # more samples, a higher max of the proxy
    assert set(ev["prompting"]["base"]["strategies"]) == {"zero_shot", "few_shot", "cot", "self_consistency"}
    assert len(ev["decoding"]["settings"]) == 4
    apps = ev["applications"]  # jailbreaks for every model, retrieval and the calculator for the chat models
    assert set(apps) == {"base", "sft", "ppo", "dpo", "rejection"} and set(apps["base"]) == {"jailbreak"}
    assert set(apps["sft"]) == {"rag", "tool", "jailbreak"} and set(apps["sft"]["rag"]) == {"pretraining facts",
                                                                                          "held-out facts"}
    mixture = [json.loads(line) for line in open(out / "sft" / "sft_data" / "instructions.jsonl")]
    assert any(m.get("tools") for m in mixture) and any("Use the passages" in m["messages"][0]["content"]
                                                         for m in mixture)
    card = (out / "report" / "card.md").read_text()
    for section in ("## Scaling", "## Over-optimisation", "## Pretraining", "## Instruction tuning", "## Reward model",
                    "## Preference learning",
                    "## Inference: decoding", "## Inference: prompting", "## Truthfulness", "What the course should show",
                    "## Applications and limitations", "### Retrieval-augmented generation", "### Tool use",
                    "### Jailbreaks"):
        assert section in card
    for png in ("scaling", "overoptimisation", "pretrain_loss", "flan_held_out", "reward_training", "ppo", "dpo", "win_rates", "decoding", "prompting",
                "alignment", "retrieval", "jailbreak"):
        assert (out / "report" / "plots" / f"{png}.png").stat().st_size > 1000, png
        assert f"plots/{png}.png" in card
    checks = json.loads((out / "report" / "checks.json").read_text())
    assert {c["key"] for c in checks if c["kind"] == "claim"} >= {"scaling", "flan", "rm", "win", "kl", "refusal", "rag",
                                                                  "tools", "jailbreak"}
    assert {c["claim"].split()[0] for c in checks if c["key"] == "win"} == {"PPO", "DPO", "REJECTION"}
    assert {c["key"] for c in checks if c["kind"] == "at scale"} == {"icl", "cot"}
    out_text = capsys.readouterr().out
    assert "[11/11] report" in out_text and "] instruction tuning beats base" in out_text
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
    assert "[11/11] report: card=" in printed and "[10/11]" not in printed
    with pytest.raises(LmstackError, match="no such stage"):
        run_pipeline(str(cfg), str(out), only=["telepathy"])
    # `lmstack report` on a run folder renders the same card.
    (out / "report" / "card.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "What the course should show" in (out / "report" / "card.md").read_text()
    # Effects of scale side by side with another run (here the same run under another label), and a run not yet
    # made is named, not silently dropped.
    from lmstack.course.card import write_card

    path, _ = write_card(out, compare={"the same run": str(out), "a larger run": str(tmp_path / "none")})
    text = path.read_text()
    assert "| where the paper saw it |" in text and "| the same run |" in text
    assert f"Not yet run, so not shown: `{tmp_path / 'none'}` (a larger run)" in text


def test_seed_flag_overrides_the_configs_seed_for_every_stage(tmp_path):
    cfg = tmp_path / "one.yaml"
    cfg.write_text("name: one\nseed: 0\nstages:\n  - stage: data\n    size: tiny\n    vocab_size: 300\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--seed", "5"]) == 0
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert state["config"]["seed"] == 5
    assert json.loads((tmp_path / "run" / "data" / "suite" / "manifest.json").read_text())["seed"] == 5


def test_a_failed_win_claim_is_explained_with_the_runs_best_of_n():
    """The card's reason for a failed win claim quotes the run's own best-of-n: the peak gold gain and its n,
    against the gain of picking by the annotators among all n samples."""
    from lmstack.course.card import _why

    bon = [{"n": 1, "gold": 3.0, "gold_oracle": 3.0}, {"n": 2, "gold": 3.5, "gold_oracle": 4.0},
           {"n": 4, "gold": 3.25, "gold_oracle": 5.5}]
    text = " ".join(_why({"win"}, {"rm_policy": {"accuracy": 0.667}}, bon))
    assert "ranks the SFT policy's own answers 66.7% right" in text
    assert "raises the annotators' score by at most +0.50 (n = 2)" in text
    assert "the best of the same 4 samples by the annotators is +2.50" in text
    assert "at most" not in " ".join(_why({"win"}, {"rm_policy": {"accuracy": 0.667}}, [])) # no study: no numbers


def test_the_applications_claims_count_beyond_two_standard_errors_or_are_shown_at_scale():
    """Retrieval and the calculator on SFT, a registered attack on each aligned model: a claim when registered
    (holds only beyond 2 SE), an at-scale row when listed under at_scale, nothing otherwise."""
    from lmstack.course.claims import Claims, check

    def qa(closed, opened, n=40):
        m = {"hallucination_rate": 0.5}
        return {"n": n, "closed_book": {**m, "accuracy": closed}, "retrieval": {**m, "accuracy": opened}}

    def tool(gain, se):
        return {"n": 60, "gain": gain, "gain_se": se, "call_rate": 1.0, "calls": 60, "calls_failed": 0,
                "call_gave_answer": 0.5, "without": {"accuracy": 0.1}, "with": {"accuracy": 0.1 + gain}}

    def jb(none, attack, n=40):
        return {"none": {"attack_success_rate": none, "n_judged": n},
                "combination": {"attack_success_rate": attack, "n_judged": n}}

    apps = {"sft": {"rag": {"held-out facts": qa(0.0, 0.5)}, "tool": tool(0.30, 0.05)},
            "ppo": {"jailbreak": jb(0.0, 0.9)}, "dpo": {"jailbreak": jb(0.05, 0.10)}}
    rows = {c["claim"].split("(")[0].strip(): c for c in check({"applications": apps}, Claims(
        win=[], rag=True, tools=True, jailbreak="combination", at_scale=[]))}
    got = {k: (c["ok"], c["kind"]) for k, c in rows.items()}
    assert got == {
        "retrieval answers questions about facts the model never saw": (True, "claim"),
        "the calculator tool raises held-out arithmetic accuracy": (True, "claim"),
        "the combination attack gets PPO to comply with": (True, "claim"),
        "the combination attack gets DPO to comply with": (False, "claim")}
    apps["sft"] = {"rag": {"held-out facts": qa(0.05, 0.10)}, "tool": tool(0.02, 0.02)}  # within noise
    checks = check({"applications": apps}, Claims(win=[], at_scale=["rag", "tools"]))
    assert [(c["key"], c["ok"], c["kind"]) for c in checks] == [("rag", False, "at scale"), ("tools", False, "at scale")]
    assert check({"applications": apps}, Claims(win=[], at_scale=[])) == []  # not registered: not checked
