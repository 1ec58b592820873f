"""Retrieval for retrieval-augmented generation: a BM25 index (the `bm25s` library) over a document collection,
and the prompt that puts the k best passages before a question (the harness's `rag` strategy).

    lmstack eval index --files "runs/suite/corpus/*.txt" --out runs/rag-index
    lmstack eval run --tasks builtin_closed_book_qa_gen --model runs/sft/model --strategy rag --index runs/rag-index

Documents are split into passages at blank lines (paragraphs), long paragraphs into windows of about
`max_words` words; the index keeps the passages, so a retrieved passage is shown exactly as it was written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmstack.errors import LmstackError

RAG_TEMPLATE = "Use the passages below if they help.\n\n{passages}\n\nQuestion: {question}"
TOKEN_PATTERN = r"(?u)\b\w+\b"  # one-character words too (numbers, Korean syllables)


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise LmstackError("retrieval needs bm25s: pip install bm25s PyStemmer") \
            from None
    return bm25s


def _tokenize(texts: list[str]):
    """bm25s's tokens: lower-cased words, English stop words out, English words stemmed (Snowball, PyStemmer's)
    so that "lives" finds "live"; other scripts (Korean) pass through the stemmer unchanged."""
    bm25s = _bm25s()
    try:
        import Stemmer
        stemmer = Stemmer.Stemmer("english").stemWords
    except ImportError:
        stemmer = None
    return bm25s.tokenize(texts, stopwords="en", token_pattern=TOKEN_PATTERN, stemmer=stemmer, show_progress=False)


def passages(text: str, max_words: int = 120) -> list[str]:
    """A document's passages: its paragraphs, each cut into windows of at most `max_words` words."""
    out = []
    for para in text.split("\n\n"):
        words = para.split()
        for s in range(0, len(words), max_words):
            if words[s:s + max_words]:
                out.append(" ".join(words[s:s + max_words]))
    return out


def build_index(files: list[str], out: str | Path, max_words: int = 120) -> int:
    """Index the passages of `files` (text) into folder `out`; returns the number of passages."""
    bm25s = _bm25s()
    corpus = []
    for f in files:
        try:
            corpus += passages(Path(f).read_text(encoding="utf-8"), max_words)
        except OSError as e:
            raise LmstackError(f"{f}: cannot read ({e.strerror})") from None
    if not corpus:
        raise LmstackError("eval index: the files hold no text")
    retriever = bm25s.BM25()
    retriever.index(_tokenize(corpus), show_progress=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    retriever.save(str(out), corpus=[{"id": i, "text": t} for i, t in enumerate(corpus)], show_progress=False)
    (out / "lmstack_index.json").write_text(json.dumps({"files": [str(f) for f in files], "passages": len(corpus),
                                                        "max_words": max_words}))
    return len(corpus)


@dataclass
class Retriever:
    """A saved BM25 index: `search(queries, k)` -> the k best passages of each query, best first."""

    index: object
    corpus: list[str]

    @classmethod
    def load(cls, folder: str | Path) -> Retriever:
        folder = Path(folder)
        if not (folder / "lmstack_index.json").exists():
            raise LmstackError(f"{folder}: not an index folder (build one with `lmstack eval index`)")
        bm25s = _bm25s()
        index = bm25s.BM25.load(str(folder), load_corpus=False, show_progress=False)
        with open(folder / "corpus.jsonl", encoding="utf-8") as f:
            corpus = [json.loads(line)["text"] for line in f if line.strip()]
        return cls(index, corpus)

    def search(self, queries: list[str], k: int = 3) -> list[list[str]]:
        k = min(k, len(self.corpus))
        ids, scores = self.index.retrieve(_tokenize(queries), k=k, show_progress=False)
        return [[self.corpus[int(j)] for j, s in zip(row, srow) if s > 0] for row, srow in zip(ids, scores)]


def rag_prompt(question: str, found: list[str]) -> str:
    """The question with its retrieved passages before it (none found: the question as it is)."""
    if not found:
        return question
    return RAG_TEMPLATE.format(passages="\n".join(f"[{i + 1}] {p}" for i, p in enumerate(found)), question=question)
