"""The power-law fit recovers known constants from synthetic points."""

import numpy as np
import pytest

from lmstack.train.scaling import fit_power_law, predict


def test_recovers_kaplan_constants_without_irreducible_term():
    n = np.geomspace(1e5, 1e9, 8)
    loss = (8.8e13 / n) ** 0.076
    f = fit_power_law(n, loss)
    assert f["alpha"] == pytest.approx(0.076, rel=1e-6)
    assert f["scale"] == pytest.approx(8.8e13, rel=1e-4)
    assert f["E"] == 0.0


def test_recovers_constants_with_irreducible_term_and_noise():
    rng = np.random.default_rng(0)
    d = np.geomspace(1e6, 1e10, 12)
    loss = 1.7 + (5.4e8 / d) ** 0.3
    noisy = loss * np.exp(rng.normal(0, 1e-4, len(d)))
    f = fit_power_law(d, noisy, irreducible=True)
    assert f["E"] == pytest.approx(1.7, abs=0.02)
    assert f["alpha"] == pytest.approx(0.3, rel=0.05)
    assert np.allclose(predict(f, d), loss, rtol=1e-3)


def test_bad_points_are_errors():
    from lmstack.errors import LmstackError

    with pytest.raises(LmstackError):
        fit_power_law([1.0], [2.0])
    with pytest.raises(LmstackError):
        fit_power_law([1.0, -2.0], [2.0, 1.0])


def test_a_nearly_flat_curve_reports_an_infinite_scale_not_an_overflow():
    fit = fit_power_law([1e3, 1e4], [5.0, 4.999])  # alpha ~ 1e-4: x_c = exp(intercept / alpha) is beyond floats
    assert 0 < fit["alpha"] < 1e-3 and fit["scale"] == float("inf")
