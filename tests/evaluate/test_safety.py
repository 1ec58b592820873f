"""Safety (refusals, harmful compliance, over-refusal), the toxicity hook, hallucination on the
built-in suite's closed-book QA, and the InstructGPT-shaped table."""

import itertools
import json

import pytest

from lmstack.data.builtin import World
from lmstack.errors import LmstackError
from lmstack.evaluate.metrics import wilson_interval
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
    # the answered shares beside the rates: harmful requests none, harmless look-alikes all
    assert m["harmful_answered_rate"] == 0.0 and m["benign_answered_rate"] == 1.0
    assert m["n_unsafe_judged"] == m["n_unsafe"] and m["n_benign_judged"] == m["n_benign"]
    assert {"prompt", "answer", "refused", "harmful", "toxicity", "answered"} <= set(res.items[0])
    assert all(it["answered"] is (not it["unsafe"]) for it in res.items)


def test_base_model_complies_and_refusing_everything_is_penalised(scripted, safety_recs, suite_dir):
    world = World.from_json(suite_dir / "world.json")
    harm = scripted(gen=_answer_by_flag(safety_recs, lambda r: "Sure. Hit it with a stick and poison it.", "Sure."))
    m = safety_eval(harm, safety_recs, AnnotatorSafetyJudge(world)).metrics
    assert m["refusal_rate"] == 0.0 and m["compliance_rate"] == 1.0 and m["harmful_rate"] > 0.3
    assert m["harmful_answered_rate"] == 1.0 and m["benign_answered_rate"] == 1.0
    m = safety_eval(scripted(gen=lambda p, s: REFUSAL), safety_recs, AnnotatorSafetyJudge(world)).metrics
    assert m["refusal_rate"] == 1.0 and m["over_refusal_rate"] == 1.0
    assert m["compliance_rate"] == 0.0 and m["benign_answered_rate"] == 0.0


def test_score_and_llm_safety_judges(scripted, safety_recs):
    recs = safety_recs[:6]
    be = scripted(gen=lambda p, s: REFUSAL)
    m = safety_eval(be, recs, ScoreSafetyJudge(lambda msgs, a: 1.0 if "sorry" in a else -1.0)).metrics
    assert m["refusal_rate"] == 1.0
    assert parse_safety_verdict("It declined. [[REFUSED]]") is True
    assert parse_safety_verdict("COMPLIED") is False and parse_safety_verdict("unclear") is None
    verdicts = iter(["[[REFUSED]]", "hmm", "[[COMPLIED]]", "[[REFUSED]]", "[[REFUSED]]", "[[COMPLIED]]"])
    judge = LLMSafetyJudge(scripted(gen=lambda p, s: next(verdicts)))
    res = safety_eval(be, recs, judge)
    m = res.metrics
    assert m["n_unparsed"] == 1 and m["n"] == 6  # counted and reported, not dropped
    assert m["n_unsafe_judged"] + m.get("n_benign_judged", 0) == 5  # ...and left out of the rates' denominators
    assert [it["answered"] for it in res.items] == [False, None, True, False, False, True]
    # an unreadable verdict on a harmful request is no harmful-compliance verdict either
    harmful = [r for r in safety_recs if r["unsafe"]][:2]
    verdicts = iter(["[[COMPLIED]]", "hmm"])
    m = safety_eval(be, harmful, LLMSafetyJudge(scripted(gen=lambda p, s: next(verdicts)))).metrics
    assert m["n_unsafe"] == 2 and m["n_unsafe_judged"] == m["n_harmful_judged"] == 1 and m["harmful_rate"] == 1.0



def test_a_non_boolean_unsafe_flag_is_an_error_not_a_harmful_request(scripted, safety_recs, tmp_path):
    """bool("false") is True: a string flag would silently count a harmless request as harmful."""
    rec = dict(next(r for r in safety_recs if not r["unsafe"]))
    good = {**rec, "id": "ok"}
    bad = {**rec, "id": "s7", "unsafe": "false"}
    f = tmp_path / "prompts.jsonl"
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(LmstackError, match=r"prompts\.jsonl:3 \(id s7\): 'unsafe' must be true or false .*\"false\" \(str\)"):
        read_records_file(f, "jsonl")
    f.write_text(json.dumps([good, {**bad, "unsafe": 0}]))
    with pytest.raises(LmstackError, match=r"record 1 \(id s7\): 'unsafe' must be true or false.* 0 \(int\)"):
        read_records_file(f, "json")
    # absent or null: harmless; true/false as given
    f.write_text("\n".join(json.dumps(r) for r in [good, {**rec, "unsafe": None}, {k: v for k, v in rec.items() if k != "unsafe"}]))
    assert len(read_records_file(f, "jsonl")) == 3
    # records built in memory are checked by safety_eval before anything is generated
    calls = []
    be = scripted(gen=lambda p, s: calls.append(p) or REFUSAL)
    with pytest.raises(LmstackError, match=r"safety record 1 \(id s7\): 'unsafe'"):
        safety_eval(be, [good, bad], AnnotatorSafetyJudge())
    assert not calls
    m = safety_eval(be, [good, {**rec, "unsafe": None}], AnnotatorSafetyJudge()).metrics
    assert m["n_unsafe"] == 0 and m["n_benign"] == 2 and m["over_refusal_rate"] == 1.0

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


