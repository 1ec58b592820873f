"""FLAN protocol pieces: rank classification, exact match, one BOS in chat prompts, the instruction ablation
as the paper ran it (Figure 8), several held-out clusters (pooled and per cluster), exact match on the seen
clusters, split hygiene of the held-out clusters."""

import json
import os
from pathlib import Path

import pytest

from lmstack.text import normalize
from lmstack.train import flan
from lmstack.train.flan import ABLATION, ABLATION_PAPER, FlanConfig, evaluate_records, run

from ..chat_bos import Fed, bos_run, lm


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


_REC = {"id": "x", "task": "t", "choices": ["yes", "no"], "target": "no",
        "messages": [{"role": "user", "content": "Is the cat small?"}, {"role": "assistant", "content": "no"}]}


@pytest.mark.parametrize("style", ["llama2", "llama3"])
def test_chat_evaluation_feeds_one_bos_with_a_bos_template(style):
    """A tuned model whose chat template writes {{ bos_token }}: rank classification scores, and exact
    match generates from, the template's token ids, with exactly one BOS at the start."""
    m = lm(style, add_bos=True)
    tok = m.tokenizer
    ids = tok.encode_chat(_REC["messages"][:1], add_generation_prompt=True)[0]
    with Fed(m.model) as fed:
        evaluate_records(m, [_REC], "chat", max_new_tokens=2)
    assert len(fed.scored) == 1 and len(fed.prompts) == 1  # the item's two options share one scored row
    for row in fed.scored + fed.prompts:
        assert bos_run(row, tok.bos_id) == 1
    assert fed.prompts == [ids]  # generation: the template's ids
    for row in fed.scored:  # scoring: the same, up to the trailing whitespace lm-eval's split moves on
        assert row[:len(ids) - 1] == ids[:-1]


def test_chat_evaluation_without_bos_in_the_template_keeps_todays_bos(tiny_lm):
    """ChatML writes no BOS: the prompts get the tokenizer's BOS when it adds one, none otherwise."""
    for m, n_bos in ((tiny_lm, 0), (lm("chatml", add_bos=False), 0), (lm("chatml", add_bos=True), 1)):
        tok = m.tokenizer
        ids = tok.encode_chat(_REC["messages"][:1], add_generation_prompt=True)[0]
        with Fed(m.model) as fed:
            evaluate_records(m, [_REC], "chat", max_new_tokens=2)
        assert fed.prompts == [[tok.bos_id] * n_bos + ids]
        assert all(bos_run(row, tok.bos_id) == n_bos and row[n_bos:n_bos + 3] == ids[:3] for row in fed.scored)


# ---- the whole protocol on a tiny run ------------------------------------------------------------------------

def test_accuracy_is_pooled_over_items_not_averaged_over_tasks(tiny_lm):
    """Task a has one item, task b three: rank_acc is the share of the four items ranked right (each item
    counts once), with n = 4 for its standard error, not the mean of the two tasks' accuracies."""
    recs = [{**_REC, "id": f"{t}{i}", "task": t, "cluster": c} for t, c, k in (("a", "x", 1), ("b", "y", 3))
            for i in range(k)]
    preds = [it["rank_pred"] for it in evaluate_records(tiny_lm, recs, "plain", max_new_tokens=1)["items"]]
    other = {"yes": "no", "no": "yes"}  # a's item ranked right, b's three wrong
    recs = [{**r, "target": p if r["task"] == "a" else other[p]} for r, p in zip(recs, preds)]
    res = evaluate_records(tiny_lm, recs, "plain", max_new_tokens=1)
    assert [it["rank_correct"] for it in res["items"]] == [True, False, False, False]
    assert (res["rank_acc"], res["n"], res["n_em"]) == (0.25, 4, 4)
    assert (res["tasks"]["a"]["rank_acc"], res["tasks"]["b"]["rank_acc"]) == (1.0, 0.0)
    assert res["em_acc"] == sum(it["em_correct"] for it in res["items"]) / 4
    per = flan.by_cluster({"m": res}, ["x", "y"])
    assert (per["x"]["m"]["rank_acc"], per["x"]["m"]["n"], per["y"]["m"]["rank_acc"], per["y"]["m"]["n"]) == \
        (1.0, 1, 0.0, 3)


