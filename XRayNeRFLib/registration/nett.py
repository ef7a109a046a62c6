"""NeTT: neural tuning of CT densities so that DRRs look like real X-rays.

A small MLP maps local CT features to a density correction: for every voxel, features
``f = (mu / mu_water, mean of mu / mu_water over the 3x3x3 neighbourhood)`` and

    tuned_mu = mu * exp(g(f)),    g: 2 -> hidden -> hidden -> 1 (SiLU), last layer initialised to 0,

so an untrained model is the identity, tuned densities stay >= 0 and air stays air. Because ``g`` sees
only local intensities (no position), the same weights apply to any CT in mu (other patients): the model
learns how tissue classes should be weighted (bone vs soft tissue at the X-ray's effective energy, a
detector's compression of dense paths), not an anatomy.

Training (:func:`train_nett`) renders the tuned CT at known poses of (X-ray, pose) pairs and minimises
a similarity loss (default 1 - NCC, which is sensitive to exactly the gray-level differences that the
model can fix) with Adam. Weights are saved with :func:`save_nett` and loaded with :func:`load_nett`;
a model is a callable Volume -> Volume, the ``appearance`` argument of :func:`.optimize.register`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..render import render
from ..volume import Volume, as_mu, mu_water_per_mm
from .intensity import bin_image
from .losses import make_loss


class NeTT(nn.Module):
    """Density tuning MLP. hidden: width of the two hidden layers. mu_water: the normalising
    attenuation (1/mm)."""

    def __init__(self, hidden: int = 16, mu_water: Optional[float] = None, local: bool = True):
        super().__init__()
        self.hidden = int(hidden)
        self.local = bool(local)
        self.mu_water = float(mu_water_per_mm() if mu_water is None else mu_water)
        self.net = nn.Sequential(nn.Linear(2 if local else 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def tuned(self, mu: Tensor) -> Tensor:
        """(K, J, I) mu in 1/mm -> (K, J, I) tuned mu in 1/mm (differentiable in the weights)."""
        x = mu / self.mu_water
        if self.local:
            local = F.avg_pool3d(x[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
            feats = torch.stack([x, local], dim=-1)  # (K, J, I, 2)
        else:
            feats = x[..., None]  # (K, J, I, 1)
        g = self.net(feats.to(self.net[0].weight.dtype))[..., 0].to(mu.dtype)
        return mu * torch.exp(g.clamp(-5, 5))

    def forward(self, volume: Volume) -> Volume:
        vol = as_mu(volume) if volume.units == "hu" else volume
        return Volume(self.tuned(vol.data), vol.ras_from_ijk, "mu")

    def curve(self, mu_values: Tensor) -> Tensor:
        """Tuned value of a homogeneous region of attenuation ``mu_values`` (for plots/inspection)."""
        x = (mu_values / self.mu_water)[..., None].expand(*mu_values.shape, 2 if self.local else 1)
        return mu_values * torch.exp(self.net(x.to(self.net[0].weight.dtype))[..., 0].clamp(-5, 5).to(mu_values.dtype))


def train_nett(
    volumes: Sequence[Volume],
    images: Sequence[Tensor],
    cameras: Sequence[Cameras],
    *,
    model: Optional[NeTT] = None,
    loss: str = "ncc",
    iterations: int = 150,
    learning_rate: float = 1e-2,
    bin_factor: int = 2,
    method: str = "trilinear",
    progress: ProgressCallback = None,
) -> tuple:
    """Fit a NeTT model on (CT, X-rays, known cameras) triples.

    volumes: CTs (HU or mu), one per patient; images[p]: (V_p, H, W) X-rays of patient p; cameras[p]:
    their V_p registered cameras. The images are binned by ``bin_factor`` (and the cameras downsampled
    alike) for speed. Returns (model, history) with history a list of per-iteration mean losses.
    A progress callback returning False stops early (the model trained so far is returned).
    """
    if not (len(volumes) == len(images) == len(cameras)) or len(volumes) == 0:
        raise ValueError("give one list entry per patient: volumes, images and cameras of equal, non-zero length")
    model = NeTT() if model is None else model
    loss_fn = make_loss(loss)
    data = []
    for vol, img, cam in zip(volumes, images, cameras):
        img = torch.as_tensor(img)
        img = img[None] if img.ndim == 2 else img
        if img.shape[0] != len(cam) or (img.shape[-1], img.shape[-2]) != tuple(cam.size_px):
            raise ValueError(f"X-rays {tuple(img.shape)} do not match their cameras ({len(cam)} views of {cam.size_px})")
        if not torch.isfinite(img).all():
            raise ValueError("an X-ray used for NeTT training contains NaN or infinite values")
        mu = (as_mu(vol) if vol.units == "hu" else vol).to(dtype=torch.float32)
        binned, _ = bin_image(img.float(), bin_factor)
        data.append((mu, binned, cam.to(dtype=torch.float32).downsampled(bin_factor) if bin_factor > 1 else cam.to(dtype=torch.float32)))
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    history: List[float] = []
    for it in range(iterations):
        opt.zero_grad()
        total = 0.0
        for mu, img, cam in data:
            drr = render(model(mu), cam, method=method)
            val = loss_fn(drr, img).mean() / len(data)
            if not torch.isfinite(val):
                raise RuntimeError(f"NeTT training loss became NaN at iteration {it}; lower the learning rate")
            val.backward()
            total += float(val.detach())
        opt.step()
        history.append(total)
        if progress is not None and progress(Progress(it + 1, iterations, f"NeTT: iteration {it + 1}, loss {total:.4f}")) is False:
            break
    return model, history


def save_nett(model: NeTT, path: str) -> None:
    """Save weights and configuration (torch .pt)."""
    torch.save({"format": "xraynerf-nett-1", "hidden": model.hidden, "mu_water": model.mu_water, "local": model.local,
                "state_dict": model.state_dict()}, path)


def load_nett(path: str) -> NeTT:
    """Load a model saved by :func:`save_nett`."""
    import os

    if not os.path.exists(path):
        raise ValueError(f"NeTT weights {path!r} do not exist")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "xraynerf-nett-1":
        raise ValueError(f"{path!r} is not a NeTT weights file written by XRayNeRFLib.registration.nett.save_nett")
    model = NeTT(hidden=int(blob["hidden"]), mu_water=float(blob["mu_water"]), local=bool(blob.get("local", True)))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model
