"""The harness on the ready configs (fixture files in the benchmarks' formats), the built-in suite,
few-shot layouts, per-item outputs, and the guarantee that every item asked for is scored."""

import json
import math

import pytest

from lmstack.backends import get_backend
from lmstack.evaluate import load_task, run_task
from lmstack.evaluate.harness import evaluate, save_results

from .conftest import write_jsonl


def _len_ll(c, x):
    return -float(len(x))  # shorter continuations are likelier: a known, checkable scorer


def test_arc_prompt_choices_and_targets(fixture_file, scripted):
    be = scripted(ll=_len_ll)
    res = run_task(load_task("arc_easy"), be, data=fixture_file("arc"))
    assert be.ll_calls[:3] == [("Question: Which of these is a mammal?\nAnswer:", " shark"),
                               ("Question: Which of these is a mammal?\nAnswer:", " whale"),
                               ("Question: Which of these is a mammal?\nAnswer:", " trout")]
    s0, s1 = res.samples
    assert s0["target"] == [1] and s1["target"] == [0]  # answerKey "B" and "1" through choices.label
    assert s0["pred"] == "shark" and s1["pred"] == "sand"  # the shortest choices (ties: the first)
    assert res.metrics["acc"] == 0.0 and res.n == 2 and res.n_available == 2


def test_hellaswag_preprocessing(fixture_file, scripted):
    be = scripted(ll=_len_ll)
    res = run_task(load_task("hellaswag"), be, data=fixture_file("hellaswag"))
    ctx = be.ll_calls[4][0]
    # lm-evaluation-harness's preprocessing: [title] -> ". ", other [tags] removed, double spaces collapsed
    assert ctx == "Home and Garden: How to clean a mat. Shake the mat. take it outside"
    assert res.samples[0]["choices"][3] == ", the man continues removing the snow on his car."
    assert res.samples[0]["target"] == [3]


def test_acc_norm_differs_from_acc_through_the_harness(tmp_path, scripted):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "choices": ["ab", "abcdefgh"], "label": 1}])  # found beside t.yaml
    (tmp_path / "t.yaml").write_text("task: t\ntype: multiple_choice\nsource: {jsonl: d.jsonl}\nprompt: '{{ q }}'\n"
                                     "choices: choices\ntarget: label\n")
    ll = {" ab": -4.0, " abcdefgh": -6.0}
    res = run_task(load_task(str(tmp_path / "t.yaml")), scripted(ll=lambda c, x: ll[x]))
    assert res.metrics["acc"] == 0.0 and res.metrics["acc_norm"] == 1.0
    assert math.isnan(res.metrics["acc_stderr"])  # one item: no spread to estimate


def test_truthfulqa_mc1_mc2(fixture_file, scripted):
    lls = {" It passes through you.": -1.0, " Nothing much.": -2.0, " It stays for seven years.": -1.5, " You die.": -3.0}
    be = scripted(ll=lambda c, x: lls[x])
    data = fixture_file("truthfulqa")
    mc2 = run_task(load_task("truthfulqa_mc2"), be, data=data)
    want = (math.exp(-1) + math.exp(-2)) / sum(math.exp(v) for v in lls.values())
    assert mc2.metrics["mc2"] == pytest.approx(want)
    ctx = be.ll_calls[0][0]
    assert ctx.startswith("Q: What is human life expectancy") and ctx.endswith("\n\nQ: What happens if you swallow gum?\nA:")
    mc1 = run_task(load_task("truthfulqa_mc1"), be, data=data)
    assert mc1.metrics["acc"] == 1.0 and mc1.samples[0]["target"] == [0]


