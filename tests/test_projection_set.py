"""Projection sets from DICOM series and from image stacks + RTK/JSON geometry, saved and read back, and the
``convert`` / ``info`` commands, including their refusals (nothing half-written)."""

from __future__ import annotations

import os

import dicom_factory as fac
import numpy as np
import pytest
import torch
from dicom_factory import SDD, SID, SIZE, SPACING, drr, normalized_p, truth_cameras

from XRayNeRFLib.cli import main
from XRayNeRFLib.geometry_io import save_geometry
from XRayNeRFLib.intensities import intensities_from_line_integrals
from XRayNeRFLib.projection_set import ProjectionSet
from XRayNeRFLib.projections_io import load_projection_stack, save_projection_stack

ANGLES = np.array([-30.0, 0.0, 30.0, 60.0])


@pytest.fixture(scope="module")
def rotational(tmp_path_factory):
    """A 4-frame XA rotational run (LIN, increments) with its known cameras and DRRs."""
    d = tmp_path_factory.mktemp("run")
    cams = truth_cameras(ANGLES, [10.0] * 4)
    p = drr(cams)
    stored = fac.stored_from_bev(intensities_from_line_integrals(p.numpy(), relationship="LIN", i0=50000.0))
    path = fac.write_xray(
        str(d / "run.dcm"),
        stored,
        primary_deg=ANGLES[0],
        secondary_deg=10.0,
        primary_increments=ANGLES - ANGLES[0],
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LIN",
        sign=1,
    )
    return path, cams, p


def _files(directory):
    return sorted(os.listdir(directory))


def test_from_dicom_gives_line_integrals_and_cameras(rotational):
    path, cams, p = rotational
    ps = ProjectionSet.from_dicom(path)
    assert len(ps) == 4 and ps.images.dtype == torch.float32 and ps.masks.all()
    assert (normalized_p(ps.cameras) - normalized_p(cams)).abs().max() < 1e-6
    assert (ps.images - p).abs().max() < 0.01  # I0 estimated from the air around the chest
    assert [m["primary_deg"] for m in ps.metadata] == pytest.approx(ANGLES.tolist())
    assert ps.metadata[0]["air_value"] == pytest.approx(50000.0, rel=1e-4)
    sub = ps[1:3]
    assert len(sub) == 2 and torch.equal(sub.images, ps.images[1:3])


@pytest.mark.parametrize("geometry", ["geom.xml", "geom.json"])
def test_save_and_read_back_stack_with_geometry(rotational, tmp_path, geometry):
    path, cams, _ = rotational
    ps = ProjectionSet.from_dicom(path)
    ps.save(str(tmp_path / "proj.mha"), str(tmp_path / geometry))
    assert _files(tmp_path) == sorted(["proj.mha", geometry])
    raw, spacing, _ = load_projection_stack(str(tmp_path / "proj.mha"))
    expect = ps.images.flip(-2) if geometry.endswith(".xml") else ps.images  # RTK row order for RTK geometry
    assert torch.equal(raw, expect) and spacing.tolist() == list(SPACING)
    back = ProjectionSet.from_stack(str(tmp_path / "proj.mha"), str(tmp_path / geometry))
    assert torch.equal(back.images, ps.images)
    assert (normalized_p(back.cameras) - normalized_p(cams)).abs().max() < 1e-6
    # a DRR from the read-back geometry lines up with the read-back image
    assert (drr(back.cameras) - back.images).abs().mean() < 0.01


def test_image_folder_with_json_geometry_and_intensities(rotational, tmp_path):
    import SimpleITK as sitk

    _, cams, p = rotational
    folder = tmp_path / "tifs"
    folder.mkdir()
    inten = intensities_from_line_integrals(p.numpy(), relationship="LIN", i0=1000.0).astype(np.float32)
    for i in range(len(inten)):
        sitk.WriteImage(sitk.GetImageFromArray(inten[i]), str(folder / f"view{i:03d}.tif"))
    save_geometry(cams, str(tmp_path / "g.json"))
    ps = ProjectionSet.from_stack(str(folder), str(tmp_path / "g.json"), quantity="intensity", i0=1000.0)
    assert torch.allclose(ps.images, p, atol=1e-4)
    with pytest.raises(ValueError, match="no pixel spacing"):
        save_geometry(cams, str(tmp_path / "g.xml"))
        ProjectionSet.from_stack(str(folder), str(tmp_path / "g.xml"))


