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
    assert cols["refusal_rate"] == 1.0 and cols["over_refusal_rate"] == 1.0 and cols["hallucination_rate"] == 0.0
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