def test_items_without_options_count_for_exact_match_only(tiny_lm):
    recs = [{**_REC, "id": "c"}, {**_REC, "id": "g", "choices": None}]
    res = evaluate_records(tiny_lm, recs, "plain", max_new_tokens=1)
    assert (res["n"], res["n_em"]) == (1, 2) and res["items"][1]["rank_correct"] is None


HOLD = ["sentiment", "nli"]  # the held-out clusters of the tiny run


@pytest.fixture(scope="module")
def flan_run(tmp_path_factory):
    """One small run of the protocol with two held-out clusters, recording which model each evaluation
    loaded and which records (by style and cluster) and prompt format it evaluated:
    [model path, {styles}, fmt, {clusters}] per evaluation."""
    out = tmp_path_factory.mktemp("flan")
    evals = []
    load, evaluate = flan.load, flan.evaluate_records

    def loading(path, *a, **k):
        evals.append([path])
        return load(path, *a, **k)

    def evaluating(lm_, recs, fmt, *a, **k):
        evals[-1] += [{r["style"] for r in recs}, fmt, {r["cluster"] for r in recs}]
        return evaluate(lm_, recs, fmt, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flan, "load", loading)
        mp.setattr(flan, "evaluate_records", evaluating)
        res = run(FlanConfig(out=str(out), hold_out=HOLD, steps=3, pretrain_steps=3, eval_items=3, seen_items=3,
                             micro_batch=4, seq_len=128, cluster_study=True))
    return out, res, evals


def test_end_to_end_writes_all_tables(flan_run):
    tmp_path, res, _ = flan_run
    r = res.summary
    assert res.artifacts["model"] == str(tmp_path / "sft" / "instructions" / "model")
    assert res.artifacts["report"] == str(tmp_path / "flan_report.md")
    assert all(os.path.exists(p) for p in res.artifacts.values()), res.artifacts
    rep = (tmp_path / "flan_report.md").read_text()
    for row in ("base, zero-shot", "instruction-tuned, zero-shot", "dataset name -> dataset name",
                "no template -> instructions", "## Number of training clusters", "| sentiment | ", "| nli | ",
                "## Training clusters: seen tasks", "| arithmetic | ", " ± "):
        assert row in rep
    assert r["hold_out"] == r["config"]["hold_out"] == HOLD
    assert not set(HOLD) & set(r["train_clusters"]) and len(r["train_clusters"]) == 7
    assert sorted(int(k) for k in r["cluster_study"]) == [1, 2, 4, 7]
    assert (tmp_path / "flan_clusters.png").exists()


def test_ablation_rows_are_the_papers_figure_8(flan_run):
    """Wei et al. (Section 4.3, Figure 8): models tuned with no template (inputs and outputs only), with
    the dataset name prepended, and with instructions (FLAN); the no-template model is evaluated with
    instructions, the dataset-name model with instructions and with dataset names."""
    paper = {  # finetuning format -> evaluation format: (tuning records' style, evaluated records' style)
        "instructions -> instructions": ("instruction", "instruction"),
        "dataset name -> instructions": ("dataset_name", "instruction"),
        "dataset name -> dataset name": ("dataset_name", "dataset_name"),
        "no template -> instructions": ("no_instruction", "instruction"),
    }
    assert ABLATION == paper
    assert ABLATION_PAPER == {"instructions -> instructions": 55.2, "dataset name -> instructions": 46.6,
                              "dataset name -> dataset name": 47.0, "no template -> instructions": 37.3}
    out, res, evals = flan_run
    rows = res.summary["ablation"]
    assert list(rows) == list(paper)
    for label, (tuned, evaluated) in paper.items():
        assert (rows[label]["finetuned_with"], rows[label]["evaluated_with"]) == (tuned, evaluated)
    assert rows["instructions -> instructions"]["rank_acc"] == res.summary["flan_zero_shot"]["rank_acc"]
    # what was run: each tuned model, evaluated on the held-out records of the row's evaluation format
    tag = {"instruction": "instructions", "dataset_name": "dataset_name", "no_instruction": "no_instruction"}
    ran = [(Path(p).parent.name, styles, fmt) for p, styles, fmt, _ in evals]
    for tuned, evaluated in paper.values():
        assert (tag[tuned], {evaluated}, "chat") in ran
    assert not any("no_instruction" in styles for _, styles, _ in ran)  # never evaluated without a template
    # and each model was tuned on its format
    suite = Path(res.summary["suite"])
    for tuned in ("dataset_name", "no_instruction"):
        recs = flan.read_records(suite, "train", res.summary["train_clusters"], tuned)
        data = [json.loads(line)["messages"] for line in open(out / "sft_data" / f"{tag[tuned]}.jsonl")]
        assert data == [r["messages"] for r in recs]
    rep = (out / "flan_report.md").read_text()
    assert "| no template -> instructions |" in rep and "37.3 (paper)" in rep