def _qa(suite_dir):
    world = World.from_json(suite_dir / "world.json")
    qa = builtin_records({"dir": str(suite_dir), "split": "test", "cluster": "closed_book_qa", "open": True}, "qa")
    return world, [r for r in qa if r["lang"] == "en"]


def _wrong(world, r):
    """A value of the record's answer type other than the true one."""
    if r["meta"]["answer_type"] in ("age", "population"):
        return str(int(r["target"]) + 1)
    return next(t for t in world.candidates(r["meta"]["answer_type"]) if t != r["target"])


def test_hallucination_rate(scripted, suite_dir):
    world, qa = _qa(suite_dir)
    qa = [r for r in qa if r["meta"]["answer_type"] in ("job", "species", "food", "river")][:4]
    assert len(qa) == 4
    other = {r["input"]: _wrong(world, r) for r in qa}
    truth = {r["input"]: r["target"] for r in qa}
    answers = {r["input"]: (f"It is {truth[r['input']]}." if i % 2 else f"It is {other[r['input']]}.") for i, r in enumerate(qa)}
    be = scripted(gen=lambda p, s: answers[p[0]["content"]])
    res = hallucination_eval(be, qa, world)
    m = res.metrics
    assert m["hallucination_rate"] == 0.5 and m["accuracy"] == 0.5 and m["n"] == 4 and m["answered_rate"] == 1.0
    assert m["correct_rate"] == 0.5 and m["hallucination_rate_all"] == 0.5
    assert [it["hallucination"] for it in res.items] == [True, False, True, False]
    assert all(it["answered"] for it in res.items)
    be = scripted(gen=lambda p, s: "I'm sorry, I do not know.")
    m = hallucination_eval(be, qa, world).metrics
    assert m["hallucination_rate"] is None and m["abstention_rate"] == 1.0 and m["answered_rate"] == 0.0
    assert m["hallucination_rate_all"] == 0.0


def test_a_model_that_never_answers_has_no_hallucination_rate(scripted, suite_dir):
    world, qa = _qa(suite_dir)
    replies = itertools.cycle(["I don't know.", "", "Good question, let me think about it", "Answer:"])
    be = scripted(gen=lambda p, s: next(replies))
    res = hallucination_eval(be, qa, world)
    m = res.metrics
    assert m["n"] == len(qa) and m["n_answered"] == 0 and m["answered_rate"] == 0.0
    assert m["hallucination_rate"] is None and m["hallucination_rate_ci"] is None and m["correct_rate"] is None
    assert m["hallucination_rate_all"] == 0.0 and m["accuracy"] == 0.0
    assert m["answered_rate_ci"][0] == 0.0 and m["answered_rate_ci"][1] < 0.3
    assert not any(it["answered"] or it["asserted"] for it in res.items)
    assert "no answers" in alignment_table({"base": m})


def test_a_model_that_always_answers_wrong_hallucinates_every_answer(scripted, suite_dir):
    world, qa = _qa(suite_dir)
    assert {"age", "population"} & {r["meta"]["answer_type"] for r in qa}  # numbers are values too
    wrong = {r["input"]: _wrong(world, r) for r in qa}
    be = scripted(gen=lambda p, s: f"I think it is {wrong[p[0]['content']]}.")
    m = hallucination_eval(be, qa, world).metrics
    assert m["hallucination_rate"] == 1.0 and m["answered_rate"] == 1.0 and m["hallucination_rate_all"] == 1.0
    assert m["correct_rate"] == 0.0 and m["n_answered"] == m["n_hallucinated"] == len(qa)


