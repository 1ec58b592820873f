"""InstructGPT's labelling step with the suite's simulated annotators."""

import json

from lmstack.data.builtin import build_suite
from lmstack.train.labelling import sample_rankings
from lmstack.train.prefdata import PrefConfig, load_comparisons, load_prompts, suite_judge


def write(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return str(path)


def msg(t):
    return [{"role": "user", "content": t}]


def test_policy_samples_ranked_by_annotators(tiny_ckpt, tmp_path):
    """InstructGPT's labelling step: K sampled answers per prompt, ranked by a simulated annotator, ties grouped."""
    build_suite(tmp_path / "suite", seed=0, size="tiny")
    recs, _ = load_prompts(PrefConfig(suite=str(tmp_path / "suite"), out=str(tmp_path)))
    short = [r for r in recs if len(r["prompt"][0]["content"]) < 40][:4]
    ranks, st = sample_rankings(str(tiny_ckpt), short, 3, suite_judge(tmp_path / "suite"), 6, 0, "cpu")
    assert st["prompts"] + st["dropped_overlong"] == 4
    for r in ranks:
        flat = [i for g in r["ranking"] for i in (g if isinstance(g, list) else [g])]
        assert sorted(flat) == list(range(len(r["answers"]))) and len(set(r["answers"])) == len(r["answers"])
    path = write(tmp_path / "s.jsonl", ranks + [{"id": "x", "prompt": msg("Q"), "chosen": "a", "rejected": "b"}])
    comps, _ = load_comparisons([path])  # the rankings read back as training data
    assert comps
