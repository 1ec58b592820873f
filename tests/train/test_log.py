"""Progress display is explicit: a quiet run shows nothing unless its config asks for `lmstack run`'s transient bar."""

import json
import time
from types import SimpleNamespace

from lmstack.train.common import log_step
from lmstack.train.log import MetricsLogger


def test_bars_show_a_transient_bar_on_a_quiet_run(tmp_path):
    quiet = MetricsLogger(tmp_path / "a", 3, console=False)
    assert quiet.bar is None
    staged = MetricsLogger(tmp_path / "b", 3, console=False, bars=True, desc="sft")
    assert staged.bar is not None and staged.bar.leave is False and staged.bar.desc == "  sft"
    loud = MetricsLogger(tmp_path / "c", 3, console=True, desc="sft")
    assert loud.bar.leave is True and loud.bar.desc == "sft"
    for m in (quiet, staged, loud):
        m.close()


def test_the_bar_shows_the_latest_tokens_per_second(tmp_path):
    bar = MetricsLogger(tmp_path / "a", 3, console=False, bars=True)
    run = SimpleNamespace(counters={"tokens": 0}, last_loss=None, cfg=SimpleNamespace(log_interval=1, steps=3),
                          start=0, tok_last=0, t_last=0.0, log=bar, flops_per_token=None, peak_flops=None)
    log_step(run, 1, 100, loss=2.5)  # the first logged step has no rate yet
    bar.progress(1, loss=2.5)
    assert "tok/s" not in bar.bar.postfix
    run.t_last = time.time() - 0.5
    log_step(run, 2, 1000, loss=2.25)  # 1,000 tokens in ~0.5 s
    bar.progress(1, loss=2.25)
    rate = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])["tokens_per_s"]
    assert 1000 < rate <= 2000 and bar.tokens_per_s == rate
    assert f"tok/s={rate:.0f}" in bar.bar.postfix and "loss=2.25" in bar.bar.postfix
    bar.close()
