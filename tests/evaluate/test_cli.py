"""The command lines (`lmstack eval run|tasks|winrate|safety`, `lmstack prompt run|compare`,
`lmstack report`), on the tiny checkpoint and on a fake OpenAI-compatible server."""

import argparse
import json

import pytest

from lmstack.cli.eval import add_parsers
from lmstack.errors import LmstackError

from ..backends.fake_openai import FakeOpenAI
from .conftest import FIXTURES, write_jsonl


def run(argv):
    ap = argparse.ArgumentParser(prog="lmstack")
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval")
    add_parsers(ev.add_subparsers(dest="eval_command", required=True), sub)
    args = ap.parse_args([str(a) for a in argv])
    return args.func(args)


def test_eval_run_local_and_remote_agree(tiny_ckpt, tiny_lm, tmp_path, fixture_file, capsys):
    data = fixture_file("arc")
    assert run(["eval", "run", "--tasks", "arc_easy", "--data", f"arc_easy={data}", "--model", tiny_ckpt,
                "--out", tmp_path / "local", "--bootstrap-iters", 10]) == 0
    out = capsys.readouterr().out
    assert "| arc_easy | default | 0 | acc |" in out
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    with FakeOpenAI(tiny_lm) as srv:
        assert run(["eval", "run", "--tasks", "arc_easy", "--data", f"arc_easy={data}", "--model", "tiny",
                    "--base-url", srv.url, "--cache", tmp_path / "cache", "--out", tmp_path / "remote",
                    "--bootstrap-iters", 10]) == 0
        n = len(srv.requests)
        run(["eval", "run", "--tasks", "arc_easy", "--data", f"arc_easy={data}", "--model", "tiny",
             "--base-url", srv.url, "--cache", tmp_path / "cache", "--bootstrap-iters", 10])
        assert len(srv.requests) == n  # the second run is served from the cache
    remote = json.loads((tmp_path / "remote" / "results.json").read_text())
    assert remote["results"]["arc_easy"]["metrics"] == local["results"]["arc_easy"]["metrics"]
    l_items = [json.loads(x) for x in open(tmp_path / "local" / "samples_arc_easy.jsonl")]
    r_items = [json.loads(x) for x in open(tmp_path / "remote" / "samples_arc_easy.jsonl")]
    for a, b in zip(l_items, r_items):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4) and a["pred"] == b["pred"]


def test_eval_tasks_lists_ready_configs(capsys):
    run(["eval", "tasks"])
    out = capsys.readouterr().out
    assert "gsm8k" in out and "generate" in out and "truthfulqa" in out and "group" in out


def test_prompt_run_and_compare(tiny_ckpt, tmp_path, fixture_file, capsys):
    run(["prompt", "run", "--model", tiny_ckpt, "--strategy", "zero_shot_cot", "--question", "What is 3 plus 4?",
         "--max-new-tokens", 3, "--show-prompt"])
    out = capsys.readouterr().out
    assert "Q: What is 3 plus 4?\nA:" in out and "--- reasoning ---" in out and "answer:" in out
    ex = write_jsonl(tmp_path / "ex.jsonl", [{"question": "What is 1 plus 1?", "answer": "2", "rationale": "1 and 1 make 2."}])
    run(["prompt", "run", "--model", tiny_ckpt, "--strategy", "cot", "--examples", ex, "-k", 1, "--question", "What is 3 plus 4?",
         "--max-new-tokens", 3, "--show-prompt"])
    assert "Q: What is 1 plus 1?\nA: 1 and 1 make 2. The answer is 2.\n\nQ: What is 3 plus 4?\nA:" in capsys.readouterr().out
    with pytest.raises(LmstackError, match="needs --examples"):
        run(["prompt", "run", "--model", tiny_ckpt, "--strategy", "few_shot", "--question", "x"])
    run(["prompt", "compare", "--task", "gsm8k", "--data", f"gsm8k={fixture_file('gsm8k')}", "--model", tiny_ckpt,
         "--strategies", "zero_shot,few_shot,cot,self_consistency", "--num-fewshot", 1, "--limit", 2,
         "--max-new-tokens", 2, "--sc-samples", 2, "--bootstrap-iters", 10, "--out", tmp_path / "cmp"])
    out = capsys.readouterr().out
    assert "| strategy | k | gsm8k exact_match |" in out
    for s in ("zero_shot", "few_shot", "cot", "self_consistency"):
        assert f"| {s} |" in out
    assert (tmp_path / "cmp" / "compare.md").exists()