def test_every_ready_benchmark_runs_on_the_tiny_model(tiny_lm, fixture_file):
    be = get_backend(tiny_lm)
    for task, fx in [("hellaswag", "hellaswag"), ("arc_easy", "arc"), ("arc_challenge", "arc"), ("piqa", "piqa"),
                     ("boolq", "boolq"), ("mmlu", "mmlu"), ("truthfulqa_mc1", "truthfulqa"),
                     ("truthfulqa_mc2", "truthfulqa"), ("gsm8k", "gsm8k"), ("wikitext", "wikitext")]:
        res = run_task(load_task(task), be, data=fixture_file(fx), generation={"max_new_tokens": 3},
                       bootstrap_iters=20)
        assert res.n == len(res.samples) > 0, task
        for m, v in res.metrics.items():
            assert isinstance(v, float), (task, m)
            assert not math.isnan(v) or (m.endswith("_stderr") and res.n == 1), (task, m)
    # mmlu's description names the subject, and its choices are letters
    res = run_task(load_task("mmlu"), be, data=fixture_file("mmlu"), bootstrap_iters=10)
    assert res.samples[0]["prompt"].startswith("The following are multiple choice questions (with answers) about "
                                               "elementary mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4")
    assert res.samples[0]["choices"] == ["A", "B", "C", "D"] and res.samples[0]["target"] == [1]


