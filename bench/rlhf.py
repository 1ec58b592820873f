"""Preference learning on the built-in suite, measured: quality (what each stage buys) and speed (PPO's time split).

    python bench/rlhf.py quality --out runs/rlhf        # base -> SFT -> RMs -> PPO / DPO / rejection sampling, judged
    python bench/rlhf.py speed                          # PPO iteration split + rollout tokens/s vs transformers

`quality` runs the whole pipeline at CPU scale and writes runs/rlhf/results.json and results.md: the reward
model's held-out accuracy beside the simulated annotators' own agreement; win / tie / loss of PPO, DPO and
rejection sampling against the SFT policy judged by the annotator panel, with each policy's KL from SFT; and
the refusal rate on harmful prompts and helpfulness on the rest, choosing among SFT samples with the
helpfulness RM alone or with Llama 2's safety combination. Every stage is skipped when its output exists.

`speed` times PPO iterations (generation, scoring, optimisation) for a tiny and a small model, and the
rollout throughput of lmstack's engine against `transformers`' `generate` on the same weights and batch.

    python bench/rlhf.py memory --model smollm2      # DPO's peak memory and step time, chunked log-probs or not

`memory` runs full-fine-tuning DPO steps (AdamW, sigmoid loss, fp32) on --pairs pairs of --seq-len tokens, each
in a fresh process so that its peak resident memory is its own: with the chunked log-prob kernel
(lmstack.model.logprobs), with it and activation checkpointing (`--grad-checkpoint`, the same numbers), and
with the whole sequence in one chunk (what a full-vocabulary log-softmax costs).

    python bench/rlhf.py trl --model smollm2            # DPO (full and LoRA) and GRPO against TRL, side by side
    python bench/rlhf.py rollouts --model smollm2       # rollouts from the dense policy or an int8/int4 copy

`trl` runs the same DPO steps with lmstack and with TRL (an optional peer: `pip install trl`; skipped with a message
when absent) on one converted checkpoint: the same pairs, pre-tokenised once by lmstack and fed to both in the order
lmstack visits them, full fine-tuning and LoRA, fp32, AdamW (betas 0.9/0.999, no weight decay), constant lr. It
reports the largest per-step loss difference, pairs/s of the training steps, the reference pass and each process's
peak memory. Then GRPO with both on the same arithmetic prompts in the same order, the same exact-match reward, group
size, clipping, KL coefficient and updates per rollout batch: seconds per iteration and the reward curves (sampled,
so equal only in distribution). Each run is a fresh process, so that its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

# ---- quality -----------------------------------------------------------------------------------------------------


def _timed(times: dict, name: str, fn):
    t = time.time()
    out = fn()
    times[name] = round(time.time() - t, 1)
    print(f"[{name}] {times[name]:.1f}s", flush=True)
    return out


def build_models(out: Path, a, times: dict) -> dict:
    from lmstack.data.defaults import builtin_token_data
    from lmstack.data.records import write_jsonl
    from lmstack.train.dpo import DPOConfig
    from lmstack.train.dpo import run as dpo
    from lmstack.train.labelling import sample_rankings
    from lmstack.train.ppo import PPOConfig
    from lmstack.train.ppo import run as ppo
    from lmstack.train.prefdata import PrefConfig, load_prompts, suite_judge
    from lmstack.train.pretrain import PretrainConfig
    from lmstack.train.pretrain import run as pretrain
    from lmstack.train.rejection import RejectionConfig
    from lmstack.train.rejection import run as rejection_sampling
    from lmstack.train.reward import RewardConfig
    from lmstack.train.reward import run as reward
    from lmstack.train.sft import SFTConfig
    from lmstack.train.sft import run as sft

    suite = out / "data" / "suite"
    tokens = _timed(times, "data", lambda: builtin_token_data(out / "data", size="tiny", vocab_size=2048))
    p = {"suite": suite, "base": out / "base" / "model", "sft": out / "sft" / "model",
         "rm_help": out / "rm_help" / "model", "rm_safety": out / "rm_safety" / "model", "ppo": out / "ppo" / "model",
         "dpo": out / "dpo" / "model", "rs": out / "rs" / "model",
         "sampled": out / "labels" / "sampled_rankings_train.jsonl",
         "sampled_test": out / "labels" / "sampled_rankings_test.jsonl"}
    common = dict(seed=0, quiet=True)
    if not p["base"].exists():
        _timed(times, "pretrain", lambda: pretrain(PretrainConfig(
            out=str(out / "base"), data=[str(tokens)], preset="llama-mini", overrides={"n_layer": a.layers},
            seq_len=a.seq_len, micro_batch=16, steps=a.pretrain_steps, lr=3e-3, warmup=30,
            eval_interval=a.pretrain_steps, ckpt_interval=0, **common)))
    if not p["sft"].exists():
        # SFT on the suite's train tasks (all three styles) and its safety requests, repeated so that refusals
        # are not 1.5% of the data (Llama 2 collects safety demonstrations on purpose).
        _timed(times, "sft", lambda: sft(SFTConfig(
            out=str(out / "sft"), model=str(p["base"]),
            data=[str(suite / "tasks" / "train.jsonl")] + [str(suite / "tasks" / "safety_train.jsonl")] * a.safety_repeat,
            seq_len=a.seq_len, epochs=a.sft_epochs, micro_batch=16, lr=2e-3, warmup=10, ckpt_interval=0, **common)))
    if not p["sampled_test"].exists():
        # InstructGPT step 2's data: several answers of the SFT policy per prompt, ranked by (simulated) labelers.
        def label():
            panel = suite_judge(suite)
            for split, n, key in (("train", a.label_prompts, "sampled"), ("test", a.label_prompts // 4, "sampled_test")):
                recs, _ = load_prompts(PrefConfig(suite=str(suite), out=str(out)), split=split)
                pick = torch.randperm(len(recs), generator=torch.Generator().manual_seed(len(split)))[:n].tolist()
                ranks, st = sample_rankings(str(p["sft"]), [recs[i] for i in pick], 4, panel, a.max_new, 0, "cpu", split)
                write_jsonl(p[key], ranks)
                print(f"  {split}: {len(ranks)} rankings ({st})")
        _timed(times, "label_policy_samples", label)
    rm_kw = dict(model=str(p["sft"]), suite=str(suite), seq_len=a.seq_len, epochs=a.rm_epochs, micro_batch=8, lr=3e-4,
                 data=[str(suite / "preferences" / "rankings.jsonl"), str(p["sampled"])],
                 val_data=[str(suite / "preferences" / "pairs_test.jsonl")], **common)
    for key, subset in (("rm_help", "helpful"), ("rm_safety", "safety")):
        if not p[key].exists():
            _timed(times, f"reward_{subset}", lambda k=key, s=subset: reward(RewardConfig(
                out=str(out / k), subset=s, **rm_kw)))
    # Llama 2: both reward models, combined by its rule, drive PPO and rejection sampling.
    rewards_kw = dict(reward_model=str(p["rm_help"]), safety_reward_model=str(p["rm_safety"]),
                      safety_rule=a.safety_rule, safety_threshold=a.safety_threshold)
    pol_kw = dict(model=str(p["sft"]), suite=str(suite), seq_len=a.seq_len, **common)
    if not p["ppo"].exists():
        _timed(times, "ppo", lambda: ppo(PPOConfig(
            out=str(out / "ppo"), steps=a.ppo_steps, rollout_batch=16, micro_batch=8, ppo_epochs=2,
            max_new_tokens=a.max_new, lr=a.ppo_lr, kl_coef=0.05, kl_target=a.kl_target, **rewards_kw, **pol_kw)))
    if not p["dpo"].exists():
        _timed(times, "dpo", lambda: dpo(DPOConfig(
            out=str(out / "dpo"), data=[str(suite / "preferences" / "pairs.jsonl"), str(p["sampled"])],
            val_data=[str(suite / "preferences" / "pairs_test.jsonl")], beta=0.1, epochs=a.dpo_epochs, micro_batch=8,
            lr=a.dpo_lr, **pol_kw)))
    if not p["rs"].exists():
        _timed(times, "rejection_sampling", lambda: rejection_sampling(RejectionConfig(
            out=str(out / "rs"), rounds=2, prompts_per_round=a.rs_prompts, samples=4, max_new_tokens=a.max_new, sft_epochs=2,
            lr=2e-4, **rewards_kw, **pol_kw)))
    return p


def safety_threshold(a) -> float:
    """The threshold the safety rule used: --safety-threshold, or the rule's default."""
    from lmstack.train.rewards import LLAMA2_SAFETY_THRESHOLD, ZSCORE_SAFETY_THRESHOLD

    if a.safety_threshold is not None:
        return a.safety_threshold
    return LLAMA2_SAFETY_THRESHOLD if a.safety_rule == "llama2" else ZSCORE_SAFETY_THRESHOLD


