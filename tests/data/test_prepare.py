import argparse
import gzip
import json

import numpy as np
import pytest

from lmstack.cli.data import add_prepare_parser
from lmstack.data import prepare as prep
from lmstack.data.prepare import prepare, token_dtype
from lmstack.data.shards import TokenDataset
from lmstack.errors import LmstackError

DOCS = [
    "The small cat sat on the red mat.\nThe cat is happy.",
    "Mina lives in Porto. 고양이는 작다.",
    "def add(a, b):\n    return a + b",
    "Q: What is 3 plus 4?\nA: 7",
    "Emoji: 🙂🚀 and numbers 12345.",
]


def run(tmp_path, tok, inputs, name="out", **kw):
    kw = {"workers": 1, "progress": False, "val_fraction": 0.0, **kw}
    res = prepare([str(i) for i in inputs], tok, tmp_path / name, **kw)
    return res, TokenDataset(tmp_path / name, "train")


def texts(ds, tok):
    return [tok.decode(ds.documents(i)) for i in range(ds.n_documents)]


def test_txt_blank_lines_round_trip(tmp_path, tiny_tokenizer):
    f = tmp_path / "a.txt"
    # Extra blank lines, whitespace-only lines and a missing final newline are all separators or nothing
    f.write_text("\n\n" + "\n\n\n".join(DOCS[:3]) + "\n  \n" + "\n\n".join(DOCS[3:]), encoding="utf-8")
    res, ds = run(tmp_path, tiny_tokenizer, [f])
    assert texts(ds, tiny_tokenizer) == DOCS
    m = res.manifest
    assert m["format"] == "lmstack-tokens-v1" and m["dtype"] == "uint16" and ds.tokens.dtype == np.uint16
    assert m["splits"]["train"] == {"tokens": ds.n_tokens, "documents": 5}
    assert m["splits"]["val"] == {"tokens": 0, "documents": 0}
    src = m["sources"][0]
    assert src["bytes"] == f.stat().st_size and len(src["sha256"]) == 64 and src["documents"] == 5
    # every document is followed by eos, and the offsets mark where each begins
    eos = tiny_tokenizer.eos_id
    assert m["eos_id"] == eos and all(ds.tokens[o - 1] == eos for o in ds.doc_offsets[1:])
    assert not ds.tokens.flags.writeable
    from lmstack.tokenizer import Tokenizer

    copy = Tokenizer.load(ds.tokenizer_path)
    assert ds.tokenizer_path == tmp_path / "out" / "tokenizer" and copy.encode(DOCS[1]) == tiny_tokenizer.encode(DOCS[1])
    assert m["tokenizer_sha256"] == prep.tokenizer_sha256(copy)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [  # and no temp files left
        "manifest.json", "tokenizer", "train.bin", "train.idx", "val.bin", "val.idx"]


def test_doc_split_modes_and_md(tmp_path, tiny_tokenizer):
    (tmp_path / "a.md").write_text("# Title\n\nBody text.\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    _, ds = run(tmp_path, tiny_tokenizer, [tmp_path / "a.md"], "md")
    assert texts(ds, tiny_tokenizer) == ["# Title\n\nBody text.\n"]  # a .md file is one document
    _, ds = run(tmp_path, tiny_tokenizer, [tmp_path / "b.txt"], "line", doc_split="line")
    assert texts(ds, tiny_tokenizer) == ["one", "two", "three"]
    _, ds = run(tmp_path, tiny_tokenizer, [tmp_path / "b.txt"], "file", doc_split="file")
    assert texts(ds, tiny_tokenizer) == ["one\ntwo\n\nthree\n"]


def test_jsonl_custom_field_and_gzip(tmp_path, tiny_tokenizer):
    lines = "".join(json.dumps({"content": d, "id": i}, ensure_ascii=False) + "\n" for i, d in enumerate(DOCS))
    (tmp_path / "a.jsonl").write_text(lines, encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(DOCS))
    res, ds = run(tmp_path, tiny_tokenizer, [tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", tmp_path / "c.txt.gz"],
                  text_field="content")
    assert texts(ds, tiny_tokenizer) == DOCS * 3
    assert [s["format"] for s in res.manifest["sources"]] == ["jsonl", "jsonl.gz", "txt.gz"]
    with pytest.raises(LmstackError, match=r"a\.jsonl:1: no field 'text'"):
        run(tmp_path, tiny_tokenizer, [tmp_path / "a.jsonl"], "x")


def test_parquet(tmp_path, tiny_tokenizer):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS}), tmp_path / "a.parquet")
    _, ds = run(tmp_path, tiny_tokenizer, [tmp_path / "a.parquet"], text_field="body")
    assert texts(ds, tiny_tokenizer) == DOCS
    with pytest.raises(LmstackError, match=r"a\.parquet: no column 'text'"):
        run(tmp_path, tiny_tokenizer, [tmp_path / "a.parquet"], "x")


