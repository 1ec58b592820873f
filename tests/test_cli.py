"""The command line: outputs, and one-line errors (no traceback, non-zero exit) for bad input."""

import json
import shutil
import subprocess
import sys

import pytest

from lmstack.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


def test_info_preset_counts_gpt3_small(capsys):
    code, out, _ = run(capsys, "info", "gpt3-small")
    assert code == 0 and "125,2" in out and "KV cache" in out


def test_generate_and_greedy_is_deterministic(capsys, tiny_ckpt):
    a = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "The cat", "--max-new-tokens", "8")
    b = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "The cat", "--max-new-tokens", "8")
    assert a[0] == 0 and a[1] == b[1] and a[1].startswith("The cat")


def test_generate_stream_prints_same_text(capsys, tiny_ckpt):
    _, plain, _ = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "Mina", "--max-new-tokens", "10")
    _, streamed, _ = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "Mina", "--max-new-tokens", "10",
                         "--stream")
    assert plain == streamed


def test_chat_keeps_conversation(capsys, tiny_ckpt, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you?\n/exit\n"))
    code, out, _ = run(capsys, "chat", "--model", str(tiny_ckpt), "--max-new-tokens", "5")
    assert code == 0 and out.count("\n") == 2


def test_missing_weights(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    (d / "model.safetensors").unlink()
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "no weights file")


def test_corrupt_weights(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "model.safetensors", "corrupt")


def test_unknown_architecture(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "config.json", "mamba")


def test_tokenizer_too_big_for_model(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    # Shrink the embedding too so the weights match the config and only the tokenizer is at fault.
    from safetensors.torch import load_file, save_file
    sd = load_file(d / "model.safetensors")
    sd = {k: (v[:100] if v.shape[0] == 300 else v) for k, v in sd.items()}
    save_file(sd, d / "model.safetensors")
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "tokenizer", "vocab_size")


def test_prompt_longer_than_context(capsys, tiny_ckpt):
    one_line_error(*run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "cat " * 400)[::2], "context")


@pytest.mark.parametrize("flag,value,word", [("--temperature", "-1", "temperature"), ("--top-p", "0", "top_p"),
                                             ("--top-p", "1.5", "top_p")])
def test_invalid_sampling_values(capsys, tiny_ckpt, flag, value, word):
    one_line_error(*run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "x", flag, value)[::2], word)


def test_missing_model_path(capsys, tmp_path):
    one_line_error(*run(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt", "x")[::2], "nope")


def test_hub_name_offline_is_clear(capsys):
    one_line_error(*run(capsys, "generate", "--model", "someorg/somemodel", "--prompt", "x")[::2], "offline")


def test_real_process_prints_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lmstack", "generate", "--model", str(tmp_path), "--prompt", "x"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
