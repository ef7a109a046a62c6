"""Detector values -> line integrals: every DICOM intensity relationship inverts the Beer-Lambert model
exactly, dark/flat fields and air estimates work, the mask keeps collimated pixels out of the estimate,
and display-processed or inconsistent inputs are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from XRayNeRFLib.intensities import intensities_from_line_integrals, to_line_integrals


@pytest.fixture()
def line_integrals():
    """(2, 30, 40): a smooth object with a band of unattenuated air (p = 0) on the left."""
    rr, cc = np.mgrid[0:30, 0:40]
    p = 3.0 * np.exp(-((rr - 15) ** 2 + (cc - 25) ** 2) / 80.0)
    p[:, :6] = 0.0
    return np.stack([p, 0.5 * p])


@pytest.mark.parametrize(
    "relationship,sign,kw",
    [
        ("LIN", 1, dict(i0=5000.0)),
        ("LIN", -1, dict(i0=5000.0, max_value=8191.0)),
        ("LOG", 1, dict(i0=3000.0, log_scale=700.0)),
        ("LOG", -1, dict(i0=100.0, log_scale=700.0)),
    ],
)
def test_every_relationship_round_trips(line_integrals, relationship, sign, kw):
    values = intensities_from_line_integrals(line_integrals, relationship=relationship, sign=sign, **kw)
    if relationship == "LIN" and sign == 1:
        assert values[0, 0, 0] == pytest.approx(5000.0) and values.max() <= 5000.0
    if relationship == "LOG" and sign == -1:
        assert values[0, 15, 25] > values[0, 0, 0]  # inverted: attenuating objects bright
    back = to_line_integrals(values, relationship=relationship, sign=sign, **kw)
    assert torch.allclose(back.images.double(), torch.from_numpy(line_integrals), atol=2e-5)
    # the air value is found from the unattenuated band when not given
    est = to_line_integrals(values, relationship=relationship, sign=sign, **{k: v for k, v in kw.items() if k != "i0"})
    assert torch.allclose(est.images.double(), torch.from_numpy(line_integrals), atol=1e-4)
    assert est.air.numpy() == pytest.approx([kw["i0"]] * 2, rel=1e-6)
    assert any("estimated" in a for a in est.assumptions)


def test_dark_and_flat_field(line_integrals):
    rng = np.random.default_rng(0)
    gain = rng.uniform(0.7, 1.3, size=(30, 40))  # detector pixel gains
    dark = rng.uniform(90, 110, size=(30, 40))
    i0 = 4000.0
    raw = dark + gain * i0 * np.exp(-line_integrals)
    flat = dark + gain * i0
    out = to_line_integrals(raw, relationship="LIN", dark=dark, flat=flat)
    assert torch.allclose(out.images.double(), torch.from_numpy(line_integrals), atol=1e-5)
    assert out.air.tolist() == [1.0, 1.0]
    naive = to_line_integrals(raw, relationship="LIN", i0=i0)
    assert (naive.images.double() - torch.from_numpy(line_integrals)).abs().max() > 0.1  # the gains matter


def test_mask_keeps_burned_in_border_out_of_the_air_estimate(line_integrals):
    values = intensities_from_line_integrals(line_integrals, relationship="LIN", i0=1000.0)
    values[:, :, -5:] = 4095.0  # a white border outside the shutter
    mask = np.ones(values.shape, dtype=bool)
    mask[:, :, -5:] = False
    good = to_line_integrals(values, relationship="LIN", mask=mask)
    assert good.air.numpy() == pytest.approx([1000.0, 1000.0])
    bad = to_line_integrals(values, relationship="LIN")
    assert bad.air[0] > 4000.0


def test_clamp_and_errors(line_integrals):
    values = intensities_from_line_integrals(line_integrals, relationship="LIN", i0=1000.0)
    values[0, 0, 0] = 1100.0  # noise above I0
    assert to_line_integrals(values, i0=1000.0).images[0, 0, 0] == 0.0
    assert to_line_integrals(values, i0=1000.0, clamp=False).images[0, 0, 0] < 0.0
    with pytest.raises(ValueError, match="DISP"):
        to_line_integrals(values, relationship="DISP")
    with pytest.raises(ValueError, match="LIN or LOG"):
        to_line_integrals(values, relationship="SQRT")
    with pytest.raises(ValueError, match="sign"):
        to_line_integrals(values, sign=0)
    with pytest.raises(ValueError, match="I0 must be > 0"):
        to_line_integrals(values, i0=0.0)
    with pytest.raises(ValueError, match="one per view"):
        to_line_integrals(values, i0=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="LIN"):
        to_line_integrals(values, relationship="LOG", dark=np.zeros((30, 40)))
    with pytest.raises(ValueError, match="NaN"):
        to_line_integrals(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="no pixel"):
        to_line_integrals(values, mask=np.zeros(values.shape, dtype=bool))
