"""The OpenAI-compatible HTTP server: FastAPI routes over the continuously batching scheduler.

Endpoints: GET /v1/models, POST /v1/completions (the legacy contract, as lm-evaluation-harness's
`local-completions` uses it: echo + logprobs score prompts), POST /v1/chat/completions, GET /health,
GET /tokenizer_info, POST /tokenize, POST /detokenize, and the web chat page at /.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmstack.errors import LmstackError
from lmstack.infer.engine import Completion
from lmstack.infer.engine import Request as Decode  # the engine's request; `Request` here is the HTTP one
from lmstack.infer.grammar import Matcher, compile_guide, grammar_tokenizer
from lmstack.infer.logprobs import prompt_logprobs
from lmstack.infer.stop import stop_token_ids
from lmstack.infer.tools import call_format, forced_call, may_become_call, parse_calls, tool_names
from lmstack.serve.protocol import (
    ApiError,
    Options,
    bad,
    error_body,
    get_bool,
    get_str,
    parse_messages,
    parse_options,
    parse_prompts,
    parse_tools,
    usage,
)
from lmstack.serve.scheduler import QueueFull, Row, Scheduler, make_group
from lmstack.tokenizer.chat import renders_tools

log = logging.getLogger("lmstack.serve")
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = {"/health", "/", "/compare", "/favicon.ico"}  # the pages hold no data; they ask for the key themselves


@dataclasses.dataclass
class ServerConfig:
    model_name: str = "lmstack"  # the name responses report
    aliases: tuple[str, ...] = ()  # further names requests may give (vLLM: the --model string, the other names)
    adapters: tuple[str, ...] = ()  # LoRA adapters served beside the base, by name (adapter i + 1)
    compare: tuple[str, ...] = ()  # the comparison page's models (served names, repeats: samples of one model)
    labels: str | None = None  # the JSONL file the comparison page's rankings are appended to

    @property
    def served(self) -> list[str]:
        """Every name a request may give, the reported one first, then the adapters'."""
        return list(dict.fromkeys([self.model_name, *self.aliases, *self.adapters]))
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 256
    timeout: float = 600.0  # seconds from arrival to the last token
    max_body: int = 4 << 20  # bytes of request body
    prefix_cache_mb: float = 256.0  # memory for the keys/values of recent prompts, reused by shared prefixes (0: off)


