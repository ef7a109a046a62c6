"""The ``xraynerf drr`` command line and projection-stack files.

The CLI runs in-process (``main([...])``) on tiny volumes and geometries written here, and its output
file is compared with ``render`` called directly on the same inputs; subprocesses check the installed
console script (exit status, stderr without traceback) and a real Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from XRayNeRFLib.cli import common as cli_common
from XRayNeRFLib.cli import main
from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.geometry_io import cameras_to_json, load_geometry, rtk_default_origin_mm, save_geometry
from XRayNeRFLib.projections_io import (
    check_projections_match,
    load_projection_stack,
    projection_stack_metadata,
    save_projection_stack,
)
from XRayNeRFLib.render import render
from XRayNeRFLib.volume import Volume, as_mu, load_volume, mu_water_per_mm, save_volume

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData"

# A 24 x 20 x 16 voxel volume (2 x 2.5 x 3 mm) centred near RAS (10, -5, 20), and a 4-view orbit through it.
SHAPE_KJI = (16, 20, 24)
SPACING = (2.0, 2.5, 3.0)
ISO = (10.0, -5.0, 20.0)


def _ras_from_ijk() -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.diag(SPACING)
    a[:3, 3] = np.asarray(ISO) - (np.array(SHAPE_KJI[::-1]) - 1) / 2 * np.asarray(SPACING)
    return a


def _hu_data() -> np.ndarray:
    """Air (-1000 HU) with a water-like ellipsoid (0 HU) and a bone-like block (+1000 HU): (K, J, I)."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE_KJI], indexing="ij")
    c = (np.array(SHAPE_KJI) - 1) / 2
    data = np.full(SHAPE_KJI, -1000.0)
    inside = ((k - c[0]) / 6.5) ** 2 + ((j - c[1]) / 8.0) ** 2 + ((i - c[2]) / 10.0) ** 2 <= 1
    data[inside] = 0.0
    data[9:13, 8:12, 9:13] = 1000.0  # off-centre in k (superior): DRR rows are not symmetric
    return data


def _cameras(n_views: int = 4, size=(24, 18), iso=ISO) -> Cameras:
    angles = torch.arange(n_views, dtype=torch.float64) * (2 * math.pi / n_views) + 0.3
    return Cameras.circular_orbit(
        angles, sid_mm=300.0, sdd_mm=450.0, size_px=size, pixel_spacing_mm=(4.0, 5.0), isocenter_ras=iso, dtype=torch.float64
    )


def _write_json(cams: Cameras, path: Path) -> Path:
    with open(path, "w") as f:
        json.dump(cameras_to_json(cams), f)
    return path


@pytest.fixture
def case(tmp_path):
    """HU and mu volumes on disk (NRRD, MHA), JSON geometry, output directory."""
    ras = _ras_from_ijk()
    hu = Volume(torch.tensor(_hu_data(), dtype=torch.float32), torch.tensor(ras, dtype=torch.float32), "hu")
    mu = as_mu(hu)
    hu_path, mu_path = tmp_path / "ct_hu.nrrd", tmp_path / "ct_mu.mha"
    save_volume(hu, str(hu_path))
    save_volume(mu, str(mu_path))
    geom = _write_json(_cameras(), tmp_path / "views.json")
    return {"dir": tmp_path, "hu": hu_path, "mu": mu_path, "geometry": geom}


def _reference(volume_path, geometry_path, units, energy=60.0, method="trilinear", **geometry_kw) -> torch.Tensor:
    vol = load_volume(str(volume_path), units=units)
    cams = load_geometry(str(geometry_path), **geometry_kw).to(dtype=torch.float32)
    return render(as_mu(vol, energy), cams, renderer=method)


