"""Output grids: a grid like an existing image (header only), an explicit grid, the every/any cylinders,
the per-voxel count of views that see a voxel (checked against Cameras.project), the memory check."""

from __future__ import annotations

import math

import pytest
import SimpleITK as sitk
import torch
from recon_phantoms import analytic_projections, orbit

from XRayNeRFLib.recon import grid as grid_mod
from XRayNeRFLib.recon.api import reconstruct
from XRayNeRFLib.recon.fov import analyse_orbit, default_grid
from XRayNeRFLib.recon.grid import (
    GridMemoryError,
    check_memory,
    cylinder_grid,
    estimate_memory_bytes,
    explicit_grid,
    grid_like,
    view_counts,
)
from XRayNeRFLib.volume import Volume, save_volume

F64 = torch.float64


def test_grid_like_reads_the_header_only(tmp_path):
    c, s = math.cos(0.3), math.sin(0.3)
    a = torch.tensor([[0.7 * c, -0.8 * s, 0.0, -40.0], [0.7 * s, 0.8 * c, 0.0, 25.0], [0.0, 0.0, 1.5, 310.0], [0, 0, 0, 1.0]], dtype=F64)
    save_volume(Volume(torch.rand(5, 7, 9), a.float(), "mu"), str(tmp_path / "ref.nii.gz"))
    g = grid_like(str(tmp_path / "ref.nii.gz"))
    assert tuple(g.data.shape) == (5, 7, 9)
    assert g.data.stride() == (0, 0, 0) and float(g.data.sum()) == 0.0  # a descriptor: no voxel memory
    assert torch.allclose(g.ras_from_ijk.double(), a, atol=1e-4)
    with pytest.raises(ValueError, match="does not exist"):
        grid_like(str(tmp_path / "missing.nii.gz"))
    sitk.WriteImage(sitk.Image(8, 6, sitk.sitkFloat32), str(tmp_path / "flat.mha"))
    with pytest.raises(ValueError, match="2-D"):
        grid_like(str(tmp_path / "flat.mha"))
    sitk.WriteImage(sitk.Image(8, 6, 1, sitk.sitkFloat32), str(tmp_path / "slice.mha"))
    with pytest.raises(ValueError, match="single slice"):
        grid_like(str(tmp_path / "slice.mha"))


def test_explicit_grid():
    g = explicit_grid((10, 8, 6), 1.5, origin_ras=(-3.0, 4.0, 100.0))
    assert tuple(g.data.shape) == (6, 8, 10)
    want = torch.tensor([[1.5, 0, 0, -3.0], [0, 1.5, 0, 4.0], [0, 0, 1.5, 100.0], [0, 0, 0, 1]])
    assert torch.allclose(g.ras_from_ijk, want)
    cams = orbit(8)
    centred = explicit_grid((11, 9, 7), (1.0, 2.0, 3.0), cameras=cams)
    centre = centred.ras_from_ijk.double() @ torch.tensor([5.0, 4.0, 3.0, 1.0], dtype=F64)
    assert torch.allclose(centre[:3], analyse_orbit(cams).isocenter, atol=1e-5)
    with pytest.raises(ValueError, match="three positive"):
        explicit_grid((10, 0, 6), 1.0, origin_ras=(0, 0, 0))
    with pytest.raises(ValueError, match="spacing"):
        explicit_grid((4, 4, 4), -1.0, origin_ras=(0, 0, 0))


def test_every_cylinder_is_the_default_grid_and_any_is_larger():
    cams = orbit(12, size_px=(24, 32))
    every = cylinder_grid(cams, grid=16)
    ref = default_grid(cams, grid=16)
    assert every.data.shape == ref.data.shape and torch.allclose(every.ras_from_ijk, ref.ras_from_ijk)
    wider = cylinder_grid(cams, region="any", spacing_mm=float(every.spacing_mm[0]))
    assert wider.data.shape[2] == pytest.approx(2 * every.data.shape[2], abs=1)
    with pytest.raises(ValueError, match="region"):
        cylinder_grid(cams, region="some")


def test_view_counts_match_project():
    cams = orbit(10, size_px=(24, 32), spacing=2.0)
    like = explicit_grid((9, 9, 5), 6.0, cameras=cams)  # reaches beyond the every-view cylinder
    counts = view_counts(cams, like)
    k, j, i = like.data.shape
    kk, jj, ii = torch.meshgrid(torch.arange(k), torch.arange(j), torch.arange(i), indexing="ij")
    ijk = torch.stack([ii, jj, kk, torch.ones_like(ii)], -1).reshape(-1, 4).double()
    ras = (ijk @ like.ras_from_ijk.double().T)[:, :3]
    px, depth = cams.project(ras)  # (V, N, 2), (V, N): an independent route through the cameras
    seen = (depth > 0) & (px[..., 0] >= -0.5) & (px[..., 0] <= 23.5) & (px[..., 1] >= -0.5) & (px[..., 1] <= 31.5)
    assert torch.equal(counts.reshape(-1).long(), seen.sum(0).long())
    assert int(counts.max()) == 10 and int(counts.min()) < 10  # some voxels are outside the every-view region


def test_memory_check_refuses_with_the_numbers(monkeypatch):
    need = estimate_memory_bytes("voxel", (400, 512, 512), 60, (1024, 768))
    assert need > 512**2 * 400 * 40
    with pytest.raises(GridMemoryError, match=r"512 x 512 x 400 grid needs about .* GiB .* but 1\.0 GiB are available") as err:
        check_memory("voxel", (400, 512, 512), 60, (1024, 768), available_bytes=2**30)
    assert err.value.needed_bytes == need and err.value.available_bytes == 2**30
    # reconstruct refuses before allocating anything (the grid is a descriptor)
    cams = orbit(8, size_px=(16, 12))
    p = analytic_projections(cams).float()
    monkeypatch.setattr(grid_mod, "available_memory_bytes", lambda: 10 * 2**20)
    huge = explicit_grid((2000, 2000, 2000), 0.1, cameras=cams)
    with pytest.raises(GridMemoryError, match="2000 x 2000 x 2000"):
        reconstruct(p, cams, "fdk", volume=huge)