class Guard:
    """ASGI middleware: bearer-token check and a body-size limit before any route runs.

    Plain ASGI rather than BaseHTTPMiddleware, which buffers streams and hides client disconnects.
    """

    def __init__(self, app, cfg: ServerConfig):
        self.app, self.cfg = app, cfg

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.cfg.api_key and scope["path"] not in OPEN_PATHS:
            got = headers.get(b"authorization", b"").decode("latin-1")
            want = f"Bearer {self.cfg.api_key}"
            if not hmac.compare_digest(got.encode(), want.encode()):
                return await _send_json(send, 401, error_body(
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>'", "invalid_request_error",
                    None, "invalid_api_key"), {"www-authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.cfg.max_body:
            if int(length) <= drain_limit(self.cfg.max_body):
                await _drain(receive)
            return await _send_json(send, 413, error_body(
                f"request body of {int(length)} bytes is over the limit of {self.cfg.max_body} bytes",
                "invalid_request_error", None, "request_too_large"), {"connection": "close"})
        return await self.app(scope, receive, send)


def count_lines(path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def drain_limit(max_body: int) -> int:
    # A body over the limit is still read (and dropped) up to this size before the 413 goes out: a
    # server that answers and closes while the client is still sending makes the client see a
    # connection reset instead of the answer. Past this size it is cheaper to just close.
    return max(16 * max_body, 64 << 20)


async def _drain(receive):
    while True:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body"):
            return


async def _send_json(send, status, body, headers=None):
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


async def read_json(request: Request, limit: int) -> dict:
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a chunked body has no Content-Length
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > drain_limit(limit):
            break
    if size > limit:
        raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"invalid JSON body: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object", code="invalid_json")
    return body


class Server:
    """Request handling shared by the routes; one per app."""

    def __init__(self, lm, cfg: ServerConfig):
        self.lm, self.cfg = lm, cfg
        self.tok = lm.tokenizer
        self.ctx = lm.config.max_seq_len
        self.vocab = lm.config.vocab_size
        eos = lm.config.eos_token_id
        ids = list(self.tok.stop_ids) if self.tok is not None else []
        ids += [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None and e not in ids]
        self.stop_ids = ids
        self.sched = Scheduler(lm, cfg.max_batch, cfg.max_queue, cfg.timeout, cfg.prefix_cache_mb)
        self._piece: dict[int, str] = {}

    # ---- helpers ----------------------------------------------------------------------------------------------

    def check_model(self, body) -> tuple[str, int]:
        """(the name to report, the LoRA adapter to decode with: 0 for the base) of the request's `model`."""
        name = get_str(body, "model", None)
        if name is not None and name not in self.cfg.served:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves "
                                f"{', '.join(repr(n) for n in self.cfg.served)}", param="model",
                           code="model_not_found")
        if name in self.cfg.adapters:
            return name, self.cfg.adapters.index(name) + 1
        return self.cfg.model_name, 0

    def check_grammar(self, opts: Options) -> None:
        """A grammar the tokenizer cannot follow is a 400 now, not an error inside the running batch."""
        if opts.params.grammar is None:
            return
        if self.tok is None:
            raise bad(opts.guided_by, "structured output needs the model's tokenizer; this model has none")
        try:
            ends = stop_token_ids(self.lm.config.eos_token_id, self.tok, opts.params)  # as the engine will
            Matcher(grammar_tokenizer(self.tok, self.vocab, ends), opts.params.grammar).check_start()
        except LmstackError as e:
            raise bad(opts.guided_by, f"'{opts.guided_by}': {e}") from None

    def check_length(self, ids, param):
        if len(ids) > self.ctx:
            raise bad(param, f"This model's maximum context length is {self.ctx} tokens, but the prompt has "
                             f"{len(ids)} tokens", code="context_length_exceeded")

    def piece(self, tid: int) -> str:
        s = self._piece.get(tid)
        if s is None:
            s = self._piece[tid] = self.tok.decode([tid]) if self.tok is not None else str(tid)
        return s

    def offsets(self, ids, start: int, skip: int = 0) -> list[int]:
        """Character offset of each token in the text (a token ending mid-character adds nothing yet).

        The first `skip` tokens are not in the text (the BOS the tokenizer put before a text prompt): they
        sit at `start` and take no room, and the text's own tokens are decoded without them, as the text
        was encoded (a decoder may render a token differently after a BOS).
        """
        if self.tok is None:
            return [start] * len(ids)
        dec, pos, out, held = self.tok.stream_decoder(), start, [start] * min(skip, len(ids)), False
        for t in ids[skip:]:
            chunk = dec.push(t)
            out.append(self.own_offset(t, pos, chunk, held))
            pos += len(chunk)
            held = not chunk
        return out

    def own_offset(self, tid: int, pos: int, chunk: str, held: bool) -> int:
        """Offset of a token whose text `chunk` starts at `pos`. When earlier tokens emitted nothing (half
        characters, or text held back for a possible stop string), the chunk starts with their text: a
        token whose own text ends the chunk starts there (otherwise it completes the held character)."""
        if held and chunk:
            own = self.piece(tid)
            if own and "\ufffd" not in own and chunk.endswith(own):
                return pos + len(chunk) - len(own)
        return pos

    def added_tokens(self, ids: list[int], text: str | None) -> int:
        """How many leading tokens of a prompt the tokenizer added before its text (0 for token ids, whose
        echoed text is their decoding, BOS included)."""
        if text is None or self.tok is None:
            return 0
        if not text:
            return len(ids)  # an empty text prompt is the start-of-document token alone
        return len(ids) - len(self.tok.encode(text, add_bos=False))

    def top_dict(self, top: dict | None, chosen: int | None = None, chosen_lp: float | None = None):
        if top is None:
            return None
        d: dict[str, float] = {}
        items = list(top.items())
        if chosen is not None and chosen not in top and chosen_lp is not None:
            items.append((chosen, chosen_lp))  # the sampled token is always listed, as vLLM does
        for tid, lp in items:
            s = self.piece(tid)
            if s not in d or lp > d[s]:  # two ids can decode to the same string (partial UTF-8)
                d[s] = lp
        return d

    def rows_for(self, prompts: list[list[int]], opts: Options) -> tuple[list[Row], dict[int, Completion]]:
        """n rows per prompt (choice = prompt * n + j); prompts with no room left finish at once."""
        rows, done = [], {}
        for pi, ids in enumerate(prompts):
            for j in range(opts.n):
                c = pi * opts.n + j
                if opts.max_tokens == 0 or len(ids) >= self.ctx:
                    done[c] = Completion(prompt_ids=ids, finish_reason="length")
                    continue
                p = opts.params if opts.seed is None else dataclasses.replace(opts.params, seed=opts.seed + j)
                rows.append(Row(Decode(ids, p), c))
        return rows, done

    def start(self, rows: list[Row]):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def deliver(items):
            for it in items:
                q.put_nowait(it)

        group = make_group(loop, deliver, self.cfg.timeout)
        group.rows = rows
        try:
            self.sched.submit(group)
        except QueueFull:
            raise busy(f"the server is busy: {self.cfg.max_queue} requests are already waiting; retry later") \
                from None
        return group, q

    async def collect(self, request: Request, group, q, results: dict[int, Completion]):
        """Wait for every row of a non-streaming request; a client that leaves frees its rows."""
        pending = len(group.rows)
        try:
            while pending:
                try:
                    item = await asyncio.wait_for(q.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError from None
                    continue
                if item[0] == "done":
                    results[item[1]] = item[2]
                    pending -= 1
                elif item[0] == "error":
                    raise item_error(item)
        finally:
            if pending:
                self.sched.cancel(group)
        return results

    # ---- completions --------------------------------------------------------------------------------------------

    async def completions(self, request: Request):
        body = await read_json(request, self.cfg.max_body)
        served, adapter = self.check_model(body)
        opts = parse_options(body, self.vocab, chat=False, model_stop_ids=self.stop_ids, adapter=adapter)
        self.check_grammar(opts)
        prompts = parse_prompts(body.get("prompt"), self.tok, self.vocab)
        for ids, _ in prompts:
            self.check_length(ids, "prompt")
        texts = [t if t is not None else (self.tok.decode(ids) if self.tok is not None else "") for ids, t in prompts]
        ids_list = [ids for ids, _ in prompts]
        added = [self.added_tokens(ids, t) if opts.echo and opts.logprobs is not None else 0 for ids, t in prompts]
        scores = None
        if opts.echo and opts.logprobs is not None:
            fut = self._call(lambda: self.score_prompts(ids_list, opts.logprobs, adapter))
            scores = await asyncio.wrap_future(fut)
        rows, done = self.rows_for(ids_list, opts)
        group, q = self.start(rows)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if opts.stream:
            gen = self._stream_completions(group, q, done, opts, ids_list, texts, added, scores, rid, created, served)
            return StreamingResponse(gen, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        results = await self.collect(request, group, q, done)
        choices = []
        for pi, ids in enumerate(ids_list):
            for j in range(opts.n):
                c = pi * opts.n + j
                res = results[c]
                lp = None
                if opts.logprobs is not None:
                    lp = self._completion_logprobs(ids, texts[pi], res, opts, scores[pi] if scores else None,
                                                   added[pi])
                text = (texts[pi] if opts.echo else "") + res.text
                choices.append({"index": c, "text": text, "logprobs": lp, "finish_reason": res.finish_reason})
        n_out = sum(len(r.ids) for r in results.values())
        return {"id": rid, "object": "text_completion", "created": created, "model": served,
                "choices": choices, "usage": usage(sum(len(i) for i in ids_list), n_out)}

    def score_prompts(self, ids_list, top: int, adapter: int = 0):
        """Each prompt's token log-probabilities (echo), with the request's LoRA adapter where it named one."""
        adapters = getattr(self.lm.model, "adapters", None)
        out = []
        for ids in ids_list:
            if adapters is not None:
                adapters.select([adapter], self.lm.device)
            out.append(prompt_logprobs(self.lm.model, ids, top))
        return out

    def _call(self, fn):
        try:
            return self.sched.call(fn)
        except QueueFull:
            raise busy("the server is busy; retry later") from None

    def _completion_logprobs(self, ids, text, res: Completion, opts: Options, score, added: int = 0):
        """OpenAI's legacy logprobs object; `text_offset` indexes the returned text (echoed prompt + completion),
        and the `added` leading prompt tokens the text lacks (a BOS) sit at 0."""
        tokens, lps, tops, offs = [], [], [], []
        if opts.echo:
            p_lp, p_top = score if score is not None else ([None] * len(ids), [None] * len(ids))
            tokens += [self.piece(t) for t in ids]
            lps += p_lp
            tops += [self.top_dict(tp, t, lp) for tp, t, lp in zip(p_top, ids, p_lp)]
            offs += self.offsets(ids, 0, added)
        start = len(text) if opts.echo else 0
        tokens += [self.piece(t) for t in res.ids]
        lps += list(res.logprobs)
        for k, t in enumerate(res.ids):
            top = res.top_logprobs[k] if k < len(res.top_logprobs) else {}
            tops.append(self.top_dict(top, t, res.logprobs[k]))
        offs += self.offsets(res.ids, start)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}

    def _stream_completions(self, group, q, done, opts, ids_list, texts, added, scores, rid, created, served=None):
        offs, held = {}, {}  # each choice's text offset so far, and whether its last token sent no text

        def head(c):
            pi = c // opts.n
            offs[c] = len(texts[pi]) if opts.echo else 0
            if not opts.echo:
                return []
            lp = None
            if opts.logprobs is not None:
                lp = self._completion_logprobs(ids_list[pi], texts[pi], Completion(ids_list[pi]), opts,
                                               scores[pi] if scores else None, added[pi])
            return [{"text": texts[pi], "logprobs": lp}]

        def token(c, tid, text, lp, top):
            if opts.logprobs is not None:
                lpd = {"tokens": [self.piece(tid)], "token_logprobs": [lp],
                       "top_logprobs": [self.top_dict(top or {}, tid, lp)],
                       "text_offset": [self.own_offset(tid, offs[c], text, held.get(c, False))]}
                offs[c] += len(text)
                held[c] = not text
                return {"text": text, "logprobs": lpd}
            return {"text": text, "logprobs": None} if text else None

        return self._stream(group, q, opts, "text_completion", rid, created, len(ids_list) * opts.n, done,
                            sum(len(i) for i in ids_list), head, token, {"text": "", "logprobs": None}, model=served)

    async def _stream(self, group, q, opts, obj, rid, created, n_choices, done, n_prompt, head, token, finished,
                      closing=None, model: str | None = None):
        """The one server-sent-events loop of completions and chat: head(choice) -> the choice fields sent
        first, token(choice, token_id, text, logprob, top) -> a token's fields (None: nothing to send),
        `finished`: the fields beside a finish_reason, closing(choice, completion) -> (the fields of chunks sent
        before it, the finish_reason); then usage if asked, and [DONE]. `model`: the name chunks report."""
        model = model or self.cfg.model_name
        def chunk(c, fields, finish=None):
            return _sse({"id": rid, "object": obj, "created": created, "model": model,
                         "choices": [{"index": c, **fields, "finish_reason": finish}]})

        pending = len(group.rows)
        n_out = 0
        try:
            for c in range(n_choices):
                for fields in head(c):
                    yield chunk(c, fields)
                if c in done:
                    yield chunk(c, finished, done[c].finish_reason)
            failed = False
            while pending and not failed:
                out = []
                for item in await _ready(q):
                    if item[0] == "token":
                        _, c, tid, text, lp, top = item
                        n_out += 1
                        fields = token(c, tid, text, lp, top)
                        if fields is not None:
                            out.append(chunk(c, fields))
                    elif item[0] == "done":
                        pending -= 1
                        more, reason = closing(item[1], item[2]) if closing else ([], item[2].finish_reason)
                        out += [chunk(item[1], fields) for fields in more]
                        out.append(chunk(item[1], finished, reason))
                    else:
                        out.append(_sse(item_error(item).body()))
                        failed = True
                        break
                if out:
                    yield "".join(out)
            if opts.include_usage:
                yield _sse({"id": rid, "object": obj, "created": created, "model": model,
                            "choices": [], "usage": usage(n_prompt, n_out)})
            yield "data: [DONE]\n\n"
        finally:
            if pending:
                self.sched.cancel(group)

    # ---- chat ---------------------------------------------------------------------------------------------------

    async def chat(self, request: Request):
        body = await read_json(request, self.cfg.max_body)
        served, adapter = self.check_model(body)
        if self.tok is None:
            raise bad("messages", "this model has no tokenizer, so it cannot chat")
        opts = parse_options(body, self.vocab, chat=True, model_stop_ids=self.stop_ids, adapter=adapter)
        tools, choice = parse_tools(body)
        names = self.tool_setup(tools, choice, opts)
        self.check_grammar(opts)
        messages = parse_messages(body.get("messages"))
        try:
            ids = self.tok.encode(self.tok.apply_chat_template(messages, True, tools), add_bos=False)
        except LmstackError as e:
            raise bad("messages", str(e)) from None
        if not ids:
            raise bad("messages", "the conversation renders to no tokens")
        self.check_length(ids, "messages")
        rows, done = self.rows_for([ids], opts)
        group, q = self.start(rows)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if opts.stream:
            gen = self._stream_chat(group, q, done, opts, ids, rid, created, names, served)
            return StreamingResponse(gen, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        results = await self.collect(request, group, q, done)
        choices = []
        for c in range(opts.n):
            res = results[c]
            lp = None
            if opts.logprobs is not None:
                lp = {"content": [self._chat_lp(t, res.logprobs[k], res.top_logprobs[k] if k < len(res.top_logprobs)
                                                else {}, opts.logprobs) for k, t in enumerate(res.ids)]}
            message, finish = {"role": "assistant", "content": res.text}, res.finish_reason
            content, calls = parse_calls(res.text, names) if names else (res.text, [])
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": [
                    {"id": call_id(), "type": "function", "function": {"name": k.name, "arguments": k.arguments}}
                    for k in calls]}
                finish = "tool_calls"
            choices.append({"index": c, "message": message, "logprobs": lp, "finish_reason": finish})
        n_out = sum(len(r.ids) for r in results.values())
        return {"id": rid, "object": "chat.completion", "created": created, "model": served,
                "choices": choices, "usage": usage(len(ids), n_out)}

    def tool_setup(self, tools, choice, opts: Options) -> list[str]:
        """With `tools`: the names of the tools the answer may call ([] for tool_choice none), and for a forced
        call (required, or a tool's name) the grammar of exactly one call in the template's format (vLLM's
        way); a template that never reads `tools` is a 400."""
        if tools is None:
            return []
        template = self.tok.chat_template or ""
        if not renders_tools(template):
            raise bad("tools", "this model's chat template does not render tools (it never reads `tools`), so the "
                               "model cannot be told about them")
        if choice in ("none", "auto"):
            return tool_names(tools) if choice == "auto" else []
        if opts.params.grammar is not None:
            raise bad("tool_choice", f"a forced tool call cannot be combined with '{opts.guided_by}'")
        guide = forced_call(tools, None if choice == "required" else choice, call_format(template))
        opts.params = dataclasses.replace(opts.params, grammar=compile_guide(guide))
        opts.guided_by = "tool_choice"
        return tool_names(tools)

    def _chat_lp(self, tid, lp, top, n):
        s = self.piece(tid)
        tops = sorted((top or {}).items(), key=lambda kv: -kv[1])[:n]
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")),
                "top_logprobs": [{"token": self.piece(i), "logprob": v, "bytes": list(self.piece(i).encode("utf-8"))}
                                 for i, v in tops]}

    def _stream_chat(self, group, q, done, opts, ids, rid, created, names=(), served=None):
        """Chat chunks; with tools an answer's text is held back while it may still be a tool call, and a call
        is sent as `tool_calls` deltas (its id, type and name, then its arguments) before finish_reason
        "tool_calls"."""
        held: dict[int, str] = {}  # per choice: text held back while it may become a call (absent: flowing)

        def token(c, tid, text, lp, top):
            if names and c not in flowing:
                held[c] = held.get(c, "") + text
                if may_become_call(held[c]):
                    return None
                flowing.add(c)
                text = held.pop(c)
            if opts.logprobs is not None:
                return {"delta": {"content": text}, "logprobs": {"content": [self._chat_lp(tid, lp, top, opts.logprobs)]}}
            return {"delta": {"content": text}, "logprobs": None} if text else None

        def closing(c, res):
            content, calls = parse_calls(res.text, names) if names else (None, [])
            if not calls:
                rest = held.pop(c, "")
                return ([{"delta": {"content": rest}, "logprobs": None}] if rest else []), res.finish_reason
            out = [{"delta": {"content": content}, "logprobs": None}] if content and c not in flowing else []
            for k, call in enumerate(calls):
                out.append({"delta": {"tool_calls": [{"index": k, "id": call_id(), "type": "function",
                                                      "function": {"name": call.name, "arguments": ""}}]},
                            "logprobs": None})
                out.append({"delta": {"tool_calls": [{"index": k, "function": {"arguments": call.arguments}}]},
                            "logprobs": None})
            return out, "tool_calls"

        flowing: set[int] = set()
        return self._stream(group, q, opts, "chat.completion.chunk", rid, created, opts.n, done, len(ids),
                            lambda c: [{"delta": {"role": "assistant", "content": ""}, "logprobs": None}], token,
                            {"delta": {}, "logprobs": None}, closing, model=served)

    # ---- human feedback -----------------------------------------------------------------------------------------

    def compare_info(self):
        if not self.cfg.compare:
            raise ApiError(404, "this server has no comparison page (start it with --compare A B --labels FILE)",
                           code="not_found")
        return {"models": list(self.cfg.compare), "labels": self.cfg.labels}

    async def label(self, request: Request):
        """Append one ranking ({prompt, answers, ranking, models}) to the labels file: lmstack's ranking format,
        which `lmstack reward` and `lmstack dpo` read. Checked first (a 400 naming the field); written as one
        line in one append, so the file never holds half a row."""
        self.compare_info()
        body = await read_json(request, self.cfg.max_body)
        prompt = body.get("prompt")
        try:
            prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else \
                parse_messages(prompt)
        except ApiError as e:
            raise bad("prompt", e.message.replace("'messages'", "'prompt'")) from None
        answers = body.get("answers")
        if not isinstance(answers, list) or not 2 <= len(answers) <= 4 or not all(
                isinstance(a, str) and a.strip() for a in answers):
            raise bad("answers", "'answers' must be a list of two to four non-empty strings")
        ranking = body.get("ranking")
        if not isinstance(ranking, list) or sorted(r for r in ranking if isinstance(r, int)) != list(range(len(answers))):
            raise bad("ranking", f"'ranking' must order the answers' indices 0..{len(answers) - 1}, best first, each once")
        models = body.get("models")
        if models is not None and (not isinstance(models, list) or len(models) != len(answers)
                                   or not all(m in self.cfg.served for m in models)):
            raise bad("models", "'models' must name the served model of each answer")
        rec = {"prompt": prompt, "answers": answers, "ranking": ranking, "models": models, "source": "human",
               "time": int(time.time())}
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        try:
            fd = os.open(self.cfg.labels, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise ApiError(500, f"{self.cfg.labels}: cannot append ({e.strerror})", type="server_error") from None
        return {"ok": True, "rows": count_lines(self.cfg.labels)}

    # ---- tokenizer --------------------------------------------------------------------------------------------

    def tokenizer_info(self):
        t = self.tok
        if t is None:
            return {"vocab_size": self.vocab, "model_max_length": self.ctx}
        return {"tokenizer_class": "PreTrainedTokenizerFast", "vocab_size": t.vocab_size,
                "model_max_length": self.ctx, "max_model_len": self.ctx, "bos_token": t.bos_token,
                "bos_token_id": t.bos_id, "eos_token": t.eos_token, "eos_token_id": t.eos_id,
                "pad_token": t.pad_token, "pad_token_id": t.pad_id, "add_bos_token": t.add_bos,
                "stop_token_ids": self.stop_ids, "chat_template": t.chat_template}

    async def tokenize(self, request: Request):
        body = await read_json(request, self.cfg.max_body)
        self.check_model(body)
        if self.tok is None:
            raise bad("prompt", "this model has no tokenizer")
        add_special = get_bool(body, "add_special_tokens", True)
        if "messages" in body and body["messages"] is not None:
            messages = parse_messages(body["messages"])
            try:
                ids = self.tok.encode_chat(messages, add_generation_prompt=get_bool(body, "add_generation_prompt",
                                                                                    True))[0]
            except LmstackError as e:
                raise bad("messages", str(e)) from None
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise bad("prompt", "'prompt' must be a string (or send 'messages')")
            ids = self.tok.encode(prompt, add_bos=None if add_special else False)
        out = {"count": len(ids), "max_model_len": self.ctx, "tokens": ids}
        if get_bool(body, "return_token_strs", False):
            out["token_strs"] = [self.tok.id_to_token(i) for i in ids]
        return out

    async def detokenize(self, request: Request):
        body = await read_json(request, self.cfg.max_body)
        self.check_model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise bad("tokens", "'tokens' must be a list of integers")
        bad_ids = [t for t in tokens if not 0 <= t < self.vocab]
        if bad_ids:
            raise bad("tokens", f"token id {bad_ids[0]} is outside the vocabulary (0..{self.vocab - 1})")
        if self.tok is None:
            raise bad("tokens", "this model has no tokenizer")
        return {"prompt": self.tok.decode(tokens)}


async def _ready(q: asyncio.Queue) -> list:
    """The next item and every one already waiting: a client that fell behind gets them in one write."""
    items = [await q.get()]
    while not q.empty():
        items.append(q.get_nowait())
    return items


def busy(message: str) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code="rate_limit_exceeded")