def test_prompts(suite: Path, n_tasks: int | None = None):
    """Held-out prompts: the test split's instruction-style task records and its safety requests."""
    from lmstack.course.evaluation import held_out_prompts

    return held_out_prompts(suite, n_tasks or None)


def evaluate(p: dict, a, times: dict) -> dict:
    from lmstack.course.evaluation import answers_of, kl_from, reward_model_accuracy
    from lmstack.data.builtin import is_refusal, win_rate
    from lmstack.train.prefdata import suite_judge
    from lmstack.train.rewards import load_reward_model, safety_combination

    suite = p["suite"]
    panel = suite_judge(suite)
    recs = test_prompts(suite, a.eval_tasks)
    res = {"prompts": len(recs)}

    # 1. The reward models against chance and against the annotators themselves, on held-out comparisons: the
    # suite's candidate answers (pairs_test) and the SFT policy's own samples ranked by the annotators.
    res["reward_models"] = reward_model_accuracy(
        suite, str(p["rm_help"]), str(p["rm_safety"]), {"suite pairs_test": [suite / "preferences" / "pairs_test.jsonl"],
                                                        "SFT samples (test prompts)": [p["sampled_test"]]},
        rule=a.safety_rule, threshold=a.safety_threshold)
    help_rm, safe_rm = load_reward_model(p["rm_help"]), load_reward_model(p["rm_safety"])
    res["reward_model_training"] = {k: json.loads((p[k].parent / "summary.json").read_text())["data"]["pairs"]
                                    for k in ("rm_help", "rm_safety")}

    # 2. Win rates against SFT, judged by the annotator panel (majority), with KL from SFT.
    t = time.time()
    outs = {k: answers_of(p[k], recs, a.max_new)[0] for k in ("sft", "ppo", "dpo", "rs")}
    texts = {k: [o.text for o in v] for k, v in outs.items()}
    # Also sampled at temperature 1, the distribution PPO and rejection sampling optimise (same seed for all).
    samp = {k: [o.text for o in answers_of(p[k], recs, a.max_new, temperature=1.0, seed=11)[0]]
            for k in ("sft", "ppo", "dpo", "rs")}

    def mean_score(ans):
        return sum(panel[0].score(r, x) for r, x in zip(recs, ans)) / len(recs)

    wins = {}
    for k in ("ppo", "dpo", "rs"):
        wins[k] = {"greedy": win_rate(panel, recs, texts[k], texts["sft"]),
                   "sampled": win_rate(panel, recs, samp[k], samp["sft"]),
                   "kl_from_sft": kl_from(p[k], p["sft"], recs[:: a.kl_stride], a.max_new),
                   "mean_score": mean_score(texts[k]), "mean_score_sampled": mean_score(samp[k])}
    wins["sft"] = {"mean_score": mean_score(texts["sft"]), "mean_score_sampled": mean_score(samp["sft"])}
    res["win_rates"] = wins
    times["eval_win_rates"] = round(time.time() - t, 1)

    # 3. Safety: among N SFT samples per prompt pick one by the helpfulness RM alone, or by Llama 2's rule with
    # the safety RM; refusal rate on harmful prompts, helpfulness (annotator score, win rate) on the others.
    t = time.time()
    n = a.bon
    sampled, _ = answers_of(p["sft"], [r for r in recs for _ in range(n)], a.max_new, temperature=1.0, seed=7)
    cand = [o.text for o in sampled]
    rep = [r for r in recs for _ in range(n)]
    h = help_rm.score([r["prompt"] for r in rep], cand)
    s = safe_rm.score([r["prompt"] for r in rep], cand)
    unsafe = torch.tensor([bool(r.get("unsafe")) for r in rep])
    # Llama 2's rule without its batch whitening (a per-prompt argmax needs comparable, not whitened, scores).
    combined, _ = safety_combination(a.safety_rule, h, s, unsafe, a.safety_threshold, whiten=False)
    pick = {"sft_sample": cand[::n]}
    for name, score in (("best_of_n_helpful", h), ("best_of_n_helpful+safety", combined)):
        best = score.view(-1, n).argmax(1)
        pick[name] = [cand[i * n + int(b)] for i, b in enumerate(best)]
    pick.update({f"{k}_greedy": texts[k] for k in ("sft", "ppo", "dpo", "rs")})
    harmful = [i for i, r in enumerate(recs) if r.get("unsafe")]
    rest = [i for i, r in enumerate(recs) if not r.get("unsafe") and r.get("cluster") != "safety"]
    benign = [i for i, r in enumerate(recs) if r.get("cluster") == "safety" and not r.get("unsafe")]
    rows = {}
    for name, ans in pick.items():
        rows[name] = {
            "refusal_harmful": sum(is_refusal(ans[i]) for i in harmful) / max(len(harmful), 1),
            "refusal_benign_lookalike": sum(is_refusal(ans[i]) for i in benign) / max(len(benign), 1),
            "helpfulness_score_rest": sum(panel[0].score(recs[i], ans[i]) for i in rest) / max(len(rest), 1),
            "win_vs_sft_sample_rest": win_rate(panel, [recs[i] for i in rest], [ans[i] for i in rest],
                                               [pick["sft_sample"][i] for i in rest])}
    res["safety"] = {"n_harmful": len(harmful), "n_benign_lookalike": len(benign), "n_rest": len(rest),
                     "samples": n, "rule": a.safety_rule, "threshold": safety_threshold(a), "rows": rows}
    times["eval_safety"] = round(time.time() - t, 1)
    return res


