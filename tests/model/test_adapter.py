"""LoRA adapters others can load: lmstack writes peft's format on transformers' module names (q_proj, ..., GPT-2's
c_attn), so transformers + peft load lmstack's adapter on the base's transformers model with lmstack's logits; and an
adapter peft trained on a transformers model loads in lmstack (`lmstack.load(adapter_dir)`) with peft's logits."""

import json

import pytest
import torch

import lmstack
from lmstack.lm import LM
from lmstack.train.lora import LoraOptions, apply_lora
from tests.model.hf_fixtures import hf_model

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

IDS = [[5, 17, 3, 44, 9, 60, 2, 31], [7, 7, 80, 1, 12, 30, 50, 4]]


def _randomise_adapters(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _base(family, tmp_path):
    path = tmp_path / f"{family}-base"
    hf_model(family).save_pretrained(path)
    return path


def _hf_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lmstack_adapter_loads_in_transformers_and_peft(family, tmp_path):
    base = _base(family, tmp_path)
    lm = lmstack.load(base)
    model = apply_lora(lm.model, LoraOptions(lora=True, lora_r=4, lora_alpha=8.0, lora_dropout=0.0))
    _randomise_adapters(model, 0)
    LM(model, None, {}, {}).save(tmp_path / "adapter", parent=str(base))
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    want = {"llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
            "gpt2": ["c_attn", "c_fc", "c_proj"]}[family]
    assert conf["target_modules"] == want and conf["base_model_name_or_path"] == str(base)
    hf = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                        str(tmp_path / "adapter")).eval()
    ours = lmstack.load(tmp_path / "adapter")
    got, ref = ours(IDS), _hf_logits(hf)
    assert (got - ref).abs().max() < 1e-4
    assert (ref - _hf_logits(transformers.AutoModelForCausalLM.from_pretrained(base))).abs().max() > 1e-2  # not a no-op


@pytest.mark.parametrize("family,targets", [("llama", ["q_proj", "v_proj", "gate_proj", "down_proj"]),
                                            ("llama", ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]),
                                            ("gpt2", ["c_attn", "c_proj", "c_fc"])])
def test_peft_adapter_trained_on_transformers_loads_in_lmstack(family, targets, tmp_path):
    base = _base(family, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(base)
    cfg = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                          fan_in_fan_out=family == "gpt2")
    model = peft.get_peft_model(hf, cfg)
    _randomise_adapters(model, 1)  # each of q, k, v gets its own A: lmstack stacks them (rank 3r, block-diagonal B)
    model.save_pretrained(tmp_path / "peft-adapter")
    ref = _hf_logits(model.eval())
    ours = lmstack.load(tmp_path / "peft-adapter")
    assert (ours(IDS) - ref).abs().max() < 1e-4
    # Merged into a plain checkpoint, the same function.
    from lmstack.train.lora import merge_lora

    merged = lmstack.load(merge_lora(tmp_path / "peft-adapter", tmp_path / "merged"))
    assert (merged(IDS) - ref).abs().max() < 1e-4