def test_winrate_with_answer_files_and_judges(tmp_path, tiny_lm, capsys, suite_dir):
    from lmstack.evaluate.sources import read_records_file

    recs = [r for r in read_records_file(suite_dir / "tasks" / "test.jsonl", "jsonl")
            if r["style"] == "instruction" and r["cluster"] == "arithmetic"][:4]
    prompts = write_jsonl(tmp_path / "p.jsonl", recs)
    a = write_jsonl(tmp_path / "a.jsonl", [{"answer": r["target"]} for r in recs])
    b = write_jsonl(tmp_path / "b.jsonl", [{"output": "I do not know."} for r in recs])
    run(["eval", "winrate", "--prompts", prompts, "--suite", suite_dir, "--answers-a", a, "--answers-b", b,
         "--label-a", "sft", "--label-b", "base", "--out", tmp_path / "wr"])
    assert "| sft vs base | 100.0 [" in capsys.readouterr().out
    saved = json.loads((tmp_path / "wr" / "winrate.json").read_text())
    assert saved["win_count"] == 4 and saved["judge"] == "annotators"
    with FakeOpenAI(reply=lambda m: "Assistant A is better. [[A]]") as srv:  # position-biased judge
        run(["eval", "winrate", "--prompts", prompts, "--answers-a", a, "--answers-b", b, "--judge", "model",
             "--judge-model", "judge", "--judge-base-url", srv.url])
        assert len(srv.requests) == 8
    assert "| a vs b | 0.0 [" in capsys.readouterr().out  # every verdict flips with the order: all ties
    with pytest.raises(LmstackError, match="4 answers for 5 prompts|answers for"):
        write_jsonl(tmp_path / "p5.jsonl", recs + recs[:1])
        run(["eval", "winrate", "--prompts", tmp_path / "p5.jsonl", "--answers-a", a, "--answers-b", b])


def test_safety_and_report(tiny_ckpt, tmp_path, capsys):
    run(["eval", "safety", "--model", tiny_ckpt, "--name", "base", "--limit", 4, "--max-new-tokens", 2,
         "--out", tmp_path / "run" / "safety"])
    out = capsys.readouterr().out
    assert out.startswith("| metric | base |") and "hallucination rate" in out and "truthfulness" in out
    saved = json.loads((tmp_path / "run" / "safety" / "safety.json").read_text())
    assert saved["models"]["base"]["n_safety"] == 4 and saved["models"]["base"]["truthfulness_task"] == "builtin_closed_book_qa"
    n_tr = saved["models"]["base"]["n_truthfulness"]
    assert n_tr > 0 and any(line.startswith("| truthfulness") and f"(n={n_tr})" in line for line in out.splitlines())
    write_jsonl(tmp_path / "arc.jsonl", FIXTURES["arc"])
    run(["eval", "run", "--tasks", "arc_easy", "--data", f"arc_easy={tmp_path / 'arc.jsonl'}", "--model", tiny_ckpt,
         "--out", tmp_path / "run" / "eval", "--bootstrap-iters", 10])
    run(["report", tmp_path / "run"])
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## safety" in text and "## eval" in text and "| arc_easy |" in text


def test_safety_of_a_closed_chat_model(tmp_path, capsys):
    with FakeOpenAI(reply=lambda m: "I'm sorry, but I can't help with that.") as srv:
        run(["eval", "safety", "--model", "gpt-x", "--base-url", srv.url, "--chat-api", "--limit", 4,
             "--out", tmp_path])
    cols = json.loads((tmp_path / "safety.json").read_text())["models"]["gpt-x"]
    assert cols["refusal_rate"] == 1.0 and cols["over_refusal_rate"] == 1.0
    assert cols["hallucination_rate"] is None and cols["answered_rate"] == 0.0  # never answers: no hallucination rate
    assert cols["truthfulness"] == 0.0  # a refusal picks no option
    assert "scored from generated answers" in capsys.readouterr().err


