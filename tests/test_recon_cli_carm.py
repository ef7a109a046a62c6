"""``xraynerf reconstruct`` for C-arm data: per-view projection matrices, truncated projections (summary,
FOV mask), the output grid flags (--like, --size/--spacing-mm/--origin-ras, --fov-region) and their
refusals (one line, nothing written)."""

import os
import sys

import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, os.path.dirname(__file__))
from recon_phantoms import analytic_projections, orbit  # noqa: E402

from XRayNeRFLib.cli import main  # noqa: E402
from XRayNeRFLib.projection_set import ProjectionSet  # noqa: E402
from XRayNeRFLib.recon import grid as grid_mod  # noqa: E402
from XRayNeRFLib.recon.grid import cylinder_grid, view_counts  # noqa: E402
from XRayNeRFLib.volume import Volume, load_volume, save_volume  # noqa: E402


@pytest.fixture(scope="module")
def carm(tmp_path_factory):
    d = tmp_path_factory.mktemp("carm_cli")
    cams = orbit(16, size_px=(24, 32), spacing=2.0)  # narrower than the phantom: truncated
    proj = analytic_projections(cams).float()
    ProjectionSet(proj, cams).save(str(d / "p.mha"), str(d / "g.matrices.json"))
    a = torch.tensor([[1.2, 0, 0, -20.0], [0, 1.5, 0, -18.0], [0, 0, 2.0, -8.0], [0, 0, 0, 1]])
    save_volume(Volume(torch.zeros(9, 25, 30), a), str(d / "ref.nrrd"))
    sitk.WriteImage(sitk.Image(8, 6, sitk.sitkFloat32), str(d / "flat.mha"))
    return d, cams, proj


def _run(d, *extra):
    return main(["reconstruct", "--projections", str(d / "p.mha"), "--geometry", str(d / "g.matrices.json"), *extra])


def test_truncated_fdk_summary_and_fov_mask(carm, capsys):
    d, cams, _ = carm
    out, mask = d / "fdk.nii.gz", d / "fov.nii.gz"
    rc = _run(d, "--out", str(out), "--grid", "12", "--fov-mask", str(mask), "--fov-region", "any")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "truncated in 16 of 16 views" in err and "of the output voxels are seen by every view" in err
    vol, fov = load_volume(str(out)), load_volume(str(mask))
    like = cylinder_grid(cams, region="any", grid=12)
    assert vol.data.shape == like.data.shape == fov.data.shape
    want = view_counts(cams, like).float() / 16
    assert torch.allclose(fov.data, want) and float(want.min()) < 1.0 and float(want.max()) == 1.0


def test_grid_like_and_explicit(carm, capsys):
    d, *_ = carm
    rc = _run(d, "--out", str(d / "like.nii.gz"), "--like", str(d / "ref.nrrd"), "--quiet")
    assert rc == 0, capsys.readouterr().err
    ref, got = load_volume(str(d / "ref.nrrd")), load_volume(str(d / "like.nii.gz"))
    assert got.data.shape == ref.data.shape and torch.allclose(got.ras_from_ijk, ref.ras_from_ijk, atol=1e-4)
    rc = _run(
        d, "--out", str(d / "size.nii.gz"), "--size", "10", "8", "6", "--spacing-mm", "2.5", "--origin-ras", "-11", "-9", "-6", "--quiet"
    )
    assert rc == 0, capsys.readouterr().err
    got = load_volume(str(d / "size.nii.gz"))
    assert got.data.shape == (6, 8, 10)
    assert torch.allclose(got.ras_from_ijk, torch.tensor([[2.5, 0, 0, -11], [0, 2.5, 0, -9], [0, 0, 2.5, -6], [0, 0, 0, 1.0]]), atol=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--like", "{d}/missing.nii.gz"], "does not exist"),
        (["--like", "{d}/flat.mha"], "is 2-D"),
        (["--size", "8", "8", "8"], "--size needs --spacing-mm"),
        (["--grid", "8", "--origin-ras", "0", "0", "0"], "--origin-ras goes with --size"),
        (["--size", "4000", "4000", "4000", "--spacing-mm", "0.05"], "GiB are available"),
        (["--grid", "8", "--truncation-correction", "0.3", "--method", "voxel"], "--truncation-correction applies to --method fdk"),
    ],
)
def test_bad_grid_inputs(carm, capsys, monkeypatch, args, message):
    d, *_ = carm
    monkeypatch.setattr(grid_mod, "available_memory_bytes", lambda: 2**30)
    out = d / "never.nii.gz"
    rc = _run(d, *[a.format(d=d) for a in args], "--out", str(out), "--quiet")
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xraynerf reconstruct: error:") and message in lines[0], err
    assert not out.exists()


def test_matrix_count_mismatch(carm, capsys, tmp_path):
    d, cams, proj = carm
    ProjectionSet(proj[:5], cams[:5]).save(str(tmp_path / "p5.mha"), str(tmp_path / "g5.matrices.json"))
    rc = main(
        [
            "reconstruct",
            "--projections",
            str(d / "p.mha"),
            "--geometry",
            str(tmp_path / "g5.matrices.json"),
            "--out",
            str(tmp_path / "x.nii.gz"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "16 projections but the geometry has 5 views" in err and not (tmp_path / "x.nii.gz").exists()


def test_refine_geometry_file_written_or_refused(carm, capsys, monkeypatch, tmp_path):
    """--refine-geometry FILE: the corrected cameras (here a stand-in self-calibration's, seeded per-view twists) are
    written by write_refined_geometry in the form the name asks for and read back to 1e-6; a name without a geometry
    extension is refused before any work (one line, no volume, no file)."""
    from XRayNeRFLib.cli import reconstruct as cli
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.recon import selfcal

    d, cams, _ = carm
    calls = []

    def fake_refine(images, cameras, like, *, settings=None, masks=None, progress=None):
        calls.append(settings)
        g = torch.Generator().manual_seed(3)
        delta = torch.cat([0.01 * torch.randn(len(cameras), 3, generator=g), torch.randn(len(cameras), 3, generator=g)], 1)
        refined = selfcal.apply_corrections(cameras, delta.double())
        return selfcal.RefineResult(refined, like, delta, None, [1.0, 0.5], "2 rounds done", 0.1)

    monkeypatch.setattr(cli, "refine_geometry", fake_refine)
    for name in ("refined.json", "refined.matrices.txt"):
        path = tmp_path / "sub" / name
        rc = _run(d, "--out", str(tmp_path / "v.nii.gz"), "--grid", "8", "--refine-geometry", str(path), "--quiet")
        assert rc == 0, capsys.readouterr().err
        want = fake_refine(None, cams.to(dtype=torch.float64), None).cameras
        got = load_geometry(str(path))
        torch.testing.assert_close(got.world_from_camera, want.world_from_camera, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.principal_point_px, want.principal_point_px.double(), atol=1e-6, rtol=0)
    n = len(calls)
    rc = _run(d, "--out", str(tmp_path / "never.nii.gz"), "--grid", "8", "--refine-geometry", str(tmp_path / "r.txt"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--refine-geometry" in err and "use .json" in err, err
    assert len(calls) == n and not (tmp_path / "never.nii.gz").exists() and not (tmp_path / "r.txt").exists()
