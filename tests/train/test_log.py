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
