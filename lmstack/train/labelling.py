"""InstructGPT's labelling step with simulated labelers: answers sampled from a policy, ranked by the
built-in suite's annotators into training data for a reward model (and the SFT policy's own answers, on
which a reward model's scores are normalised)."""

from __future__ import annotations

from tqdm import tqdm

from lmstack.infer.engine import generate
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import load
from lmstack.train.prefdata import encode_prompts


def sft_answers(policy_path: str, prompts: list[list[dict]], max_new_tokens: int, seed: int, device) -> list[str]:
    """Answers the SFT policy samples for prompts (a reward model's normalisation set)."""
    lm = load(policy_path, device=device)
    ids = [lm.tokenizer.encode_chat(p, add_generation_prompt=True)[0] for p in prompts]
    ctx = lm.config.max_seq_len
    ids = [i[-(ctx - max_new_tokens):] for i in ids]
    outs = generate(lm.model, ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed),
                    lm.tokenizer)
    return [o.text for o in outs]


def sample_rankings(model_path: str, records: list[dict], k: int, panel, max_new_tokens: int, seed: int,
                    device, split: str = "train", bars: bool = False) -> tuple[list[dict], dict]:
    """InstructGPT's labelling step with simulated labelers: k answers sampled from the policy for each prompt,
    ranked best to worst by one annotator of the panel (rotating). Answers the annotator calls a tie form one
    tied group of the ranking (no comparison inside it); prompts with fewer than two distinct answers are
    counted, not ranked. bars: a transient progress bar over the sampling."""
    lm = load(model_path, device=device)
    records, ids, dropped = encode_prompts(lm.tokenizer, records, lm.config.max_seq_len - max_new_tokens)
    rows = [i for i in range(len(records)) for _ in range(k)]
    outs = []
    chunk = 256  # a bounded batch (and a progress bar) however many prompts are labelled
    for s in tqdm(range(0, len(rows), chunk), desc=f"  sampling {split}", leave=False, disable=not bars):
        sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed + s)
        outs += generate(lm.model, [ids[i] for i in rows[s:s + chunk]], sp, lm.tokenizer)
    stats = {"prompts": len(records), "dropped_overlong": dropped, "one_distinct_answer": 0}
    out = []
    for n, rec in enumerate(records):
        answers = list(dict.fromkeys(o.text.strip() for o in outs[n * k:(n + 1) * k] if o.text.strip()))
        if len(answers) < 2:
            stats["one_distinct_answer"] += 1
            continue
        ann = panel[n % len(panel)]
        order = ann.rank(rec, answers)
        groups = [[order[0]]]
        for i in order[1:]:
            if ann.compare(rec, answers[groups[-1][-1]], answers[i]) == "tie":
                groups[-1].append(i)
            else:
                groups.append([i])
        out.append({"id": f"sampled-{split}-{n:05d}", "prompt": rec["prompt"], "answers": answers,
                    "ranking": [g if len(g) > 1 else g[0] for g in groups], "annotator": ann.name,
                    "unsafe": bool(rec.get("unsafe")), "cluster": rec.get("cluster", ""),
                    "scores": [round(ann.score(rec, a), 3) for a in answers], "source": "policy_samples"})
    return out, stats
