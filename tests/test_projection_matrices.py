"""Per-view projection-matrix files: exact round trips through our cameras, the matrix of the documented
worked example, refusals (one line, GeometryError), and use by ``drr``, ``reconstruct``'s loader and ``convert``."""

from __future__ import annotations

import json
import math

import dicom_factory as fac
import numpy as np
import pytest
import torch
from dicom_factory import SDD, SID, SPACING, drr, normalized_p, truth_cameras

from XRayNeRFLib.cli import main
from XRayNeRFLib.errors import GeometryError
from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.geometry_io import cameras_to_json, load_geometry, save_geometry
from XRayNeRFLib.intensities import intensities_from_line_integrals
from XRayNeRFLib.projection_matrices import (
    MATRICES_FORMAT,
    cameras_from_matrices_json,
    load_projection_matrices,
    matrices_json_from_text,
    matrices_to_json,
    matrices_to_text,
    save_projection_matrices,
)
from XRayNeRFLib.projection_set import ProjectionSet
from XRayNeRFLib.projections_io import load_projection_stack, save_projection_stack
from XRayNeRFLib.volume import Volume, save_volume

F64 = torch.float64


def _wobbly_carm(n: int = 7, seed: int = 3) -> Cameras:
    """A short-scan C-arm whose every view is perturbed (a calibrated, flexing gantry), offset detector,
    non-square pixels, isocentre far from the RAS origin."""
    rng = np.random.default_rng(seed)
    prim = np.linspace(-100, 100, n) + rng.uniform(-0.5, 0.5, n)
    sec = rng.uniform(-0.5, 0.5, n)
    cams = Cameras.carm(
        torch.tensor(prim),
        torch.tensor(sec),
        sid_mm=785.0,
        sdd_mm=torch.tensor(1200.0 + rng.uniform(-2, 2, n)),
        size_px=(300, 200),
        pixel_spacing_mm=(0.8, 0.6),
        isocenter_ras=(12.0, -340.0, 905.0),
        detector_offset_mm=torch.tensor(rng.uniform(-30, 30, (n, 2))),
        dtype=F64,
    )
    return cams


def _close(a, b, tol):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    err = float((a - b).abs().max())
    assert err <= tol, err


def test_file_round_trip_exact(tmp_path):
    cams = _wobbly_carm()
    path = tmp_path / "views.matrices.json"
    save_geometry(cams, str(path))  # the name picks the form
    data = json.loads(path.read_text())
    assert data["format"] == MATRICES_FORMAT and len(data["matrices"]) == 7 and data["size_px"] == [300, 200]
    for back in (load_projection_matrices(str(path)), load_geometry(str(path))):
        assert back.size_px == cams.size_px
        _close(back.world_from_camera, cams.world_from_camera, 1e-6)
        _close(back.sdd_mm, cams.sdd_mm, 1e-6)
        _close(back.principal_point_px, cams.principal_point_px, 1e-6)
        _close(back.pixel_spacing_mm, cams.pixel_spacing_mm, 1e-12)
    # written again: the same numbers (a second round trip does not drift)
    again = matrices_to_json(load_geometry(str(path)))
    _close(again["matrices"], data["matrices"], 1e-6 * float(np.abs(data["matrices"]).max()))


def test_worked_example_matrix_and_any_scale():
    # docs/geometry.md section 11: LAO 30 / CRA 10, sid 750, sdd 1200, 1024 x 768 px of 0.4 mm, isocentre (10, -20, 30)
    documented = np.array(
        [[2346.2116, 1936.2423, 88.8210, 396223.0975], [-449.3092, 778.2263, -2887.8292, 394317.4926], [-0.4924, 0.8529, 0.1736, 766.7720]]
    )
    cams = Cameras.carm(
        30.0, 10.0, sid_mm=750.0, sdd_mm=1200.0, size_px=(1024, 768), pixel_spacing_mm=0.4, isocenter_ras=(10.0, -20.0, 30.0), dtype=F64
    )
    written = np.asarray(matrices_to_json(cams)["matrices"][0])
    assert np.abs(written - documented).max() < 1e-3 * np.abs(documented).max()
    # the scale of a matrix is free (positive): x 1e-3 reads back the same camera
    data = {
        "format": MATRICES_FORMAT,
        "version": 1,
        "size_px": [1024, 768],
        "pixel_spacing_mm": 0.4,
        "matrices": [(written * 1e-3).tolist()],
    }
    back = cameras_from_matrices_json(data)
    _close(back.world_from_camera, cams.world_from_camera, 1e-6)
    _close(back.sdd_mm, [1200.0], 1e-6)
    # one row of 12 numbers per view is accepted too
    data["matrices"] = [written.reshape(-1).tolist()]
    _close(cameras_from_matrices_json(data).principal_point_px, [[511.5, 383.5]], 1e-6)
    # the documented pixel of X = (40, -50, 80)
    px, depth = back.project(torch.tensor([[40.0, -50.0, 80.0]], dtype=F64))
    _close(px, [[[557.360, 148.133]]], 1e-3)