def _user(messages) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def _mixture_text(out: Path) -> str:
    mixtures = sorted((out / "sft_data").glob("*.jsonl"))
    assert mixtures
    return "\n\n".join(m["content"] for f in mixtures for line in open(f) for m in json.loads(line)["messages"])


def _leaks(out: Path, splits=("test",)) -> list[str]:
    """Items of the held-out clusters (every style, of `splits`) whose prompt appears in the text of any
    training mixture of the run (sft_data/*.jsonl), by id. A target alone ("yes", "no") is shared by every
    task and identifies no item, so an item is found by its prompt, which carries its input."""
    results = json.loads((out / "flan_results.json").read_text())
    held = [r for s in splits for r in flan.read_records(Path(results["suite"]), s, results["hold_out"], style=None)]
    evaluated = {json.loads(line)["id"] for line in open(out / "flan_items.jsonl")}
    assert evaluated and evaluated <= {r["id"] for r in held}  # the check covers every item evaluated
    train = _mixture_text(out)
    return sorted(r["id"] for r in held if _user(r["messages"]) in train)


def test_split_hygiene_no_held_out_item_in_training(flan_run):
    out, _, _ = flan_run
    assert _leaks(out) == []


def test_two_held_out_clusters_neither_in_any_training_mixture(flan_run):
    """One tuning run leaves both held-out clusters out: no item of either (any split, any style) is in the
    text of any mixture, while the training clusters' items are (the comparison can find what is there)."""
    out, res, _ = flan_run
    assert _leaks(out, ("train", "test")) == []
    suite, train = Path(res.summary["suite"]), _mixture_text(out)
    for c in res.summary["train_clusters"]:
        assert any(_user(r["messages"]) in train for r in flan.read_records(suite, "train", [c])[:20]), c
    data = [json.loads(line)["messages"] for line in open(out / "sft_data" / "instructions.jsonl")]
    assert data == [r["messages"] for r in flan.read_records(suite, "train", res.summary["train_clusters"])]


def test_two_held_out_clusters_pooled_and_per_cluster(flan_run):
    """Each held-out cluster is evaluated (base zero-shot and few-shot, tuned zero-shot); the pooled numbers
    are over all held-out items: n adds up over the clusters, and rank_acc (em_acc) is the item-weighted
    mean of the clusters' accuracies."""
    out, res, evals = flan_run
    r = res.summary
    assert list(r["clusters"]) == HOLD
    items = [json.loads(line) for line in open(out / "flan_items.jsonl")]
    for key in ("base_zero_shot", "base_few_shot", "flan_zero_shot"):
        per, top = [r["clusters"][c][key] for c in HOLD], r[key]
        assert set(top) == {"rank_acc", "em_acc", "n", "n_em", "tasks"}
        assert all(p["n"] > 0 for p in per) and sum(p["n"] for p in per) == top["n"]
        assert sum(p["n_em"] for p in per) == top["n_em"]
        assert top["rank_acc"] == pytest.approx(sum(p["rank_acc"] * p["n"] for p in per) / top["n"])
        assert top["em_acc"] == pytest.approx(sum(p["em_acc"] * p["n_em"] for p in per) / top["n_em"])
        mine = [it for it in items if it["run"] == key]
        assert {it["cluster"] for it in mine} == set(HOLD)
        assert top["n"] == sum(it["rank_correct"] is not None for it in mine)
        assert top["rank_acc"] == pytest.approx(sum(bool(it["rank_correct"]) for it in mine) / top["n"])
        assert sum(t["n_em"] for t in top["tasks"].values()) == len(mine) == top["n_em"]
        assert sum(t["n"] for t in top["tasks"].values()) == top["n"]
    held_evals = [e for e in evals if e[3] & set(HOLD)]
    assert all(e[3] == set(HOLD) for e in held_evals)  # every held-out evaluation covers both clusters


