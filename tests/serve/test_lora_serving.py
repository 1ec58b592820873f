"""LoRA adapters served beside their base (`lmstack serve --lora NAME=DIR`, vLLM's --lora-modules): a request naming
an adapter decodes with it, in the same batch as requests for the base and other adapters, and gets what the
adapter's own model (`lmstack.load(adapter_dir)`) gives."""

import argparse
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

import lmstack
from lmstack.errors import LmstackError
from lmstack.infer.engine import generate
from lmstack.infer.logprobs import prompt_logprobs
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import LM
from lmstack.model.adapter import attach_adapters
from lmstack.train.lora import LoraOptions, apply_lora
from tests.serve.conftest import server_thread

pytest.importorskip("peft")
PROMPTS = ["The small cat", "Mina lives in", "Q: What is 3 plus 4?\nA:"]


@pytest.fixture(scope="module")
def adapters(tiny_ckpt, tmp_path_factory):
    out = {}
    for k, targets in ((1, ["qkv", "o_proj", "up", "down"]), (2, ["qkv", "down"])):
        lm = lmstack.load(tiny_ckpt)
        model = apply_lora(lm.model, LoraOptions(lora=True, lora_r=2 * k, lora_dropout=0.0, lora_targets=targets))
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        folder = tmp_path_factory.mktemp("adapters") / f"a{k}"
        LM(model, lm.tokenizer, {}, {}).save(folder, parent=str(tiny_ckpt))
        out[f"a{k}"] = folder
    return out


def _greedy(lm, prompt: str, n: int = 10) -> str:
    return generate(lm.model, [lm.tokenizer.encode(prompt)], SamplingParams(max_new_tokens=n, temperature=0),
                    lm.tokenizer)[0].text


def test_requests_for_adapters_and_base_share_a_batch(tiny_ckpt, adapters):
    lm = lmstack.load(tiny_ckpt)
    attach_adapters(lm.model, list(adapters.items()))
    want = {name: [_greedy(lmstack.load(folder), p) for p in PROMPTS] for name, folder in adapters.items()}
    want["tiny"] = [_greedy(lmstack.load(tiny_ckpt), p) for p in PROMPTS]
    assert want["a1"] != want["tiny"] and want["a2"] != want["tiny"]  # the adapters change the answers
    with server_thread(lm, adapters=tuple(adapters), max_batch=16) as s:
        listed = {m["id"]: m for m in httpx.get(s.v1 + "/models").json()["data"]}
        assert listed["a1"]["parent"] == "tiny" and listed["tiny"]["parent"] is None

        def ask(job):
            name, i = job
            r = httpx.post(s.v1 + "/completions", json={"model": name, "prompt": PROMPTS[i], "max_tokens": 10,
                                                         "temperature": 0}, timeout=60)
            assert r.status_code == 200, r.text
            return name, i, r.json()

        jobs = [(name, i) for i in range(len(PROMPTS)) for name in ("tiny", "a1", "a2")] * 2
        with ThreadPoolExecutor(len(jobs)) as pool:
            for name, i, body in pool.map(ask, jobs):
                assert body["model"] == name and body["choices"][0]["text"] == want[name][i], (name, i)
        # Echoed prompt log-probabilities are the adapter's too.
        r = httpx.post(s.v1 + "/completions", json={"model": "a2", "prompt": PROMPTS[2], "max_tokens": 0,
                                                     "echo": True, "logprobs": 0}).json()
        a2 = lmstack.load(adapters["a2"])
        ref, _ = prompt_logprobs(a2.model, a2.tokenizer.encode(PROMPTS[2]), 0)
        got = r["choices"][0]["logprobs"]["token_logprobs"]
        assert got[0] is None and max(abs(a - b) for a, b in zip(got[1:], ref[1:])) < 1e-4


def test_bad_lora_options_fail_in_one_line(tiny_ckpt, adapters, tmp_path):
    from lmstack.cli import serve as cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    with pytest.raises(LmstackError, match="give NAME=DIR"):
        cli.build(p.parse_args(["--model", str(tiny_ckpt), "--lora", "a1"]))
    with pytest.raises(LmstackError, match="already served"):
        cli.build(p.parse_args(["--model", str(tiny_ckpt), "--served-model-name", "x", "--lora", f"x={adapters['a1']}"]))
    with pytest.raises(LmstackError, match="no adapter_config.json"):
        cli.build(p.parse_args(["--model", str(tiny_ckpt), "--lora", f"b={tmp_path}"]))
    _, cfg, _ = cli.build(p.parse_args(["--model", str(tiny_ckpt), "--lora", f"a1={adapters['a1']}"]))
    assert cfg.served == [str(tiny_ckpt), "a1"] and cfg.adapters == ("a1",)
