"""The torch.compile path of the Siddon kernel gives the eager result (it only fuses the same ops)."""

import torch

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.render import render
from XRayNeRFLib.volume import Volume


def test_compiled_siddon_matches_eager():
    g = torch.Generator().manual_seed(3)
    affine = torch.tensor([[1.5, 0.2, 0.0, -20.0], [0.0, 1.2, 0.3, -15.0], [0.1, 0.0, 2.0, -30.0], [0, 0, 0, 1.0]])
    vol = Volume(torch.rand(30, 20, 25, generator=g) * 0.02, affine)
    # Views whose rays have different dominant axes, so every branch of the kernel runs.
    cams = Cameras.carm([30.0, 100.0, -60.0], [10.0, 0.0, 50.0], sid_mm=300, sdd_mm=500, size_px=(24, 20), pixel_spacing_mm=3.0)
    eager = render(vol, cams, renderer="siddon", compiled=False)
    compiled = render(vol, cams, renderer="siddon", compiled=True)
    assert eager.abs().max() > 0.1
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