def _files(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------------------------------
# Output = render() on the same input
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["trilinear", "siddon"])
def test_drr_matches_render_and_writes_header(case, capsys, method):
    out = case["dir"] / "new" / "dirs" / "proj.mha"  # missing directories are created
    rc = main(["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--out", str(out), "--renderer", method])
    err = capsys.readouterr().err
    assert rc == 0, err
    images, spacing, origin = load_projection_stack(str(out))
    assert tuple(images.shape) == (4, 18, 24)
    assert spacing.tolist() == [4.0, 5.0]
    # default origin: centred detector
    assert np.allclose(origin.numpy(), [-(24 - 1) / 2 * 4.0, -(18 - 1) / 2 * 5.0])
    itk_image = sitk.ReadImage(str(out))
    assert itk_image.GetSize() == (24, 18, 4) and itk_image.GetSpacing()[2] == 1.0
    ref = _reference(case["hu"], case["geometry"], "hu", method=method)
    assert float(ref.max()) > 1.0  # the rays do cross the phantom
    assert torch.allclose(images, ref, rtol=1e-6, atol=1e-6)
    assert projection_stack_metadata(str(out)) == {"quantity": "line_integral", "row_order": "xraynerf", "geometry": "views.json"}
    assert "read as HU" in err and "wrote" in err and "100.0%" in err


def test_drr_units_hu_mu_and_energy(case, capsys):
    d = case["dir"]
    args = ["drr", "--geometry", str(case["geometry"]), "-q"]
    assert main(args + ["--volume", str(case["hu"]), "--out", str(d / "a.nrrd")]) == 0  # auto: HU
    assert main(args + ["--volume", str(case["hu"]), "--out", str(d / "b.nrrd"), "--input-units", "hu"]) == 0
    assert main(args + ["--volume", str(case["mu"]), "--out", str(d / "c.nrrd"), "--input-units", "mu"]) == 0
    assert main(args + ["--volume", str(case["hu"]), "--out", str(d / "e.nrrd"), "--energy-kev", "100"]) == 0
    a, b, c, e = (load_projection_stack(str(d / f"{n}.nrrd"))[0] for n in "abce")
    assert torch.equal(a, b)
    # mu file = HU converted at 60 keV by the test: same line integrals
    assert torch.allclose(a, c, rtol=1e-5, atol=1e-5)
    # every voxel is >= -1000 HU, so mu = mu_water (1 + HU/1000) is not clamped: the DRR scales with mu_water
    ratio = mu_water_per_mm(100.0) / mu_water_per_mm(60.0)
    assert abs(mu_water_per_mm(60.0) - 0.02059) < 1e-6
    assert torch.allclose(e, a * ratio, rtol=1e-5, atol=1e-6)
    assert float(a.max()) > 1.0
    # HU data declared as mu is refused
    rc = main(args + ["--volume", str(case["hu"]), "--out", str(d / "f.nrrd"), "--input-units", "mu"])
    assert rc == 2
    assert "--input-units hu" in capsys.readouterr().err
    assert not (d / "f.nrrd").exists()


def test_drr_intensity_and_poisson(case):
    d = case["dir"]
    base = ["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "-q"]
    assert main(base + ["--out", str(d / "line.mha")]) == 0
    assert main(base + ["--out", str(d / "i.mha"), "--intensity", "--i0", "1000"]) == 0
    assert main(base + ["--out", str(d / "t.mha"), "--intensity"]) == 0
    assert main(base + ["--out", str(d / "p1.mha"), "--intensity", "--i0", "1000", "--poisson", "--seed", "7"]) == 0
    assert main(base + ["--out", str(d / "p2.mha"), "--intensity", "--i0", "1000", "--poisson", "--seed", "7"]) == 0
    assert main(base + ["--out", str(d / "p3.mha"), "--intensity", "--i0", "1000", "--poisson", "--seed", "8"]) == 0
    line, i, t, p1, p2, p3 = (load_projection_stack(str(d / f"{n}.mha"))[0].double() for n in ("line", "i", "t", "p1", "p2", "p3"))
    assert torch.allclose(i, 1000.0 * torch.exp(-line), rtol=1e-5)
    assert torch.allclose(t, torch.exp(-line), rtol=1e-5)  # default I0 = 1: transmission
    assert float(i.min()) < 500.0 and float(i.max()) > 999.0  # both attenuated and free rays
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)  # seeded
    assert torch.equal(p1, p1.round()) and float(p1.min()) >= 0  # counts
    # Poisson: mean I, variance I -> standardised residuals have mean ~0 and variance ~1 over 1728 pixels
    z = (p1 - i) / i.clamp_min(1.0).sqrt()
    assert abs(float(z.mean())) < 0.15 and 0.8 < float(z.var()) < 1.2
    assert projection_stack_metadata(str(d / "p1.mha"))["quantity"] == "intensity"


