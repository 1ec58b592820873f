"""`Tokenizer`: a `tokenizers` backend plus the special-token roles and chat template a model needs.

Files are kept in Hugging Face's layout (tokenizer.json + tokenizer_config.json) so that checkpoints move freely
between lmstack and `transformers`, and so that tokenizers of published models load here unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tokenizers
from tokenizers import processors

from lmstack.errors import LmstackError
from lmstack.tokenizer import chat
from lmstack.tokenizer.gpt2 import gpt2_backend

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG_FILE = "generation_config.json"
# Not an HF key; transformers keeps unknown config keys as inert init kwargs, so it round-trips harmlessly.
EXTRA_STOP_KEY = "lmstack_extra_stop_tokens"

# End-of-turn markers of common chat formats; chat models stop on these as well as on eos, and their
# configs often name only the document-level eos.
_KNOWN_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")
# Used only when a bare tokenizer.json comes without any config naming the special tokens.
_KNOWN_EOS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
_KNOWN_BOS = ("<|endoftext|>", "<|begin_of_text|>", "<s>", "<bos>")
_KNOWN_PAD = ("<|pad|>", "<pad>", "<|finetune_right_pad_id|>")


class Tokenizer:
    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_token: str | None,
        eos_token: str | None,
        pad_token: str | None,
        chat_template: str | None,
        extra_stop_tokens: Sequence[str] = (),
        add_bos: bool = False,
        model_max_length: int | None = None,
    ):
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.extra_stop_tokens = list(extra_stop_tokens)
        self.add_bos = bool(add_bos)
        self.model_max_length = model_max_length
        for role, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if tok is not None and backend.token_to_id(tok) is None:
                raise LmstackError(f"tokenizer: {role} token {tok!r} is not in the vocabulary")
        for tok in self.extra_stop_tokens:
            if backend.token_to_id(tok) is None:
                raise LmstackError(f"tokenizer: stop token {tok!r} is not in the vocabulary")
        if self.add_bos and bos_token is None:
            raise LmstackError("tokenizer: add_bos is set but there is no bos token")

    def __repr__(self):
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"pad={self.pad_token!r}, add_bos={self.add_bos}, chat_template={self.chat_template is not None})"
        )

    def __len__(self):
        return self.vocab_size

    # ---- vocabulary -------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        # Added tokens can sit at ids past the base vocab with gaps; the embedding must cover the largest id
        vocab = self.backend.get_vocab(with_added_tokens=True)
        return max(len(vocab), max(vocab.values(), default=-1) + 1)

    def _id(self, tok):
        return None if tok is None else self.backend.token_to_id(tok)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def stop_ids(self) -> list[int]:
        ids = []
        for tok in [self.eos_token, *self.extra_stop_tokens]:
            i = self._id(tok)
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    @property
    def special_tokens(self) -> list[str]:
        return [t.content for _, t in sorted(self.backend.get_added_tokens_decoder().items()) if t.special]

    def token_to_id(self, tok: str) -> int | None:
        return self.backend.token_to_id(tok)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    # ---- encoding ---------------------------------------------------------------------------------------------

    def _with_bos(self, ids: list[int], add_bos: bool | None) -> list[int]:
        """ids with one bos in front when one is asked for (add_bos; None: the tokenizer's own add_bos).

        "<s>" or "<|begin_of_text|>" inside a text encodes as that one special token (added tokens match
        in text), so a text that already begins with the bos token, such as the prompt a chat template
        that writes `{{ bos_token }}` renders, keeps it and gets no second one. Chat prompts are thereby
        encoded as the template's own ids (transformers' apply_chat_template(tokenize=True)), where
        transformers' tokenizer(text) would give two bos; lm-evaluation-harness also adds none to a text
        that starts with the bos. Scoring, FLAN and the backends all encode text through here.
        """
        add = self.add_bos if add_bos is None else add_bos
        if not add:
            return ids
        if self.bos_id is None:
            raise LmstackError("tokenizer: asked to add a bos token but the tokenizer has none")
        return ids if ids[:1] == [self.bos_id] else [self.bos_id, *ids]

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        # add_special_tokens=False: the backend's post-processor (if any) must not add specials behind our back;
        # bos is the only one we add, and only on request. Special-token strings in text still match.
        return self._with_bos(self.backend.encode(text, add_special_tokens=False).ids, add_bos)

    def encode_batch(self, texts: Iterable[str], add_bos: bool | None = None) -> list[list[int]]:
        encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [self._with_bos(e.ids, add_bos) for e in encs]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special)

    # ---- chat -------------------------------------------------------------------------------------------------

    def _template_tokens(self):
        return {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token}

    def _render(self, messages, add_generation_prompt, tools=None):
        if self.chat_template is None:
            raise LmstackError("tokenizer has no chat template (set chat_template in tokenizer_config.json)")
        if tools and not chat.renders_tools(self.chat_template):
            raise LmstackError("this model's chat template does not render tools (it never reads `tools`), so the "
                               "model cannot be told about them")
        return chat.render(self.chat_template, messages, add_generation_prompt, tools, **self._template_tokens())

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                            tools: list | None = None) -> str:
        return self._render(messages, add_generation_prompt, tools)

    def encode_chat(
        self, messages: Sequence[dict], add_generation_prompt: bool = False, tools: list | None = None
    ) -> tuple[list[int], list[int]]:
        """Token ids of the rendered chat and a mask that is 1 on what the assistant says (its tool calls too),
        end-of-turn included; `tools`: the function definitions the template shows (OpenAI's `tools`).

        No bos is added: templates that want one write it themselves (as with HF's apply_chat_template).
        """
        messages = chat.normalize_messages(messages)
        full = self._render(messages, add_generation_prompt, tools)
        spans = chat.assistant_spans(lambda m, g: self._render(m, g, tools), messages, full)
        enc = self.backend.encode(full, add_special_tokens=False)
        return list(enc.ids), chat.mask_from_offsets(enc.offsets, spans)

    # ---- files ------------------------------------------------------------------------------------------------

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe) -> Tokenizer:
        """GPT-2's original encoder.json + vocab.bpe (or the equivalent vocab.json + merges.txt)."""
        backend = gpt2_backend(encoder_json, vocab_bpe)
        eot = "<|endoftext|>" if backend.token_to_id("<|endoftext|>") is not None else None
        return cls(backend, eot, eot, None, None)

    @classmethod
    def load(cls, path) -> Tokenizer:
        path = Path(path)
        if not path.exists():
            raise LmstackError(f"tokenizer: {path} does not exist")
        if path.is_file():
            if path.suffix != ".json":
                raise LmstackError(f"tokenizer: {path} is not a tokenizer.json file or a tokenizer folder")
            # A tokenizer.json inside an HF folder still gets its folder's config; any other json stands alone
            folder = path.parent if path.name == TOKENIZER_FILE else None
            return cls._from_files(path, folder)
        folder = path
        if (folder / TOKENIZER_FILE).is_file():
            return cls._from_files(folder / TOKENIZER_FILE, folder)
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (folder / vocab).is_file() and (folder / merges).is_file():
                        return cls._from_backend(gpt2_backend(folder / vocab, folder / merges), folder)
        if (folder / "tokenizer").is_dir():
            return cls.load(folder / "tokenizer")
        raise LmstackError(
            f"tokenizer: {folder} has no tokenizer.json (nor vocab.json+merges.txt or encoder.json+vocab.bpe)"
        )

    @classmethod
    def _from_files(cls, tokenizer_json: Path, folder: Path | None) -> Tokenizer:
        text = _read_text(tokenizer_json)
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise LmstackError(f"tokenizer: {tokenizer_json} is not valid JSON ({e})") from None
        try:
            backend = tokenizers.Tokenizer.from_str(text)
        except Exception as e:
            raise LmstackError(f"tokenizer: {tokenizer_json} is not a tokenizers file ({e})") from None
        return cls._from_backend(backend, folder)

    @classmethod
    def _from_backend(cls, backend: tokenizers.Tokenizer, folder: Path | None) -> Tokenizer:
        cfg, special_map, gen_cfg, template_file = {}, {}, {}, None
        if folder is not None:
            cfg = _read_json(folder / CONFIG_FILE) or {}
            special_map = _read_json(folder / SPECIAL_MAP_FILE) or {}
            gen_cfg = _read_json(folder / GENERATION_CONFIG_FILE) or {}
            if (folder / CHAT_TEMPLATE_FILE).is_file():
                template_file = _read_text(folder / CHAT_TEMPLATE_FILE)
        has_config = bool(cfg or special_map)
        specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}

        def role(name, fallbacks):
            tok = _token_str(cfg.get(name, special_map.get(name)))
            if tok is None and not has_config:
                tok = next((t for t in fallbacks if t in specials), None)
            return tok

        bos, eos, pad = (
            role("bos_token", _KNOWN_BOS),
            role("eos_token", _KNOWN_EOS),
            role("pad_token", _KNOWN_PAD),
        )

        # HF writes chat_template.jinja separately since 4.43 and it wins over the config key there too
        template = template_file if template_file is not None else _chat_template(cfg.get("chat_template"))
        if template is None and not has_config and {"<|im_start|>", "<|im_end|>"} <= specials:
            template = chat.DEFAULT_CHAT_TEMPLATE

        extra = [_token_str(t) for t in cfg.get(EXTRA_STOP_KEY, [])]
        gen_eos = gen_cfg.get("eos_token_id")
        for i in gen_eos if isinstance(gen_eos, list) else [gen_eos] if isinstance(gen_eos, int) else []:
            tok = backend.id_to_token(i)
            if tok is not None:
                extra.append(tok)
        extra += [t for t in _KNOWN_TURN_ENDS if t in specials]
        extra = [t for i, t in enumerate(extra) if t and t != eos and t not in extra[:i]]

        if "add_bos_token" in cfg:
            add_bos = bool(cfg["add_bos_token"]) and bos is not None
        else:
            # No explicit flag: do what the backend's post-processor does (e.g. Llama's TemplateProcessing)
            add_bos = _post_processor_adds(backend, backend.token_to_id(bos) if bos else None)
        max_len = cfg.get("model_max_length")
        max_len = int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12 else None
        return cls(backend, bos, eos, pad, template, extra, add_bos=add_bos, model_max_length=max_len)

    def save(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        backend = self.backend
        if self.add_bos and not _post_processor_adds(backend, self.bos_id):
            # transformers adds specials through the post-processor, so bake bos in for it to give our ids
            backend = tokenizers.Tokenizer.from_str(backend.to_str())
            bos = processors.TemplateProcessing(
                single=f"{self.bos_token} $A",
                pair=f"{self.bos_token} $A $B",
                special_tokens=[(self.bos_token, self.bos_id)],
            )
            old = backend.post_processor
            backend.post_processor = bos if old is None else processors.Sequence([old, bos])
        backend.save(str(folder / TOKENIZER_FILE))
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            # transformers would otherwise "clean up" spaces before punctuation on decode and break round trips
            "clean_up_tokenization_spaces": False,
        }
        if self.model_max_length is not None:
            cfg["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        if self.extra_stop_tokens:
            cfg[EXTRA_STOP_KEY] = self.extra_stop_tokens
        (folder / CONFIG_FILE).write_text(
            json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )


@dataclass
class StreamDecoder:
    """Turns a stream of token ids into text, emitting only complete characters.

    Byte-level BPE splits multi-byte characters across tokens; decoding such a token alone gives U+FFFD, so
    text is held back until the bytes complete. Decoding a window that starts one emission back (rather than
    single tokens) keeps decoders that treat a leading space specially (SentencePiece's "▁") correct.
    """

    tokenizer: Tokenizer
    skip_special: bool = False
    ids: list[int] = field(default_factory=list)
    prefix: int = 0  # start of the window decoded for context
    read: int = 0  # end of the text already emitted

    def _diff(self):
        done = self.tokenizer.decode(self.ids[self.prefix : self.read], self.skip_special)
        now = self.tokenizer.decode(self.ids[self.prefix :], self.skip_special)
        return done, now

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        done, now = self._diff()
        if len(now) > len(done) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(done) :]
        return ""

    def flush(self) -> str:
        done, now = self._diff()
        self.prefix = self.read = len(self.ids)
        return now[len(done) :]


def _post_processor_adds(backend: tokenizers.Tokenizer, bos_id: int | None) -> bool:
    if bos_id is None or backend.post_processor is None:
        return False
    with_specials = backend.encode("a", add_special_tokens=True).ids
    return (
        bool(with_specials)
        and with_specials[0] == bos_id
        and backend.encode("a", add_special_tokens=False).ids[:1] != [bos_id]
    )


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmstackError(f"tokenizer: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LmstackError(f"tokenizer: cannot read {path} ({e})") from None


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise LmstackError(f"tokenizer: {path} is not valid JSON ({e})") from None


def _token_str(tok) -> str | None:
    # Configs write special tokens as plain strings or as serialized AddedToken dicts
    if isinstance(tok, dict):
        tok = tok.get("content")
    return tok if isinstance(tok, str) else None


def _chat_template(value) -> str | None:
    # Some repos ship several named templates (e.g. "default", "tool_use"); plain chat uses "default"
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default")
    return value if isinstance(value, str) else None
