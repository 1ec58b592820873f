"""SFT: masks, packing without cross-example attention, loss falls, LoRA merge, bad input, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

import lmstack
from lmstack.data.instructions import load_conversations
from lmstack.errors import LmstackError
from lmstack.train.sft import SFTConfig, collate, nll_sum, pack, run, tokenize_conversations

CONVS = [
    {"messages": [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Cat in Korean?"},
                  {"role": "assistant", "content": "고양이"}]},
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]},
]


def write(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return str(path)


def test_loss_mask_counts_assistant_tokens_only(tiny_lm):
    tok = tiny_lm.tokenizer
    ex, stats = tokenize_conversations(tok, CONVS, 128)
    for e, c in zip(ex, CONVS):
        want = sum(len(tok.encode(m["content"])) + 1 for m in c["messages"] if m["role"] == "assistant")
        assert sum(e.mask) == want  # content + the end-of-turn token of each assistant turn
    all_ex, _ = tokenize_conversations(tok, CONVS, 128, train_on="all")
    assert all(sum(e.mask) == len(e.ids) for e in all_ex)


def test_packed_loss_equals_padded_loss(tiny_lm):
    """Packing must not leak attention or positions across examples: per-batch NLL sums agree."""
    tok = tiny_lm.tokenizer
    ex, _ = tokenize_conversations(tok, CONVS, 128)
    packed = pack(ex, 200, True, seed=0)
    padded = pack(ex, 200, False, seed=0)
    assert len(padded) == 3 and max(len(r) for r in packed) >= 2
    nocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    s1, n1 = nll_sum(tiny_lm.model, collate(packed, tok.pad_id, True), "cpu", nocast)
    s2, n2 = nll_sum(tiny_lm.model, collate(padded, tok.pad_id, False), "cpu", nocast)
    assert int(n1) == int(n2)
    assert abs(s1.item() - s2.item()) < 1e-3


def test_formats_and_bad_records(tmp_path):
    good = write(tmp_path / "a.jsonl", [
        CONVS[0],
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ])
    convs, rep = load_conversations([good])
    assert rep.kept == 3 and convs[1]["messages"][1] == {"role": "assistant", "content": "hi"}
    assert convs[2]["messages"][0]["role"] == "user"
    bad = write(tmp_path / "b.jsonl", [CONVS[0], {"instruction": "x"},
                                       {"messages": [{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": "  "}]}])
    with pytest.raises(LmstackError, match=r"b\.jsonl:2: missing or non-string field 'output'"):
        load_conversations([bad])
    convs, rep = load_conversations([bad], skip_bad=True)
    assert rep.kept == 1 and [s["where"].rsplit(":", 1)[1] for s in rep.skipped] == ["2", "3"]
    assert "empty assistant response" in rep.skipped[1]["reason"]


def test_overlong_truncated_or_rejected(tiny_lm):
    long = [{"messages": [{"role": "user", "content": "word " * 10},
                          {"role": "assistant", "content": "answer " * 200}]}]
    n = max(len(tiny_lm.tokenizer.encode_chat(c["messages"])[0]) for c in CONVS) + 2
    ex, st = tokenize_conversations(tiny_lm.tokenizer, long + CONVS, n)
    assert st["truncated"] == 1 and len(ex) == 4 and max(len(e.ids) for e in ex) == n
    ex, st = tokenize_conversations(tiny_lm.tokenizer, long + CONVS, n, overlong="reject")
    assert st["rejected_overlong"] == 1 and len(ex) == 3


def test_template_without_assistant_marker_is_an_error(tiny_lm):
    from lmstack.tokenizer import Tokenizer

    tok = tiny_lm.tokenizer
    plain = Tokenizer(tok.backend, tok.bos_token, tok.eos_token, tok.pad_token,
                      "{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    with pytest.raises(LmstackError, match="assistant"):
        tokenize_conversations(plain, CONVS, 128)


def sft_cfg(tmp_path, ckpt, data, **kw):
    base = dict(out=str(tmp_path), model=str(ckpt), data=[data], seq_len=96, micro_batch=4, steps=30, lr=3e-3,
                warmup=2, eval_interval=0, ckpt_interval=0, log_interval=1, quiet=True, seed=0)
    base.update(kw)
    return SFTConfig(**base)


def test_sft_loss_falls_full_and_lora_merge_equals_adapter(tmp_path, tiny_ckpt):
    data = write(tmp_path / "d.jsonl", CONVS * 4)
    full = run(sft_cfg(tmp_path / "full", tiny_ckpt, data)).summary
    assert full["final_loss"] < full["first_loss"] * 0.6
    res = run(sft_cfg(tmp_path / "lora", tiny_ckpt, data, lora=True, lora_r=4, lr=1e-2))
    lora = res.summary
    assert res.artifacts == {"model": str(tmp_path / "lora" / "model"), "adapter": str(tmp_path / "lora" / "adapter")}
    assert lora["final_loss"] < lora["first_loss"]
    adapter = lmstack.load(tmp_path / "lora" / "adapter")
    from lmstack.train.lora import merge_lora

    merge_lora(tmp_path / "lora" / "adapter", tmp_path / "merged")
    merged = lmstack.load(tmp_path / "merged")
    ids = adapter.encode("What is 3 plus 4?")
    assert (adapter(ids) - merged(ids)).abs().max().item() < 1e-4
    base = lmstack.load(tiny_ckpt)
    assert not torch.allclose(base(ids), merged(ids), atol=1e-3)  # the adapter changed something


def test_sft_resume_is_exact(tmp_path, tiny_ckpt):
    data = write(tmp_path / "d.jsonl", CONVS * 4)
    run(sft_cfg(tmp_path / "a", tiny_ckpt, data, steps=6, ckpt_interval=2, grad_accum=2, micro_batch=2,
                dropout=0.1))

    class Stop(Exception):
        pass

    def stop(step):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        run(sft_cfg(tmp_path / "b", tiny_ckpt, data, steps=6, ckpt_interval=2, grad_accum=2, micro_batch=2,
                    dropout=0.1), step_hook=stop)
    run(sft_cfg(tmp_path / "b", tiny_ckpt, data, steps=6, ckpt_interval=2, grad_accum=2, micro_batch=2,
                dropout=0.1, resume=True))
    a, b = load_file(tmp_path / "a" / "model" / "model.safetensors"), load_file(
        tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_options_pass_every_lora_field_on():
    import dataclasses

    from lmstack.train.lora import LoraOptions, lora_options
    from lmstack.train.rejection import RejectionConfig

    cfg = RejectionConfig(lora=True, lora_r=4, lora_targets=["qkv"])
    opts = lora_options(cfg)
    assert set(opts) == {f.name for f in dataclasses.fields(LoraOptions)}
    sft = SFTConfig(**opts)
    assert (sft.lora, sft.lora_r, sft.lora_dropout, sft.lora_targets) == (True, 4, 0.0, ["qkv"])
    assert opts["lora_targets"] is not cfg.lora_targets


def test_progress_counts_every_token_the_model_runs_over(tmp_path, tiny_ckpt):
    # One epoch of unpacked rows (12 examples, 4 a step, 3 steps) runs over every token of every example once;
    # tokens/s counts them all (it counted the answer tokens only before), the loss's token count is logged beside.
    data = write(tmp_path / "d.jsonl", CONVS * 4)
    run(sft_cfg(tmp_path / "r", tiny_ckpt, data, steps=3, packing=False))
    from lmstack.train.log import read_metrics

    steps = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    examples, stats = tokenize_conversations(lmstack.load(tiny_ckpt).tokenizer, CONVS, 96)
    assert steps[-1]["tokens"] == 4 * sum(len(e.ids) for e in examples)
    assert sum(r["target_tokens"] for r in steps) == 4 * stats["target_tokens"] < steps[-1]["tokens"]
    assert all(r["tokens_per_s"] > 0 for r in steps[1:])