def test_drr_rtk_xml_layout(case, capsys):
    """RTK geometry: rows flipped to RTK's order and RTK's detector origin in the header."""
    d = case["dir"]
    cams = _cameras()
    xml = d / "views.xml"
    save_geometry(cams, str(xml))
    out = d / "rtk.mha"
    base = ["drr", "--volume", str(case["hu"]), "--geometry", str(xml), "-q"]
    rc = main(base + ["--out", str(out)])
    assert rc == 2 and "--detector-size" in capsys.readouterr().err
    assert main(base + ["--out", str(out), "--detector-size", "24", "18", "--detector-spacing", "4", "5"]) == 0
    images, spacing, origin = load_projection_stack(str(out))
    ref = _reference(case["hu"], case["geometry"], "hu")
    assert torch.allclose(images, ref.flip(-2), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(images, ref, rtol=1e-3, atol=1e-3)  # the flip is real
    assert np.allclose(origin.numpy(), rtk_default_origin_mm((24, 18), (4.0, 5.0)))
    assert spacing.tolist() == [4.0, 5.0]
    assert projection_stack_metadata(str(out))["row_order"] == "rtk"
    # a shifted RTK detector origin shifts the cameras' principal points and is written to the header
    out2 = d / "rtk_shift.mha"
    assert (
        main(base + ["--out", str(out2), "--detector-size", "24", "18", "--detector-spacing", "4", "5", "--detector-origin", "-42", "-40"])
        == 0
    )
    assert load_projection_stack(str(out2))[2].tolist() == [-42.0, -40.0]
    ref2 = _reference(case["hu"], xml, "hu", size_px=(24, 18), spacing_mm=(4, 5), origin_mm=(-42, -40))
    assert torch.allclose(load_projection_stack(str(out2))[0], ref2.flip(-2), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Errors: exit status 2, one line naming the problem, no output
# ----------------------------------------------------------------------------------------------------
def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xraynerf drr: error: "), err
    return lines[0]


def test_drr_errors(case, capsys):
    d = case["dir"]
    out = d / "never.mha"
    common = ["--out", str(out), "-q"]
    # missing volume
    msg = _error(capsys, ["drr", "--volume", str(d / "nope.nii.gz"), "--geometry", str(case["geometry"])] + common)
    assert "nope.nii.gz" in msg and "does not exist" in msg
    # bad geometry: not JSON, a wrong field, a missing file
    bad = d / "bad.json"
    bad.write_text("{ not json")
    assert "not valid JSON" in _error(capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(bad)] + common)
    data = cameras_to_json(_cameras())
    data["views"][0]["sdd"] = data["views"][0].pop("sdd_mm")
    bad.write_text(json.dumps(data))
    assert "sdd" in _error(capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(bad)] + common)
    assert "does not exist" in _error(capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(d / "none.json")] + common)
    # detector size given that contradicts the JSON
    msg = _error(capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--detector-size", "30", "18"] + common)
    assert "[24, 18]" in msg and "[30, 18]" in msg
    # NaN volume
    data_nan = _hu_data()
    data_nan[3, 4, 5] = np.nan
    nan_path = d / "nan.nrrd"  # (ITK's NIfTI reader turns NaN into 0)
    save_volume(
        Volume(torch.tensor(data_nan, dtype=torch.float32), torch.tensor(_ras_from_ijk(), dtype=torch.float32), "hu"), str(nan_path)
    )
    msg = _error(capsys, ["drr", "--volume", str(nan_path), "--geometry", str(case["geometry"])] + common)
    assert "NaN" in msg and "nan.nrrd" in msg
    # a detector that sees nothing: orbit centred 2 m away from the volume (some views face it, but the
    # rays end at the detector), and an orbit whose detector is turned away (views offset sideways)
    far = _write_json(_cameras(iso=(2000.0, 0.0, 0.0)), d / "far.json")
    msg = _error(capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(far)] + common)
    assert "sees nothing of the volume" in msg and "4 views" in msg and "volume centre RAS (10.0, -5.0, 20.0)" in msg
    above = _write_json(_cameras(iso=(10.0, -5.0, 400.0)), d / "above.json")
    msg = _error(capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(above)] + common)
    assert "sees nothing of the volume" in msg
    # a detector that sees only air: all line integrals zero (the volume box is seen, its content is empty)
    air_path = d / "air.mha"
    save_volume(Volume(torch.full(SHAPE_KJI, -1000.0), torch.tensor(_ras_from_ijk(), dtype=torch.float32), "hu"), str(air_path))
    msg = _error(capsys, ["drr", "--volume", str(air_path), "--geometry", str(case["geometry"]), "--input-units", "hu"] + common)
    assert "line integrals are zero" in msg
    # inconsistent options, unsupported output type, missing output directory
    assert "--i0" in _error(
        capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--intensity", "--poisson"] + common
    )
    msg = _error(capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--out", str(d / "x.png"), "-q"])
    assert ".mha" in msg
    msg = _error(
        capsys, ["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--out", str(bad / "sub" / "x.mha"), "-q"]
    )
    assert "bad.json' is a file" in msg
    assert not out.exists()
    assert not any(name.startswith(".") for name in _files(d))


def test_drr_some_views_miss_the_volume_warns(case, capsys, tmp_path):
    """One view whose orbit is 2 m away gives a warning and an all-zero image; the others are rendered."""
    cams = _cameras()
    far = _cameras(iso=(2000.0, 0.0, 0.0))
    mixed = Cameras.concatenate([cams[0:2], far[2:3], cams[3:4]])
    geom = _write_json(mixed, tmp_path / "mixed.json")
    out = tmp_path / "mixed.mha"
    assert main(["drr", "--volume", str(case["hu"]), "--geometry", str(geom), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 of 4 views see nothing" in err and "[2]" in err
    images = load_projection_stack(str(out))[0]
    assert float(images[2].abs().max()) == 0.0
    assert all(float(images[v].max()) > 0.5 for v in (0, 1, 3))


# ----------------------------------------------------------------------------------------------------
# Cancellation: nothing written
# ----------------------------------------------------------------------------------------------------
def test_drr_cancel_during_render_leaves_nothing(case, capsys, monkeypatch):
    calls = []

    def interrupt(self, p):
        calls.append(p.done)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_common.TextProgress, "__call__", interrupt)
    out = case["dir"] / "cancelled.mha"
    before = _files(case["dir"])
    rc = main(["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--out", str(out)])
    assert rc == 130 and calls
    assert "cancelled; no output written" in capsys.readouterr().err
    assert _files(case["dir"]) == before


def test_drr_cancel_during_write_leaves_nothing(case, capsys, monkeypatch):
    """Ctrl-C while the file is being written: the half-written temporary file is removed and an older
    output of the same name is left untouched."""
    out = case["dir"] / "proj.nrrd"
    out.write_bytes(b"old")
    real_write = sitk.WriteImage
    seen = []

    def write_then_interrupt(image, path, *a, **k):
        real_write(image, path, *a, **k)
        seen.append(path)
        assert os.path.exists(path) and os.path.dirname(path) == str(case["dir"])
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", write_then_interrupt)
    before = _files(case["dir"])
    rc = main(["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--out", str(out), "-q"])
    assert rc == 130 and len(seen) == 1 and seen[0] != str(out)
    assert _files(case["dir"]) == before and out.read_bytes() == b"old"


# ----------------------------------------------------------------------------------------------------
# Projection-stack files
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".mha", ".nrrd", ".nii", ".nii.gz"])
def test_projection_stack_round_trip(tmp_path, ext):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(3, 5, 7)).astype(np.float32)
    path = tmp_path / f"stack{ext}"
    save_projection_stack(torch.from_numpy(images), str(path), spacing_mm=(0.75, 1.25), origin_mm=(-3.5, 2.0))
    back, spacing, origin = load_projection_stack(str(path))
    assert back.dtype == torch.float32 and torch.equal(back, torch.from_numpy(images))
    assert np.allclose(spacing.numpy(), [0.75, 1.25], rtol=1e-7) and np.allclose(origin.numpy(), [-3.5, 2.0])
    # ITK axis order (u = column, v = row, view), as RTK expects
    itk_image = sitk.ReadImage(str(path))
    assert itk_image.GetSize() == (7, 5, 3)
    assert itk_image.GetPixel(6, 4, 2) == pytest.approx(float(images[2, 4, 6]))
    assert _files(tmp_path) == [path.name]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # ordinary permissions, not a temp file's 0600


