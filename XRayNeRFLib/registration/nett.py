"""NeTT: neural tuning of CT densities so that DRRs look like real X-rays.

A small MLP re-maps CT attenuation voxel by voxel so that the DRR of the tuned CT matches real X-rays
better (e.g. bone attenuating more than the HU->mu conversion says at the X-ray's real spectrum).
Because the model sees only intensities (no position), the same weights apply to any CT in mu (other
patients): it learns how tissue classes should be weighted, not an anatomy.

Two model kinds:

``"monotone"`` (default): ``tuned_mu = mu_water * F(mu / mu_water)`` with

    F(x) = integral_0^x slope(s) ds,   slope(s) = 1 for s <= x_free,  exp(h(s)) above,
    h: 1 -> hidden -> hidden -> 1 (SiLU), last layer initialised to 0,

evaluated on a fine table over [0, ``x_max``] and linearly interpolated (extrapolated beyond with the last
slope), divided by F(1) (water keeps its attenuation; the losses cannot see a global scale). F is
strictly increasing with F(0) = 0: air stays air and the order of tissues is kept. Below ``x_free``
(default 1.2 x water, about +200 HU) F is the identity: air, lung, fat and soft tissue attenuate like
water at any spectrum, only bone-containing voxels need another weight. An untrained model (h = 0) is
exactly the identity.

``"local"`` (the first version, kept to read old weight files): ``tuned_mu = mu * exp(g(x, local mean))``
with ``g`` an MLP of the voxel's value and its 3x3x3 mean; not monotone, no fixed range.

Why these constraints (the measurements: docs/registration.md, "Why NeTT is constrained", and
benchmarks/RESULTS_registration.md):

1. The first version was trained with 1 - NCC. NCC also scores the *detector's* gray-level curve (a
   nonlinear function of the whole line integral), which no per-voxel density map can reproduce; the
   free model imitated it by inflating lung and soft tissue (a non-monotone curve). That lowered the NCC
   discrepancy at the true poses but flattened the MI landscape and moved its optimum in depth, and
   registration got much worse. Mutual information is blind to monotone detector curves, so NeTT is now
   trained with the registration loss (MI by default).
2. MI (and NCC) cannot see a global scale of the DRR, so without the F(1) = 1 anchor the scale drifts
   freely during training (to the clamp).
3. Trained with MI over the whole range, the monotone map recovered the bone weighting but also raised
   the slope between water and 1.2 x water (more soft-tissue contrast spreads the MI histogram, a bias of
   the estimator, not physics), which on its own made registration worse than plain, while the bone part
   alone did as well as the true physics. Hence ``x_free``.

Training (:func:`train_nett`) renders the tuned CT at the known poses of (X-ray, pose) pairs and
minimises the similarity loss with Adam. Weights are saved with :func:`save_nett` and loaded with
:func:`load_nett`; a model is a callable Volume -> Volume, the ``appearance`` argument of
:func:`.optimize.register`.
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import NeTTWeightsError
from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..render import DEFAULT_RENDERER, render
from ..volume import Volume, as_mu, mu_water_per_mm
from .intensity import bin_image
from .losses import make_loss
from .optimize import RegistrationSettings
from .psf import gaussian_blur

_PSF_LEARNING_RATE = 0.1  # Adam step of the PSF's parameter in train_nett (a sigmoid's argument)

NETT_KINDS = ("monotone", "local")


class NeTT(nn.Module):
    """Density tuning MLP.

    kind: "monotone" (default) or "local" (see the module docstring). hidden: width of the two hidden
    layers. mu_water: the normalising attenuation (1/mm; default water at 60 keV). x_max: the monotone
    map's table covers x = mu / mu_water in [0, x_max] (``table_size`` nodes); beyond it F continues
    with its last slope. x_free: the monotone map is the identity for x <= x_free (default 1.2, about
    +200 HU, the usual bone threshold): air, lung, fat, water and soft tissue attenuate like water at
    any spectrum, so only denser (bone-containing) voxels are re-weighted; 0 frees the whole range."""

    def __init__(
        self,
        hidden: int = 16,
        mu_water: Optional[float] = None,
        local: Optional[bool] = None,
        kind: str = "monotone",
        x_max: float = 4.0,
        table_size: int = 81,
        x_free: float = 1.2,
    ):
        super().__init__()
        if local is not None:  # the first version's switch
            kind = "local" if local else kind
        if kind not in NETT_KINDS:
            raise ValueError(f"unknown NeTT kind {kind!r}; use one of {', '.join(NETT_KINDS)}")
        if not x_max >= 1.5 or int(table_size) < 2:
            raise ValueError(f"x_max must be >= 1.5 (water is 1) and table_size >= 2, got {x_max}, {table_size}")
        self.kind = kind
        self.hidden = int(hidden)
        self.local = kind == "local"
        if not 0.0 <= x_free < x_max:
            raise ValueError(f"x_free must be in [0, x_max) = [0, {x_max}), got {x_free}")
        self.x_free = float(x_free)
        self.x_max = float(x_max)
        self.table_size = int(table_size)
        self.mu_water = float(mu_water_per_mm() if mu_water is None else mu_water)
        n_in = 2 if self.local else 1
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    # --- the monotone map ---------------------------------------------------------------------------
    def _nodes(self) -> Tensor:
        w = self.net[0].weight
        return torch.linspace(0.0, self.x_max, self.table_size, dtype=w.dtype, device=w.device)

    def log_slope(self) -> Tensor:
        """log of the map's slope dF/dx at the table nodes: (table_size,); h where x > x_free, 0 (slope 1)
        at and below it (0 everywhere = identity)."""
        nodes = self._nodes()
        h = self.net(nodes[:, None])[:, 0].clamp(-5, 5)
        return torch.where(nodes > self.x_free, h, torch.zeros_like(h))

    def _monotone(self, x: Tensor) -> Tensor:
        """F(x) for x = mu / mu_water >= 0, any shape; differentiable in the weights."""
        slope = torch.exp(self.log_slope())  # (N,)
        dx = self.x_max / (self.table_size - 1)
        table = torch.cat([slope.new_zeros(1), torch.cumsum(0.5 * (slope[1:] + slope[:-1]) * dx, 0)])  # F at the nodes
        xt = x.to(slope.dtype).clamp(min=0)
        pos = (xt / dx).clamp(max=self.table_size - 1)
        i0 = pos.floor().long().clamp(max=self.table_size - 2)
        frac = pos - i0.to(pos.dtype)
        inside = table[i0] + frac * (table[i0 + 1] - table[i0])
        beyond = table[-1] + slope[-1] * (xt - self.x_max)
        # Gauge: water keeps its attenuation, F(1) = 1. Similarity losses are blind to a global scale of
        # the DRR, so without this the scale drifts freely during training (measured: to the clamp).
        p1 = min(1.0 / dx, self.table_size - 1.0)
        j0 = min(int(math.floor(p1)), self.table_size - 2)
        f1 = table[j0] + (p1 - j0) * (table[j0 + 1] - table[j0])
        return torch.where(xt > self.x_max, beyond, inside) / f1

    # --- the first version -------------------------------------------------------------------------
    def _local(self, mu: Tensor) -> Tensor:
        x = mu / self.mu_water
        local = F.avg_pool3d(x[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
        feats = torch.stack([x, local], dim=-1)  # (K, J, I, 2)
        g = self.net(feats.to(self.net[0].weight.dtype))[..., 0].to(mu.dtype)
        return mu * torch.exp(g.clamp(-5, 5))

    def tuned(self, mu: Tensor) -> Tensor:
        """(K, J, I) mu in 1/mm -> (K, J, I) tuned mu in 1/mm (differentiable in the weights)."""
        if self.local:
            return self._local(mu)
        return (self.mu_water * self._monotone(mu / self.mu_water)).to(mu.dtype)

    def forward(self, volume: Volume) -> Volume:
        vol = as_mu(volume) if volume.units == "hu" else volume
        return Volume(self.tuned(vol.data), vol.ras_from_ijk, "mu")

    def curve(self, mu_values: Tensor) -> Tensor:
        """Tuned value (1/mm) of a homogeneous region of attenuation ``mu_values`` (1/mm), any shape."""
        if not self.local:
            return (self.mu_water * self._monotone(mu_values / self.mu_water)).to(mu_values.dtype)
        x = (mu_values / self.mu_water)[..., None].expand(*mu_values.shape, 2)
        return mu_values * torch.exp(self.net(x.to(self.net[0].weight.dtype))[..., 0].clamp(-5, 5).to(mu_values.dtype))

    def identity_penalty(self) -> Tensor:
        """Mean squared log slope over the table (monotone) or of g over the same x range (local):
        0 for the identity."""
        if not self.local:
            return self.log_slope().pow(2).mean()  # 0 below x_free by construction
        x = self._nodes()[:, None].expand(-1, 2)
        return self.net(x)[:, 0].pow(2).mean()


def train_nett(
    volumes: Sequence[Volume],
    images: Sequence[Tensor],
    cameras: Sequence[Cameras],
    *,
    model: Optional[NeTT] = None,
    loss: str = "mi",
    iterations: int = 100,
    learning_rate: float = 2e-2,
    identity_weight: float = 1e-3,
    bin_factor: int = 2,
    renderer: str = DEFAULT_RENDERER,
    fit_psf: bool = RegistrationSettings.fit_psf,
    progress: ProgressCallback = None,
) -> tuple:
    """Fit a NeTT model on (CT, X-rays, known cameras) triples.

    volumes: CTs (HU or mu), one per patient; images[p]: (V_p, H, W) X-rays of patient p (the values the
    registration will see: any monotone detector curve is fine for "mi"); cameras[p]: their V_p
    registered cameras. loss: a :func:`~.losses.make_loss` name; use the loss you will register with
    ("mi", the default: see the module docstring for why "ncc" training hurt registration).
    identity_weight: weight of :meth:`NeTT.identity_penalty` added to the mean loss. The images are
    binned by ``bin_factor`` (and the cameras downsampled alike) for speed. renderer: the projector
    (see :func:`XRayNeRFLib.render.render`). fit_psf: as the registration does (``RegistrationSettings.fit_psf``,
    :mod:`.psf`), the DRRs of each patient are blurred by a Gaussian PSF whose width, bounded to
    ``RegistrationSettings.psf_max_px`` pixels of the binned images, is fitted with the model, so that the
    model does not learn the X-ray's blur as a density change.
    Returns (model, history) with history a list of per-iteration mean losses (without the penalty).
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
    psf = torch.zeros(len(data), requires_grad=True)  # per patient: sigma^2 = psf_max^2 * sigmoid(p)
    groups = [{"params": list(model.parameters())}] + ([{"params": [psf], "lr": _PSF_LEARNING_RATE}] if fit_psf else [])
    opt = torch.optim.Adam(groups, lr=learning_rate)
    history: List[float] = []
    psf_max = RegistrationSettings.psf_max_px
    for it in range(iterations):
        opt.zero_grad()
        total = 0.0
        for p, (mu, img, cam) in enumerate(data):
            drr = render(model(mu), cam, renderer=renderer)
            if fit_psf:
                drr = gaussian_blur(drr, psf_max * torch.sigmoid(psf[p]).sqrt(), int(math.ceil(3 * psf_max)) + 1)
            val = loss_fn(drr, img).mean() / len(data)
            if not torch.isfinite(val):
                raise RuntimeError(f"NeTT training loss became NaN at iteration {it}; lower the learning rate")
            total += float(val.detach())
            val.backward()
        if identity_weight > 0:
            (identity_weight * model.identity_penalty()).backward()
        opt.step()
        history.append(total)
        if progress is not None and progress(Progress(it + 1, iterations, f"NeTT: iteration {it + 1}, loss {total:.4f}")) is False:
            break
    model.eval()
    return model, history


