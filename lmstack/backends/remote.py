"""Any OpenAI-compatible API behind the backend interface (OpenAI, vLLM, llama.cpp's server, and the
OpenAI-compatible endpoints of Claude and Gemini).

- `generate`: `/chat/completions` for message prompts (or for every prompt when `chat=True`, as
  closed models are chat-only), `/completions` for plain text.
- `loglikelihood`: `/completions` with `echo=True, logprobs=1, max_tokens=1` on context+continuation,
  as lm-evaluation-harness's local-completions backend does; the tokens whose text starts at or
  after the context's end are the continuation (the one generated token is dropped). A server that
  counts its BOS's text in `text_offset` (vLLM) is recognised and its offsets moved back. Chat
  endpoints return no prompt log-probabilities, so a chat backend refuses instead of guessing.

Calls are paid for, slow and flaky, so: at most `concurrency` requests in flight, retries with
exponential backoff (honouring Retry-After) on 429, 5xx, timeouts and malformed JSON, a clear error
naming the URL and status otherwise, and every successful response kept in an SQLite cache on disk
keyed by (URL, payload), so an interrupted evaluation resumes without paying twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from lmstack.errors import LmstackError

from .base import Backend, LLResult, Messages, Prompt, is_messages, per_prompt


class ResponseCache:
    """(key -> JSON response) in one SQLite file; safe across threads, survives a killed process."""

    def __init__(self, folder):
        self.path = Path(folder) / "responses.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            raise LmstackError(f"{self.path}: cannot open the response cache ({e})") from None
        self.lock = threading.Lock()

    @staticmethod
    def key(url: str, payload: dict) -> str:
        return hashlib.sha256(json.dumps([url, payload], sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str):
        with self.lock:
            row = self.db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(value)))

    def __len__(self):
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self):
        with self.lock:
            self.db.close()


class _Retry(Exception):
    def __init__(self, why: str, wait: float | None = None):
        super().__init__(why)
        self.wait = wait


class OpenAIBackend(Backend):
    def __init__(self, model: str, base_url: str, api_key_env: str | None = "OPENAI_API_KEY", chat: bool = False,
                 concurrency: int = 4, max_retries: int = 5, timeout: float = 60.0, backoff: float = 1.0,
                 max_backoff: float = 30.0, cache_dir=None, extra_body: dict | None = None):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise LmstackError(f"--base-url {base_url!r}: give the API's URL, e.g. https://api.openai.com/v1")
        self.model = model
        self.name = f"{model}@{base_url}"
        self.base_url = base_url.rstrip("/")
        self.chat_only = chat  # a chat-only API: every prompt goes to /chat/completions
        self.can_loglikelihood = not chat
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.extra_body = dict(extra_body or {})
        headers = {"Content-Type": "application/json"}
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # A connection pool as large as the concurrency limit; the client is shared by the worker threads.
        self.client = httpx.Client(headers=headers, timeout=timeout,
                                   limits=httpx.Limits(max_connections=self.concurrency))
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}
        self._stats_lock = threading.Lock()

    # ---- HTTP ----------------------------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _post(self, path: str, payload: dict, parse):
        """POST with retries; `parse(json) -> result` runs before caching, so a bad response is never cached."""
        url = f"{self.base_url}/{path}"
        payload = {"model": self.model, **payload, **self.extra_body}
        ckey = ResponseCache.key(url, payload) if self.cache is not None else None
        if self.cache is not None:
            hit = self.cache.get(ckey)
            if hit is not None:
                self._count("cache_hits")
                return parse(hit)
        why = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
            self._count("requests")
            try:
                data = self._once(httpx, url, payload)
            except _Retry as r:
                why = str(r)
                if attempt < self.max_retries:
                    wait = r.wait if r.wait is not None else self.backoff * 2 ** attempt
                    time.sleep(min(self.max_backoff, wait))
                continue
            try:
                result = parse(data)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                snippet = json.dumps(data)[:300]
                raise LmstackError(f"{url}: unexpected response shape ({e.__class__.__name__}: {e}): {snippet}") from None
            if self.cache is not None:
                self.cache.put(ckey, data)
            return result
        raise LmstackError(f"{url}: gave up after {self.max_retries + 1} attempts; last error: {why}")

    def _once(self, httpx, url: str, payload: dict) -> dict:
        try:
            r = self.client.post(url, json=payload)
        except httpx.TimeoutException as e:
            raise _Retry(f"timeout ({e.__class__.__name__})") from None
        except httpx.TransportError as e:
            raise _Retry(f"connection error ({e.__class__.__name__}: {e})") from None
        if r.status_code == 429 or r.status_code >= 500:
            wait = None
            ra = r.headers.get("retry-after")
            if ra:
                try:
                    wait = float(ra)
                except ValueError:
                    pass
            raise _Retry(f"HTTP {r.status_code}: {r.text[:200]}", wait)
        if r.status_code >= 400:
            hint = ""
            if r.status_code in (401, 403):
                hint = (f" (is ${self.api_key_env} set to a valid key?)" if self.api_key_env
                        else " (no API key sent; pass --api-key-env)")
            raise LmstackError(f"{url}: HTTP {r.status_code}{hint}: {r.text[:300]}")
        try:
            data = r.json()
        except ValueError:
            raise _Retry(f"malformed JSON in the response: {r.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise _Retry(f"malformed JSON in the response (not an object): {r.text[:200]!r}")
        if "error" in data and "choices" not in data:
            raise LmstackError(f"{url}: the API returned an error: {json.dumps(data['error'])[:300]}")
        return data

    def _map(self, fn, items: list) -> list:
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    # ---- the interface -------------------------------------------------------------------------------------

    def _no_ll(self):
        if self.chat_only:
            raise LmstackError(f"{self.name}: a chat endpoint returns no prompt log-probabilities, so it cannot "
                               "score multiple-choice or perplexity tasks by log-likelihood; use a /completions "
                               "endpoint (drop --chat) or score by generation (--mc-mode generate)")

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LLResult]:
        self._no_ll()

        def one(req):
            context, continuation = req
            # Trailing spaces belong to the continuation (lm-eval's rule), so " Paris" stays one token.
            boundary = len(context.rstrip(" "))
            prompt = context + continuation
            if boundary == 0:
                raise LmstackError("loglikelihood: empty context (the API cannot score the first token)")

            def parse(data):
                lp = data["choices"][0]["logprobs"]
                return _continuation_logprob(lp, boundary, len(prompt), prompt=prompt)

            return self._post("completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                              "echo": True, "logprobs": 1}, parse)

        return self._map(one, list(requests))

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[LLResult]:
        self._no_ll()

        def one(text):
            def parse(data):
                lp = data["choices"][0]["logprobs"]
                return _continuation_logprob(lp, 0, len(text), skip_unscored=True, prompt=text)

            return self._post("completions", {"prompt": text, "max_tokens": 1, "temperature": 0.0,
                                              "echo": True, "logprobs": 1}, parse)

        return self._map(one, list(texts))

    def generate(self, prompts: Sequence[Prompt], sampling=None) -> list[str]:
        params = per_prompt(sampling, len(prompts))

        def one(job):
            prompt, sp = job
            if sp.num_beams > 1:
                raise LmstackError(f"{self.name}: beam search is not available through the OpenAI API")
            body = _sampling_body(sp)
            if is_messages(prompt) or self.chat_only:
                msgs = prompt if is_messages(prompt) else [{"role": "user", "content": prompt}]
                text = self._post("chat/completions", {"messages": msgs, **body}, _chat_text)
            elif isinstance(prompt, str):
                text = self._post("completions", {"prompt": prompt, **body}, lambda d: d["choices"][0]["text"])
            else:
                raise LmstackError(f"generate: a prompt must be a string or a list of messages, "
                                   f"got {type(prompt).__name__}")
            if not isinstance(text, str):
                raise LmstackError(f"{self.name}: the API returned a non-text completion: {text!r:.200}")
            return _cut_at_stop(text, sp.stop)

        return self._map(one, list(zip(prompts, params)))

    def chat(self, conversations: Sequence[Messages], sampling=None, tools: list | None = None) -> list[dict]:
        """`/chat/completions` with OpenAI's `tools`: the assistant message as the API returns it (its
        `tool_calls` kept); earlier calls go back with their arguments as JSON text, as the API expects."""
        params = per_prompt(sampling, len(conversations))

        def one(job):
            msgs, sp = job
            if sp.num_beams > 1:
                raise LmstackError(f"{self.name}: beam search is not available through the OpenAI API")
            body = {"messages": [_api_message(m) for m in msgs], **_sampling_body(sp)}
            if tools:
                body["tools"] = tools
            msg = self._post("chat/completions", body, _chat_message)
            msg["content"] = _cut_at_stop(msg["content"], sp.stop)
            return msg

        return self._map(one, list(zip(conversations, params)))

    def describe(self) -> dict:
        return {"backend": "openai", "name": self.name, "model": self.model, "base_url": self.base_url,
                "chat": self.chat_only, **self.stats}

    def close(self) -> None:
        self.client.close()
        if self.cache is not None:
            self.cache.close()


def _chat_message(data) -> dict:
    msg = data["choices"][0]["message"]
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list) or any(not isinstance(c, dict) or not isinstance(c.get("function"), dict)
                                          for c in calls):
        raise LmstackError(f"the API returned malformed tool_calls: {calls!r:.200}")
    out = {"role": "assistant", "content": _chat_text(data)}
    if calls:
        out["tool_calls"] = [{"id": c.get("id", ""), "type": "function",
                              "function": {"name": c["function"].get("name", ""),
                                           "arguments": c["function"].get("arguments") or "{}"}} for c in calls]
    return out


def _api_message(m: dict) -> dict:
    """A message as the API takes it: call arguments as JSON text."""
    if not m.get("tool_calls"):
        return m
    return {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": c["function"]["arguments"]
                                                   if isinstance(c["function"]["arguments"], str)
                                                   else json.dumps(c["function"]["arguments"])}}
                                for c in m["tool_calls"]]}


def _chat_text(data) -> str:
    content = data["choices"][0]["message"]["content"]
    if isinstance(content, list):  # some providers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else content


def _bos_shift(lp: dict, prompt: str) -> int:
    """How many characters a server counted for a leading BOS that its echoed text lacks.

    text_offset indexes the echoed text, and a BOS the server added is not in it, so its offset is 0 and
    it takes no room (lmstack's server). vLLM instead counts the BOS's text: tokens ['<s>', 'The', ...],
    offsets [0, 3, ...] for the text 'The...'. Seen as: the second token starts right after the first,
    yet the prompt does not start with the two of them.
    """
    tokens, offsets = lp.get("tokens") or [], lp["text_offset"]
    if len(tokens) < 2 or len(offsets) < 2 or not isinstance(tokens[0], str) or not isinstance(tokens[1], str):
        return 0
    first, head = tokens[0], tokens[0] + tokens[1]
    if not first or "\ufffd" in head or offsets[0] != 0 or offsets[1] != len(first):
        return 0
    return 0 if prompt.startswith(head) else len(first)


def _continuation_logprob(lp: dict, boundary: int, end: int, skip_unscored: bool = False,
                          prompt: str | None = None) -> LLResult:
    """Sum the log-probs of the tokens whose text starts in [boundary, end) (echoed prompt tokens)."""
    offsets, token_lps = lp["text_offset"], lp["token_logprobs"]
    shift = _bos_shift(lp, prompt) if prompt is not None else 0
    if shift:
        offsets = [offsets[0]] + [o - shift for o in offsets[1:]]
    tops = lp.get("top_logprobs") or [None] * len(token_lps)
    if len(offsets) != len(token_lps):
        raise ValueError("text_offset and token_logprobs differ in length")
    total, n, greedy = 0.0, 0, True
    for off, tlp, top in zip(offsets, token_lps, tops):
        if off < boundary or off >= end:
            continue
        if tlp is None:
            if skip_unscored:
                continue
            raise ValueError("a continuation token has no log-probability")
        total += float(tlp)
        n += 1
        if top:
            greedy = greedy and float(tlp) >= max(float(v) for v in top.values()) - 1e-6
    if n == 0 and not skip_unscored:
        raise ValueError("no echoed tokens fall in the continuation (does the server support echo=True?)")
    return LLResult(total, greedy, n)


def _sampling_body(sp) -> dict:
    body = {"max_tokens": sp.max_new_tokens, "temperature": sp.temperature}
    if sp.top_p < 1.0:
        body["top_p"] = sp.top_p
    if sp.stop:
        body["stop"] = list(sp.stop)[:4]  # the OpenAI API takes at most 4; the rest are applied here
    if sp.seed is not None:
        body["seed"] = sp.seed
    if sp.frequency_penalty:
        body["frequency_penalty"] = sp.frequency_penalty
    if sp.presence_penalty:
        body["presence_penalty"] = sp.presence_penalty
    # Not in OpenAI's schema (vLLM and llama.cpp accept them): sent only when asked for, since strict
    # providers reject unknown fields.
    if sp.top_k:
        body["top_k"] = sp.top_k
    if sp.min_p:
        body["min_p"] = sp.min_p
    if sp.repetition_penalty != 1.0:
        body["repetition_penalty"] = sp.repetition_penalty
    return body


def _cut_at_stop(text: str, stops) -> str:
    cut = len(text)
    for s in stops or []:
        i = text.find(s)
        if s and 0 <= i < cut:
            cut = i
    return text[:cut]
