"""FLAN protocol pieces: rank classification, exact match, split hygiene of the held-out cluster."""

import pytest

from lmstack.text import normalize
from lmstack.train.flan import FlanConfig, evaluate_records, run


def test_normalize():
    assert normalize("  The Yes. ") == "yes"
    assert normalize("It is not possible to tell!") == "it is not possible to tell"
    assert normalize("Paris") == normalize("paris.")


def test_rank_classification_picks_highest_loglikelihood(tiny_lm):
    from lmstack.infer.logprobs import loglikelihood

    rec = {"id": "x", "task": "t", "choices": ["yes", "no", "maybe"], "target": "no",
           "messages": [{"role": "user", "content": "Is the cat small?"}, {"role": "assistant", "content": "no"}]}
    res = evaluate_records(tiny_lm, [rec], "plain")
    ctx = "Is the cat small?\nAnswer:"
    lls = [r.logprob for r in loglikelihood(tiny_lm.model, tiny_lm.tokenizer, [(ctx, " " + c) for c in rec["choices"]])]
    want = rec["choices"][lls.index(max(lls))]
    assert res["items"][0]["rank_pred"] == want
    assert res["tasks"]["t"]["rank_acc"] == (1.0 if want == "no" else 0.0)


def test_end_to_end_writes_all_tables(tmp_path):
    res = run(FlanConfig(out=str(tmp_path), hold_out="sentiment", steps=3, pretrain_steps=3, eval_items=3,
                         micro_batch=4, seq_len=128, cluster_study=True))
    r = res.summary
    assert res.artifacts["model"] == str(tmp_path / "sft" / "instructions" / "model")
    assert res.artifacts["report"] == str(tmp_path / "flan_report.md")
    assert all(__import__("os").path.exists(p) for p in res.artifacts.values()), res.artifacts
    rep = (tmp_path / "flan_report.md").read_text()
    for row in ("base, zero-shot", "instruction-tuned, zero-shot", "dataset name -> dataset name",
                "no instruction -> no instruction", "## Number of training clusters"):
        assert row in rep
    assert "sentiment" not in r["train_clusters"]
    assert sorted(int(k) for k in r["cluster_study"]) == [1, 2, 4, 8]
    assert (tmp_path / "flan_clusters.png").exists()
    held_ids = {it["id"] for it in map(__import__("json").loads, (tmp_path / "flan_items.jsonl").open())}
    train_text = (tmp_path / "sft_data" / "instructions.jsonl").read_text()
    assert held_ids and not any(i in train_text for i in held_ids)


def test_unknown_cluster_is_an_error(tmp_path):
    from lmstack.errors import LmstackError

    with pytest.raises(LmstackError, match="not a cluster"):
        run(FlanConfig(out=str(tmp_path), hold_out="astrology"))