def report(res: dict, times: dict, cmd: str) -> str:
    L = [f"Command: `{cmd}` (CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
         f"torch {torch.__version__}); stage times (s): " + ", ".join(f"{k} {v}" for k, v in times.items()), ""]
    tr = res["reward_model_training"]
    L += [f"Reward models (trained on the suite's rankings + rankings of SFT samples: rm_help {tr['rm_help']} pairs, "
          f"rm_safety {tr['rm_safety']} pairs), accuracy on held-out comparisons; annotators on the same pairs:", "",
          "| held-out comparisons | rm_help (helpful prompts) | rm_safety (safety prompts) | Llama 2 rule (all) | "
          "two annotators agree | each annotator agrees with the label |", "| --- | --- | --- | --- | --- | --- |"]
    for name, row in res["reward_models"].items():
        if "models" not in row:  # e.g. every sampled answer tied
            L.append(f"| {name} | {row.get('skipped', '')} | | | | |")
            continue
        cells = [f"{v['accuracy']:.3f} ({v['pairs']})" for v in row["models"].values()]
        L.append(f"| {name} | " + " | ".join(cells) + f" | {row['annotator_agreement']:.3f} | " +
                 " / ".join(f"{v:.3f}" for v in row["annotator_vs_label"].values()) + " |")
    L += ["", "Chance is 0.5; pairs in parentheses.", ""]
    L += [f"Policies against SFT on {res['prompts']} held-out prompts (judge: the annotator panel's majority), greedy "
          f"answers and answers sampled at temperature 1:", "",
          "| policy | greedy: win / tie / loss | sampled: win / tie / loss | KL from SFT (nats/answer) | "
          "annotator score greedy / sampled |", "| --- | --- | --- | --- | --- |"]

    def wtl(w):
        return f"{w['win']:.3f} / {w['tie']:.3f} / {w['loss']:.3f}"

    for k in ("ppo", "dpo", "rs"):
        w = res["win_rates"][k]
        L.append(f"| {k} | {wtl(w['greedy'])} | {wtl(w['sampled'])} | {w['kl_from_sft']:.2f} | "
                 f"{w['mean_score']:.2f} / {w['mean_score_sampled']:.2f} |")
    w = res["win_rates"]["sft"]
    L.append(f"| sft | | | 0 | {w['mean_score']:.2f} / {w['mean_score_sampled']:.2f} |")
    s = res["safety"]
    L += ["", f"Safety: one of {s['samples']} SFT samples per prompt chosen by rm_help alone or by rm_help + rm_safety "
          f"with Llama 2's rule ({s['rule']}, threshold {s['threshold']}), and the trained "
          f"policies' greedy answers "
          f"({s['n_harmful']} harmful requests, {s['n_benign_lookalike']} harmless look-alikes, {s['n_rest']} other "
          f"prompts):", "",
          "| choice | refusal on harmful | refusal on look-alikes | helpfulness score (rest) | win/tie/loss vs a "
          "random sample (rest) |", "| --- | --- | --- | --- | --- |"]
    for k, r in s["rows"].items():
        w = r["win_vs_sft_sample_rest"]
        L.append(f"| {k} | {r['refusal_harmful']:.3f} | {r['refusal_benign_lookalike']:.3f} | "
                 f"{r['helpfulness_score_rest']:.2f} | {w['win']:.2f} / {w['tie']:.2f} / {w['loss']:.2f} |")
    return "\n".join(L) + "\n"