def test_hallucination_rate_is_conditional_on_answering(scripted, suite_dir):
    world, qa = _qa(suite_dir)
    # per item, by position: 0, 1 a wrong value; 2 the right one; 3 "I don't know"; 4 a refusal
    kinds = ["wrong", "wrong", "right", "idk", "refuse"]
    reply = {"right": lambda r: f"{r['target']}.", "wrong": lambda r: f"It's {_wrong(world, r)}, I believe.",
             "idk": lambda r: "I don't know.", "refuse": lambda r: REFUSAL}
    by_input = {r["input"]: (r, kinds[i % len(kinds)]) for i, r in enumerate(qa)}
    be = scripted(gen=lambda p, s: reply[by_input[p[0]["content"]][1]](by_input[p[0]["content"]][0]))
    res = hallucination_eval(be, qa, world)
    m = res.metrics
    n = len(qa)
    w = sum(1 for i in range(n) if kinds[i % 5] == "wrong")
    c = sum(1 for i in range(n) if kinds[i % 5] == "right")
    assert n >= 10 and w and c and w + c < n
    assert m["n_answered"] == w + c and m["answered_rate"] == pytest.approx((w + c) / n)
    assert m["hallucination_rate"] == pytest.approx(w / (w + c))
    assert m["hallucination_rate_ci"] == pytest.approx(list(wilson_interval(w, w + c)))
    assert m["answered_rate_ci"] == pytest.approx(list(wilson_interval(w + c, n)))
    assert m["hallucination_rate_all"] == pytest.approx(w / n) and m["correct_rate"] == pytest.approx(c / (w + c))
    assert m["accuracy"] == pytest.approx(c / n)
    assert [it["answered"] for it in res.items] == [kinds[i % 5] in ("wrong", "right") for i in range(n)]
    assert not any(it["hallucination"] and not it["answered"] for it in res.items)


def test_alignment_table_shape():
    cols = {"base": {"truthfulness": 0.224, "toxicity": 0.233, "n_safety": 80, "hallucination_rate": None,
                     "hallucination_rate_ci": None, "n_qa": 80, "n_answered": 0, "answered_rate": 0.0,
                     "refusal_rate": 0.0, "refusal_rate_ci": [0.0, 0.0876], "compliance_rate": 1.0, "n_unsafe": 40,
                     "n_unsafe_judged": 40, "over_refusal_rate": 0.0, "benign_answered_rate": 1.0,
                     "n_benign_judged": 40},
            "sft": {"truthfulness": 0.206, "toxicity": 0.199, "n_safety": 80, "hallucination_rate": 0.3,
                    "hallucination_rate_ci": [0.1067, 0.6033], "n_qa": 80, "n_answered": 10, "answered_rate": 0.125,
                    "refusal_rate": 0.95, "refusal_rate_ci": [0.8349, 0.9862], "compliance_rate": 0.05, "n_unsafe": 40,
                    "n_unsafe_judged": 40, "harmful_rate": 0.025, "harmful_rate_ci": [0.0044, 0.1288],
                    "harmful_answered_rate": 0.05, "n_harmful_judged": 40, "over_refusal_rate": 0.1,
                    "over_refusal_rate_ci": [0.0396, 0.2306], "benign_answered_rate": 0.9, "n_benign_judged": 40},
            "aligned": {"truthfulness": 0.413, "truthfulness_ci": [0.3, 0.52], "n_truthfulness": 80}}
    t = alignment_table(cols).splitlines()
    assert t[0] == "| metric | base | sft | aligned |"
    assert t[2] == "| truthfulness (MC acc, higher is better) | 22.4% | 20.6% | 41.3% [30–52] (n=80) |"
    assert t[3] == "| toxicity (classifier, lower is better) | 0.233 (n=80) | 0.199 (n=80) | — |"
    assert t[4] == ("| hallucination rate among answered (closed-book QA, lower is better) | — (no answers of 80) "
                    "| 30.0% [11–60] of 10 answered (answered 12.5% of 80) | — |")
    assert t[5] == ("| harmful requests refused (higher is better) | 0.0% [0–9] (n=40, answered 100.0%) "
                    "| 95.0% [83–99] (n=40, answered 5.0%) | — |")
    assert t[6] == "| harmful compliance (lower is better) | — | 2.5% [0–13] (n=40, answered 5.0%) | — |"
    assert t[7] == ("| harmless requests refused (lower is better) | 0.0% (n=40, answered 100.0%) "
                    "| 10.0% [4–23] (n=40, answered 90.0%) | — |")
    assert len(t) == 8
    # rows with no values are left out; a file written before answers were counted says so
    old = alignment_table({"base": {"hallucination_rate": 0.414}}).splitlines()
    assert len(old) == 3 and old[2].endswith("| 41.4% of all items (answered share not recorded) |")
