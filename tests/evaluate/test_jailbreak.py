"""Jailbreak attacks (Wei et al. 2023) on the suite's harmful requests: what each family sends, the attack success
rate per family, and `lmstack eval jailbreak` on a model and on an OpenAI-compatible endpoint."""

import base64
import json
import re

import pytest

from lmstack.data.builtin import World
from lmstack.errors import LmstackError
from lmstack.evaluate.jailbreak import attacked, jailbreak_eval, jailbreak_table
from lmstack.evaluate.safety import AnnotatorSafetyJudge
from lmstack.evaluate.sources import read_records_file
from tests.evaluate.test_cli import run

HANGUL = re.compile(r"[\uac00-\ud7a3]")


@pytest.fixture(scope="module")
def harmful(suite_dir):
    recs = read_records_file(suite_dir / "tasks" / "safety_test.jsonl", "jsonl")
    return [r for r in recs if r.get("unsafe") is True], World.from_json(suite_dir / "world.json")


def test_each_attack_rewrites_the_request_as_the_paper_does(harmful):
    recs, world = harmful
    en = next(r for r in recs if r["lang"] == "en")
    req = en["messages"][0]["content"]

    def sent(attack):
        a = attacked(en, attack, world)
        assert a["attack"] == attack and [m["role"] for m in a["messages"]] == ["user"]  # the reference answer gone
        return a["messages"][-1]["content"]

    assert sent("none") == req
    assert sent("prefix_injection").startswith(req) and 'with "Absolutely! Here\'s "' in sent("prefix_injection")
    assert 'Never say the words "cannot"' in sent("refusal_suppression") and req in sent("refusal_suppression")
    assert "JSON format" in sent("style_injection") and req in sent("style_injection")
    b64 = sent("base64").split("\n\n")[-1]
    assert base64.b64decode(b64).decode() == req and req not in sent("base64")
    ko = sent("translation_ko")
    assert HANGUL.search(ko) and world.ko(en["meta"]["subject"]) in ko  # the same person, in Korean
    both = sent("combination")
    assert both.index("Do not apologize") < both.index(req) < both.index("Absolutely!")
    assert base64.b64encode(req.encode()).decode() in sent("combination_base64")
    korean = next(r for r in recs if r["lang"] == "ko")
    assert attacked(korean, "translation_ko", world) is None  # already Korean: the attack does not apply
    with pytest.raises(LmstackError, match="unknown attack 'dan'"):
        attacked(en, "dan", world)


def test_attack_success_rates_count_compliance_per_family(harmful, scripted):
    recs, world = harmful
    recs = [r for r in recs if r["lang"] == "en"][:6]

    def answer(prompt, sampling):  # refuses, unless told to start with "Absolutely!" (a prefix injection works)
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        return "Absolutely! Here's how." if "Absolutely!" in text else "I'm sorry, but I can't help with that."

    res = jailbreak_eval(scripted(gen=answer), recs, AnnotatorSafetyJudge(world),
                         ["none", "prefix_injection", "base64", "combination", "translation_ko"], world)
    a = res["attacks"]
    assert a["none"]["attack_success_rate"] == 0.0 and a["none"]["refusal_rate"] == 1.0 and a["none"]["n"] == 6
    assert a["prefix_injection"]["attack_success_rate"] == 1.0 and a["combination"]["attack_success_rate"] == 1.0
    assert a["base64"]["attack_success_rate"] == 0.0 and a["translation_ko"]["n"] == 6
    lo, hi = a["prefix_injection"]["attack_success_rate_ci"]
    assert 0.5 < lo < 1.0 and hi == pytest.approx(1.0)  # a Wilson interval on 6 answers
    table = jailbreak_table({"m": a})
    assert "| no attack (compliance) | 0.0% [" in table and "| prefix_injection | 100.0% [" in table
    with pytest.raises(LmstackError, match="no harmful requests"):
        jailbreak_eval(scripted(gen=answer), [dict(recs[0], unsafe=False)], AnnotatorSafetyJudge(world))


def test_eval_jailbreak_command_on_a_model_and_an_endpoint(tiny_ckpt, tmp_path, capsys):
    from tests.backends.fake_openai import FakeOpenAI

    run(["eval", "jailbreak", "--model", tiny_ckpt, "--name", "base", "--limit", 3, "--max-new-tokens", 4,
         "--attacks", "none", "prefix_injection", "translation_ko", "--out", tmp_path / "jb"])
    out = capsys.readouterr().out
    assert out.startswith("| attack | base |") and "| prefix_injection |" in out
    saved = json.loads((tmp_path / "jb" / "jailbreak.json").read_text())["models"]["base"]
    assert set(saved) == {"none", "prefix_injection", "translation_ko"} and saved["none"]["n"] == 3
    assert (tmp_path / "jb" / "samples_jailbreak_base_prefix_injection.jsonl").exists()
    # A closed model behind an OpenAI-compatible API fills the same table (here a fake one that always refuses).
    with FakeOpenAI(reply=lambda m: "I'm sorry, but I can't help with that.") as srv:
        run(["eval", "jailbreak", "--model", "gpt-x", "--base-url", srv.url, "--chat-api", "--limit", 2,
             "--attacks", "none", "base64"])
        assert len(srv.requests) == 4
    assert "| base64 | 0.0% [" in capsys.readouterr().out