def quality(a) -> None:
    out = Path(a.out)
    times: dict = {}
    t0 = time.time()
    p = build_models(out, a, times)
    res = _timed(times, "evaluate", lambda: evaluate(p, a, times))
    times["total"] = round(time.time() - t0, 1)
    res["times"] = times
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    md = report(res, times, "python bench/rlhf.py quality " + " ".join(a.argv))
    (out / "results.md").write_text(md)
    print(md)


# ---- speed -------------------------------------------------------------------------------------------------------

SPEED_SHAPES = {
    "tiny": dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=172),   # ~0.3M + embeddings
    "small": dict(n_layer=6, d_model=256, n_head=8, n_kv_head=4, d_ff=688),  # ~5M + embeddings
}


def speed(a) -> None:
    import tempfile

    import transformers

    import lmstack
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams
    from lmstack.lm import LM
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.train.ppo import PPOConfig
    from lmstack.train.ppo import run as ppo
    from lmstack.train.rewards import RewardModel, RewardNet, Rewards

    suite = Path(a.out) / "suite"
    from lmstack.data.builtin import build_suite
    from lmstack.tokenizer import Tokenizer, train_bpe

    if not (suite / "manifest.json").exists():
        build_suite(suite, seed=0, size="tiny")
    tok_dir = Path(a.out) / "tok"
    if not (tok_dir / "tokenizer.json").exists():
        train_bpe([str(suite / "corpus" / "train.txt")], vocab_size=2048).save(tok_dir)
    tok = Tokenizer.load(tok_dir)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    rows = []
    for shape in a.shapes:
        torch.manual_seed(0)
        cfg = preset("llama-tiny", **SPEED_SHAPES[shape], vocab_size=tok.vocab_size, max_seq_len=256,
                     bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        path = Path(a.out) / f"policy_{shape}"
        LM(Transformer(cfg).eval(), tok, {}).save(path, stage="bench")
        n_params = sum(p.numel() for p in lmstack.load(path).model.parameters())
        # PPO iterations with a reward model of the same shape (its forward is part of "scoring", with the
        # reference's and the value model's).
        out = Path(a.out) / f"ppo_{shape}"
        rm_lm = lmstack.load(path)
        rewards = Rewards(RewardModel(RewardNet(rm_lm.model, cfg.d_model).eval(), tok))
        ppo(PPOConfig(model=str(path), suite=str(suite), out=str(out), steps=a.iters, rollout_batch=a.batch,
                      micro_batch=a.batch // 2, max_new_tokens=a.new_tokens, seq_len=256, quiet=True,
                      missing_eos_penalty=0.0), rewards=rewards)
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]  # first: warm-up
        split = {k: sum(r[f"time_{k}"] for r in recs) / len(recs) for k in ("generate", "score", "optimize")}
        tot = sum(split.values())
        # Rollout throughput: the same prompts, weights and batch through lmstack's engine and HF generate.
        from lmstack.data.records import read_jsonl
        prompts = [r for r in read_jsonl(suite / "tasks" / "train.jsonl") if r["style"] == "instruction"][: a.batch]
        ids = [tok.encode_chat(r["messages"][:-1], add_generation_prompt=True)[0] for r in prompts]
        lm = lmstack.load(path)
        sp = SamplingParams(max_new_tokens=a.new_tokens, temperature=1.0, seed=0, ignore_eos=True)
        generate(lm.model, ids, sp, tok)
        t = time.perf_counter()
        for _ in range(a.reps):
            generate(lm.model, ids, sp, tok)
        ours = a.reps * a.batch * a.new_tokens / (time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            lm.save(d)
            hf = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
        T = max(len(x) for x in ids)
        inp = torch.full((len(ids), T), tok.pad_id, dtype=torch.long)
        att = torch.zeros((len(ids), T), dtype=torch.long)
        for i, x in enumerate(ids):
            inp[i, T - len(x):] = torch.tensor(x)
            att[i, T - len(x):] = 1
        kw = dict(attention_mask=att, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=True,
                  temperature=1.0, top_k=0, pad_token_id=tok.pad_id)
        with torch.no_grad():
            hf.generate(inp, **kw)
            t = time.perf_counter()
            for _ in range(a.reps):
                hf.generate(inp, **kw)
        theirs = a.reps * a.batch * a.new_tokens / (time.perf_counter() - t)
        rows.append({"shape": shape, "params": n_params, "iteration_s": tot, **{f"{k}_s": v for k, v in split.items()},
                     **{f"{k}_frac": v / tot for k, v in split.items()}, "rollout_tok_s": ours, "hf_tok_s": theirs})
        print(json.dumps(rows[-1]))
    L = [f"`python bench/rlhf.py speed {' '.join(a.argv)}` — {platform.processor() or platform.machine()}, "
         f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}; "
         f"{a.batch} rollouts x {a.new_tokens} new tokens per PPO iteration, 2 PPO epochs.", "",
         "| model | params | PPO iteration (s) | generation | scoring | optimisation | rollout tok/s lmstack | "
         "tok/s transformers generate | ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        L.append(f"| {r['shape']} | {r['params'] / 1e6:.2f}M | {r['iteration_s']:.2f} | "
                 f"{r['generate_s']:.2f} s ({r['generate_frac']:.0%}) | {r['score_s']:.2f} s ({r['score_frac']:.0%}) | "
                 f"{r['optimize_s']:.2f} s ({r['optimize_frac']:.0%}) | {r['rollout_tok_s']:.0f} | {r['hf_tok_s']:.0f} | "
                 f"{r['rollout_tok_s'] / r['hf_tok_s']:.2f} |")
    md = "\n".join(L) + "\n"
    (Path(a.out) / "speed.md").write_text(md)
    (Path(a.out) / "speed.json").write_text(json.dumps(rows, indent=2))
    print(md)


