"""lmstack: a text foundation model's whole life, from pretraining to serving.

    import lmstack
    lm = lmstack.load("runs/demo/model")      # a checkpoint folder, a .gguf file or a hub name
    logits = lm(lm.encode("Hello"))            # forward pass on token ids
    print(lm.chat([{"role": "user", "content": "Hi"}], max_new_tokens=20))
    print(lm.generate("Once upon a time", max_new_tokens=20, temperature=0))
    lm.save("copy")
"""

from lmstack.errors import LmstackError

__version__ = "0.1.0"
__all__ = ["LM", "LmstackError", "ModelConfig", "PRESETS", "SamplingParams", "load", "preset", "save"]

# Imported on first use, so that light tools (tokenizer workers, the data pipeline) do not pay for torch.
_LAZY = {
    "LM": "lmstack.lm", "load": "lmstack.lm", "save": "lmstack.lm",
    "ModelConfig": "lmstack.model.config", "PRESETS": "lmstack.model.config", "preset": "lmstack.model.config",
    "SamplingParams": "lmstack.infer.sampling",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmstack' has no attribute {name!r}")
