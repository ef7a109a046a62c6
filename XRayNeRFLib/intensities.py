"""Detector values -> line integrals, so that real X-ray images and our DRRs (``render`` output) compare.

A DRR is the line integral ``p = sum(mu * length)`` (dimensionless). A detector measures the transmitted
intensity ``I = I0 * exp(-p)`` (Beer-Lambert), so ``p = -ln(I / I0)`` with ``I0`` the unattenuated
intensity. DICOM tells how stored values relate to ``I``:

* Pixel Intensity Relationship (0028,1040): ``LIN`` (values proportional to ``I``), ``LOG`` (values
  proportional to ``ln I`` plus an offset), ``DISP`` (display-processed: not convertible).
* Pixel Intensity Relationship Sign (0028,1041): ``+1`` lower values mean less X-ray intensity;
  ``-1`` higher values mean less intensity (an inverted image: bone bright on a dark background).

Values are taken after the Modality LUT (Rescale Slope/Intercept). The conversions:

========= ====== ====================================================================================
relation  sign   line integral
========= ====== ====================================================================================
LIN       +1     ``-ln(I / I0)`` with ``I = (value - dark) / (flat - dark)`` when dark/flat are given
LIN       -1     as LIN +1 with ``I = max_value - value`` (the inversion undone first)
LOG       +1     ``(v_air - value) / log_scale``
LOG       -1     ``(value - v_air) / log_scale``
========= ====== ====================================================================================

``I0`` (LIN) and ``v_air`` (LOG) are the values of unattenuated air: given, or estimated per view as a
high (LIN, LOG +1) or low (LOG -1) quantile of the values inside the mask (collimated pixels excluded),
which assumes every view has some unattenuated air. ``log_scale`` is the number of stored units per
natural-log unit of intensity; DICOM does not store it, so LOG line integrals are known up to that
gain unless it is given (the assumption is reported). Negative line integrals (noise in air) are clamped
to 0 unless ``clamp=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["RELATIONSHIPS", "LineIntegrals", "to_line_integrals", "intensities_from_line_integrals"]

RELATIONSHIPS = ("LIN", "LOG")
ArrayLike = Union[Tensor, np.ndarray]


@dataclass
class LineIntegrals:
    """Result of :func:`to_line_integrals`.

    images: (V, H, W) float32 line integrals (dimensionless).
    air: (V,) float64, the I0 (LIN) or v_air (LOG) used per view, in the units of the input values.
    assumptions: sentences describing what was estimated or assumed.
    """

    images: Tensor
    air: Tensor
    assumptions: List[str] = field(default_factory=list)


def _as_array(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (V, H, W) or (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _per_view(x, v: int, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, v)
    if a.size != v:
        raise ValueError(f"{name} must be one value or one per view ({v}), got {a.size} values")
    return a


def _check(relationship: str, sign: int) -> str:
    rel = str(relationship).strip().upper()
    if rel == "DISP":
        raise ValueError(
            "the pixel values are display-processed (Pixel Intensity Relationship DISP) and cannot be turned into "
            "line integrals; export the images 'for processing' or force a relationship (--intensity LIN or LOG)"
        )
    if rel not in RELATIONSHIPS:
        raise ValueError(f"unknown pixel intensity relationship {relationship!r}; use LIN or LOG")
    if sign not in (1, -1):
        raise ValueError(f"pixel intensity relationship sign must be +1 or -1, got {sign!r}")
    return rel


def to_line_integrals(
    values: ArrayLike,
    *,
    relationship: str = "LIN",
    sign: int = 1,
    i0: Optional[Union[float, Sequence[float]]] = None,
    dark: Optional[ArrayLike] = None,
    flat: Optional[ArrayLike] = None,
    log_scale: Optional[float] = None,
    max_value: Optional[float] = None,
    mask: Optional[ArrayLike] = None,
    air_quantile: float = 0.995,
    clamp: bool = True,
) -> LineIntegrals:
    """Convert detector values to line integrals.

    values: (V, H, W) or (H, W) after the Modality LUT.
    relationship / sign: DICOM (0028,1040) / (0028,1041) (see the module docstring).
    i0: unattenuated value, one or (V,): the intensity I0 (LIN, after dark/flat correction, so 1 when
        ``flat`` is given) or the stored air value v_air (LOG). Default: estimated per view.
    dark, flat: (H, W) or (V, H, W) dark-current and flat-field (no object) images, LIN only.
    log_scale: stored units per natural-log unit (LOG). Default 1, reported as an assumption.
    max_value: the value of zero intensity for LIN with sign -1 (default: the largest value present,
        reported as an assumption; the DICOM reader passes 2^BitsStored - 1 after rescale).
    mask: (V, H, W) or (H, W) bool, True where the pixel saw the beam (collimated pixels False).
    """
    rel = _check(relationship, int(sign))
    v = _as_array(values, "values")
    n = v.shape[0]
    notes: List[str] = []
    if mask is None:
        m = np.ones(v.shape, dtype=bool)
    else:
        m = np.broadcast_to(np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask, dtype=bool), v.shape)
    if not (0.5 <= air_quantile <= 1.0):
        raise ValueError(f"air_quantile must be in [0.5, 1], got {air_quantile}")

    def estimate(x: np.ndarray, high: bool, what: str) -> np.ndarray:
        out = np.zeros(n)
        for k in range(n):
            inside = x[k][m[k]]
            if inside.size == 0:
                raise ValueError(f"view {k}: the mask leaves no pixel to estimate the {what} from; give it explicitly (--i0)")
            out[k] = np.quantile(inside, air_quantile if high else 1.0 - air_quantile)
        notes.append(
            f"{what} estimated per view as the {100 * air_quantile:g}th-percentile {'highest' if high else 'lowest'} value "
            f"(assumes unattenuated air in every view): {np.round(out[:4], 4).tolist()}{' ...' if n > 4 else ''}"
        )
        return out

    if rel == "LIN":
        if (dark is not None or flat is not None) and int(sign) != 1:
            raise ValueError("dark/flat-field correction applies to LIN images with sign +1 (raw detector counts)")
        x = v
        if int(sign) == -1:
            if max_value is None:
                max_value = float(v.max())
                notes.append(f"LIN sign -1: zero intensity taken as the largest value present ({max_value:g})")
            x = float(max_value) - v
        d = 0.0 if dark is None else _as_array(dark, "dark")
        if flat is not None:
            f = _as_array(flat, "flat") - d
            if (f <= 0).any():
                raise ValueError("the flat field must be brighter than the dark field everywhere")
            x = (x - d) / f
        elif dark is not None:
            x = x - d
        if i0 is None:
            air = np.ones(n) if flat is not None else estimate(x, True, "I0 (unattenuated intensity)")
        else:
            air = _per_view(i0, n, "i0")
        if (air <= 0).any():
            raise ValueError(f"I0 must be > 0, got {air.tolist()[:4]}")
        ratio = np.maximum(x, 1e-12 * air[:, None, None]) / air[:, None, None]
        p = -np.log(ratio)
    else:
        if dark is not None or flat is not None:
            raise ValueError("dark/flat-field correction needs linear (LIN) raw images, not LOG")
        if log_scale is None:
            log_scale = 1.0
            notes.append("LOG images: 1 stored unit taken as 1 natural-log unit of intensity (gain unknown; line integrals are relative)")
        if log_scale <= 0:
            raise ValueError(f"log_scale must be > 0, got {log_scale}")
        high = int(sign) == 1
        air = estimate(v, high, "air value (LOG)") if i0 is None else _per_view(i0, n, "i0")
        p = ((air[:, None, None] - v) if high else (v - air[:, None, None])) / float(log_scale)
    if clamp:
        p = np.maximum(p, 0.0)
    return LineIntegrals(torch.from_numpy(p.astype(np.float32)), torch.from_numpy(air), notes)


def intensities_from_line_integrals(
    line_integrals: ArrayLike,
    *,
    relationship: str = "LIN",
    sign: int = 1,
    i0: float = 1.0,
    log_scale: float = 1.0,
    max_value: Optional[float] = None,
) -> np.ndarray:
    """The inverse of :func:`to_line_integrals` (no dark/flat): detector values (V, H, W) float64 for line
    integrals, e.g. to simulate raw images from DRRs. For LOG, ``i0`` is the air value v_air; for LIN with
    sign -1, ``max_value`` (required) is the value of zero intensity."""
    rel = _check(relationship, int(sign))
    p = _as_array(line_integrals, "line_integrals")
    if rel == "LIN":
        x = i0 * np.exp(-p)
        if int(sign) == -1:
            if max_value is None:
                raise ValueError("LIN with sign -1 needs max_value (the value of zero intensity)")
            x = max_value - x
        return x
    return i0 - log_scale * p if int(sign) == 1 else i0 + log_scale * p