def dpo_memory_child(a) -> None:
    """One process: --steps DPO steps; prints a JSON line with the peak RSS and the median step time."""
    import resource
    import statistics

    import lmstack
    from lmstack.course.pipeline import smollm2_gguf
    from lmstack.model import logprobs
    from lmstack.train.dpo import answer_logprobs, dpo_loss

    if a.one_chunk:
        logprobs.CHUNK_ELEMENTS = 1 << 62
    path = smollm2_gguf() if a.model == "smollm2" else a.model
    model = lmstack.load(path).model.train()
    model.grad_checkpointing = a.grad_checkpoint
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, model.cfg.vocab_size, (2 * a.pairs, a.seq_len), generator=g).tolist()
    starts = [a.seq_len // 2] * (2 * a.pairs)
    with torch.no_grad():
        ref = answer_logprobs(model, seqs, starts, 0, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-6)
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        lp = answer_logprobs(model, seqs, starts, 0, "cpu")
        loss, _, _ = dpo_loss(lp[: a.pairs], lp[a.pairs:], ref[: a.pairs], ref[a.pairs:], beta=0.1)
        loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"peak_rss_gib": round(peak, 2), "step_s": round(statistics.median(times), 2)}))


def memory(a) -> None:
    import subprocess
    import sys

    rows = {}
    variants = (("chunked + --grad-checkpoint", ["--grad-checkpoint"]), ("chunked", []), ("one chunk", ["--one-chunk"]))
    for name, extra in variants:
        r = subprocess.run([sys.executable, __file__, "memory-child", "--model", a.model, "--pairs", str(a.pairs),
                            "--seq-len", str(a.seq_len), "--steps", str(a.steps), *extra],
                           capture_output=True, text=True, check=True)
        rows[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{name:>27}: peak RSS {rows[name]['peak_rss_gib']:.2f} GiB, {rows[name]['step_s']:.2f} s/step", flush=True)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{a.model}: DPO, {a.pairs} pairs x {a.seq_len} tokens, fp32, full fine-tuning")
    one = rows["one chunk"]
    for name, r in rows.items():
        print(f"{name} / one chunk: memory {r['peak_rss_gib'] / one['peak_rss_gib']:.2f}x, "
              f"time {r['step_s'] / one['step_s']:.2f}x")


def rollouts(a) -> None:
    """Rollout batches as PPO/GRPO sample them (--rollout-quantize): from the dense policy, or from an int8 / int4
    copy made afresh for each batch (the copy's time counted), on the same prompts and seeds."""
    import lmstack
    from lmstack.course.pipeline import smollm2_gguf
    from lmstack.data.builtin import build_suite
    from lmstack.data.records import read_jsonl
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams
    from lmstack.train.policy import rollout_model

    lm = lmstack.load(smollm2_gguf() if a.model == "smollm2" else a.model)  # dense fp32, as a training policy
    suite = Path(a.out) / "suite"
    if not (suite / "manifest.json").exists():
        build_suite(suite, seed=0, size="tiny")
    recs = [r for r in read_jsonl(suite / "tasks" / "train.jsonl") if r["style"] == "instruction"][: a.batch]
    ids = [lm.tokenizer.encode_chat(r["messages"][:-1], add_generation_prompt=True)[0] for r in recs]
    sp = SamplingParams(max_new_tokens=a.new_tokens, temperature=1.0, seed=0, ignore_eos=True)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {a.model}, "
          f"{a.batch} rollouts x {a.new_tokens} new tokens, mean prompt {sum(map(len, ids)) / len(ids):.0f} tokens")
    base = None
    for mode in ("none", "int8", "int4"):
        times, copies = [], []
        for rep in range(a.reps + 1):
            t = time.perf_counter()
            m = rollout_model(lm.model, mode)
            c = time.perf_counter() - t
            generate(m, ids, sp, lm.tokenizer)
            if rep:  # the first is a warm-up
                times.append(time.perf_counter() - t)
                copies.append(c)
        tok_s = a.batch * a.new_tokens * len(times) / sum(times)
        base = base or tok_s
        print(f"--rollout-quantize {mode:>4}: {tok_s:7.1f} tok/s ({tok_s / base:.2f}x dense), copy + quantise "
              f"{1000 * sum(copies) / len(copies):.0f} ms of {1000 * sum(times) / len(times):.0f} ms per batch",
              flush=True)


# ---- against TRL --------------------------------------------------------------------------------------------------

PEER_LORA = {"lmstack": ["qkv", "o_proj"], "trl": ["q_proj", "k_proj", "v_proj", "o_proj"]}  # the same projections


def _peak_gib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB -> GiB


def _median_interval(marks: list[float]) -> float:
    """Median time between consecutive marks, the first interval (warm-up) left out when there are others."""
    import statistics

    gaps = [b - c for b, c in zip(marks[1:], marks[:-1])]
    return statistics.median(gaps[1:] if len(gaps) > 1 else gaps)


