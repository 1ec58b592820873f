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
    a = ap.parse_args(argv)
    a.argv = argv[1:]
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    {"quality": quality, "speed": speed, "memory": memory, "memory-child": dpo_memory_child}[a.cmd](a)


if __name__ == "__main__":
    main()