def test_perplexity_task_equals_the_backend(tiny_lm, fixture_file):
    be = get_backend(tiny_lm)
    res = run_task(load_task("wikitext"), be, data=fixture_file("wikitext"), bootstrap_iters=10)
    pages = [r["page"] for r in map(json.loads, open(fixture_file("wikitext")))]
    rolled = be.loglikelihood_rolling(pages)
    nll = -sum(r.logprob for r in rolled)
    toks = sum(r.n_tokens for r in rolled)
    assert res.metrics["perplexity"] == pytest.approx(math.exp(nll / toks), rel=1e-6)
    nbytes = sum(len(p.encode()) for p in pages)
    assert res.metrics["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-6)


def test_generation_exact_match_and_invalid_items(fixture_file, scripted):
    answers = {"Tom": "He has 7 apples.\n#### 7", "A box": "The answer is 12.", "Sara": "I do not know."}
    be = scripted(gen=lambda p, s: next(v for k, v in answers.items() if p.rsplit("Question: ", 1)[1].startswith(k)))
    cfg = load_task("gsm8k")
    cfg.answer.fallback = "none"
    res = run_task(cfg, be, data=fixture_file("gsm8k"))
    assert [s["extracted"] for s in res.samples] == ["7", "12", None]
    assert res.metrics["exact_match"] == pytest.approx(2 / 3)
    assert res.n == 3 and res.n_invalid == 1  # scored as wrong, counted, never dropped
    assert be.gen_calls[0][1].stop == ["Question:", "\n\n"]


def test_limit_never_silently_shrinks(fixture_file, scripted, capsys):
    res = run_task(load_task("arc_easy"), scripted(ll=_len_ll), data=fixture_file("arc"), limit=5)
    assert res.n == 2
    assert "--limit 5 but the task has 2 items" in capsys.readouterr().err
    res = run_task(load_task("arc_easy"), scripted(ll=_len_ll), data=fixture_file("arc"), limit=1)
    assert res.n == 1 and res.n_available == 2


def test_fewshot_layout_and_selection(tmp_path, scripted):
    pool = [{"q": f"What is {a} plus {a}?", "a": str(2 * a)} for a in range(1, 9)] + [{"q": "Name a red fruit.", "a": "apple"}]
    data = write_jsonl(tmp_path / "d.jsonl", pool)
    base = {"task": "t", "type": "generate", "source": {"jsonl": str(data)}, "prompt": "Q: {{ q }}\nA:", "target": "a",
            "description": "Answer briefly.\n\n", "fewshot": {"k": 2, "delimiter": "\n\n"}}
    from lmstack.evaluate.config import task_from_dict

    be = scripted(gen=lambda p, s: "x")
    run_task(task_from_dict(base), be, limit=1)
    # fixed: the first two records other than the item itself
    assert be.gen_calls[0][0] == ("Answer briefly.\n\nQ: What is 2 plus 2?\nA: 4\n\nQ: What is 3 plus 3?\nA: 6\n\n"
                                  "Q: What is 1 plus 1?\nA:")
    be = scripted(gen=lambda p, s: "x")
    run_task(task_from_dict({**base, "fewshot": {"k": 2, "select": "random", "seed": 3}}), be, limit=3)
    again = scripted(gen=lambda p, s: "x")
    run_task(task_from_dict({**base, "fewshot": {"k": 2, "select": "random", "seed": 3}}), again, limit=3)
    assert [p for p, _ in be.gen_calls] == [p for p, _ in again.gen_calls]  # reproducible with the seed
    for (p, _), rec in zip(be.gen_calls, pool):
        assert p.count("Q: " + rec["q"]) == 1  # the item is never its own example
    be = scripted(gen=lambda p, s: "x")
    data2 = write_jsonl(tmp_path / "d2.jsonl", [{"q": "Name a red fruit please.", "a": "cherry"}])
    fs = {"k": 1, "select": "nearest", "source": {"jsonl": str(data)}}
    run_task(task_from_dict({**base, "source": {"jsonl": str(data2)}, "fewshot": fs}), be)
    assert "Q: Name a red fruit.\nA: apple\n\nQ: Name a red fruit please.\nA:" in be.gen_calls[0][0]


def test_builtin_source_and_configs(tiny_lm, suite_dir):
    be = get_backend(tiny_lm)
    res = run_task(load_task("builtin_sentiment"), be, limit=4, bootstrap_iters=10)
    assert res.n == 4 and all(s["choices"] for s in res.samples)
    assert all(s["prompt"].endswith("\nAnswer:") for s in res.samples)
    res = run_task(load_task("builtin_nli"), be, limit=2, num_fewshot=1, bootstrap_iters=10)
    assert res.samples[0]["prompt"].count("\nAnswer:") == 2
    res = run_task(load_task("builtin_corpus_ppl"), be, limit=2, bootstrap_iters=10)
    assert res.metrics["perplexity"] > 1


def test_chat_mode_scores_after_the_chat_template(fixture_file, scripted):
    be = scripted(ll=_len_ll)
    run_task(load_task("piqa"), be, data=fixture_file("piqa"), chat=True, limit=1)
    assert be.ll_calls[0] == ("<user>Question: To dry wet shoes,\nAnswer:<assistant>", "stuff them with newspaper.")


def test_results_and_samples_are_saved(tmp_path, fixture_file, scripted):
    results = evaluate("arc_easy,piqa", scripted(ll=_len_ll), out_dir=tmp_path / "out",
                       data={"arc_easy": fixture_file("arc"), "piqa": fixture_file("piqa")})
    assert len(results) == 2
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["kind"] == "lmstack-eval" and set(summary["results"]) == {"arc_easy", "piqa"}
    assert "acc_stderr" in summary["results"]["piqa"]["metrics"]
    items = [json.loads(line) for line in open(tmp_path / "out" / "samples_piqa.jsonl")]
    assert len(items) == 2 and {"prompt", "choices", "logprobs", "pred", "correct"} <= set(items[0])
    assert "| piqa |" in (tmp_path / "out" / "results.md").read_text()
    save_results(tmp_path / "o2", results)


def test_remote_chat_model_cannot_score_multiple_choice_but_can_generate(fixture_file):
    from lmstack.backends import OpenAIBackend
    from lmstack.errors import LmstackError

    from ..backends.fake_openai import FakeOpenAI

    with FakeOpenAI(reply=lambda m: "The answer is B") as srv:
        be = OpenAIBackend("gpt-x", srv.url, chat=True)
        with pytest.raises(LmstackError, match="--mc-mode generate"):
            run_task(load_task("arc_easy"), be, data=fixture_file("arc"))
        res = run_task(load_task("arc_easy"), be, data=fixture_file("arc"), mc_mode="generate")
    assert [s["pred"] for s in res.samples] == ["whale", "sand"]
    assert res.metrics == {"acc": 0.5, "acc_stderr": res.metrics["acc_stderr"]} and res.scored_by == "generation"


def _close(x, y, tol=1e-4) -> bool:
    """Equal structures, floats within tol (relative to their size), everything else exactly."""
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_close(x[k], y[k], tol) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_close(a, b, tol) for a, b in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= tol * max(1.0, abs(x), abs(y))
    return x == y


def test_evaluate_batches_across_tasks_with_per_task_results(tiny_lm, fixture_file, scripted):
    """evaluate() sends all tasks' requests together, one call per type, and each task's samples and
    metrics are those run_task gives for it alone (here on a real local model)."""
    be = get_backend(tiny_lm)
    names = ["arc_easy", "hellaswag", "gsm8k", "wikitext"]
    files = {"arc_easy": fixture_file("arc"), "hellaswag": fixture_file("hellaswag"), "gsm8k": fixture_file("gsm8k"),
             "wikitext": fixture_file("wikitext")}
    together = evaluate(names, be, data=files, bootstrap_iters=50, generation={"max_new_tokens": 4})
    alone = [run_task(load_task(n), be, data=files[n], bootstrap_iters=50, generation={"max_new_tokens": 4})
             for n in names]
    for a, b in zip(together, alone):
        # Equal up to float rounding: batches of other lengths run other matmul blockings (1e-6 in a log-prob).
        assert a.task == b.task and a.scored_by == b.scored_by
        assert _close(a.metrics, b.metrics) and _close(a.samples, b.samples)
    counter = scripted(ll=_len_ll)
    batches = []
    score = counter.loglikelihood
    counter.loglikelihood = lambda reqs: batches.append(len(reqs)) or score(reqs)
    evaluate(["arc_easy", "hellaswag"], counter, data=files)
    assert batches == [3 + 4 + 4 * 2]  # one call: both arc items' choices and both hellaswag items' choices


@pytest.mark.parametrize("style", ["llama2", "llama3"])
def test_chat_mode_feeds_one_bos_with_a_bos_template(style, tmp_path):
    """--chat on a model whose template writes {{ bos_token }} (Llama 2/3, Mistral): the scored
    sequences and the generation prompts start with exactly one BOS, and are the template's token ids."""
    from ..chat_bos import Fed, bos_run, lm

    m = lm(style, add_bos=True)
    tok = m.tokenizer
    write_jsonl(tmp_path / "d.jsonl", [{"q": "Is the cat small?", "choices": ["yes", "no"], "label": 0},
                                       {"q": "Does Mina live in Porto?", "choices": ["yes", "no"], "label": 1}])
    (tmp_path / "t.yaml").write_text("task: t\ntype: multiple_choice\nsource: {jsonl: d.jsonl}\nprompt: '{{ q }}'\n"
                                     "choices: choices\ntarget: label\n")
    be = get_backend(m)
    templated = [tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True)[0]
                 for q in ("Is the cat small?", "Does Mina live in Porto?")]
    with Fed(m.model) as fed:  # the loglikelihood path
        run_task(load_task(str(tmp_path / "t.yaml")), be, chat=True, bootstrap_iters=10)
    assert len(fed.scored) == 2 and not fed.prompts  # one row per question: its two options share it
    for row in fed.scored:
        assert bos_run(row, tok.bos_id) == 1
        # the template's ids (whitespace it ends with moves onto the continuation, as in lm-eval)
        assert any(row[:len(ids) - 1] == ids[:-1] for ids in templated)
    with Fed(m.model) as fed:  # the generate path
        run_task(load_task(str(tmp_path / "t.yaml")), be, chat=True, mc_mode="generate", bootstrap_iters=10,
                 generation={"max_new_tokens": 2})
    assert sorted(fed.prompts) == sorted(templated)
    assert all(bos_run(row, tok.bos_id) == 1 for row in fed.prompts)
