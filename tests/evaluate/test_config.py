"""Task configs: ready ones load, bad ones fail with errors that name the field, variable or file."""

import pytest

from lmstack.errors import LmstackError
from lmstack.evaluate.config import expand_tasks, load_task, registry, task_from_dict
from lmstack.evaluate.harness import run_task

from .conftest import write_jsonl


def test_every_ready_config_loads():
    names = [n for n in registry() if n not in ("builtin", "builtin_gen", "truthfulqa")]
    for want in ("hellaswag", "arc_easy", "arc_challenge", "piqa", "boolq", "mmlu", "gsm8k", "truthfulqa_mc1",
                 "truthfulqa_mc2", "builtin_nli", "builtin_arithmetic_gen", "builtin_corpus_ppl"):
        assert want in names
    for n in names:
        cfg = load_task(n)
        assert cfg.task == n and cfg.metrics


def test_groups_and_wildcards():
    assert expand_tasks("truthfulqa") == ["truthfulqa_mc1", "truthfulqa_mc2"]
    assert len(expand_tasks("builtin")) == 9
    assert "builtin_nli_gen" in expand_tasks("builtin_*_gen")
    assert expand_tasks("arc_easy, arc_easy ,piqa") == ["arc_easy", "piqa"]
    with pytest.raises(LmstackError, match="matches no ready task"):
        expand_tasks("nothing_*")


def test_unknown_field_names_the_field_and_file(tmp_path):
    p = tmp_path / "my.yaml"
    p.write_text("task: t\ntype: multiple_choice\nsource: {jsonl: x.jsonl}\nprompt: '{{q}}'\nchoices: c\ntarget: 0\n"
                 "promt: oops\n")
    with pytest.raises(LmstackError, match=r"my\.yaml: unknown field 'promt' \(did you mean 'prompt'\?\)"):
        load_task(str(p))
    with pytest.raises(LmstackError, match=r"fewshot: unknown field 'kk'"):
        task_from_dict({"task": "t", "type": "generate", "source": {"jsonl": "x"}, "target": "a", "fewshot": {"kk": 1}})
    with pytest.raises(LmstackError, match=r"unknown source field 'jsonlines'"):
        task_from_dict({"task": "t", "type": "generate", "source": {"jsonlines": "x"}, "target": "a"})
    with pytest.raises(LmstackError, match=r"unknown sampling field\(s\) max_tokens"):
        task_from_dict({"task": "t", "type": "generate", "source": {"jsonl": "x"}, "target": "a",
                        "generation": {"max_tokens": 3}})
    with pytest.raises(LmstackError, match="missing required field 'type'"):
        task_from_dict({"task": "t", "source": {"jsonl": "x"}})
    with pytest.raises(LmstackError, match="metric 'bleu' does not apply to multiple_choice"):
        task_from_dict({"task": "t", "type": "multiple_choice", "source": {"jsonl": "x"}, "choices": "c",
                        "target": 0, "metrics": ["bleu"]})
    with pytest.raises(LmstackError, match="invalid template"):
        task_from_dict({"task": "t", "type": "generate", "source": {"jsonl": "x"}, "target": "a", "prompt": "{{ q "})
    with pytest.raises(LmstackError, match="unknown task 'arc_esay' \\(did you mean arc_easy"):
        load_task("arc_esay")


def test_missing_template_variable(tmp_path, scripted):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "2+2?", "choices": ["3", "4"], "label": 1}])
    cfg = task_from_dict({"task": "t", "type": "multiple_choice", "source": {"jsonl": str(data)},
                          "prompt": "Q: {{ questoin }}\nA:", "choices": "choices", "target": "label"}, "t.yaml")
    with pytest.raises(LmstackError, match=r"task t \(t\.yaml\): prompt: template variable 'questoin' is not a field of the "
                                           r"records \(fields: choices, label, question\)"):
        run_task(cfg, scripted(ll=lambda c, x: 0.0))
    # A variable missing from only some records fails at that record, naming it.
    write_jsonl(data, [{"question": "a", "choices": ["3", "4"], "label": 1}, {"choices": ["3", "4"], "label": 1}])
    cfg = task_from_dict({"task": "t", "type": "multiple_choice", "source": {"jsonl": str(data)},
                          "prompt": "Q: {{ question }}", "choices": "choices", "target": "label"}, "t.yaml")
    with pytest.raises(LmstackError, match=r"prompt \(record 1\): missing template variable: 'question' is undefined"):
        run_task(cfg, scripted(ll=lambda c, x: 0.0))


def test_bad_targets_and_data(tmp_path, scripted):
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "choices": ["a", "b"], "label": "c"}])
    cfg = task_from_dict({"task": "t", "type": "multiple_choice", "source": {"jsonl": str(data)},
                          "prompt": "{{ q }}", "choices": "choices", "target": "label"})
    with pytest.raises(LmstackError, match=r"target 'c' is neither a choice nor an index"):
        run_task(cfg, scripted(ll=lambda c, x: 0.0))
    with pytest.raises(LmstackError, match="data file does not exist"):
        run_task(cfg, scripted(ll=lambda c, x: 0.0), data=str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"q": 1}\n{oops\n')
    with pytest.raises(LmstackError, match=r"bad\.jsonl:2: invalid JSON"):
        run_task(cfg, scripted(ll=lambda c, x: 0.0), data=str(tmp_path / "bad.jsonl"))


def test_hf_dataset_that_does_not_exist_offline(monkeypatch, scripted):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import datasets.config
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    except ImportError:
        pass
    cfg = task_from_dict({"task": "t", "type": "generate", "target": "a",
                          "source": {"hf": "lmstack-test/no-such-dataset", "split": "test"}})
    with pytest.raises(LmstackError, match=r"'lmstack-test/no-such-dataset' \(config None, split 'test'\) is not "
                                           r"available offline.*--data TASK=FILE"):
        run_task(cfg, scripted(gen=lambda p, s: "a"))