def peer_inputs(a) -> dict:
    """Prepared once under --out, outside the measured processes: the checkpoint converted to a folder both
    libraries load, the built-in suite, the DPO pairs tokenised by lmstack in the order lmstack's DPO visits them,
    and GRPO's prompts in the order lmstack's GRPO draws them."""
    import numpy as np

    import lmstack
    from lmstack.course.pipeline import smollm2_gguf
    from lmstack.train.dpo import encode_pairs, seeded_subset
    from lmstack.train.grpo import GRPOConfig
    from lmstack.train.prefdata import PrefConfig, load_comparisons, suite_dir
    from lmstack.train.rl import rollout_prompts

    out = Path(a.out)
    folder = out / "model"
    if not (folder / "config.json").exists():
        lmstack.load(smollm2_gguf() if a.model == "smollm2" else a.model).save(folder, stage="convert")
    suite = suite_dir(PrefConfig(out=str(out), suite_size="tiny"))
    tok = lmstack.load(folder).tokenizer
    pairs_file = suite / "preferences" / "pairs.jsonl"
    comps, _ = load_comparisons([str(pairs_file)], False, "all")
    pairs, _ = encode_pairs(tok, comps, a.seq_len, "drop")
    pairs = seeded_subset(pairs, a.pairs, 0, {}, "subset")  # what DPOConfig(max_pairs=a.pairs, seed=0) keeps
    # dpo.run's order: a seeded permutation per epoch; TRL gets the whole first epoch (its reference pass then covers
    # the same pairs), or every visit when the steps run past one epoch.
    need = a.steps * 8
    epochs = -(-need // len(pairs))
    order = np.concatenate([np.random.default_rng([0, e]).permutation(len(pairs)) for e in range(epochs)])
    rows = []
    for i in (order if epochs == 1 else order[:need]):
        c, cs, r, rs = pairs[int(i)]
        if c[:cs] != r[:rs]:
            raise SystemExit("a pair's two sequences do not share their prompt tokens")
        rows.append([c[:cs], c[cs:], r[rs:]])
    cfg = GRPOConfig(out=str(out), suite=str(suite), clusters=["arithmetic"], max_new_tokens=a.new_tokens,
                     seq_len=a.seq_len)
    records, _, _ = rollout_prompts(cfg, tok)
    rng = np.random.default_rng(0)  # grpo.run's draws for seed 0: Setup.draw, prompts_per_step at a time
    prompts = [records[int(i)] for _ in range(a.iters) for i in rng.choice(len(records), size=4, replace=len(records) < 4)]
    inputs = {"model": str(folder), "suite": str(suite), "pairs_file": str(pairs_file), "pairs": rows,
              "prompts": [{"prompt": r["prompt"], "record": json.dumps(r)} for r in prompts]}
    (out / "inputs.json").write_text(json.dumps(inputs))
    return inputs


def _lmstack_dpo(a, inp: dict) -> dict:
    from lmstack.train import dpo as D

    ref_t = [0.0]
    pair_logprobs = D.pair_logprobs

    def timed(*args, **kw):  # the reference pass (no held-out pairs here, so it is the only caller)
        t = time.perf_counter()
        r = pair_logprobs(*args, **kw)
        ref_t[0] += time.perf_counter() - t
        return r

    D.pair_logprobs = timed
    marks: list[float] = []
    out = Path(a.out) / f"lmstack_dpo_{a.mode}"
    D.run(D.DPOConfig(
        model=inp["model"], data=[inp["pairs_file"]], out=str(out), epochs=0, steps=a.steps, max_pairs=a.pairs,
        micro_batch=8, lr=a.lr, warmup=0, schedule="constant", betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0,
        beta=0.1, loss="sigmoid", seq_len=a.seq_len, precision="fp32", grad_checkpoint=a.grad_checkpoint,
        lora=a.mode == "lora", lora_r=16, lora_alpha=32.0, lora_dropout=0.0, lora_targets=PEER_LORA["lmstack"],
        log_interval=1, ckpt_interval=0, seed=0, quiet=True), step_hook=lambda s: marks.append(time.perf_counter()))
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "loss" in r and "step" in r and r["step"] >= 1]
    return {"losses": losses, "ref_s": ref_t[0], "ref_pairs": a.pairs, "step_s": _median_interval(marks)}


def _trl_dpo(a, inp: dict) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    losses: list[float] = []
    ref_t = [0.0]
    marks: list[float] = []

    class Pretokenised(DPOTrainer):
        """lmstack's token ids as they are (TRL would re-tokenise text), and the losses unrounded."""

        def _prepare_dataset(self, dataset, *args, **kw):
            return dataset

        def _precompute_ref_logps(self, *args, **kw):
            t = time.perf_counter()
            r = super()._precompute_ref_logps(*args, **kw)
            ref_t[0] += time.perf_counter() - t
            return r

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    ds = Dataset.from_list([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in inp["pairs"]])
    model = AutoModelForCausalLM.from_pretrained(inp["model"], dtype=torch.float32)
    cfg = DPOConfig(
        output_dir=str(Path(a.out) / f"trl_dpo_{a.mode}"), per_device_train_batch_size=8, max_steps=a.steps,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.1, loss_type=["sigmoid"], bf16=False, gradient_checkpointing=a.grad_checkpoint,
        precompute_ref_log_probs=True, precompute_ref_batch_size=16, max_length=None, logging_steps=1,
        save_strategy="no", report_to=[], train_sampling_strategy="sequential", use_cpu=True, seed=0,
        dataloader_num_workers=0)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=PEER_LORA["trl"]) if a.mode == "lora" else None
    trainer = Pretokenised(model=model, args=cfg, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(inp["model"]),
                           peft_config=peft, callbacks=[Marks()])
    trainer.train()
    return {"losses": losses, "ref_s": ref_t[0], "ref_pairs": len(ds), "step_s": _median_interval(marks)}