def test_parquet_without_pyarrow_names_the_install(tmp_path, tiny_tokenizer, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(LmstackError, match=r"a\.parquet: .*pip install pyarrow"):
        run(tmp_path, tiny_tokenizer, [tmp_path / "a.parquet"])


def test_folders_and_globs(tmp_path, tiny_tokenizer):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text(DOCS[1], encoding="utf-8")
    (d / "sub" / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (d / "sub" / "c.jsonl").write_text(json.dumps({"text": DOCS[2]}) + "\n", encoding="utf-8")
    (d / "notes.csv").write_text("ignored", encoding="utf-8")
    (d / ".hidden.txt").write_text("ignored", encoding="utf-8")
    res, ds = run(tmp_path, tiny_tokenizer, [d])
    assert [s["path"].split("corpus/")[1] for s in res.manifest["sources"]] == ["b.txt", "sub/a.txt", "sub/c.jsonl"]
    assert texts(ds, tiny_tokenizer) == [DOCS[1], DOCS[0], DOCS[2]]
    # a file named twice (folder and glob) is read once
    res, ds = run(tmp_path, tiny_tokenizer, [f"{d}/**/*.txt", d / "b.txt"], "glob")
    assert texts(ds, tiny_tokenizer) == [DOCS[1], DOCS[0]]

    with pytest.raises(LmstackError, match=r"nothing\*\.txt: no file matches"):
        run(tmp_path, tiny_tokenizer, [f"{tmp_path}/nothing*.txt"], "x")
    with pytest.raises(LmstackError, match=r"missing\.txt: no such file"):
        run(tmp_path, tiny_tokenizer, [tmp_path / "missing.txt"], "x")
    with pytest.raises(LmstackError, match=r"notes\.csv: unsupported input type"):
        run(tmp_path, tiny_tokenizer, [d / "notes.csv"], "x")


def test_token_dtype_and_uint32_shards(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    from lmstack.tokenizer import Tokenizer

    assert token_dtype(300) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    # A word-level vocabulary with an id past 65535 stands in for a big (e.g. 128k) vocabulary
    backend = Backend(models.WordLevel({"<unk>": 0, "<|endoftext|>": 1, "small": 2, "huge": 70000}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = Tokenizer(backend, None, "<|endoftext|>", None, None)
    (tmp_path / "a.txt").write_text("small huge\n\nhuge", encoding="utf-8")
    res, ds = run(tmp_path, tok, [tmp_path / "a.txt"])
    assert res.manifest["dtype"] == "uint32" and ds.tokens.dtype == np.uint32
    assert ds.tokens.tolist() == [2, 70000, 1, 70000, 1]


def _corpus(tmp_path, n_docs=300):
    rng = np.random.default_rng(0)
    words = ["cat", "mat", "Porto", "dog", "고양이", "7", "plus", "🙂", "happy", "red"]
    docs = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(n_docs)]
    (tmp_path / "a.txt").write_text("\n\n".join(docs[: n_docs // 2]), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[n_docs // 2 :]),
                                      encoding="utf-8")
    return docs


def test_same_bytes_for_any_worker_count(tmp_path, tiny_tokenizer, monkeypatch):
    _corpus(tmp_path)
    monkeypatch.setattr(prep, "CHUNK_DOCS", 16)  # many chunks, so that workers finish out of order
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save(tok_dir)
    inputs = [tmp_path / "a.txt", tmp_path / "b.jsonl"]
    r1, _ = run(tmp_path, str(tok_dir), inputs, "w1", workers=1, val_fraction=0.1)
    r2, _ = run(tmp_path, str(tok_dir), inputs, "w2", workers=2, val_fraction=0.1)
    for name in ("train.bin", "train.idx", "val.bin", "val.idx"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    m1, m2 = (dict(r.manifest, created=None) for r in (r1, r2))
    assert m1 == m2 and m1["tokenizer"] == str(tok_dir.resolve()) and m1["splits"]["val"]["documents"] > 0


def test_split_is_by_hash_of_document(tmp_path, tiny_tokenizer):
    docs = _corpus(tmp_path, 400)
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"

    def val_docs(name, inputs, seed=0):
        run(tmp_path, tiny_tokenizer, inputs, name, val_fraction=0.1, seed=seed)
        v = TokenDataset(tmp_path / name, "val")
        return texts(v, tiny_tokenizer)

    v = val_docs("ab", [a, b])
    assert 20 <= len(v) <= 65 and set(v) <= set(docs)
    # the order of the inputs changes the order of documents, not which ones are held out
    assert sorted(val_docs("ba", [b, a])) == sorted(v)
    assert sorted(val_docs("seed1", [a, b], seed=1)) != sorted(v)
    train = TokenDataset(tmp_path / "ab", "train")
    assert train.n_documents + len(v) == 400


def test_at_least_one_val_document(tmp_path, tiny_tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:2]), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\n".join(DOCS[2:]), encoding="utf-8")
    res, train = run(tmp_path, tiny_tokenizer, [tmp_path / "a.txt", tmp_path / "b.txt"], val_fraction=0.01)
    val = TokenDataset(tmp_path / "out", "val")
    assert (train.n_documents, val.n_documents) == (4, 1)
    [held_out] = texts(val, tiny_tokenizer)
    assert sorted(texts(train, tiny_tokenizer) + [held_out]) == sorted(DOCS)
    assert [s["val_documents"] for s in res.manifest["sources"]] == [int(held_out in DOCS[:2]),
                                                                     int(held_out in DOCS[2:])]
    assert res.manifest["splits"]["train"]["tokens"] == train.n_tokens == int(train.doc_offsets[-1])


def test_corrupt_gzip_names_file(tmp_path, tiny_tokenizer):
    data = gzip.compress("\n\n".join(DOCS * 50).encode())
    (tmp_path / "a.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LmstackError, match=r"a\.txt\.gz: corrupt or truncated gzip"):
        run(tmp_path, tiny_tokenizer, [tmp_path / "a.txt.gz"])


def test_val_inputs(tmp_path, tiny_tokenizer):
    (tmp_path / "train.txt").write_text("\n\n".join(DOCS[:3]), encoding="utf-8")
    (tmp_path / "val.txt").write_text("\n\n".join(DOCS[3:]), encoding="utf-8")
    res, train = run(tmp_path, tiny_tokenizer, [tmp_path / "train.txt"], val_inputs=[str(tmp_path / "val.txt")],
                     val_fraction=0.5)
    assert texts(train, tiny_tokenizer) == DOCS[:3]
    assert texts(TokenDataset(tmp_path / "out", "val"), tiny_tokenizer) == DOCS[3:]
    assert [s["split"] for s in res.manifest["sources"]] == ["train", "val"]


def test_no_eos(tmp_path, tiny_tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS), encoding="utf-8")
    res, ds = run(tmp_path, tiny_tokenizer, [tmp_path / "a.txt"], eos=False)
    assert ds.n_tokens == sum(len(tiny_tokenizer.encode(d)) for d in DOCS)
    assert texts(ds, tiny_tokenizer) == DOCS and res.manifest["eos_appended"] is False


BAD_JSONL = [
    json.dumps({"text": "fine"}),
    '{"text": "broken',
    json.dumps(["a list"]),
    json.dumps({"body": "no text field"}),
    json.dumps({"text": 3}),
    "",
    json.dumps({"text": "also fine"}),
]


def test_malformed_jsonl(tmp_path, tiny_tokenizer):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(BAD_JSONL) + "\n", encoding="utf-8")
    with pytest.raises(LmstackError, match=r"bad\.jsonl:2: invalid JSON.*--skip-bad"):
        run(tmp_path, tiny_tokenizer, [f])
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert list((tmp_path / "out").iterdir()) == []  # temp files removed

    res, ds = run(tmp_path, tiny_tokenizer, [f], skip_bad=True)
    m = res.manifest
    assert texts(ds, tiny_tokenizer) == ["fine", "also fine"]
    assert m["skipped_total"] == 4 and m["sources"][0]["skipped"] == 4
    assert [s["line"] for s in m["skipped"]] == [2, 3, 4, 5]
    assert all(s["path"] == str(f) for s in m["skipped"])
    assert "got list" in m["skipped"][1]["reason"] and "'text'" in m["skipped"][2]["reason"]


def test_invalid_utf8_names_line(tmp_path, tiny_tokenizer):
    f = tmp_path / "a.txt"
    f.write_bytes(b"good line\n\nbad \xff line\n")
    with pytest.raises(LmstackError, match=r"a\.txt:3: not valid UTF-8"):
        run(tmp_path, tiny_tokenizer, [f])


def test_hf_specs(tmp_path, tiny_tokenizer, monkeypatch):
    import sys
    import types

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LmstackError, match=r"hf:someone/corpus: the Hugging Face hub is offline"):
        run(tmp_path, tiny_tokenizer, ["hf:someone/corpus:en:train"])
    with pytest.raises(LmstackError, match=r"hf:: expected hf:NAME"):
        run(tmp_path, tiny_tokenizer, ["hf:"])

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(LmstackError, match=r"hf:someone/corpus: .*pip install datasets"):
        run(tmp_path, tiny_tokenizer, ["hf:someone/corpus"])

    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split))
        return [{"text": DOCS[0]}, {"text": None}, {"text": DOCS[1]}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(LmstackError, match=r"hf:someone/corpus:en:record 2: field 'text' is NoneType"):
        run(tmp_path, tiny_tokenizer, ["hf:someone/corpus:en"])
    res, ds = run(tmp_path, tiny_tokenizer, ["hf:someone/corpus:en"], skip_bad=True)
    assert calls[-1] == ("someone/corpus", "en", "train")
    assert texts(ds, tiny_tokenizer) == DOCS[:2] and res.manifest["skipped_total"] == 1
    assert res.manifest["sources"][0]["sha256"] is None


def test_shard_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(LmstackError, match="does not exist"):
        TokenDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmstackError, match=r"manifest\.json: missing"):
        TokenDataset(tmp_path / "empty")
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS), encoding="utf-8")
    run(tmp_path, tiny_tokenizer, [tmp_path / "a.txt"])
    out = tmp_path / "out"
    with pytest.raises(LmstackError, match="no split 'test'"):
        TokenDataset(out, "test")
    data = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(data[:-6])
    with pytest.raises(LmstackError, match=r"train\.bin: \d+ bytes, but the manifest implies"):
        TokenDataset(out)
    (out / "train.bin").write_bytes(data)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(dict(m, format="other-v9")))
    with pytest.raises(LmstackError, match=r"manifest\.json: format is 'other-v9'"):
        TokenDataset(out)


def test_dataset_pickles_without_copying(tmp_path, tiny_tokenizer):
    import pickle

    (tmp_path / "a.txt").write_text("\n\n".join(DOCS), encoding="utf-8")
    _, ds = run(tmp_path, tiny_tokenizer, [tmp_path / "a.txt"])
    blob = pickle.dumps(ds)
    assert len(blob) < 4000
    ds2 = pickle.loads(blob)
    assert np.array_equal(ds2.tokens, ds.tokens) and isinstance(ds2.tokens, np.memmap)


def test_cli(tmp_path, tiny_tokenizer, capsys):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS * 4), encoding="utf-8")
    tiny_tokenizer.save(tmp_path / "tok")
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["prepare", str(tmp_path / "a.txt"), "--tokenizer", str(tmp_path / "tok"),
                              "--out", str(tmp_path / "out"), "--workers", "1", "--val-fraction", "0.2",
                              "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "MB/s" in out
    assert TokenDataset(tmp_path / "out", "val").n_documents >= 1