def test_seen_clusters_exact_match_only_on_training_clusters(flan_run):
    """Exact match on seen clusters: test items of the training clusters only (seen_items per task, the
    instruction style), for the base model (plain, zero-shot) and the tuned model (chat)."""
    out, res, evals = flan_run
    r = res.summary
    sc = r["seen_clusters"]
    assert set(sc) == {"base_zero_shot", "flan_zero_shot", "clusters"}
    assert list(sc["clusters"]) == r["train_clusters"]
    for key in ("base_zero_shot", "flan_zero_shot"):
        assert set(sc[key]) == {"rank_acc", "em_acc", "n", "n_em", "tasks"}
        assert sum(sc["clusters"][c][key]["n_em"] for c in r["train_clusters"]) == sc[key]["n_em"]
        assert all(t["n_em"] == 3 for t in sc[key]["tasks"].values())
        assert sc[key]["n"] == sum(t["n"] for t in sc[key]["tasks"].values()) < sc[key]["n_em"]  # some without options
    test = {x["id"]: x for x in flan.read_records(Path(r["suite"]), "test", r["train_clusters"])}
    seen = [json.loads(line) for line in open(out / "flan_seen_items.jsonl")]
    assert res.artifacts["seen_items"] == str(out / "flan_seen_items.jsonl")
    assert {it["run"] for it in seen} == {"base_zero_shot", "flan_zero_shot"}
    assert all(it["id"] in test and it["cluster"] in r["train_clusters"] for it in seen)
    assert not {it["cluster"] for it in seen} & set(HOLD)
    ran = [(Path(p).parent.name, styles, fmt) for p, styles, fmt, clusters in evals if not clusters & set(HOLD)]
    assert ran == [("base", {"instruction"}, "plain"), ("instructions", {"instruction"}, "chat")]


def test_split_hygiene_check_catches_a_leak(flan_run, tmp_path, monkeypatch):
    """The check above can fail: one evaluated held-out item slipped into the training mixture is found."""
    out, res, _ = flan_run
    suite, hold = Path(res.summary["suite"]), res.summary["hold_out"]
    leaked = flan._sample(flan.read_records(suite, "test", hold[-1:]), 3, 0)[0]  # an item the run evaluates
    read = flan.read_records

    def leaky(suite_, split, clusters=None, style="instruction"):
        recs = read(suite_, split, clusters, style)
        if split == "train" and clusters is not None and not set(hold) & set(clusters):
            recs = recs + [leaked]
        return recs

    monkeypatch.setattr(flan, "read_records", leaky)
    run(FlanConfig(out=str(tmp_path), base=res.summary["base"], suite=str(suite), hold_out=hold, steps=1,
                   eval_items=3, micro_batch=4, seq_len=128, ablation=False, cluster_study=False, seen_eval=False))
    assert leaked["id"] in {json.loads(line)["id"] for line in open(tmp_path / "flan_items.jsonl")}
    assert leaked["id"] in _leaks(tmp_path)


def test_a_single_held_out_cluster_as_a_string(flan_run, tmp_path):
    """`hold_out: sentiment` (a string, as the course's YAML configs write it) is one held-out cluster."""
    out, res, _ = flan_run
    r = run(FlanConfig(out=str(tmp_path), base=res.summary["base"], suite=res.summary["suite"], hold_out="sentiment",
                       steps=1, eval_items=3, micro_batch=4, seq_len=128, ablation=False, cluster_study=False,
                       seen_eval=False)).summary
    assert (r["hold_out"], r["config"]["hold_out"], list(r["clusters"])) == (["sentiment"], "sentiment", ["sentiment"])
    assert r["train_clusters"] == [c for c in flan.CLUSTERS if c != "sentiment"] and "seen_clusters" not in r
    assert r["clusters"]["sentiment"]["flan_zero_shot"]["n"] == r["flan_zero_shot"]["n"] == 6  # 2 tasks x 3 items
    assert r["clusters"]["sentiment"]["flan_zero_shot"]["rank_acc"] == r["flan_zero_shot"]["rank_acc"]
    assert "held-out cluster `sentiment`" in (tmp_path / "flan_report.md").read_text()
    # the sentiment items evaluated are the ones the two-cluster run evaluated: samples are drawn per cluster
    def sentiment_ids(folder):
        return {it["id"] for it in map(json.loads, open(folder / "flan_items.jsonl")) if it["cluster"] == "sentiment"}

    assert sentiment_ids(tmp_path) == sentiment_ids(out)