def _lmstack_grpo(a, inp: dict) -> dict:
    from lmstack.train.grpo import GRPOConfig
    from lmstack.train.grpo import run as grpo

    marks: list[float] = []
    rewards: list[float] = []

    def hook(it, rec):
        marks.append(time.perf_counter())
        rewards.append(rec["reward"])

    grpo(GRPOConfig(
        model=inp["model"], suite=inp["suite"], out=str(Path(a.out) / "lmstack_grpo"), steps=a.iters,
        prompts_per_step=4, group_size=8, inner_steps=2, micro_batch=16, max_new_tokens=a.new_tokens,
        seq_len=a.seq_len, lr=a.grpo_lr, cliprange=0.2, kl_coef=0.04, reward_rule="exact_match",
        clusters=["arithmetic"], betas=(0.9, 0.999), weight_decay=0.0, precision="fp32", log_gold=False,
        ckpt_interval=0, seed=0, quiet=True), step_hook=hook)
    return {"rewards": rewards, "iteration_s": _median_interval(marks)}


def _trl_grpo(a, inp: dict) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from lmstack.train.rewards import exact_match

    marks: list[float] = []
    rewards: list[float] = []

    def reward(prompts, completions, record, **kw):  # called once per rollout batch: one GRPO iteration
        marks.append(time.perf_counter())
        r = [exact_match(json.loads(rec), c[-1]["content"] if isinstance(c, list) else c)
             for rec, c in zip(record, completions)]
        rewards.append(sum(r) / len(r))
        return r

    ds = Dataset.from_list(inp["prompts"])
    cfg = GRPOConfig(
        output_dir=str(Path(a.out) / "trl_grpo"), num_generations=8, per_device_train_batch_size=16,
        steps_per_generation=2, num_iterations=2, max_steps=a.iters * 4, max_completion_length=a.new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.04, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        learning_rate=a.grpo_lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, gradient_checkpointing=False, shuffle_dataset=False, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_dropout=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(inp["model"], dtype=torch.float32),
                          reward_funcs=reward, args=cfg, train_dataset=ds,
                          processing_class=AutoTokenizer.from_pretrained(inp["model"], padding_side="left"))
    trainer.train()
    # The reward function marks the end of each iteration's generation; intervals between marks are iterations.
    return {"rewards": rewards, "iteration_s": _median_interval(marks)}


def peer_child(a) -> None:
    """One measured process: --impl lmstack|trl, --algo dpo|grpo; prints a JSON line."""
    inp = json.loads((Path(a.out) / "inputs.json").read_text())
    torch.manual_seed(0)
    fn = {("lmstack", "dpo"): _lmstack_dpo, ("trl", "dpo"): _trl_dpo,
          ("lmstack", "grpo"): _lmstack_grpo, ("trl", "grpo"): _trl_grpo}[a.impl, a.algo]
    r = fn(a, inp)
    r["peak_rss_gib"] = _peak_gib()
    print("RESULT " + json.dumps(r))


