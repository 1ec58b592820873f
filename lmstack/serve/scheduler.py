"""The scheduler: one thread owns the model and runs the decode loop of a continuously batched generation.

HTTP handlers (on the asyncio event loop) submit rows — one engine `Request` (a prompt with its
sampling parameters) each — and get their tokens back through a callback run on the loop. Between two decode steps the
thread admits waiting rows up to `max_batch` (they join the running batch, `Generation.add`),
drops rows whose client went away or whose deadline passed (`Generation.cancel`), and runs short
jobs that need the model (prompt scoring for `echo`). Model compute never runs on the event loop,
so `/health` answers while the batch decodes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from lmstack.errors import LmstackError
from lmstack.infer.cache import PrefixCache
from lmstack.infer.engine import Generation, Request

log = logging.getLogger("lmstack.serve")


class QueueFull(Exception):
    pass


@dataclass
class Row:
    """One sequence to decode, as the engine's Request (an HTTP request has n x prompts rows)."""

    request: Request
    choice: int  # the choice index within its HTTP request
    group: Group | None = None


@dataclass
class Group:
    """The rows of one HTTP request; `deliver` is called on the event loop with lists of items.

    Items are tuples: ("token", choice, token_id, text, logprob, top_logprobs),
    ("done", choice, Completion) and ("error", choice, status, message, type, code).
    """

    deliver: Callable[[list], None]
    loop: asyncio.AbstractEventLoop
    deadline: float
    rows: list[Row] = field(default_factory=list)
    cancelled: bool = False
    open_rows: int = 0