def test_projection_stack_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown file type"):
        save_projection_stack(np.zeros((1, 2, 2)), str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match=r"\(V, H, W\)"):
        save_projection_stack(np.zeros((1, 1, 2, 2)), str(tmp_path / "a.mha"))
    with pytest.raises(ValueError, match="spacing_mm must be > 0"):
        save_projection_stack(np.zeros((1, 2, 2)), str(tmp_path / "a.mha"), spacing_mm=(0.0, 1.0))
    with pytest.raises(ValueError, match="does not exist"):
        load_projection_stack(str(tmp_path / "missing.mha"))
    rotated = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    rotated.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    sitk.WriteImage(rotated, str(tmp_path / "rot.mha"))
    with pytest.raises(ValueError, match="identity direction"):
        load_projection_stack(str(tmp_path / "rot.mha"))
    images = torch.zeros(4, 18, 24)
    cams = _cameras()
    check_projections_match(images, cams, spacing_mm=(4.0, 5.0))
    with pytest.raises(ValueError, match="3 projections but the geometry has 4 views"):
        check_projections_match(images[:3], cams)
    with pytest.raises(ValueError, match="24 x 17 pixels"):
        check_projections_match(images[:, :17], cams)
    with pytest.raises(ValueError, match="pixel spacing"):
        check_projections_match(images, cams, spacing_mm=(4.0, 4.0))
    assert _files(tmp_path) == ["rot.mha"]


