"""Progress display is explicit: a quiet run shows nothing unless its config asks for `lmstack run`'s transient bar."""

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
    bar.progress(1, loss=2.5)
    assert "tok/s" not in bar.bar.postfix  # nothing measured yet
    bar.tokens_per_s = 1234.4  # what log_step sets when it logs a rate
    bar.progress(1, loss=2.25)
    assert "tok/s=1234" in bar.bar.postfix and "loss=2.25" in bar.bar.postfix
    bar.close()
