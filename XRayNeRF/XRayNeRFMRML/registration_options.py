"""The engine's registration options as the Registration panel offers them -> ``RegistrationSettings`` and
the NeTT appearance model, and NeTT trained on the current (CT, X-ray) pair.

The panel's options (parameter node fields in the module; names are the engine's where one exists):

* similarity: ``RegistrationSettings.loss`` (the list is the engine's ``LOSS_NAMES``, choices.py);
* coarse search: ``capture_range_deg`` / ``capture_range_mm`` / ``n_starts``; off (``n_starts`` = 1) unless
  asked for. It tries ``n_starts`` poses over +- the capture range at the coarsest level and keeps the best
  (the engine's ``keep_starts``) for the optimiser: for starts more than a few degrees or millimetres off;
* intrinsics refinement: ``refine_intrinsics`` (source-detector distance, principal point), for C-arms
  without calibration;
* NeTT: weights saved by ``XRayNeRFLib.registration.nett.save_nett`` applied to the CT before rendering
  (``register(..., appearance=model)``); :func:`train_nett_on_pairs` trains them on the CT at its current pose
  (registered, or aligned by hand) and the pair set (the panel's X-ray and, when chosen, a second X-ray at a
  known pose such as the biplane partner) and saves them;
* mNeRF: the DRR source ``RegistrationSettings.drr_source`` fitted by :func:`fit_mnerf_on_xrays` to the second
  X-ray (at its known pose) before the run; not with NeTT.

Everything else keeps the engine's defaults: one default, in the engine.
"""

from __future__ import annotations

from typing import Callable, Optional


def registration_settings(
    *,
    loss: str,
    coarse_search: bool = False,
    capture_range_deg: float = 0.0,
    capture_range_mm: float = 0.0,
    starts: int = 1,
    refine_intrinsics: bool = False,
):
    """The engine's ``RegistrationSettings`` for the panel's options (the others at the engine's defaults).
    coarse_search False (or starts <= 1) turns the coarse search off whatever the range."""
    from XRayNeRFLib.registration.optimize import RegistrationSettings

    search = bool(coarse_search) and int(starts) > 1
    if search and capture_range_deg <= 0.0 and capture_range_mm <= 0.0:
        raise ValueError("the coarse search needs a capture range: set the rotation (deg) or translation (mm) range above 0")
    return RegistrationSettings(
        loss=str(loss),
        capture_range_deg=float(capture_range_deg) if search else 0.0,
        capture_range_mm=float(capture_range_mm) if search else 0.0,
        n_starts=int(starts) if search else 1,
        refine_intrinsics=bool(refine_intrinsics),
    )


def nett_appearance(path: str):
    """The NeTT model saved at ``path`` (a callable Volume -> Volume); raises the engine's
    ``NeTTWeightsError`` (missing file, another format, weights of another shape, NaN)."""
    from XRayNeRFLib.errors import NeTTWeightsError
    from XRayNeRFLib.registration.nett import load_nett

    path = (path or "").strip()
    if not path:
        raise NeTTWeightsError("choose the NeTT weights file (.pt) to apply, or untick 'Apply NeTT'", path=path, reason="missing")
    return load_nett(path)


def xray_set(*xray_nodes) -> list:
    """The distinct X-ray nodes given (None entries dropped), in order: the panel's pair set."""
    out = []
    for node in xray_nodes:
        if node is not None and all(node is not seen for seen in out):
            out.append(node)
    if not out:
        raise ValueError("select the X-ray (and, for a pair set, the second X-ray at a known pose)")
    return out


def _stoppable(progress: Optional[Callable]):
    """(callback for the engine, list that holds True once the user stopped)."""
    stopped = []

    def on_progress(p) -> bool:
        keep_going = True if progress is None else bool(progress(p))
        if not keep_going:
            stopped.append(True)
        return keep_going

    return on_progress, stopped


def _views(xray_nodes) -> tuple:
    """([image (H, W) per X-ray], [1-view Cameras per X-ray]); an X-ray without a camera raises ValueError
    naming it (nodes.cameras_from_node)."""
    from .nodes import cameras_from_node
    from .registration import xray_image

    return [xray_image(n) for n in xray_nodes], [cameras_from_node(n) for n in xray_nodes]


