"""Answer text: the one normaliser and the parsers every judge shares.

FLAN's exact match, the harness's metrics, the simulated annotators and the RL rewards all read a
model's free-text answer with these functions, so two parts of lmstack can never disagree on whether
the same answer is right.

- `normalize`: SQuAD-style (lowercase, punctuation and articles dropped, spaces collapsed), except
  that numbers keep their sign and decimals and lose thousands separators ("1,000." -> "1000",
  "-3.5" stays), so a negative answer never matches its absolute value.
- `extract_answer`: the answer inside a generation (regexes, then a number fallback).
- `numbers`, `last_number`, `mentions`, `parse_choice`, `match_choice`: numbers, named entities and options.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmstack.errors import LmstackError

_TOKEN = re.compile(r"-?\d+(?:\.\d+)?|\w+", re.UNICODE)
_NUM_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_INT = re.compile(r"-?\d+")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
NUMBER_RE = r"-?[\d,]*\.?\d+"
ARTICLES = ("a", "an", "the")


def normalize(text: str) -> str:
    """Lowercase, punctuation and articles dropped, spaces collapsed; numbers keep sign and decimals."""
    t = _NUM_COMMA.sub("", str(text).replace("\u2019", "'").lower())
    return " ".join(w for w in _TOKEN.findall(t) if w not in ARTICLES)


_normalize = normalize  # exact_match's `normalize` flag shadows the function (the task configs' field name)


def exact_match(prediction: str | None, references: Sequence[str], normalize: bool = True) -> float:
    """1.0 when the prediction equals one of the references (after `normalize`, unless told not to)."""
    if prediction is None:
        return 0.0
    if normalize:
        p = _normalize(prediction)
        return float(any(p == _normalize(r) for r in references))
    return float(any(prediction.strip() == r.strip() for r in references))


def numbers(text: str) -> list[int]:
    """The integers written in the text, in order ("1,250" is 1250)."""
    return [int(x) for x in _INT.findall(text.replace(",", ""))]


def last_number(text: str) -> int | None:
    """The last integer written in the text, or None."""
    nums = numbers(text)
    return nums[-1] if nums else None


def extract_answer(text: str, regexes: Sequence[str] | str | None = None, match: str = "first",
                   fallback: str | None = None) -> str | None:
    """The answer inside a generation: the first regex (tried in order) that matches, its group 1 if it
    has groups (else the whole match), the first or last match; else `fallback` ('last_number',
    'first_number', 'text' = the whole stripped text, or None = no answer)."""
    if isinstance(regexes, str):
        regexes = [regexes]
    for rx in regexes or []:
        try:
            found = list(re.finditer(rx, text))
        except re.error as e:
            raise LmstackError(f"answer regex {rx!r}: {e}") from None
        if found:
            m = found[0] if match == "first" else found[-1]
            got = m.group(1) if m.groups() else m.group(0)
            if got is not None and got.strip(" \n.,;:"):
                return got.strip().rstrip(".,;:")  # "12." at the end of a sentence is 12
    if fallback in ("last_number", "first_number"):
        nums = re.findall(NUMBER_RE, text)
        if nums:
            return (nums[-1] if fallback == "last_number" else nums[0]).strip(",.")
        return None
    if fallback == "text":
        return text.strip() or None
    if fallback not in (None, "none"):
        raise LmstackError(f"answer fallback {fallback!r}: use last_number, first_number, text or none")
    return None


# ---- entities and options ----------------------------------------------------------------------------------

def find_word(hay: str, needle: str) -> int:
    """Index of `needle` in normalised `hay` at a word start (and, for Latin, a word end); -1 if none."""
    if not needle:
        return -1
    start = 0
    while True:
        i = hay.find(needle, start)
        if i < 0:
            return -1
        before_ok = i == 0 or hay[i - 1] == " "
        j = i + len(needle)
        # Korean particles attach to the word (고양이를), so Hangul needs only a word start.
        after_ok = j == len(hay) or hay[j] == " " or bool(_HANGUL.match(needle[-1]))
        if before_ok and after_ok:
            return i
        start = i + 1


def prepare_candidates(cands) -> list[tuple[str, str]]:
    """(normalised, original) pairs, longest first, for `mentions`."""
    pairs = {(normalize(c), c) for c in cands}
    return sorted((p for p in pairs if p[0]), key=lambda p: (-len(p[0]), p[1]))


def mentions(text: str, candidates) -> list[str]:
    """Candidates named in `text`, longest first, each match blanked before shorter ones are tried
    (so 'Kamiron' is not also read as 'Kami'). `candidates`: strings or `prepare_candidates` pairs."""
    if candidates and isinstance(candidates[0], str):
        candidates = prepare_candidates(candidates)
    hay = normalize(text)
    found = []
    for n, orig in candidates:
        if n in hay:
            i = find_word(hay, n)
            if i >= 0 and orig not in found:
                found.append(orig)
                hay = hay[:i] + " " * len(n) + hay[i + len(n):]
    return found


def parse_choice(answer: str, choices: list[str]) -> int | None:
    """Which option the free-text answer picks: exact match, leading option, or the only one named."""
    a = normalize(answer)
    norm = [normalize(c) for c in choices]
    for i, c in enumerate(norm):
        if a == c:
            return i
    for i in sorted(range(len(norm)), key=lambda k: -len(norm[k])):
        c = norm[i]
        if c and a.startswith(c) and (len(a) == len(c) or a[len(c)] == " "):
            return i
    named = mentions(answer, choices)
    if len(named) == 1:
        return choices.index(named[0])
    return None


def match_choice(text: str | None, choices: Sequence[str]) -> int | None:
    """Which option a generated answer picks: a letter label ("B", "(B)", "B."), the exact option,
    the option it starts with, or the only option it names."""
    if text is None:
        return None
    t = text.strip()
    said = re.search(r"(?i)\banswer(?: is|:)\s*:?\s*(.+?)\s*$", t, re.S)  # "... the answer is (B)."
    if said:
        t = said.group(1).rstrip(".")
    exact = [i for i, c in enumerate(choices) if normalize(c) == normalize(t)]
    if exact:
        return exact[0]
    m = re.fullmatch(r"\(?([A-Z])\)?[.:]?", t) or re.match(r"\(?([A-Z])[).:]\s", t)
    if m and ord(m.group(1)) - ord("A") < len(choices):
        return ord(m.group(1)) - ord("A")
    return parse_choice(t, list(choices))