def _base(p) -> dict:
    return {"format": MATRICES_FORMAT, "version": 1, "size_px": [64, 48], "pixel_spacing_mm": [0.5, 0.5], "matrices": p.tolist()}


@pytest.mark.parametrize(
    "case, match",
    [
        ("mirror", "mirrored detector"),
        ("negated", "mirrored detector"),
        ("skew", "skewed"),
        ("nan", "NaN"),
        ("singular", "singular"),
        ("count", "3 projection matrices for 4 projections"),
        ("spacing", "column, row"),
        ("unknown", "unknown field"),
    ],
)
def test_refusals_are_one_line_geometry_errors(case, match):
    cams = Cameras.carm(
        torch.tensor([20.0, 60.0, 100.0]), torch.zeros(3), sid_mm=500.0, sdd_mm=800.0, size_px=(64, 48), pixel_spacing_mm=0.5, dtype=F64
    )
    p = cams.projection_matrices().numpy().copy()
    data = _base(p)
    n_views = None
    if case == "mirror":  # columns flipped c -> 63 - c: left-handed pixel axes
        data["matrices"][1] = (np.array([[-1.0, 0, 63.0], [0, 1, 0], [0, 0, 1]]) @ p[1]).tolist()
    elif case == "negated":
        data["matrices"][2] = (-p[2]).tolist()
    elif case == "skew":
        data["matrices"][0] = (np.array([[1.0, 0.05, 0], [0, 1, 0], [0, 0, 1]]) @ p[0]).tolist()
    elif case == "nan":
        data["matrices"][2][1][3] = float("nan")
    elif case == "singular":
        data["matrices"][1] = [[2.0, 0, 0, 5], [0, 2, 0, 7], [0, 0, 0, 1]]
    elif case == "count":
        n_views = 4
    elif case == "spacing":
        data["pixel_spacing_mm"] = [0.5, 0.6]
    elif case == "unknown":
        data["spacing"] = 1.0
    with pytest.raises(GeometryError, match=match) as err:
        cameras_from_matrices_json(data, n_views=n_views)
    assert "\n" not in str(err.value)
    if case in ("mirror", "negated", "skew", "nan", "singular"):
        assert err.value.name.startswith("view ")


def test_count_mismatch_with_a_stack_is_refused(tmp_path):
    cams = _wobbly_carm(5)
    save_projection_matrices(cams, str(tmp_path / "g.matrices.json"))
    save_projection_stack(torch.zeros(4, 200, 300), str(tmp_path / "p.mha"), spacing_mm=[0.8, 0.6], metadata={"row_order": "xraynerf"})
    with pytest.raises(ValueError, match="4 projections but the geometry has 5 views"):
        ProjectionSet.from_stack(str(tmp_path / "p.mha"), str(tmp_path / "g.matrices.json"))


def test_varying_spacing_cannot_be_written(tmp_path):
    cams = Cameras.concatenate(
        [_wobbly_carm(2), Cameras.carm(0.0, 0.0, sid_mm=785.0, sdd_mm=1200.0, size_px=(300, 200), pixel_spacing_mm=0.5, dtype=F64)]
    )
    with pytest.raises(GeometryError, match="different pixel spacings"):
        save_projection_matrices(cams, str(tmp_path / "x.matrices.json"))


def test_drr_with_matrices_equals_drr_with_json(tmp_path, capsys):
    k = torch.zeros(12, 12, 12)
    k[3:9, 2:10, 4:8] = 0.02
    ras = torch.eye(4)
    ras[:3, :3] *= 3.0
    ras[:3, 3] = torch.tensor([12.0, -340.0, 905.0]) - 16.5
    save_volume(Volume(k, ras, "mu"), str(tmp_path / "mu.mha"))
    cams = Cameras.carm(
        torch.tensor([-20.0, 40.0, 95.0]),
        torch.tensor([3.0, 0.0, -4.0]),
        sid_mm=300.0,
        sdd_mm=450.0,
        size_px=(20, 16),
        pixel_spacing_mm=(4.0, 5.0),
        isocenter_ras=(12.0, -340.0, 905.0),
        detector_offset_mm=(7.0, -3.0),
        dtype=F64,
    )
    with open(tmp_path / "g.json", "w") as f:
        json.dump(cameras_to_json(cams), f)
    save_projection_matrices(cams, str(tmp_path / "g.matrices.json"))
    for g in ("g.json", "g.matrices.json"):
        rc = main(
            ["drr", "--volume", str(tmp_path / "mu.mha"), "--geometry", str(tmp_path / g), "--out", str(tmp_path / (g + ".mha")), "-q"]
        )
        assert rc == 0, capsys.readouterr().err
    a, _, _ = load_projection_stack(str(tmp_path / "g.json.mha"))
    b, _, _ = load_projection_stack(str(tmp_path / "g.matrices.json.mha"))
    assert float(a.max()) > 0.1
    assert torch.allclose(a, b, atol=1e-5)


