"""Oracles: lmstack's logits, greedy tokens and beam search equal transformers' on the same weights."""

import json

import pytest
import torch

from lmstack.infer.beam import beam_search
from lmstack.infer.engine import generate
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import load

from .hf_fixtures import FAMILIES, hf_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    fam = request.param
    hf = hf_model(fam)
    d = tmp_path_factory.mktemp(fam)
    hf.save_pretrained(d)
    return fam, hf, load(d), d


def test_config_written_by_transformers_is_read(pair):
    fam, hf, lm, _ = pair
    assert lm.config.arch == fam
    assert lm.model.num_params() == sum(p.numel() for p in hf.parameters())


def test_logits_match_transformers(pair):
    _, hf, lm, _ = pair
    torch.manual_seed(1)
    ids = torch.randint(0, 96, (2, 20))  # longer than mistral's window of 5
    with torch.no_grad():
        want = hf(ids).logits
    got = lm(ids)
    assert (got - want).abs().max().item() < 1e-4


def test_saved_folder_loads_in_transformers(pair, tmp_path):
    _, hf, lm, _ = pair
    lm.save(tmp_path / "ck")
    files = {p.name for p in (tmp_path / "ck").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "lmstack.json"} <= files
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["architectures"]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    ids = torch.randint(0, 96, (1, 16))
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max().item() < 1e-4


def test_gpt2_with_exact_gelu_matches_transformers(tmp_path):
    # activation_function "gelu" (erf) instead of GPT-2's tanh form: read, computed and written back as such.
    import dataclasses

    from lmstack.model.transformer import Transformer

    hf = hf_model("gpt2", activation_function="gelu")
    hf.save_pretrained(tmp_path / "hf")
    lm = load(tmp_path / "hf")
    assert lm.config.activation == "gelu"
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        tanh = Transformer(dataclasses.replace(lm.config, activation="gelu_tanh")).eval()
        tanh.load_state_dict(lm.model.state_dict())
        assert (tanh(ids) - want).abs().max().item() > 1e-3  # the two forms differ on these weights
    assert (lm(ids) - want).abs().max().item() < 1e-4
    lm.save(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["activation_function"] == "gelu"
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    with torch.no_grad():
        assert (back(ids).logits - want).abs().max().item() < 1e-4


def test_pytorch_bin_written_by_hand(pair, tmp_path):
    # transformers 5 only writes safetensors; older hub checkpoints ship pytorch_model.bin.
    _, hf, lm, d = pair
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    lm2 = load(tmp_path)
    ids = torch.randint(0, 96, (1, 12))
    assert torch.equal(lm2(ids), lm(ids))


def test_greedy_tokens_match_transformers(pair):
    _, hf, lm, _ = pair
    prompts = [[5, 9, 17, 33, 4], [7, 8]]  # different lengths: left padding in one batch
    outs = generate(lm.model, prompts, SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))
    for p, o in zip(prompts, outs):
        want = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert o.ids == want[0, len(p):].tolist()


def test_greedy_batched_with_padding_equals_one_by_one(pair):
    _, _, lm, _ = pair
    prompts = [[5, 9, 17, 33, 4, 6, 7], [7, 8], [11]]
    sp = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
    together = [o.ids for o in generate(lm.model, prompts, sp)]
    alone = [generate(lm.model, [p], sp)[0].ids for p in prompts]
    assert together == alone


def test_beam_search_matches_transformers_gpt2(tmp_path):
    hf = hf_model("gpt2", seed=3, vocab=24)  # a small vocabulary makes EOS (id 2) come up often
    hf.save_pretrained(tmp_path)
    lm = load(tmp_path)
    lengths = set()
    for es in (False, True, "never"):
        for lp in (1.0, 0.5, 2.0, -1.0):
            for prompt in ([5, 9, 17], [8], [4, 1], [3, 3, 3, 3], [20]):
                sp = SamplingParams(max_new_tokens=10, num_beams=4, length_penalty=lp, early_stopping=es,
                                    stop_token_ids=[2])
                got = beam_search(lm.model, prompt, sp)
                want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=10, num_beams=4, do_sample=False, length_penalty=lp,
                                   early_stopping=es, eos_token_id=2, pad_token_id=0)[0, len(prompt):].tolist()
                # transformers pads a hypothesis that ended early; ours stops at its EOS.
                assert got.ids == want[: len(got.ids)], (es, lp, prompt)
                assert all(t == 0 for t in want[len(got.ids):])
                lengths.add(len(got.ids))
    assert len(lengths) > 3  # hypotheses of many lengths: EOS handling and length penalty were exercised
