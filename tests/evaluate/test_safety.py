"""Safety (refusals, harmful compliance, over-refusal), the toxicity hook, hallucination on the
built-in suite's closed-book QA, and the InstructGPT-shaped table."""

import pytest

from lmstack.data.builtin import World
from lmstack.evaluate.safety import (
    AnnotatorSafetyJudge,
    LLMSafetyJudge,
    ScoreSafetyJudge,
    alignment_table,
    hallucination_eval,
    load_toxicity_classifier,
    parse_safety_verdict,
    safety_eval,
)
from lmstack.evaluate.sources import builtin_records, read_records_file

REFUSAL = "I'm sorry, but I can't help with that."


@pytest.fixture(scope="module")
def safety_recs(suite_dir):
    return read_records_file(suite_dir / "tasks" / "safety_test.jsonl", "jsonl")


def _answer_by_flag(recs, unsafe_answer, benign_answer):
    by_text = {r["messages"][0]["content"]: r for r in recs}
    return lambda p, s: unsafe_answer(by_text[p[0]["content"]]) if by_text[p[0]["content"]]["unsafe"] else benign_answer


def test_aligned_model_refuses_only_harmful_requests(scripted, safety_recs, suite_dir):
    world = World.from_json(suite_dir / "world.json")
    be = scripted(gen=_answer_by_flag(safety_recs, lambda r: REFUSAL, "Give it fresh water every day."))
    res = safety_eval(be, safety_recs, AnnotatorSafetyJudge(world), toxicity=lambda texts: [0.5] * len(texts))
    m = res.metrics
    assert m["n_unsafe"] > 0 and m["n_benign"] > 0 and m["n"] == len(safety_recs)
    assert m["refusal_rate"] == 1.0 and m["compliance_rate"] == 0.0 and m["harmful_rate"] == 0.0
    assert m["over_refusal_rate"] == 0.0 and m["toxicity"] == 0.5
    assert m["refusal_rate_ci"][1] == 1.0 and m["refusal_rate_ci"][0] > 0.6
    assert {"prompt", "answer", "refused", "harmful", "toxicity"} <= set(res.items[0])


def test_base_model_complies_and_refusing_everything_is_penalised(scripted, safety_recs, suite_dir):
    world = World.from_json(suite_dir / "world.json")
    harm = scripted(gen=_answer_by_flag(safety_recs, lambda r: "Sure. Hit it with a stick and poison it.", "Sure."))
    m = safety_eval(harm, safety_recs, AnnotatorSafetyJudge(world)).metrics
    assert m["refusal_rate"] == 0.0 and m["compliance_rate"] == 1.0 and m["harmful_rate"] > 0.3
    m = safety_eval(scripted(gen=lambda p, s: REFUSAL), safety_recs, AnnotatorSafetyJudge(world)).metrics
    assert m["refusal_rate"] == 1.0 and m["over_refusal_rate"] == 1.0


def test_score_and_llm_safety_judges(scripted, safety_recs):
    recs = safety_recs[:6]
    be = scripted(gen=lambda p, s: REFUSAL)
    m = safety_eval(be, recs, ScoreSafetyJudge(lambda msgs, a: 1.0 if "sorry" in a else -1.0)).metrics
    assert m["refusal_rate"] == 1.0
    assert parse_safety_verdict("It declined. [[REFUSED]]") is True
    assert parse_safety_verdict("COMPLIED") is False and parse_safety_verdict("unclear") is None
    verdicts = iter(["[[REFUSED]]", "hmm", "[[COMPLIED]]", "[[REFUSED]]", "[[REFUSED]]", "[[COMPLIED]]"])
    judge = LLMSafetyJudge(scripted(gen=lambda p, s: next(verdicts)))
    m = safety_eval(be, recs, judge).metrics
    assert m["n_unparsed"] == 1 and m["n"] == 6  # counted and reported, not dropped


def test_toxicity_hook_with_a_hugging_face_classifier(tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=tiny_tokenizer.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                  num_labels=2, id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1},
                                  pad_token_id=tiny_tokenizer.pad_id)
    model = transformers.GPT2ForSequenceClassification(cfg)
    model.save_pretrained(tmp_path / "clf")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend, pad_token="<|pad|>",
                                               eos_token="<|endoftext|>")
    tok.save_pretrained(tmp_path / "clf")
    score = load_toxicity_classifier(str(tmp_path / "clf"))
    out = score(["The small cat sat.", "Hit it with a stick."])
    assert len(out) == 2 and all(0.0 <= x <= 1.0 for x in out)
    with pytest.raises(Exception, match="cannot load"):
        load_toxicity_classifier(str(tmp_path / "missing"))


def test_hallucination_rate(scripted, suite_dir):
    world = World.from_json(suite_dir / "world.json")
    qa = builtin_records({"dir": str(suite_dir), "split": "test", "cluster": "closed_book_qa", "open": True}, "qa")
    qa = [r for r in qa if r["lang"] == "en" and r["meta"]["answer_type"] in ("job", "species", "food", "river")][:4]
    assert len(qa) == 4
    other = {r["input"]: next(t for t in world.candidates(r["meta"]["answer_type"]) if t != r["target"]) for r in qa}
    truth = {r["input"]: r["target"] for r in qa}
    answers = {r["input"]: (f"It is {truth[r['input']]}." if i % 2 else f"It is {other[r['input']]}.") for i, r in enumerate(qa)}
    be = scripted(gen=lambda p, s: answers[p[0]["content"]])
    res = hallucination_eval(be, qa, world)
    assert res.metrics["hallucination_rate"] == 0.5 and res.metrics["accuracy"] == 0.5 and res.metrics["n"] == 4
    assert [it["hallucination"] for it in res.items] == [True, False, True, False]
    be = scripted(gen=lambda p, s: "I'm sorry, I do not know.")
    res = hallucination_eval(be, qa, world)
    assert res.metrics["hallucination_rate"] == 0.0 and res.metrics["abstention_rate"] == 1.0


def test_alignment_table_shape():
    cols = {"base": {"truthfulness": 0.224, "toxicity": 0.233, "hallucination_rate": 0.414},
            "sft": {"truthfulness": 0.206, "toxicity": 0.199, "hallucination_rate": 0.078},
            "aligned": {"truthfulness": 0.413, "toxicity": 0.196, "hallucination_rate": 0.172,
                        "hallucination_rate_ci": [0.1, 0.25]}}
    t = alignment_table(cols).splitlines()
    assert t[0] == "| metric | base | sft | aligned |"
    assert t[2].startswith("| truthfulness") and "0.413" in t[2]
    assert t[4] == "| hallucination rate (closed-book QA, lower is better) | 0.414 | 0.078 | 0.172 [0.100, 0.250] |"
    assert len(t) == 5  # rows with no values are left out
