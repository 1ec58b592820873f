"""LoRA (peft on lmstack's modules): the settings every recipe that tunes adapters shares, adding the
adapters, restoring them on resume, the reference obtained by switching them off instead of keeping a
second copy, and merging an adapter into a plain checkpoint."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmstack.errors import LmstackError
from lmstack.lm import LM, load
from lmstack.model.adapter import fused_state, is_hf_adapter
from lmstack.model.checkpoint import is_peft, read_json


@dataclass
class LoraOptions:
    """The LoRA fields of a recipe's config (a base class next to the recipe's own)."""

    lora: bool = False  #: train LoRA adapters (peft) instead of every weight
    lora_r: int = 8  #: LoRA rank
    lora_alpha: float = 16.0  #: LoRA alpha (the adapter's update is scaled by alpha / r)
    lora_dropout: float = 0.05  #: dropout on the adapters' input
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "o_proj", "up", "down"])  #: module names to adapt (qkv, o_proj, up, down)


def lora_options(cfg: LoraOptions) -> dict:
    """The LoRA fields of `cfg`, to hand on to another recipe's config (rejection sampling's SFT rounds)."""
    return {"lora": cfg.lora, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
            "lora_targets": list(cfg.lora_targets)}


def apply_lora(model, cfg: LoraOptions):
    """The model with LoRA adapters on `cfg.lora_targets`; only the adapters are trainable."""
    try:  # peft is an optional dependency (pip install 'lmstack[lora]')
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise LmstackError("LoRA needs the peft package: pip install 'lmstack[lora]' (or pip install peft)") from None

    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    bad = [t for t in cfg.lora_targets if t not in names]
    if bad:
        raise LmstackError(f"--lora-targets {', '.join(bad)}: no such linear module (have {', '.join(sorted(names))})")
    lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                    target_modules=list(cfg.lora_targets))
    return get_peft_model(model, lc)


def load_adapter_state(model, checkpoint: Path) -> None:
    """Restore a resumed run's adapter weights from a training checkpoint folder (saved on transformers' module
    names: converted back to the fused modules, exactly)."""
    from peft import set_peft_model_state_dict  # optional dependency; only reached with --lora

    folder = Path(checkpoint)
    if is_hf_adapter(folder):
        state, _ = fused_state(model.get_base_model().cfg, folder)
    else:
        state = load_file(str(folder / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, state)


@contextlib.contextmanager
def adapters_off(model):
    """The frozen reference policy of DPO/PPO/GRPO for a LoRA model: the same weights, adapters disabled."""
    if is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


def merge_lora(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise LmstackError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if base is None:
        lm = load(adapter)
    else:
        from peft import PeftModel  # optional dependency; adapters need it anyway

        b = load(base)
        meta = read_json(adapter / "lmstack.json") if (adapter / "lmstack.json").exists() else {}
        lm = LM(PeftModel.from_pretrained(b.model, str(adapter)), b.tokenizer, b.generation_config, meta)
    if not is_peft(lm.model):
        raise LmstackError(f"{adapter}: loaded model carries no adapter")
    merged = LM(lm.model.merge_and_unload(), lm.tokenizer, lm.generation_config,
                {k: v for k, v in lm.meta.items() if k not in ("adapter",)})
    return merged.save(out, stage="merge-lora", parent=str(adapter))