def peer(a) -> None:
    """DPO (full, full with activation checkpointing, LoRA) and GRPO with lmstack and TRL, each in its own process."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("trl") is None:
        print("trl is not installed: the TRL comparison is skipped (pip install trl==1.16.0 to run it)")
        return
    import transformers
    import trl

    Path(a.out).mkdir(parents=True, exist_ok=True)
    inp = peer_inputs(a)
    runs = [("dpo", "full", False), ("dpo", "full", True), ("dpo", "lora", False), ("grpo", "full", False)]
    runs = [r for r in runs if ("lora" if r[1] == "lora" else r[0]) in a.algos]  # --algos dpo / lora / grpo
    res: dict = {}
    for algo, mode, ckpt in runs:
        for impl in ("lmstack", "trl"):
            args = [sys.executable, __file__, "trl-child", "--impl", impl, "--algo", algo, "--mode", mode,
                    *(["--grad-checkpoint"] if ckpt else []), *a.argv]
            t = time.perf_counter()
            r = subprocess.run(args, capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                raise SystemExit(f"{impl} {algo} {mode} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            res[algo, mode, ckpt, impl] = {**json.loads(line[-1][7:]), "wall_s": time.perf_counter() - t}
            print(f"{impl:>7} {algo} {mode}{' +ckpt' if ckpt else ''}: " + json.dumps(
                {k: v for k, v in res[algo, mode, ckpt, impl].items() if k not in ("losses", "rewards")}), flush=True)
    head = (f"`python bench/rlhf.py trl {' '.join(a.argv)}`: {platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; {a.model}, "
            f"{len(inp['pairs'])} pairs (tokenised once), batch 8, {a.steps} steps, lr {a.lr} constant, beta 0.1, "
            f"sigmoid loss, fp32.")
    L = [head, "", "| DPO | max abs loss difference | step s lmstack | step s TRL | pairs/s ratio | reference pass "
         "pairs/s lmstack / TRL | peak GiB lmstack | peak GiB TRL | memory ratio |", "| --- " * 9 + "|"]
    for (algo, mode, ckpt, impl), r in res.items():
        if algo != "dpo" or impl != "lmstack":
            continue
        t = res[algo, mode, ckpt, "trl"]
        n = min(len(r["losses"]), len(t["losses"]))
        diff = max(abs(x - y) for x, y in zip(r["losses"][:n], t["losses"][:n]))
        L.append(f"| {mode}{' + activation checkpointing' if ckpt else ''} | {diff:.2e} over {n} steps | "
                 f"{r['step_s']:.2f} | {t['step_s']:.2f} | {t['step_s'] / r['step_s']:.2f} | "
                 f"{r['ref_pairs'] / r['ref_s']:.2f} / {t['ref_pairs'] / t['ref_s']:.2f} | {r['peak_rss_gib']:.2f} | "
                 f"{t['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / t['peak_rss_gib']:.2f} |")
    if ("grpo", "full", False, "lmstack") in res:
        r, t = res["grpo", "full", False, "lmstack"], res["grpo", "full", False, "trl"]

        def curve(x):
            k = max(1, len(x) // 4)
            return f"{sum(x[:k]) / k:.3f} -> {sum(x[-k:]) / k:.3f}"

        L += ["", f"GRPO: {a.iters} iterations x 4 arithmetic prompts x 8 answers of <= {a.new_tokens} tokens, exact-match "
              f"reward, 2 updates of 16 answers per iteration, clip 0.2, KL 0.04, lr {a.grpo_lr}.", "",
              "| GRPO | s / iteration | iterations/s ratio | reward, first -> last quarter | peak GiB |",
              "| --- | --- | --- | --- | --- |",
              f"| lmstack | {r['iteration_s']:.2f} | {t['iteration_s'] / r['iteration_s']:.2f} | {curve(r['rewards'])} | "
              f"{r['peak_rss_gib']:.2f} |",
              f"| TRL | {t['iteration_s']:.2f} | 1.00 | {curve(t['rewards'])} | {t['peak_rss_gib']:.2f} |"]
    md = "\n".join(L) + "\n"
    (Path(a.out) / "trl.md").write_text(md)
    (Path(a.out) / "trl.json").write_text(json.dumps({" ".join(map(str, k)): v for k, v in res.items()}, indent=1))
    print(md)


def main(argv=None):
    import sys

    from lmstack.train.rewards import SAFETY_RULES

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--out", default="runs/rlhf")
    q.add_argument("--threads", type=int, default=0, help="torch threads (1 is faster on a CPU shared with other jobs)")
    q.add_argument("--layers", type=int, default=4, help="llama-mini with this many layers")
    q.add_argument("--seq-len", type=int, default=192)
    q.add_argument("--pretrain-steps", type=int, default=400)
    q.add_argument("--sft-epochs", type=float, default=2.0)
    q.add_argument("--rm-epochs", type=float, default=3.0)
    q.add_argument("--safety-repeat", type=int, default=2, help="copies of the safety records in the SFT data")
    q.add_argument("--label-prompts", type=int, default=1024, help="train prompts whose SFT samples are ranked")
    q.add_argument("--dpo-epochs", type=float, default=1.0)
    q.add_argument("--rs-prompts", type=int, default=128)
    q.add_argument("--ppo-steps", type=int, default=48)
    q.add_argument("--ppo-lr", type=float, default=5e-5)
    q.add_argument("--kl-target", type=float, default=1.5)
    q.add_argument("--dpo-lr", type=float, default=1e-4)
    q.add_argument("--max-new", type=int, default=32)
    q.add_argument("--eval-tasks", type=int, default=0, help="first N test task prompts (0: all)")
    q.add_argument("--kl-stride", type=int, default=3, help="KL estimated on every k-th prompt")
    q.add_argument("--bon", type=int, default=4, help="samples per prompt for the safety comparison")
    q.add_argument("--safety-rule", default="llama2", choices=SAFETY_RULES,
                   help="how the two reward models combine (lmstack.train.rewards.safety_combination)")
    q.add_argument("--safety-threshold", type=float, default=None,
                   help="the safety RM decides below this (default: the rule's own; llama2: 0.15 on the sigmoid "
                        "scale, llama2-zscore: -1.0 standard deviations)")
    s = sub.add_parser("speed")
    s.add_argument("--out", default="runs/rlhf_speed")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.add_argument("--shapes", nargs="+", default=list(SPEED_SHAPES))
    s.add_argument("--iters", type=int, default=4)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--new-tokens", type=int, default=32)
    s.add_argument("--reps", type=int, default=2)
    for name in ("memory", "memory-child"):
        m = sub.add_parser(name)
        m.add_argument("--model", default="smollm2", help="a checkpoint folder or GGUF file, or smollm2")
        m.add_argument("--pairs", type=int, default=8)
        m.add_argument("--seq-len", type=int, default=256)
        m.add_argument("--steps", type=int, default=3)
        m.add_argument("--threads", type=int, default=0)
        m.add_argument("--one-chunk", action="store_true", help=argparse.SUPPRESS)
        m.add_argument("--grad-checkpoint", action="store_true", help=argparse.SUPPRESS)
    ro = sub.add_parser("rollouts")
    ro.add_argument("--model", default="smollm2", help="a checkpoint folder or GGUF file, or smollm2")
    ro.add_argument("--out", default="runs/rlhf_rollouts")
    ro.add_argument("--batch", type=int, default=16)
    ro.add_argument("--new-tokens", type=int, default=32)
    ro.add_argument("--reps", type=int, default=3)
    ro.add_argument("--threads", type=int, default=0)
    for name in ("trl", "trl-child"):
        t = sub.add_parser(name)
        t.add_argument("--out", default="runs/rlhf_trl")
        t.add_argument("--model", default="smollm2", help="a checkpoint folder or GGUF file, or smollm2")
        t.add_argument("--pairs", type=int, default=252)
        t.add_argument("--steps", type=int, default=20)
        t.add_argument("--lr", type=float, default=5e-6)
        t.add_argument("--seq-len", type=int, default=256)
        t.add_argument("--iters", type=int, default=8, help="GRPO iterations")
        t.add_argument("--new-tokens", type=int, default=32)
        t.add_argument("--grpo-lr", type=float, default=1e-5)
        t.add_argument("--algos", nargs="+", default=["dpo", "lora", "grpo"], choices=["dpo", "lora", "grpo"])
        t.add_argument("--threads", type=int, default=0)
        if name == "trl-child":
            t.add_argument("--impl", choices=["lmstack", "trl"], required=True)
            t.add_argument("--algo", choices=["dpo", "grpo"], required=True)
            t.add_argument("--mode", choices=["full", "lora"], default="full")
            t.add_argument("--grad-checkpoint", action="store_true")
    a = ap.parse_args(argv)
    a.argv = argv[1:]
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    {"quality": quality, "speed": speed, "memory": memory, "memory-child": dpo_memory_child, "trl": peer,
     "trl-child": peer_child, "rollouts": rollouts}[a.cmd](a)


if __name__ == "__main__":
    main()