class Scheduler:
    def __init__(self, lm, max_batch: int = 32, max_queue: int = 256, timeout: float = 600.0,
                 prefix_cache_mb: float = 0.0):
        self.lm, self.model, self.tokenizer = lm, lm.model, lm.tokenizer
        self.max_batch, self.max_queue, self.timeout = max_batch, max_queue, timeout
        # Keys/values of recent prompts, reused by requests that start the same way (few-shot prompts, a shared
        # system prompt); its size is a memory budget, in tokens of this model's cache.
        self.prefix_cache = None
        if prefix_cache_mb > 0:
            tokens = int(prefix_cache_mb * 2**20) // PrefixCache.bytes_per_token(self.model.cfg, self.model.cache_dtype)
            self.prefix_cache = PrefixCache(tokens) if tokens > 0 else None
        self.gen = self._generation()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.waiting: deque[Row] = deque()
        self.waiting_groups: dict[int, int] = {}  # id(group) -> rows still waiting
        self.running: dict[Request, Row] = {}  # the rows in the engine's batch
        self.admitting: list[Row] = []
        self.calls: deque[tuple[Callable, Future]] = deque()
        self.stopped = False
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name="lmstack-scheduler", daemon=True)

    def start(self):
        self.stopped = False
        if not self.thread.is_alive():
            self.thread.start()

    # ---- called from the event loop ---------------------------------------------------------------------------

    def submit(self, group: Group) -> None:
        """Queue a request's rows; QueueFull when max_queue requests already wait for a batch slot."""
        with self.lock:
            if len(self.waiting_groups) >= self.max_queue:
                raise QueueFull
            for r in group.rows:
                r.group = group
            group.open_rows = len(group.rows)
            if group.rows:
                self.waiting_groups[id(group)] = len(group.rows)
                self.waiting.extend(group.rows)
        self.wake.set()

    def cancel(self, group: Group) -> None:
        """The client went away: free its rows' batch slots at the next step."""
        group.cancelled = True  # read by the scheduler thread at its next tick
        self.wake.set()

    def call(self, fn: Callable) -> Future:
        """Run fn() on the scheduler thread (it owns the model) between two steps."""
        fut: Future = Future()
        with self.lock:
            if len(self.calls) >= self.max_queue:
                raise QueueFull
            self.calls.append((fn, fut))
        self.wake.set()
        return fut

    def stats(self) -> dict:
        with self.lock:
            out = {"running": len(self.running), "waiting": len(self.waiting_groups), "steps": self.steps}
        if self.prefix_cache is not None:
            out["prefix_cache"] = self.prefix_cache.stats()
        return out

    def stop(self):
        self.stopped = True
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    # ---- the scheduler thread ---------------------------------------------------------------------------------

    def _loop(self):
        torch.set_grad_enabled(False)
        while not self.stopped:
            try:
                busy = self._tick()
            except Exception:  # a bug must not take the server down: fail the batch, start afresh
                log.exception("scheduler step failed")
                self._fail_all(500, "internal error while decoding", "server_error")
                busy = False
            if not busy:
                self.wake.wait(timeout=0.05)
                self.wake.clear()

    def _tick(self) -> bool:
        out: dict[int, tuple[Group, list]] = {}

        def send(group: Group, item):
            out.setdefault(id(group), (group, []))[1].append(item)

        while True:  # jobs first: they are short and a client waits on each
            with self.lock:
                if not self.calls:
                    break
                fn, fut = self.calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:  # noqa: BLE001 - handed to the waiting handler
                    fut.set_exception(e)

        now = time.monotonic()
        with self.lock:
            admit = []
            kept = deque()
            for r in self.waiting:
                g = r.group
                if g.cancelled:
                    self._leave_queue(g)
                    continue
                if g.deadline < now:
                    self._leave_queue(g)
                    send(g, ("error", r.choice, 408, f"request timed out after {self.timeout:g} s in the queue",
                             "timeout_error", "timeout"))
                    continue
                if len(self.gen.running) + len(admit) < self.max_batch:
                    admit.append(r)
                    self._leave_queue(g)
                else:
                    kept.append(r)
            self.waiting = kept
        drop = [req for req, r in self.running.items() if r.group.cancelled or r.group.deadline < now]
        if drop:
            self.gen.cancel(drop)
            for req in drop:
                r = self.running.pop(req)
                if not r.group.cancelled:
                    send(r.group, ("error", r.choice, 408, f"request timed out after {self.timeout:g} s",
                                   "timeout_error", "timeout"))
                self.gen.forget(req)
        if admit:
            self.admitting = admit  # failed with the batch if adding them breaks (see _fail_all)
            self._admit(admit, send)
            self.admitting = []
        events = self.gen.step() if not self.gen.done else []
        self.steps += bool(events)
        for ev in events:
            r = self.running.get(ev.request)
            if r is None:
                continue
            res = ev.request.result
            top = res.top_logprobs[-1] if r.request.params.logprobs and res.top_logprobs else None
            send(r.group, ("token", r.choice, ev.token_id, ev.text, res.logprobs[-1], top))
            if ev.finished:
                send(r.group, ("done", r.choice, res))
                del self.running[ev.request]
                self.gen.forget(ev.request)
        for group, items in out.values():
            self._deliver(group, items)
        return bool(events) or bool(admit) or bool(self.waiting)

    def _leave_queue(self, g: Group):
        n = self.waiting_groups.get(id(g), 0) - 1
        if n <= 0:
            self.waiting_groups.pop(id(g), None)
        else:
            self.waiting_groups[id(g)] = n

    def _admit(self, rows: list[Row], send):
        try:
            self.gen.add([r.request for r in rows])
            added = rows
        except LmstackError:
            # Handlers validate first, so this is rare; add one by one so only the bad row fails.
            added = []
            for r in rows:
                try:
                    self.gen.add([r.request])
                    added.append(r)
                except LmstackError as e:
                    send(r.group, ("error", r.choice, 400, str(e), "invalid_request_error", None))
        running = set(self.gen.running)
        for r in added:
            if r.request in running:
                self.running[r.request] = r
            else:  # nothing to generate (no room left in the context): finished at once
                send(r.group, ("done", r.choice, r.request.result))
                self.gen.forget(r.request)

    def _deliver(self, group: Group, items: list):
        try:
            group.loop.call_soon_threadsafe(group.deliver, items)
        except RuntimeError:  # the loop is closed (shutdown)
            pass

    def _fail_all(self, status, message, kind):
        with self.lock:
            rows = list(self.running.values()) + [r for r in self.admitting if r.request not in self.running]
            self.running.clear()
            self.admitting = []
        for r in rows:
            self._deliver(r.group, [("error", r.choice, status, message, kind, None)])
        self.gen = self._generation()

    def _generation(self) -> Generation:
        return Generation.empty(self.model, self.tokenizer, stream_text=True, prefix_cache=self.prefix_cache)


def make_group(loop, deliver, timeout: float) -> Group:
    return Group(deliver=deliver, loop=loop, deadline=time.monotonic() + timeout)
