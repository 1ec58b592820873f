"""Preference data: comparisons and prompts with every bad or unusable record counted or named."""

import json

import pytest

from lmstack.errors import LmstackError
from lmstack.train.prefdata import PrefConfig, encode_prompts, load_comparisons, load_prompts


def write(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return str(path)


def msg(t):
    return [{"role": "user", "content": t}]


def test_bad_input_is_counted_or_named(tmp_path):
    recs = [
        {"id": "a", "prompt": msg("Q1"), "chosen": "x", "rejected": "x"},  # identical
        {"id": "b", "prompt": msg("Q1"), "chosen": "x", "rejected": "y", "margin": 2.0},
        {"id": "c", "prompt": msg("Q2"), "answers": ["p", "q", "r"], "ranking": [[0, 1], 2]},  # a tie
    ]
    comps, st = load_comparisons([write(tmp_path / "ok.jsonl", recs)], margin_scale=0.5)
    assert st["identical_pairs"] == 1 and st["tied_pairs"] == 1 and st["pairs"] == 3
    assert comps[0].pairs == [(0, 1, 1.0)]  # margin 2.0 x 0.5
    bad = write(tmp_path / "bad.jsonl", recs + [{"id": "d", "prompt": msg("Q3"), "answers": ["p", "q", "r"],
                                                 "ranking": [0, 2]}])
    with pytest.raises(LmstackError, match=r"bad.jsonl:4: 'ranking' must rank each of the 3 answers once \(missing \[1\]"):
        load_comparisons([bad])
    _, st = load_comparisons([bad], skip_bad=True)
    assert st["bad_records"] == 1 and "missing [1]" in st["bad"][0]
    with pytest.raises(LmstackError, match="no usable comparisons"):
        load_comparisons([write(tmp_path / "same.jsonl", recs[:1])])


def test_prompts_bad_and_overlong(tiny_lm, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"prompt": "word " * 300}) + "\n"
                    + json.dumps({"prompt": []}) + "\n")
    cfg = PrefConfig(data=[str(data)], out=str(tmp_path))
    with pytest.raises(LmstackError, match=r"p.jsonl:3"):
        load_prompts(cfg)
    cfg.skip_bad = True
    recs, st = load_prompts(cfg)
    assert st["bad_records"] == 1 and len(recs) == 2
    keep, ids, dropped = encode_prompts(tiny_lm.tokenizer, recs, 100)
    assert len(keep) == 1 and dropped == 1
    with pytest.raises(LmstackError, match="tokens; at most 100"):
        encode_prompts(tiny_lm.tokenizer, recs, 100, overlong="error")


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no", [True]])
def test_unsafe_must_be_a_json_boolean(tmp_path, value):
    """bool("false") is True: a non-boolean `unsafe` tag is a one-line error naming the file, line and record (or
    a bad record, counted, with --skip-bad); true, false, absent and null are read as they say."""
    ok = [{"id": "t", "prompt": "Q1", "unsafe": True}, {"id": "f", "prompt": "Q2", "unsafe": False},
          {"id": "n", "prompt": "Q3", "unsafe": None}, {"id": "a", "prompt": "Q4"}]
    bad = {"id": "x7", "prompt": "Q5", "unsafe": value}
    path = write(tmp_path / "p.jsonl", ok + [bad])
    with pytest.raises(LmstackError, match=r"p\.jsonl:5 \(id x7\): 'unsafe' must be true or false") as e:
        load_prompts(PrefConfig(data=[path], out=str(tmp_path)))
    assert "\n" not in str(e.value) and json.dumps(value) in str(e.value)
    recs, st = load_prompts(PrefConfig(data=[path], out=str(tmp_path), skip_bad=True))
    assert [r["unsafe"] for r in recs] == [True, False, False, False] and st["bad_records"] == 1

    pairs = [{**r, "chosen": "yes", "rejected": "no"} for r in ok + [bad]]
    path = write(tmp_path / "c.jsonl", pairs)
    with pytest.raises(LmstackError, match=r"c\.jsonl:5 \(id x7\): 'unsafe' must be true or false"):
        load_comparisons([path])
    comps, st = load_comparisons([path], skip_bad=True)
    assert [c.unsafe for c in comps] == [True, False, False, False] and st["bad_records"] == 1