def item_error(item) -> ApiError:
    """The scheduler's ("error", choice, status, message, type, code) item as the error it reports."""
    _, _, status, message, kind, code = item
    return ApiError(status, message, type=kind, code=code)


# httpx, and so the openai client, splits a stream at every str.splitlines() separator, not only at SSE's \r and \n:
# a token whose text holds U+0085, U+2028 or U+2029 (json.dumps escapes the ASCII ones) would cut an event in two.
_SSE_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_SSE_ESCAPES)}\n\n"


def create_app(lm, cfg: ServerConfig | None = None, **kw) -> FastAPI:
    """The FastAPI app serving one model; keyword arguments fill a ServerConfig."""
    cfg = cfg or ServerConfig(**kw)
    srv = Server(lm, cfg)

    @asynccontextmanager
    async def lifespan(app):
        srv.sched.start()  # the decode thread lives as long as the server
        yield
        srv.sched.stop()

    app = FastAPI(title="lmstack", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        headers = {"retry-after": "1"} if e.status == 429 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind, None, None), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request, e):
        log.exception("unhandled error")
        return JSONResponse(error_body("internal server error", "server_error", None, None), status_code=500)

    page = (STATIC / "chat.html").read_text(encoding="utf-8")
    compare_page = (STATIC / "compare.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/compare", response_class=HTMLResponse)
    async def compare():
        srv.compare_info()
        return HTMLResponse(compare_page)

    @app.get("/v1/compare")
    async def compare_info():
        return srv.compare_info()

    @app.get("/health")
    async def health():
        return {"status": "ok", **srv.sched.stats()}

    def card(name: str) -> dict:
        lora = name in cfg.adapters  # vLLM lists an adapter with its base as parent
        return {"id": name, "object": "model", "created": 0, "owned_by": "lmstack", "root": cfg.model_name,
                "parent": cfg.model_name if lora else None, "max_model_len": srv.ctx}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card(n) for n in cfg.served]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        srv.check_model({"model": name})
        return card(name)

    app.post("/v1/labels")(srv.label)
    app.post("/v1/completions")(srv.completions)
    app.post("/v1/chat/completions")(srv.chat)
    app.get("/tokenizer_info")(srv.tokenizer_info)
    app.post("/tokenize")(srv.tokenize)
    app.post("/detokenize")(srv.detokenize)
    app.add_middleware(Guard, cfg=cfg)
    return app
