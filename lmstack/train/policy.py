"""The policy a preference recipe trains and its frozen reference (DPO, PPO, GRPO).

Full fine-tuning keeps a frozen copy as the reference; with --lora the reference is the same weights with
the adapters switched off (no second copy). At the end, LoRA is merged into a plain checkpoint.
"""

from __future__ import annotations

import contextlib
import copy

from lmstack.errors import LmstackError
from lmstack.lm import LM
from lmstack.model.checkpoint import is_peft
from lmstack.model.quant import quantize_model
from lmstack.train.common import load_for_training
from lmstack.train.lora import adapters_off, apply_lora
from lmstack.train.prefdata import PrefConfig


def load_policy(cfg: PrefConfig, device, need_reference: bool = True):
    """(checkpoint, the policy to train, its trainable parameters, the frozen reference copy or None).

    Dropout is off: the PPO ratio and the KL must compare one deterministic function."""
    if not cfg.model:
        raise LmstackError("--model is required (the SFT checkpoint to start from)")
    lm = load_for_training(cfg.model, device, cfg.seq_len, "preference recipes render prompts with its chat template")
    model = lm.model
    model.set_dropout(0.0)
    ref = None
    if cfg.lora:
        model = apply_lora(model, cfg)
    elif need_reference:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    return lm, model, params, ref


@contextlib.contextmanager
def reference(policy, ref_copy):
    """The frozen reference policy: the copy if there is one, else the policy with its adapters off."""
    if ref_copy is not None:
        yield ref_copy
    else:
        with adapters_off(policy) as m:
            yield m


def generation_model(model):
    """What the generation engine decodes with: the Transformer (with LoRA layers injected, if any)."""
    return model.get_base_model() if is_peft(model) else model


ROLLOUT_QUANTIZE = {"none": 0, "int8": 8, "int4": 4}


def check_rollout_quantize(value: str) -> None:
    if value not in ROLLOUT_QUANTIZE:
        raise LmstackError(f"--rollout-quantize must be one of {', '.join(ROLLOUT_QUANTIZE)}, not {value!r}")


def rollout_model(model, quantize: str = "none"):
    """What rollouts are sampled with: the policy itself, or (int8 / int4, CPU) a weight-only quantised copy of
    its current weights, LoRA merged in, made afresh for each rollout batch (quantize_model refuses a GPU model).
    Decoding reads a quarter / an eighth of the weight bytes, which pays only where decoding is bound by weight
    reads (on a 2-core CPU it was slower than fp32: docs/benchmarks.md); the losses still use the dense policy's log-probabilities (PPO and GRPO recompute the old
    log-probs of every rollout), so the copy only makes the samples slightly off-policy, as a vLLM sampler does
    for TRL."""
    check_rollout_quantize(quantize)
    if quantize == "none":
        return generation_model(model)
    copy_ = copy.deepcopy(model)
    copy_ = copy_.merge_and_unload() if is_peft(copy_) else copy_
    return quantize_model(copy_.eval(), ROLLOUT_QUANTIZE[quantize])


def final_lm(lm, model, cfg: PrefConfig) -> LM:
    """The LM to save at the end: LoRA merged into the weights (a plain checkpoint any tool reads)."""
    if cfg.lora and is_peft(model):
        model = model.merge_and_unload()
    return LM(model, lm.tokenizer, lm.generation_config, {})
