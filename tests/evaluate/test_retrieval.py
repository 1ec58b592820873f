"""Retrieval-augmented generation: a BM25 index (bm25s) over documents, the harness's `rag` strategy that puts the
best passages before each prompt, and `lmstack eval index` / `eval run --strategy rag` on the built-in suite."""

import json

import pytest

from lmstack.data.retrieval import Retriever, build_index, passages, rag_prompt
from lmstack.errors import LmstackError
from lmstack.evaluate.harness import prepare_task
from tests.evaluate.test_cli import run

pytest.importorskip("bm25s")

DOCS = ("Mina lives in Porto. She works as a baker and has a cat named Rex.\n\n"
        "Kutodo is a painter. He lives in Seoul with his dog Pijo.\n\n"
        "The river Lumo flows through Porto. About 2300 people live there.\n\n"
        "무나메는 화가다. 무나메는 부산에 산다.")


@pytest.fixture
def index(tmp_path):
    (tmp_path / "docs.txt").write_text(DOCS)
    assert build_index([str(tmp_path / "docs.txt")], tmp_path / "idx") == 4
    return Retriever.load(tmp_path / "idx")


def test_passages_and_bm25_search(index):
    assert passages("a b c\n\nd e", max_words=2) == ["a b", "c", "d e"]
    found = index.search(["Where does Mina live?", "What is Kutodo's job?", "무나메는 어디에 사니?", "zzz"], k=2)
    assert found[0][0].startswith("Mina lives in Porto") and found[1][0].startswith("Kutodo is a painter")
    assert found[2][0].startswith("무나메는")
    assert found[3] == []  # nothing in common with any passage: no passage rather than a random one
    assert rag_prompt("Q?", []) == "Q?"
    assert rag_prompt("Q?", ["p1", "p2"]).endswith("[1] p1\n[2] p2\n\nQuestion: Q?")


def test_rag_strategy_puts_the_retrieved_passages_before_each_prompt(index, tmp_path, fixture_file):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": 0}) + "\n" for q, c in [
        ("Where does Mina live?", ["Porto", "Seoul"]), ("Which pet does Kutodo have?", ["a dog", "a cat"])]))
    cfg = tmp_path / "qa.yaml"
    cfg.write_text(f"""task: rag_mc
source: {{jsonl: {data}}}
type: multiple_choice
prompt: "{{{{ question }}}}"
choices: choices
target: answer
""")
    run_ = prepare_task(str(cfg), strategy="rag", retriever=index, rag_k=1)
    assert run_.contexts[0].startswith("Use the passages below") and "[1] Mina lives in Porto" in run_.contexts[0]
    assert run_.contexts[0].endswith("Question: Where does Mina live?")
    assert "[1] Kutodo is a painter" in run_.contexts[1]
    with pytest.raises(LmstackError, match="the rag strategy needs an index"):
        prepare_task(str(cfg), strategy="rag")


def test_eval_index_and_run_with_rag_on_the_suite(tiny_ckpt, tmp_path, capsys):
    run(["eval", "index", "--out", tmp_path / "idx"])
    assert "passages of 2 files" in capsys.readouterr().out  # the suite's corpus: train.txt and val.txt
    run(["eval", "run", "--tasks", "builtin_closed_book_qa", "--model", tiny_ckpt, "--strategy", "rag",
         "--index", tmp_path / "idx", "--limit", 3, "--bootstrap-iters", 10, "--out", tmp_path / "rag"])
    assert "| builtin_closed_book_qa | rag |" in capsys.readouterr().out
    with pytest.raises(LmstackError, match="not an index folder"):
        Retriever.load(tmp_path)