def train_nett_on_pairs(ct_node, xray_nodes, path: str, *, loss: str, iterations: int, progress: Optional[Callable] = None):
    """Train NeTT on the CT (at its current pose, parent transforms included) and every X-ray of ``xray_nodes``
    at its camera (the pair set: the panel's X-ray and a second one at a known pose, e.g. the biplane
    partner; grids may differ), save the weights to ``path`` (.pt) and return ``(model, history)`` (the
    engine's ``train_nett``). The file is written only when training finished (a cancelled run writes nothing
    and raises ``Cancelled``)."""
    from XRayNeRFLib.progress import Cancelled
    from XRayNeRFLib.registration.nett import save_nett, train_nett

    from .nodes import volume_from_node

    path = (path or "").strip()
    if not path.endswith(".pt"):
        raise ValueError(f"NeTT weights are saved as a .pt file; choose a file name ending in .pt (got {path!r})")
    images, cameras = _views(xray_set(*xray_nodes))
    volume = volume_from_node(ct_node)
    on_progress, stopped = _stoppable(progress)
    # one (CT, X-ray) entry per view: the engine's per-patient lists take one detector grid each
    model, history = train_nett(
        [volume] * len(images), [i[None] for i in images], cameras, loss=loss, iterations=int(iterations), progress=on_progress
    )
    if stopped:
        raise Cancelled("NeTT training cancelled: no weights written")
    save_nett(model, path)
    return model, history


def fit_mnerf_on_xrays(ct_node, xray_nodes, *, progress: Optional[Callable] = None):
    """The engine's mNeRF (``XRayNeRFLib.registration.mnerf.fit_mnerf``) of the CT as it is now (world frame,
    parent transforms included: put the CT under its transform first) fitted to ``xray_nodes`` at their
    cameras, taken as known poses (the second X-ray of the pair set, not the one being registered). A stopped
    fit raises ``Cancelled``; bad input raises the engine's ``MNeRFError``."""
    from XRayNeRFLib.progress import Cancelled
    from XRayNeRFLib.registration.mnerf import fit_mnerf

    from .nodes import volume_from_node

    images, cameras = _views(xray_set(*xray_nodes))
    on_progress, stopped = _stoppable(progress)
    model = fit_mnerf(volume_from_node(ct_node), images, cameras, progress=on_progress)
    if stopped:
        raise Cancelled("mNeRF fit cancelled: nothing registered")
    return model


def mnerf_inputs_key(ct_node, xray_nodes) -> tuple:
    """What an mNeRF fit depends on, as a comparable tuple: the CT's node, voxels (image data modified time),
    voxel-to-RAS matrix and world placement (parent transforms), and per X-ray its node, pixels, camera
    attribute and world placement. Equal keys: the same fit."""
    from .nodes import CAMERAS_ATTRIBUTE, ijk_to_ras, world_from_node

    def placed(node) -> tuple:
        image = node.GetImageData()
        mtime = -1 if image is None else int(image.GetMTime())
        return (node.GetID(), mtime, ijk_to_ras(node).round(9).tobytes(), world_from_node(node).round(9).tobytes())

    return (placed(ct_node),) + tuple(placed(x) + (x.GetAttribute(CAMERAS_ATTRIBUTE),) for x in xray_set(*xray_nodes))


class MNeRFCache:
    """The last mNeRF fitted by :func:`fit_mnerf_on_xrays`, reused while its inputs (:func:`mnerf_inputs_key`)
    are unchanged: a second Register from the same start (after Revert, or with another similarity) does not
    fit again; moving the CT, editing its voxels or choosing another X-ray does. A failed or cancelled fit
    keeps the previous entry."""

    def __init__(self) -> None:
        self._key = None
        self._model = None
        self.fits = 0  # fits run through this cache

    def fit(self, ct_node, xray_nodes, *, progress: Optional[Callable] = None):
        """The mNeRF for the CT as it is now and ``xray_nodes`` (arguments of :func:`fit_mnerf_on_xrays`)."""
        key = mnerf_inputs_key(ct_node, xray_nodes)
        if self._model is not None and key == self._key:
            return self._model
        model = fit_mnerf_on_xrays(ct_node, xray_nodes, progress=progress)
        self._key, self._model = key, model
        self.fits += 1
        return model
