"""Multiple-choice scoring (lm-evaluation-harness's loglikelihood requests): lmstack against lm-eval's own
`transformers` backend (HFLM) on the same requests and weights, in one run.

    python bench/scoring.py --model runs/smollm2/sft/sft/instructions/model --suite runs/smollm2/data/suite

The requests are FLAN's rank classification as `lmstack flan` asks it: every option of a held-out item after
the same prompt, zero-shot and few-shot (plain prompts, shots from the held-out clusters' training items).
lmstack scores the options of one prompt in one row (the prompt once, each option packed after it) and runs only
the options' positions through the output layer; lm-eval runs each (prompt, option) pair and caches the logits
of one-token options that share a prompt (`logits_cache`, its default). Reported: requests/s of each, the
ratio, and the largest difference between the two log-likelihoods (both fp32). --no-lm-eval: lmstack only.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import torch


def requests(lm, suite: Path, clusters: list[str], items: int, shots: int, seed: int) -> list[tuple[str, str]]:
    from lmstack.train.flan import _sample, contexts, read_records

    recs = _sample(read_records(suite, "test", clusters), items, seed)
    pool = read_records(suite, "train", clusters)
    rng = random.Random(seed)
    out = []
    for r in recs:
        demo = rng.sample([p for p in pool if p["task"] == r["task"]], shots) if shots else None
        c = contexts(lm, [r], "plain", demo)[0]
        out += [(c, " " + ch) for ch in r["choices"] or []]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a Hugging Face folder lmstack and transformers both load")
    ap.add_argument("--suite", required=True, help="a built-in suite folder (lmstack data builtin)")
    ap.add_argument("--clusters", nargs="+", default=["nli", "commonsense"])
    ap.add_argument("--items", type=int, default=20, help="test items per task")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-lm-eval", action="store_true")
    args = ap.parse_args()

    from lmstack.infer.logprobs import loglikelihood
    from lmstack.lm import load

    lm = load(args.model)
    hf = None
    if not args.no_lm_eval:
        from lm_eval.models.huggingface import HFLM

        hf = HFLM(pretrained=args.model, device="cpu", dtype="float32", batch_size=args.batch_size)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"model {args.model}; batch {args.batch_size}")
    print("| shots | requests | lmstack req/s | lm-eval HFLM req/s | lmstack / lm-eval | largest log-lik difference |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in args.shots:
        reqs = requests(lm, Path(args.suite), args.clusters, args.items, k, 0)
        t = time.perf_counter()
        ours = [r.logprob for r in loglikelihood(lm.model, lm.tokenizer, reqs, batch_size=args.batch_size)]
        t_ours = time.perf_counter() - t
        row = f"| {k} | {len(reqs)} | {len(reqs) / t_ours:.2f} |"
        if hf is not None:
            from lm_eval.api.instance import Instance

            inst = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)]
            t = time.perf_counter()
            theirs = [ll for ll, _ in hf.loglikelihood(inst, disable_tqdm=True)]
            t_hf = time.perf_counter() - t
            diff = max(abs(a - b) for a, b in zip(ours, theirs))
            row += f" {len(reqs) / t_hf:.2f} | {t_hf / t_ours:.2f}x | {diff:.1e} |"
        else:
            row += " — | — | — |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