# ----------------------------------------------------------------------------------------------------
# Help text and the installed console script
# ----------------------------------------------------------------------------------------------------
def test_help_explains_conventions(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["drr", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "patient RAS",
        "millimetres",
        "beam's eye view",
        "image[row, col]",
        "pixel-centre",
        "1/mm",
        "line",
        "--detector-size",
        "exit status 2",
    ):
        assert needle in text, needle


def _console_script() -> list:
    script = Path(sys.executable).with_name("xraynerf")
    return [str(script)] if script.exists() else [sys.executable, "-m", "XRayNeRFLib.cli"]


def test_console_script_subprocess(case):
    out = case["dir"] / "sub.nii.gz"
    run = subprocess.run(
        _console_script()
        + ["drr", "--volume", str(case["hu"]), "--geometry", str(case["geometry"]), "--out", str(out), "--renderer", "siddon"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    images, spacing, _ = load_projection_stack(str(out))
    ref = _reference(case["hu"], case["geometry"], "hu", method="siddon")
    assert torch.allclose(images, ref, rtol=1e-6, atol=1e-6)
    assert np.allclose(spacing.numpy(), [4.0, 5.0])
    # an error: status 2, one line, no traceback
    run = subprocess.run(
        _console_script() + ["drr", "--volume", str(case["dir"] / "missing.nrrd"), "--geometry", str(case["geometry"]), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and run.stderr.strip().count("\n") == 0
    assert "missing.nrrd" in run.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT semantics")
def test_console_script_ctrl_c(tmp_path):
    """A real SIGINT while rendering: exit status 130 and no output or temporary file."""
    n = 48
    vol = Volume(torch.full((n, n, n), 0.02), torch.eye(4), "mu")
    save_volume(vol, str(tmp_path / "cube.mha"))
    angles = torch.linspace(0, 2 * math.pi, 400, dtype=torch.float64)[:-1]
    cams = Cameras.circular_orbit(
        angles, sid_mm=200.0, sdd_mm=300.0, size_px=(96, 96), pixel_spacing_mm=1.0, isocenter_ras=(23.5, 23.5, 23.5), dtype=torch.float64
    )
    _write_json(cams, tmp_path / "g.json")
    out = tmp_path / "big.mha"
    proc = subprocess.Popen(
        _console_script()
        + [
            "drr",
            "--volume",
            str(tmp_path / "cube.mha"),
            "--geometry",
            str(tmp_path / "g.json"),
            "--out",
            str(out),
            "--renderer",
            "siddon",
            "--max-memory-mb",
            "4",
        ],
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background (nohup, `cmd &`) inherits SIGINT ignored, and Python then
        # keeps ignoring it: give the CLI the default disposition a terminal user has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for the first progress line (rendering has started)
            line = proc.stderr.readline()
            lines.append(line)
            if "%" in line or not line:
                break
        assert any("%" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert "cancelled; no output written" in rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.mha", "g.json"]


# ----------------------------------------------------------------------------------------------------
# The README's main command on the bundled sample data (reduced to 3 views to stay quick)
# ----------------------------------------------------------------------------------------------------
def test_sample_data_drr(tmp_path, capsys):
    ct = SAMPLE / "chest_ct_128.nii.gz"
    geometry = SAMPLE / "orbit_geometry.json"
    assert ct.stat().st_size + geometry.stat().st_size < 3 * 2**20
    vol = load_volume(str(ct))
    assert vol.units == "hu" and vol.shape_kji == (66, 128, 128)
    assert float(vol.data.min()) == -1024.0 and float(vol.data.max()) > 1500.0
    cams = load_geometry(str(geometry))
    assert len(cams) == 60 and cams.size_px == (144, 154)
    # The orbit is centred on the CT: every view's projected CT centre is at the detector centre.
    pix, depth = cams.project(vol.center_ras().double()[None])
    assert torch.allclose(pix[:, 0], torch.tensor([71.5, 76.5], dtype=torch.float64), atol=1e-6) and bool((depth > 0).all())
    small = _write_json(cams[[0, 15, 30]], tmp_path / "three.json")
    out = tmp_path / "projections.mha"
    assert main(["drr", "--volume", str(ct), "--geometry", str(small), "--out", str(out), "-q"]) == 0
    images = load_projection_stack(str(out))[0]
    # a chest: tens of centimetres of soft tissue -> line integrals of several units in the middle,
    # zero outside the body (the detector is wider than the patient)
    assert 3.0 < float(images[0, 77, 72]) < 12.0
    assert float(images[:, :, 0].abs().max()) == 0.0 and float(images[:, :, -1].abs().max()) == 0.0
    # opposite views (0 and 180 degrees) are mirror images in the column direction up to cone-beam parallax
    mirrored = images[2].flip(-1)
    assert float((images[0] - mirrored).abs().mean()) < 0.1 * float(images[0].mean())


def test_drr_rtk_layout_matches_rtk_forward_projector(case, tmp_path):
    """The stack written for RTK .xml geometry is what RTK's own Joseph projector computes from the same
    XML, volume file, and the detector size, spacing and origin of our file's header (RTK in a subprocess)."""
    xml = tmp_path / "views.xml"
    save_geometry(_cameras(), str(xml))
    out = tmp_path / "ours.mha"
    args = ["drr", "--volume", str(case["mu"]), "--geometry", str(xml), "--out", str(out), "-q", "--renderer", "siddon"]
    assert main(args + ["--detector-size", "24", "18", "--detector-spacing", "4", "5", "--detector-origin", "-44", "-40"]) == 0
    ours, spacing, origin = load_projection_stack(str(out))
    rtk_out = tmp_path / "rtk.mha"
    tool = Path(__file__).resolve().parent / "rtk_tools" / "rtk_forward_project.py"
    job = [str(xml), str(rtk_out), "24", "18", *(str(float(x)) for x in spacing.tolist()), *(str(float(x)) for x in origin.tolist())]
    done = subprocess.run([sys.executable, str(tool), str(case["mu"]), *job], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rtk = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(rtk_out)))).float()
    assert tuple(rtk.shape) == tuple(ours.shape) == (4, 18, 24)
    scale = float(rtk.max())
    assert scale > 0.5
    # Joseph (linear interpolation) vs exact Siddon on a voxelised phantom: close, not equal
    err = float((ours - rtk).abs().mean()) / scale
    err_flipped = float((ours.flip(-2) - rtk).abs().mean()) / scale
    assert err < 0.02, (err, err_flipped)
    assert err_flipped > 5 * err
