"""The built-in suite: determinism, split hygiene, template coverage, ground truth, annotators."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from lmstack.data.builtin import CLUSTERS, TASKS, TEMPLATES, World, build_suite, main, parse_size
from lmstack.data.builtin import lexicon as lx
from lmstack.data.builtin import phrases as ph
from lmstack.data.builtin.annotators import (
    Annotator,
    agreement,
    asserted_values,
    candidate_answers,
    contradicts_world,
    is_refusal,
    judge_panel,
    win_rate,
    win_rate_draws,
)
from lmstack.data.builtin.corpus import read_documents
from lmstack.data.records import (
    read_instruction_records,
    read_jsonl,
    validate_instruction_record,
    write_jsonl,
)
from lmstack.errors import LmstackError
from lmstack.text import parse_choice


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    manifest = build_suite(out, seed=0, size="tiny")
    recs = {s: read_jsonl(out / "tasks" / f"{s}.jsonl") for s in ("train", "validation", "test")}
    safety = {s: read_jsonl(out / "tasks" / f"safety_{s}.jsonl") for s in ("train", "validation", "test")}
    world = World.from_json(out / "world.json")
    return {"out": out, "manifest": manifest, "recs": recs, "safety": safety, "world": world}


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _user(rec) -> str:
    return rec["messages"][0]["content"]


# ---- determinism and files ------------------------------------------------------------------
def test_same_seed_same_bytes(suite, tmp_path):
    build_suite(tmp_path / "again", seed=0, size="tiny")
    assert _hashes(tmp_path / "again") == _hashes(suite["out"])
    build_suite(tmp_path / "other", seed=1, size="tiny")
    other = _hashes(tmp_path / "other")
    assert other["corpus/train.txt"] != _hashes(suite["out"])["corpus/train.txt"]


def test_manifest_and_files(suite):
    m, out = suite["manifest"], suite["out"]
    assert json.loads((out / "manifest.json").read_text()) == m
    for rel in m["files"].values():
        assert (out / rel).is_file(), rel
    assert m["seed"] == 0 and m["target_bytes"] == 300_000
    assert 300_000 <= m["corpus"]["train"]["bytes"] <= 302_000
    assert (out / "corpus" / "train.txt").stat().st_size == m["corpus"]["train"]["bytes"]
    assert set(m["clusters"]) == set(CLUSTERS)


def test_world_json_round_trip(suite):
    w = suite["world"]
    assert World.from_json(w.to_json()).to_dict() == w.to_dict()
    assert World.generate(0, 80).to_dict() == w.to_dict()
    names = [p.name for p in w.people] + [p.pet_name for p in w.people] + [t.name for t in w.towns]
    assert len(names) == len(set(n.lower() for n in names))
    assert len({p.name_ko for p in w.people}) == len(w.people)
    with pytest.raises(LmstackError):
        World.from_json('{"seed": 0}')


def test_corpus_documents(suite):
    out = suite["out"]
    text = (out / "corpus" / "train.txt").read_text(encoding="utf-8")
    docs = read_documents(out / "corpus" / "train.txt")
    assert docs and all(d.strip() == d and d for d in docs)
    assert "\n\n\n" not in text and text.endswith("\n") and not text.endswith("\n\n")
    assert len(docs) == suite["manifest"]["corpus"]["train"]["documents"]
    korean = [d for d in docs if re.search(r"[\uac00-\ud7a3]", d)]
    assert len(korean) > 0.1 * len(docs)
    assert any(d.startswith("별점:") for d in docs)  # Korean reviews
    assert any("plus" in d for d in docs) and any("greatest common divisor" in d for d in docs)


def test_val_corpus_is_held_out(suite):
    out, w = suite["out"], suite["world"]
    train = (out / "corpus" / "train.txt").read_text(encoding="utf-8")
    train_docs = set(read_documents(out / "corpus" / "train.txt"))
    val_docs = read_documents(out / "corpus" / "val.txt")
    assert val_docs and not (set(val_docs) & train_docs)
    held = w.pool("heldout")
    # Heldout people, their pets and heldout towns are never named in training text.
    words = set(re.findall(r"[A-Za-z]+", train))
    for p in held:
        assert p.name not in words and p.pet_name not in words, p.name
        assert p.name_ko not in train
    for t in w.town_pool("heldout"):
        assert t.name not in words
    val_text = (out / "corpus" / "val.txt").read_text(encoding="utf-8")
    assert any(p.name in val_text for p in held)
    all_train_prompts = "\n".join(_user(r) + r["target"] for s in ("train", "validation", "test") for r in suite["recs"][s])
    prompt_words = set(re.findall(r"[A-Za-z]+", all_train_prompts))
    for p in held:
        assert p.name not in prompt_words and p.pet_name not in prompt_words


# ---- tasks: schema, coverage, hygiene, ground truth -------------------------------------------
def test_records_follow_schema(suite):
    for split in ("train", "validation", "test"):
        recs = read_instruction_records(suite["out"] / "tasks" / f"{split}.jsonl")
        assert recs
        for r in recs:
            assert r["split"] == split and r["cluster"] in CLUSTERS
            assert r["messages"][1]["content"] == r["target"]
            if r["choices"] is not None:
                assert r["target"] in r["choices"] and len(set(r["choices"])) == len(r["choices"])
            if "OPTIONS:" in _user(r) or "선택지:" in _user(r):
                assert r["choices"] and all(f"- {c}" in _user(r) for c in r["choices"])
        for r in suite["safety"][split]:
            validate_instruction_record(r, "safety")
            assert r["cluster"] == "safety" and isinstance(r["unsafe"], bool)


def test_clusters_tasks_and_templates():
    assert len(CLUSTERS) >= 9
    for c in CLUSTERS:
        assert len([t for t in TASKS.values() if t.cluster == c]) >= 2, c
    for task, tmpls in TEMPLATES.items():
        assert task in TASKS
        assert len(tmpls) >= 8, task
        assert sum(t.has_options for t in tmpls) >= 2, task
        assert len({t.id for t in tmpls}) == len(tmpls)
    for c in ("sentiment", "translation", "closed_book_qa", "arithmetic", "nli"):
        for task in [t.name for t in TASKS.values() if t.cluster == c]:
            assert sum(t.lang == "ko" for t in TEMPLATES[task]) >= 2, task


def test_every_template_and_style_is_used(suite):
    recs = suite["recs"]["train"]
    for task, tmpls in TEMPLATES.items():
        used = {r["template"] for r in recs if r["task"] == task and r["style"] == "instruction"}
        assert used == {t.id for t in tmpls}, task
        styles = {r["style"] for r in recs if r["task"] == task}
        assert styles == {"instruction", "no_instruction", "dataset_name"}
        named = [r for r in recs if r["task"] == task and r["style"] == "dataset_name"]
        assert all(_user(r).startswith(f"{task}: ") for r in named)
    ko = [r for r in recs if r["lang"] == "ko"]
    assert {r["cluster"] for r in ko} >= {"sentiment", "translation", "closed_book_qa"}
    assert all(re.search(r"[\uac00-\ud7a3]", _user(r)) for r in ko)


def test_no_test_item_in_training_data(suite):
    recs, out = suite["recs"], suite["out"]
    train_keys = {r["meta"]["key"] for r in recs["train"]}
    train_prompts = {_user(r) for r in recs["train"]}
    blob = "\n".join(train_prompts)
    for split in ("validation", "test"):
        for r in recs[split]:
            assert r["meta"]["key"] not in train_keys, r["id"]
            assert _user(r) not in train_prompts
            if r["style"] == "no_instruction":
                assert _user(r) not in blob, r["id"]  # not even inside a longer training prompt
    test_keys = {r["meta"]["key"] for r in recs["test"]}
    assert not test_keys & {r["meta"]["key"] for r in recs["validation"]}
    # Safety prompts: held-out requests are not training requests.
    assert not {_user(r) for r in suite["safety"]["test"]} & {_user(r) for r in suite["safety"]["train"]}
    # Closed-book QA: test facts are in the corpus, test questions are not.
    corpus = (out / "corpus" / "train.txt").read_text(encoding="utf-8")
    for r in recs["test"]:
        if r["cluster"] == "closed_book_qa" and r["style"] == "no_instruction":
            subj = r["meta"]["subject"]
            assert subj in corpus and _user(r) not in corpus
            assert suite["world"].get(subj).split == "test"
        if r["task"] in ("sentiment_en", "sentiment_ko", "translate_en_ko", "summarize_story") and r["style"] == "no_instruction":
            assert _user(r) not in corpus, r["id"]
        # Commonsense situations: the sensible action is stated in pretraining text (the held-out cluster asks
        # what the base model could know), never for the test item's own person and situation.
        if r["task"] == "commonsense_situations":
            _, sit, act = lx.SITUATIONS[r["meta"]["situation"]]
            name = r["meta"]["key"].split("|")[1]
            assert act.split("{")[0].strip() in corpus, act
            assert sit.format(n=name, pet=suite["world"].get(name).pet_species) not in corpus, r["id"]


def _check_truth(w: World, r: dict) -> None:
    m, task, target = r["meta"], r["task"], r["target"]
    canon = m.get("label", target)
    if task == "arithmetic_word":
        a, b, c = m["a"], m["b"], m["c"]
        want = {"add": a + b, "sub": a - b, "mul": a * b, "two_step": a + b - c}[m["op"]]
        assert int(target) == want and str(a) in _user(r) and str(b) in _user(r)
    elif task == "arithmetic_gcd_lcm":
        a, b = m["a"], m["b"]
        want = math.gcd(a, b) if m["op"] == "gcd" else a * b // math.gcd(a, b)
        assert int(target) == want
    elif task in ("qa_people", "qa_places"):
        en, ko, _ = w.fact(m["subject"], m["relation"])
        assert target == (ko if m["answer_lang"] == "ko" else en)
    elif task == "nli_world":
        p = w.get(m["subject"])
        truth = {"town": p.town, "job": p.job, "pet": p.pet_name, "food": p.food, "age": str(p.age)}[m["relation"]]
        want = ("yes" if m["value"] == truth else "no") if m["relation"] in m["shown"] else "it is not possible to tell"
        assert m["label"] == want
    elif task == "nli_events":
        pe, h = m["premise_event"], m["hyp"]
        ok = pe["verb"] == h["verb"] and pe["item"] == h["item"] and {
            "eq": pe["q"] == h["q"], "any": True, "gt": pe["q"] > h["q"], "lt": pe["q"] < h["q"]}[h["cmp"]]
        assert m["label"] == ("yes" if ok else "no")
    elif task in ("sentiment_en", "sentiment_ko"):
        review = _user(r) if r["style"] == "no_instruction" else None
        if review:
            opens = lx.REVIEW_OPEN_KO if task == "sentiment_ko" else lx.REVIEW_OPEN_EN
            closes = lx.REVIEW_CLOSE_KO if task == "sentiment_ko" else lx.REVIEW_CLOSE_EN
            i = 0 if m["label"] == "positive" else 1
            assert any(review.endswith(c) for c in closes[i])
            assert not any(review.endswith(c) for c in closes[1 - i])
            assert len(opens[i]) == 4
    elif task == "paraphrase_detect":
        forms = ph.person_forms_en(w, w.get(m["subject"]))[m["relation"]]
        if r["style"] == "no_instruction":
            s1, s2 = _user(r).split("\n")
            assert s1 in forms and (s2 in forms) == (m["label"] == "yes")
    elif task == "paraphrase_rewrite":
        forms = ph.person_forms_en(w, w.get(m["subject"]))[m["relation"]]
        assert target in forms
    elif task in ("translate_en_ko", "translate_ko_en"):
        en, ko = m["english"], m["korean"]
        assert target == (ko if task == "translate_en_ko" else en)
        for slot in m["key"].split("|")[1:]:
            if slot in lx.ANIMALS:
                assert slot in en and lx.ANIMALS[slot]["ko"] in ko
            elif slot in lx.FOODS:
                assert slot in en and lx.FOODS[slot] in ko
            elif slot in lx.JOBS:
                assert slot in en and lx.JOBS[slot] in ko
            elif slot in lx.PLACES:
                assert slot in en and lx.PLACES[slot] in ko
            elif slot in lx.COLOURS:
                assert slot in en and (lx.COLOURS[slot][0] in ko or lx.COLOURS[slot][1][:2] in ko)
            elif slot in lx.ADJECTIVES:
                assert slot in en and (lx.ADJECTIVES[slot][0][:-1] in ko or lx.ADJECTIVES[slot][1] in ko)
            else:
                assert slot in en and w.ko(slot) in ko
    elif task == "summarize_story":
        assert target == ph.event_summary(m["event"])[0]
        story = _user(r)
        assert all(k in story or k in ("bought", "sold", "baked", "visited", "lost", "planted") for k in m["keys"])
    elif task in ("summarize_news", "struct_person", "struct_town"):
        assert all(k in target for k in m["keys"])
        if task.startswith("struct") and r["style"] == "no_instruction":
            for v in re.findall(r"\[([^\]]+)\]", _user(r)):
                assert v.split()[-1] in target or v in target
    elif task == "commonsense_situations":
        p = None
        want = lx.SITUATIONS[m["situation"]][2]
        for person in w.people:
            if want.format(pet=person.pet_species) == target:
                p = person
        assert p is not None
    elif task == "commonsense_facts":
        q = m["key"].split("|")
        kind, thing = q[1], q[2]
        if kind == "use":
            assert canon == thing and lx.OBJECT_USES[thing] in _user(r)
        elif kind == "what_for":
            assert canon == "to " + lx.OBJECT_USES[thing]
        elif kind == "sound":
            assert canon == thing
        elif kind == "legs":
            assert canon == str(lx.ANIMALS[thing]["legs"])
        elif kind == "eats":
            assert canon == lx.ANIMALS[thing]["eats"]
        else:
            assert canon == lx.ANIMALS[thing]["habitat"][0]
    else:
        raise AssertionError(f"no ground-truth check for {task}")


def test_every_target_is_true_in_the_world(suite):
    w = suite["world"]
    n = 0
    for split in ("train", "validation", "test"):
        for r in suite["recs"][split]:
            _check_truth(w, r)
            n += 1
    assert n > 3000
    for split in ("train", "test"):
        for r in suite["safety"][split]:
            assert is_refusal(r["target"]) == r["unsafe"], r["target"]


# ---- annotators ---------------------------------------------------------------------------------
def test_judge_accepts_targets_and_rejects_distractors(suite):
    w = suite["world"]
    judge = Annotator(w, "judge")
    for r in suite["recs"]["test"]:
        a = judge.assess(r, r["target"])
        assert a.correct == 1.0 and not a.hallucination, (r["id"], r["target"])
        for d in r["meta"].get("distractors", []):
            wrong = judge.assess(r, d)
            assert wrong.correct < 0.9, (r["id"], d)
            if r["meta"]["check"] in ("choice", "entity", "number"):
                assert wrong.correct == 0.0
            assert judge.score(r, r["target"]) > judge.score(r, d)


def test_judge_parses_free_text(suite):
    w = suite["world"]
    judge = Annotator(w)
    qa = next(r for r in suite["recs"]["test"] if r["task"] == "qa_people" and r["meta"]["relation"] == "town"
              and r["meta"]["answer_lang"] == "en")
    p = w.get(qa["meta"]["subject"])
    other = next(t.name for t in w.towns if t.name != p.town)
    assert judge.assess(qa, f"I believe {p.name} lives in {p.town}.").correct == 1
    assert judge.assess(qa, f"{p.name} lives in {other}.").correct == 0
    assert contradicts_world(qa, f"{p.name} lives in {other}.", w)
    assert not contradicts_world(qa, f"It is {p.town}.", w)
    # the values an answer asserts, right or wrong (what contradicts_world checks): none for "I don't know"
    assert asserted_values(qa, f"{p.name} lives in {other}.", w) == [other]
    assert asserted_values(qa, f"It is {p.town}.", w) == [p.town] and asserted_values(qa, "I don't know.", w) == []
    age = next(r for r in suite["recs"]["test"] if (r.get("meta") or {}).get("answer_type") == "age")
    wrong_age = int(age["target"]) + 1
    assert asserted_values(age, f"{age['target']} or {wrong_age}", w) == [int(age["target"]), wrong_age]
    assert contradicts_world(age, f"{age['target']} or {wrong_age}", w) and not contradicts_world(age, age["target"], w)
    assert asserted_values({"target": "x"}, "x") == [] and not contradicts_world({"target": "x"}, "x")
    math_rec = next(r for r in suite["recs"]["test"] if r["task"] == "arithmetic_word" and r["choices"] is None)
    assert judge.assess(math_rec, f"First add, then the answer is {math_rec['target']}.").correct == 1
    assert parse_choice("It is not possible to tell.", ["yes", "no", "it is not possible to tell"]) == 2
    assert parse_choice("No, it does not follow.", ["yes", "no", "it is not possible to tell"]) == 1
    assert parse_choice("부정입니다", ["긍정", "부정"]) == 1
    assert is_refusal("I'm sorry, but I can't help with that.") and is_refusal("죄송하지만 알려드릴 수 없습니다.")
    assert not is_refusal("Sidepi cannot swim.") and not is_refusal("The cat is small.")


def test_annotator_prefers_correct_and_refusals(suite):
    w, recs = suite["world"], suite["recs"]["train"]
    import random

    rng = random.Random(0)
    ann = Annotator(w, "clean")
    for r in [x for x in recs if x["style"] == "instruction"][::7]:
        cands = dict(candidate_answers(w, r, rng))
        order = ann.rank(r, list(cands.values()))
        kinds = list(cands)
        assert kinds[order[0]] == "correct", (r["id"], [kinds[i] for i in order])
        assert ann.compare(r, cands["correct"], cands["wrong"]) == "a"
        assert ann.compare(r, cands["wrong"], cands["correct"]) == "b"
        assert ann.score(r, cands["correct"]) > ann.score(r, cands["correct_verbose"]) > ann.score(r, cands["wrong"])
    for r in suite["safety"]["train"]:
        if not r["unsafe"]:
            assert ann.score(r, r["target"]) > ann.score(r, "I'm sorry, but I can't help with that.")
            continue
        cands = dict(candidate_answers(w, r, rng))
        order = [list(cands)[i] for i in ann.rank(r, list(cands.values()))]
        assert order[0].startswith("refusal") and order[-1] == "harmful", order


def test_noise_rate_and_disagreement(suite):
    w, recs = suite["world"], suite["recs"]["train"]
    items = [(r, r["target"], d) for r in recs if r["style"] == "instruction" for d in r["meta"].get("distractors", [])]
    assert len(items) > 1500
    clean = Annotator(w, "clean")
    noisy = Annotator(w, "noisy", flip_prob=0.2, seed=3)
    flips = sum(clean.compare(*it) != noisy.compare(*it) for it in items) / len(items)
    assert 0.16 < flips < 0.24
    panel = judge_panel(w, n=3, flip_prob=0.1)
    agree = agreement(panel, items)
    assert 0.75 < agree < 0.9  # about 1 - 2p(1-p) = 0.82 on clear-cut pairs
    assert agreement(judge_panel(w, n=3, flip_prob=0.0), items) == 1.0
    wr = win_rate(panel, [i[0] for i in items[:200]], [i[1] for i in items[:200]], [i[2] for i in items[:200]])
    assert wr["win"] > 0.8 and abs(wr["win"] + wr["tie"] + wr["loss"] - 1) < 1e-9


class _Scripted:
    """A judge that prefers the answer 'good' to anything else."""

    def compare(self, prompt, a, b):
        return "tie" if (a == "good") == (b == "good") else ("a" if a == "good" else "b")


def test_win_rate_over_draws_takes_its_standard_error_over_prompts():
    # Prompt 0: A wins both draws; prompt 1: one win and one loss; prompt 2: both tie. Per-prompt means 1, 0, 0.
    a = [["good", "good", "x"], ["good", "x", "x"]]
    b = [["x", "x", "x"], ["x", "good", "x"]]
    r = win_rate_draws(_Scripted(), ["p0", "p1", "p2"], a, b)
    assert (r["win"], r["tie"], r["loss"]) == (3 / 6, 2 / 6, 1 / 6) and (r["n"], r["prompts"], r["draws"]) == (6, 3, 2)
    assert r["se"] == pytest.approx(math.sqrt((4 / 9 + 1 / 9 + 1 / 9) / 2 / 3))  # sample SD of (1, 0, 0) / sqrt(3)
    one = win_rate_draws(_Scripted(), ["p0", "p1", "p2"], a[:1], b[:1])  # one draw: win_rate's counts
    assert {k: one[k] for k in ("win", "tie", "loss", "n")} == win_rate(_Scripted(), ["p0", "p1", "p2"], a[0], b[0])


def test_preference_files(suite):
    out = suite["out"]
    for suffix in ("", "_test"):
        rankings = read_jsonl(out / "preferences" / f"rankings{suffix}.jsonl")
        pairs = read_jsonl(out / "preferences" / f"pairs{suffix}.jsonl")
        assert rankings and pairs
        assert any(r["unsafe"] for r in rankings) and any(not r["unsafe"] for r in rankings)
        assert len({r["annotator"] for r in rankings}) == 3
        for r in rankings:
            assert len(r["answers"]) == 4 and sorted(r["ranking"]) == [0, 1, 2, 3]
            assert r["prompt"][-1]["role"] == "user" and len(set(r["answers"])) == 4
        assert all(p["chosen"] != p["rejected"] and p["margin"] >= 0 for p in pairs)
        kinds = {k for r in rankings for k in r["kinds"]}
        assert {"correct", "correct_verbose", "wrong", "off_format", "refusal", "harmful"} <= kinds
    # Most rankings put the correct answer (or a refusal, for harmful requests) first despite noise.
    rankings = read_jsonl(out / "preferences" / "rankings.jsonl")
    top = [r["kinds"][r["ranking"][0]] for r in rankings]
    assert sum(k in ("correct", "refusal", "refusal_short") for k in top) > 0.8 * len(top)
    # The judge can be rebuilt from world.json and the records, for plain message prompts too.
    judge = Annotator(World.from_json(out / "world.json"))
    judge.add_records(suite["recs"]["test"])
    r = suite["recs"]["test"][0]
    assert judge.assess(r["messages"][:1], r["target"]).correct == 1.0


# ---- records, sizes, CLI ----------------------------------------------------------------------
def test_jsonl_round_trip_and_errors(tmp_path, suite):
    recs = suite["recs"]["test"][:20]
    path = tmp_path / "r.jsonl"
    assert write_jsonl(path, recs) == 20
    assert read_jsonl(path) == recs
    path.write_text(path.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    with pytest.raises(LmstackError, match=r"r\.jsonl:21: invalid JSON"):
        read_jsonl(path)
    bad = dict(recs[0])
    del bad["target"]
    with pytest.raises(LmstackError, match="missing field 'target'"):
        validate_instruction_record(bad, "x.jsonl:3")
    bad = dict(recs[0], style="raw")
    with pytest.raises(LmstackError, match="style"):
        validate_instruction_record(bad, "x.jsonl:3")
    write_jsonl(path, [recs[0], bad])
    with pytest.raises(LmstackError, match=r"r\.jsonl:2: field 'style'"):
        read_instruction_records(path)


def test_sizes():
    assert parse_size("tiny") == 300_000 and parse_size("small") == 5_000_000
    assert parse_size("2MB") == 2_000_000 and parse_size("500kb") == 500_000 and parse_size(123456) == 123456
    for bad in ("huge", "5XB", "1KB"):
        with pytest.raises(LmstackError):
            parse_size(bad)


def test_main_entry(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "s"), "--size", "60KB", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "built-in suite (seed 2" in out and "preferences" in out
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["seed"] == 2 and m["corpus"]["train"]["bytes"] >= 60_000
    assert main(["--out", str(tmp_path / "t"), "--size", "huge"]) == 1
    assert "error: invalid size" in capsys.readouterr().err


def test_korean_particles():
    assert lx.josa("고양이", "topic") == "고양이는" and lx.josa("말", "topic") == "말은"
    assert lx.josa("사과", "obj") == "사과를" and lx.josa("빵", "obj") == "빵을"
    assert lx.josa("10", "and") == "10과" and lx.josa("12", "and") == "12와"
    assert lx.josa("교사", "dir") == "교사로" and lx.josa("농부", "cop") == "농부다" and lx.josa("목수", "dir") == "목수로"
    assert lx.josa("서울", "dir") == "서울로" and lx.josa("집", "dir") == "집으로"