def save_nett(model: NeTT, path: str) -> None:
    """Save weights and configuration (torch .pt)."""
    torch.save(
        {
            "format": "xraynerf-nett-2",
            "kind": model.kind,
            "hidden": model.hidden,
            "mu_water": model.mu_water,
            "x_max": model.x_max,
            "x_free": model.x_free,
            "table_size": model.table_size,
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_nett(path: str) -> NeTT:
    """Load a model saved by :func:`save_nett` (this or the first version's format). Raises
    :class:`~XRayNeRFLib.errors.NeTTWeightsError` (``reason``: "missing", "format", "shape", "not-finite")."""
    if not os.path.exists(path):
        raise NeTTWeightsError(f"NeTT weights {path!r} do not exist", path=path, reason="missing")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, or one holding more than tensors and plain values
        raise NeTTWeightsError(
            f"{path!r} is not a NeTT weights file written by XRayNeRFLib.registration.nett.save_nett ({type(error).__name__})",
            path=path,
            reason="format",
        ) from error
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt == "xraynerf-nett-1":
        model = NeTT(hidden=int(blob["hidden"]), mu_water=float(blob["mu_water"]), kind="local" if blob.get("local", True) else "monotone")
        if not model.local:
            raise NeTTWeightsError(
                f"{path!r} holds a first-version non-local NeTT model, which is no longer supported; retrain it", path=path, reason="format"
            )
    elif fmt == "xraynerf-nett-2":
        model = NeTT(
            hidden=int(blob["hidden"]),
            mu_water=float(blob["mu_water"]),
            kind=str(blob["kind"]),
            x_max=float(blob["x_max"]),
            table_size=int(blob["table_size"]),
            x_free=float(blob["x_free"]),
        )
    else:
        raise NeTTWeightsError(
            f"{path!r} is not a NeTT weights file written by XRayNeRFLib.registration.nett.save_nett", path=path, reason="format"
        )
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = blob.get("state_dict")
    found = {name: tuple(t.shape) for name, t in state.items()} if isinstance(state, dict) else {}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or sorted(n for n in expected if expected[n] != found[n])
        raise NeTTWeightsError(
            f"NeTT weights {path!r} have another shape than their configuration ({blob.get('kind')} model, hidden {blob.get('hidden')}): "
            f"{wrong[0]} is {found.get(wrong[0])} instead of {expected.get(wrong[0])}; retrain the model or use the file it was saved to",
            path=path,
            reason="shape",
        )
    model.load_state_dict(state)
    model.eval()
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NeTTWeightsError(f"NeTT weights {path!r} contain NaN or infinite values; retrain the model", path=path, reason="not-finite")
    return model