def test_stack_geometry_mismatches_are_refused(rotational, tmp_path):
    _, cams, p = rotational
    save_geometry(cams[:3], str(tmp_path / "three.json"))
    save_projection_stack(p, str(tmp_path / "four.mha"), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="4 projections but the geometry has 3 views"):
        ProjectionSet.from_stack(str(tmp_path / "four.mha"), str(tmp_path / "three.json"))
    save_geometry(cams, str(tmp_path / "four.json"))
    save_projection_stack(p, str(tmp_path / "spacing.mha"), spacing_mm=(1.0, 1.0))
    with pytest.raises(ValueError, match="pixel spacing"):
        ProjectionSet.from_stack(str(tmp_path / "spacing.mha"), str(tmp_path / "four.json"))
    save_projection_stack(p, str(tmp_path / "rtk.mha"), spacing_mm=SPACING, metadata={"row_order": "rtk"})
    with pytest.raises(ValueError, match="RTK row order"):
        ProjectionSet.from_stack(str(tmp_path / "rtk.mha"), str(tmp_path / "four.json"))
    with pytest.raises(ValueError, match="unknown extension"):
        ProjectionSet.from_stack(str(tmp_path / "rtk.mha"), str(tmp_path / "four.txt"))
    with pytest.raises(ValueError, match="masks"):
        ProjectionSet(p, cams, masks=torch.ones(2, 3, 4, dtype=torch.bool))


def test_cli_convert_and_info(rotational, tmp_path, capsys):
    path, cams, p = rotational
    out, geom = str(tmp_path / "proj.nrrd"), str(tmp_path / "geom.json")
    assert main(["convert", path, "--out", out, "--geometry-out", geom]) == 0
    text = capsys.readouterr().out
    assert "4 views" in text and "wrote" in text
    back = ProjectionSet.from_stack(out, geom)
    assert (back.images - p).abs().max() < 0.01
    assert (normalized_p(back.cameras) - normalized_p(cams)).abs().max() < 1e-6

    assert main(["info", path]) == 0
    text = capsys.readouterr().out
    for needle in (
        "4 views",
        "64 x 48",
        "pixel spacing [column, row]: 9, 10 mm",
        "source-detector distance: 1200 mm",
        "intensity relationship: LIN",
        "assumptions:",
        "radiological layout",
        "  60  ",
    ):
        assert needle in text, (needle, text)
    assert main(["info", out, "--geometry", geom]) == 0
    assert "4 views" in capsys.readouterr().out


def test_cli_errors_write_nothing(rotational, tmp_path, capsys):
    path, cams, _ = rotational
    stored = np.full((1, SIZE[1], SIZE[0]), 1000.0)
    bare = fac.write_xray(str(tmp_path / "bare.dcm"), stored, sdd_mm=None, sid_mm=SID, imager_spacing_rc=SPACING[::-1])
    outdir = tmp_path / "out"
    outdir.mkdir()
    out, geom = str(outdir / "proj.mha"), str(outdir / "geom.xml")
    assert main(["convert", bare, "--out", out, "--geometry-out", geom]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bare.dcm" in err and "(0018,1110)" in err and "--sdd-mm" in err
    assert _files(outdir) == []
    # the flag named in the message works
    assert main(["convert", bare, "--out", out, "--geometry-out", geom, "--sdd-mm", "1200", "--quiet"]) == 0 and _files(outdir) == [
        "geom.xml",
        "proj.mha",
    ]
    # a failing stack write leaves neither file (nor temporaries) behind
    assert main(["convert", path, "--out", str(tmp_path / "missing" / "p.mha"), "--geometry-out", str(outdir / "g2.json")]) == 2
    assert _files(outdir) == ["geom.xml", "proj.mha"]
    assert (
        main(["convert", path, "--out", str(outdir / "p.png"), "--geometry-out", str(outdir / "g3.json")]) == 2
        and "use one of" in capsys.readouterr().err
    )
    assert main(["info", str(outdir / "proj.mha")]) == 2 and "--geometry" in capsys.readouterr().err
    assert (
        main(["convert", path, "--out", out, "--geometry-out", geom, "--pixel-spacing-mm", "1", "2", "3"]) == 2
        and "--pixel-spacing-mm" in capsys.readouterr().err
    )