def test_eval_perplexity_of_a_file_matches_the_library(tiny_ckpt, tiny_lm, tmp_path, capsys):
    from lmstack.evaluate.perplexity import perplexity_of_text

    text = "The cat sat on the mat. " * 20
    f = tmp_path / "val.txt"
    f.write_text(text)
    assert run(["eval", "perplexity", "--model", tiny_ckpt, "--file", f, "--max-length", 32, "--stride", 16]) == 0
    got = json.loads(capsys.readouterr().out)
    want = perplexity_of_text(tiny_lm, text, max_length=32, stride=16)
    assert got["tokens"] == want["tokens"] and got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)
    with pytest.raises(LmstackError, match="nope.txt"):
        run(["eval", "perplexity", "--model", tiny_ckpt, "--file", tmp_path / "nope.txt"])


@pytest.fixture(scope="module")
def tiny_rm(tiny_ckpt, tmp_path_factory):
    """A tiny reward model trained and saved by the reward recipe itself (lmstack.train.reward.run)."""
    from lmstack.train.reward import RewardConfig
    from lmstack.train.reward import run as train_rm

    d = tmp_path_factory.mktemp("rm")
    recs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Is {i} a number?"}],
             "answers": ["yes it is", "no", "cat"], "ranking": [0, 1, 2]} for i in range(6)]
    train_rm(RewardConfig(model=str(tiny_ckpt), data=[str(write_jsonl(d / "prefs.jsonl", recs))], out=str(d / "rm"),
                          epochs=0, steps=2, micro_batch=2, seq_len=128, norm_prompts=4, norm_max_new_tokens=4,
                          quiet=True))
    return d / "rm" / "model"


def test_winrate_and_safety_judged_by_a_reward_model_folder(tiny_rm, tiny_ckpt, tmp_path, suite_dir, capsys):
    """`--judge reward --reward-fn DIR` with a `lmstack reward` checkpoint: its scores decide each pair (winrate)
    and whether an answer to a harmful request is safe (safety)."""
    from lmstack.evaluate.sources import read_records_file
    from lmstack.train.rewards import load_reward_model

    rm = load_reward_model(tiny_rm)
    recs = [r for r in read_records_file(suite_dir / "tasks" / "test.jsonl", "jsonl")
            if r["style"] == "instruction" and r["cluster"] == "arithmetic"][:4]
    prompts = write_jsonl(tmp_path / "p.jsonl", recs)
    answers_a, answers_b = [r["target"] for r in recs], ["I do not know."] * len(recs)
    a = write_jsonl(tmp_path / "a.jsonl", [{"answer": x} for x in answers_a])
    b = write_jsonl(tmp_path / "b.jsonl", [{"answer": x} for x in answers_b])
    assert run(["eval", "winrate", "--prompts", prompts, "--answers-a", a, "--answers-b", b, "--judge", "reward",
                "--reward-fn", tiny_rm, "--out", tmp_path / "wr"]) == 0
    saved = json.loads((tmp_path / "wr" / "winrate.json").read_text())
    assert saved["judge"] == str(tiny_rm) and saved["n"] == 4
    items = [json.loads(x) for x in open(tmp_path / "wr" / "samples_winrate.jsonl")]
    want_a = rm.score([r["messages"][:-1] for r in recs], answers_a)
    for it, sa in zip(items, want_a.tolist()):
        assert it["score_a"] == pytest.approx(sa, abs=1e-4)
        assert it["verdict"] == ("a" if it["score_a"] > it["score_b"] else "b" if it["score_b"] > it["score_a"] else "tie")

    assert run(["eval", "safety", "--model", tiny_ckpt, "--name", "base", "--judge", "reward", "--reward-fn", tiny_rm,
                "--threshold", "0.0", "--limit", 4, "--max-new-tokens", 2, "--truthfulness-task", "none",
                "--out", tmp_path / "safety"]) == 0
    col = json.loads((tmp_path / "safety" / "safety.json").read_text())["models"]["base"]
    assert col["n_safety"] == 4
    judged = [json.loads(x) for x in open(tmp_path / "safety" / "samples_safety_base.jsonl")]
    unsafe = [x for x in judged if x.get("unsafe")]
    assert unsafe and all(x["refused"] == (x["score"] >= 0.0) for x in unsafe), judged
    capsys.readouterr()
    with pytest.raises(LmstackError, match="not a reward model"):  # a folder that is no reward model: said so
        run(["eval", "winrate", "--prompts", prompts, "--answers-a", a, "--answers-b", b, "--judge", "reward",
             "--reward-fn", tiny_ckpt])
