"""A tiny OpenAI-compatible HTTP server for tests, on 127.0.0.1 only.

`/v1/completions` with echo+logprobs returns the real log-probabilities of a local LM (so remote
scoring can be checked against local scoring); generation answers come from `reply(prompt)` (for chat, a text or
an assistant message dict, e.g. with `tool_calls`).
`faults` is a queue of misbehaviours served before normal answers: "429", "500", "badjson",
"401", "error" (a JSON error object), "noshape" (JSON without choices), ("sleep", seconds).
`add_bos=True` tokenises prompts as the tokenizer does (a BOS first) and counts the BOS's text in
`text_offset` although the echoed text lacks it, as vLLM does (tokens ['<s>', ...], offsets [0, 3, ...]).
`bos_lm(tokenizer)` is the tiny test model with a tokenizer that adds a BOS decoding to "<s>".
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeOpenAI:
    def __init__(self, lm=None, reply=None, delay: float = 0.0, add_bos: bool = False):
        self.lm, self.reply, self.delay = lm, reply or (lambda p: f"echo: {p}"[-40:]), delay
        self.add_bos = add_bos
        self.faults: list = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body,
                                           "auth": self.headers.get("Authorization")})
                    fault = outer.faults.pop(0) if outer.faults else None
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                try:
                    if outer.delay:
                        time.sleep(outer.delay)
                    self._serve(body, fault)
                finally:
                    with outer.lock:
                        outer.inflight -= 1

            def _send(self, code, payload, raw=None, headers=()):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, body, fault):
                if isinstance(fault, tuple) and fault[0] == "sleep":
                    time.sleep(fault[1])
                    fault = None
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited"}}, headers=[("Retry-After", "0")])
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if fault == "401":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                if fault == "badjson":
                    return self._send(200, None, raw=b'{"choices": [ {"text": "tru')
                if fault == "error":
                    return self._send(200, {"error": {"message": "model overloaded"}})
                if fault == "noshape":
                    return self._send(200, {"object": "text_completion"})
                if self.path.endswith("/chat/completions"):
                    said = outer.reply(body["messages"])  # a text, or a message dict (e.g. with tool_calls)
                    msg = {"role": "assistant", **said} if isinstance(said, dict) else {"role": "assistant",
                                                                                       "content": said}
                    finish = "tool_calls" if msg.get("tool_calls") else "stop"
                    return self._send(200, {"choices": [{"index": 0, "message": msg, "finish_reason": finish}]})
                if self.path.endswith("/completions"):
                    if body.get("echo"):
                        return self._send(200, {"choices": [{"index": 0, "text": body["prompt"],
                                                             "logprobs": outer.echo_logprobs(body["prompt"])}]})
                    return self._send(200, {"choices": [{"index": 0, "text": outer.reply(body["prompt"]),
                                                         "finish_reason": "stop"}]})
                return self._send(404, {"error": {"message": "not found"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @torch.inference_mode()
    def echo_logprobs(self, prompt: str) -> dict:
        """OpenAI's legacy logprobs object for the echoed prompt plus one generated (greedy) token."""
        tok = self.lm.tokenizer
        ids = tok.encode(prompt, add_bos=None if self.add_bos else False)
        logp = torch.log_softmax(self.lm.model(torch.tensor([ids])).float()[0], -1)
        tokens, lps, offsets, tops, pos = [], [], [], [], 0
        for i, t in enumerate(ids):
            s = tok.decode([t])
            tokens.append(s)
            offsets.append(pos)
            pos += len(s)
            if i == 0:
                lps.append(None)
                tops.append(None)
            else:
                lps.append(float(logp[i - 1, t]))
                best = int(logp[i - 1].argmax())
                tops.append({tok.decode([best]): float(logp[i - 1, best])})
        nxt = int(logp[-1].argmax())  # the one generated token (max_tokens=1)
        tokens.append(tok.decode([nxt]))
        offsets.append(pos)
        lps.append(float(logp[-1, nxt]))
        tops.append({tokens[-1]: lps[-1]})
        return {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets, "top_logprobs": tops}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def bos_lm(tokenizer, bos: str = "<s>"):
    """The tiny random llama over `tokenizer`'s vocabulary plus a BOS token that the tokenizer adds to every
    text and that decodes to a non-empty string (as Llama's `<s>` or Llama 3's `<|begin_of_text|>`)."""
    import tokenizers

    from lmstack.lm import LM
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.tokenizer import Tokenizer

    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    backend.add_special_tokens([bos])
    tok = Tokenizer(backend, bos, tokenizer.eos_token, tokenizer.pad_token, tokenizer.chat_template, add_bos=True)
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=tok.vocab_size, max_seq_len=128, bos_token_id=tok.bos_id,
                 eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, init_std=0.3)
    return LM(Transformer(cfg).eval(), tok, {})