def test_held_out_commonsense_gets_the_knowledge_probe(flan_run, tmp_path):
    """Holding out commonsense probes its situation items in the corpus's phrasing for base and tuned model, beside
    the same items asked as the task asks them; the report says both."""
    _, res, _ = flan_run
    r = run(FlanConfig(out=str(tmp_path), base=res.summary["base"], suite=res.summary["suite"], hold_out="commonsense",
                       steps=1, eval_items=4, micro_batch=4, seq_len=128, ablation=False, cluster_study=False,
                       seen_eval=False)).summary
    k = r["knowledge_probe"]
    situations = [it for it in map(json.loads, open(tmp_path / "flan_items.jsonl"))
                  if it["task"] == "commonsense_situations" and it["run"] == "base_zero_shot"]
    assert k["tasks"] == ["commonsense_situations"] and k["n"] == len(situations) == 4
    assert k["base_asked"] == sum(it["rank_correct"] for it in situations) / 4
    assert all(0.0 <= k[x] <= 1.0 for x in ("base_stated", "tuned_stated", "tuned_asked"))
    assert "Knowledge probe (commonsense_situations, 4 held-out items" in (tmp_path / "flan_report.md").read_text()


def test_hold_out_from_yaml_and_command_line():
    from lmstack.cli import build_parser
    from lmstack.options import from_dict

    for value, want in (("commonsense", ["commonsense"]), (["commonsense", "nli"], ["commonsense", "nli"])):
        assert flan.held_out(from_dict(FlanConfig, {"hold_out": value}, "c.yaml: stage sft")) == want
    ap = build_parser()
    assert ap.parse_args(["flan", "--hold-out", "commonsense", "nli"]).hold_out == ["commonsense", "nli"]
    assert ap.parse_args(["flan", "--hold-out", "commonsense"]).hold_out == ["commonsense"]
    a = ap.parse_args(["flan"])
    assert (a.hold_out, a.seen_eval, a.seen_items) == ("nli", True, 10)
    assert flan.held_out(FlanConfig(hold_out=["nli", "nli"])) == ["nli"]


def test_unknown_cluster_is_an_error(tmp_path):
    from lmstack.errors import LmstackError

    with pytest.raises(LmstackError, match="not a cluster"):
        run(FlanConfig(out=str(tmp_path), hold_out="astrology"))
    with pytest.raises(LmstackError, match="'astrology': not a cluster"):
        run(FlanConfig(out=str(tmp_path), hold_out=["nli", "astrology"]))
    with pytest.raises(LmstackError, match="held-out"):
        run(FlanConfig(out=str(tmp_path), hold_out=["nli", "sentiment"], clusters=["nli", "arithmetic"]))
    with pytest.raises(LmstackError, match="no cluster is left"):
        run(FlanConfig(out=str(tmp_path), hold_out=list(flan.CLUSTERS)))


def test_knowledge_probe_ranks_the_options_after_the_corpus_phrasing(tiny_lm, monkeypatch):
    """The probe scores each option as plain text after the item's `meta.statement` and picks the likeliest; items
    without a statement (or without options) are not probed."""
    from types import SimpleNamespace

    recs = [{"id": f"cs-{i}", "task": "commonsense_situations", "choices": ["go to bed", "take a boat", "eat some food"],
             "target": t, "meta": {"statement": f"Mina is tired {i}. So Mina decides to"}}
            for i, t in enumerate(["go to bed", "take a boat", "eat some food", "go to bed"])]
    recs.append({"id": "nli-0", "task": "nli_events", "choices": ["yes", "no"], "target": "no", "meta": {}})
    asked = []

    def fake(model, tok, requests):  # "knows" the option " go to bed" only
        asked.extend(requests)
        return [SimpleNamespace(logprob=0.0 if cont == " go to bed" else -1.0) for _, cont in requests]

    monkeypatch.setattr(flan, "loglikelihood", fake)
    assert flan.probe_items(recs) == recs[:4]
    res = flan.knowledge_probe(tiny_lm, flan.probe_items(recs))
    assert res["n"] == 4 and res["acc"] == 0.5 and res["tasks"] == ["commonsense_situations"]
    assert asked[0] == ("Mina is tired 0. So Mina decides to", " go to bed") and len(asked) == 12
    assert "50.0%" in flan.probe_text({"tasks": ["t"], "n": 4, "base_stated": 0.5, "tuned_stated": 0.25,
                                       "base_asked": 0.25, "tuned_asked": 0.5})
