"""LoRA helpers (peft on lmstack's modules): merging an adapter into a plain checkpoint, and the
reference model obtained by switching adapters off instead of keeping a second copy."""

from __future__ import annotations

import contextlib
from pathlib import Path

from lmstack.errors import LmstackError


def merge_lora(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    import lmstack
    from lmstack.model.checkpoint import LM, is_peft, read_json

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise LmstackError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if base is None:
        lm = lmstack.load(adapter)
    else:
        from peft import PeftModel

        b = lmstack.load(base)
        meta = read_json(adapter / "lmstack.json") if (adapter / "lmstack.json").exists() else {}
        lm = LM(PeftModel.from_pretrained(b.model, str(adapter)), b.tokenizer, b.generation_config, meta)
    if not is_peft(lm.model):
        raise LmstackError(f"{adapter}: loaded model carries no adapter")
    merged = LM(lm.model.merge_and_unload(), lm.tokenizer, lm.generation_config,
                {k: v for k, v in lm.meta.items() if k not in ("adapter",)})
    return merged.save(out, stage="merge-lora", parent=str(adapter))


@contextlib.contextmanager
def adapters_off(model):
    """The frozen reference policy of DPO/PPO/GRPO for a LoRA model: the same weights, adapters disabled."""
    from lmstack.model.checkpoint import is_peft

    if is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model