def test_convert_writes_matrices(tmp_path, capsys):
    angles = np.array([-30.0, 0.0, 30.0, 60.0])
    cams = truth_cameras(angles, [10.0] * 4)
    p = drr(cams)
    stored = fac.stored_from_bev(intensities_from_line_integrals(p.numpy(), relationship="LIN", i0=50000.0))
    path = fac.write_xray(
        str(tmp_path / "run.dcm"),
        stored,
        primary_deg=angles[0],
        secondary_deg=10.0,
        primary_increments=angles - angles[0],
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LIN",
        sign=1,
    )
    out, geom = str(tmp_path / "proj.mha"), str(tmp_path / "geom.matrices.json")
    assert main(["convert", path, "--out", out, "--geometry-out", geom, "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads(open(geom).read())["format"] == MATRICES_FORMAT
    back = ProjectionSet.from_stack(out, geom)
    assert (back.images - p).abs().max() < 0.01
    assert (normalized_p(back.cameras) - normalized_p(cams)).abs().max() < 1e-6
    assert math.isclose(float(back.cameras.sdd_mm[0]), SDD, rel_tol=1e-9)


def test_text_form_round_trip_exact_and_equal_to_json(tmp_path):
    """The text spelling (*.matrices.txt): the same cameras as the JSON form, exact to 1e-6, through both
    loaders; the file is what the documentation says (header lines, three rows of four numbers per view)."""
    cams = _wobbly_carm()
    txt, js = tmp_path / "views.matrices.txt", tmp_path / "views.matrices.json"
    save_geometry(cams, str(txt))
    save_geometry(cams, str(js))
    lines = [ln for ln in txt.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[:6] == [f"format {MATRICES_FORMAT}", "version 1", "frame RAS", "units mm", "size_px 300 200", "pixel_spacing_mm 0.8 0.6"]
    assert len(lines) == 6 + 3 * 7 and all(len(ln.split()) == 4 for ln in lines[6:])
    assert matrices_json_from_text(txt.read_text())["matrices"] == json.loads(js.read_text())["matrices"]  # repr: exact
    for back in (load_projection_matrices(str(txt)), load_geometry(str(txt))):
        assert back.size_px == cams.size_px
        _close(back.world_from_camera, cams.world_from_camera, 1e-6)
        _close(back.sdd_mm, cams.sdd_mm, 1e-6)
        _close(back.principal_point_px, cams.principal_point_px, 1e-6)
        _close(back.pixel_spacing_mm, cams.pixel_spacing_mm, 1e-12)
    assert matrices_to_text(load_geometry(str(txt))).count("\n") == matrices_to_text(cams).count("\n")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.replace("size_px 300 200", "size_px 300"), "size_px.*2 value"),
        (lambda t: t.rsplit("\n", 2)[0] + "\n", "whole number of 3x4"),
        (lambda t: t.replace("version 1", "version 2"), "version"),
        (lambda t: t + "1 2 3\n", "4 numbers"),
        (lambda t: t.replace("units mm", "unit mm"), "unknown key 'unit'"),
        (lambda t: t.replace("pixel_spacing_mm 0.8 0.6", "pixel_spacing_mm 0.8 x"), "must be numbers"),
        (lambda t: t.replace("# view 1\n", "# view 1\nnan nan nan nan\nnan nan nan nan\nnan nan nan nan\n"), "NaN"),
    ],
)
def test_text_form_refusals(tmp_path, edit, match):
    """Bad text files: one GeometryError naming the file; reading writes nothing."""
    path = tmp_path / "bad.matrices.txt"
    path.write_text(edit(matrices_to_text(_wobbly_carm())))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(GeometryError, match=match) as info:
        load_geometry(str(path))
    assert "bad.matrices.txt" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_convert_writes_text_matrices(tmp_path, capsys):
    """``xraynerf convert --geometry-out X.matrices.txt`` writes the text form, read back to 1e-6."""
    cams = truth_cameras(np.array([-30.0, 0.0, 30.0]), [10.0] * 3)
    p = drr(cams)
    out, txt = str(tmp_path / "proj.mha"), str(tmp_path / "geom.matrices.txt")
    src = fac.write_xray(
        str(tmp_path / "run.dcm"),
        fac.stored_from_bev(intensities_from_line_integrals(p.numpy(), relationship="LIN", i0=50000.0)),
        primary_deg=-30.0,
        secondary_deg=10.0,
        primary_increments=np.array([0.0, 30.0, 60.0]),
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LIN",
        sign=1,
    )
    assert main(["convert", src, "--out", out, "--geometry-out", txt, "--quiet"]) == 0, capsys.readouterr().err
    assert open(txt).read().count(f"format {MATRICES_FORMAT}") == 1
    back = ProjectionSet.from_stack(out, txt)
    assert (normalized_p(back.cameras) - normalized_p(cams)).abs().max() < 1e-6
