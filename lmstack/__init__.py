"""lmstack: a text foundation model's whole life, from pretraining to serving.

    import lmstack
    lm = lmstack.load("runs/demo/model")      # a checkpoint folder, a .gguf file or a hub name
    logits = lm([1, 2, 3])                     # forward pass on token ids
    print(lm.generate("Once upon a time", max_new_tokens=20, temperature=0))
    lm.save("copy")
"""

from lmstack.errors import LmstackError
from lmstack.infer.sampling import SamplingParams
from lmstack.model.checkpoint import LM, load, save
from lmstack.model.config import PRESETS, ModelConfig, preset

__version__ = "0.1.0"
__all__ = ["LM", "LmstackError", "ModelConfig", "PRESETS", "SamplingParams", "load", "preset", "save"]
