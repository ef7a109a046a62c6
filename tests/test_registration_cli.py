"""``xraynerf register`` end to end on files: an .mha X-ray with a camera JSON and an initial pose,
result JSON, overlay PNG and the ITK transform; bad camera/pose/image files give one clear line."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from XRayNeRFLib.cli import main as xraynerf
from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.registration.pose import pose_errors
from XRayNeRFLib.registration.simulate import perturb_pose, simulate_xray
from XRayNeRFLib.registration.transform_io import read_ct_correction
from XRayNeRFLib.volume import as_mu, load_volume, save_volume

sitk = pytest.importorskip("SimpleITK")


def main(argv):
    """``xraynerf register ARGV``."""
    return xraynerf(["register", *argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory, chest_ct_48):
    return _files(tmp_path_factory.mktemp("register_cli"), chest_ct_48)


def _files(d, hu):
    """The CT (HU) saved in d, its simulated X-ray at a non-square, off-centre camera, the camera and a start."""
    ct = str(d / "ct.nii.gz")
    save_volume(hu, ct)
    vol = as_mu(load_volume(ct))
    centre = vol.center_ras().double()
    # A non-square detector with an off-centre principal point, to catch column/row mix-ups.
    cam = Cameras(
        Cameras.carm(
            10.0, 5.0, sid_mm=650, sdd_mm=1020, size_px=(72, 60), pixel_spacing_mm=(8.0, 8.0), isocenter_ras=centre, dtype=torch.float64
        ).world_from_camera,
        1020.0,
        (8.0, 8.0),
        (37.0, 28.5),
        (72, 60),
    )
    image = simulate_xray(vol, cam)[0].numpy().astype(np.float32)
    assert image.shape == (60, 72)
    xray = str(d / "xray.mha")
    sitk.WriteImage(sitk.GetImageFromArray(image), xray)
    camera = d / "camera.json"
    camera.write_text(
        json.dumps({"sdd_mm": 1020.0, "pixel_spacing_mm": [8.0, 8.0], "principal_point_px": [37.0, 28.5], "size_px": [72, 60]})
    )
    w_init = perturb_pose(cam.world_from_camera[0], centre, 4.0, 8.0, np.random.default_rng(0))
    init = d / "init.json"
    init.write_text(json.dumps({"world_from_camera": w_init.tolist()}))
    return {
        "dir": d,
        "ct": ct,
        "xray": xray,
        "camera": str(camera),
        "init": str(init),
        "truth": cam.world_from_camera[0],
        "w_init": w_init,
        "centre": centre,
        "image": image,
    }


def test_register_writes_pose_overlay_and_transform(files, capsys):
    d = files["dir"]
    out, overlay, tfm = d / "result.json", d / "overlay.png", d / "correction.h5"
    rc = main(
        [
            "--volume",
            files["ct"],
            "--image",
            files["xray"],
            "--camera",
            files["camera"],
            "--init",
            files["init"],
            "--out",
            str(out),
            "--overlay",
            str(overlay),
            "--transform-out",
            str(tfm),
            "--levels",
            "4",
            "2",
            "1",
            "--threads",
            "1",
            # The defaults (CT-coverage mask on). With --no-ct-coverage this oblique view of the 48^3 CT has a depth
            # bias of its own, -1.5 mm even against an unblurred target (about 1 mm of it the trilinear DRR vs the
            # target's Siddon); the unmodelled 1 px blur used to cancel it, the fitted PSF no longer does
            # (docs/registration.md, "Blur in the X-ray that the DRR lacks").
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "registered in" in err
    res = json.loads(out.read_text())
    e = pose_errors(torch.tensor(res["world_from_camera"]), files["truth"], files["centre"])
    assert e["rotation_deg"] < 1.0 and e["translation_mm"] < 1.0, e
    assert res["size_px"] == [72, 60] and res["principal_point_px"] == [37.0, 28.5]
    assert res["iterations"] == len(res["trace"]) > 10 and res["loss"] < res["initial_loss"] and res["seconds"] > 0
    # The transform file holds the correction the JSON states; the correction undoes the initial error.
    corr = read_ct_correction(str(tfm))
    assert torch.allclose(corr, torch.tensor(res["ct_correction_ras"], dtype=torch.float64), atol=1e-9)
    expected = files["w_init"] @ torch.linalg.inv(torch.tensor(res["world_from_camera"], dtype=torch.float64))
    assert torch.allclose(corr, expected, atol=1e-6)
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(overlay)))
    assert png.shape == (60, 72, 3)
    red = (png[..., 0] == 255) & (png[..., 1] < 30)
    assert 0.03 < red.mean() < 0.2  # the DRR's strongest 10 % of edges


def test_help_documents_the_conventions(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for phrase in ("world_from_camera", "principal_point_px", "pixel-centre", "+z towards the detector", "LPS", "--transform-out"):
        assert phrase in text


def run_bad(files, capsys, **over):
    args = {
        "--volume": files["ct"],
        "--image": files["xray"],
        "--camera": files["camera"],
        "--init": files["init"],
        "--out": str(files["dir"] / "bad.json"),
    }
    args.update(over)
    argv = [x for k, v in args.items() if v is not None for x in [k, *(v if isinstance(v, list) else [v])]]  # None: flag left out
    rc = main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("xraynerf register: error:") and err.count("\n") == 1, err
    assert not (files["dir"] / "bad.json").exists()
    return err


def test_bad_camera_pose_and_image_files(files, capsys):
    d = files["dir"]
    cam = json.loads(Path(files["camera"]).read_text())
    missing = d / "cam_missing.json"
    missing.write_text(json.dumps({k: v for k, v in cam.items() if k != "sdd_mm"}))
    assert "lacks sdd_mm" in run_bad(files, capsys, **{"--camera": str(missing)})
    wrong_size = d / "cam_size.json"
    wrong_size.write_text(json.dumps(dict(cam, size_px=[60, 72])))
    assert "fix size_px" in run_bad(files, capsys, **{"--camera": str(wrong_size)})
    neg = d / "cam_neg.json"
    neg.write_text(json.dumps(dict(cam, pixel_spacing_mm=[8.0, -8.0])))
    assert "pixel_spacing_mm must be > 0" in run_bad(files, capsys, **{"--camera": str(neg)})
    mm_pp = d / "cam_pp.json"
    mm_pp.write_text(json.dumps(dict(cam, principal_point_px=[300.0, 240.0])))
    assert "not mm" in run_bad(files, capsys, **{"--camera": str(mm_pp)})
    scaled = d / "init_scaled.json"
    scaled.write_text(
        json.dumps({"world_from_camera": (files["w_init"] @ torch.diag(torch.tensor([1.05, 1.0, 1.0, 1.0], dtype=torch.float64))).tolist()})
    )
    assert "not rigid" in run_bad(files, capsys, **{"--init": str(scaled)})
    far = files["w_init"].clone()
    far[:3, 3] += 3000.0 * far[:3, 0]
    far_json = d / "init_far.json"
    far_json.write_text(json.dumps({"world_from_camera": far.tolist()}))
    assert "does not overlap" in run_bad(files, capsys, **{"--init": str(far_json)})
    flat = str(d / "flat.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((60, 72), 7.0, dtype=np.float32)), flat)
    assert "constant" in run_bad(files, capsys, **{"--image": flat})
    assert "does not exist" in run_bad(files, capsys, **{"--camera": str(d / "nope.json")})


def test_register_a_dicom_xray(tmp_path, capsys):
    """A DICOM XA (LIN intensities, radiological layout, C-arm angles, distances, imager spacing) written
    by tests/dicom_factory.py: geometry and intensity conversion come from its tags; --init overrides
    the pose only."""
    fac = pytest.importorskip("dicom_factory")
    from XRayNeRFLib.intensities import intensities_from_line_integrals

    vol = fac.ct_volume()
    ct = str(tmp_path / "ct.mha")
    save_volume(vol, ct)
    truth = fac.truth_cameras([10.0], [5.0])
    stored = fac.stored_from_bev(intensities_from_line_integrals(fac.drr(truth).numpy(), relationship="LIN", i0=60000.0))
    xray = fac.write_xray(
        str(tmp_path / "xa.dcm"),
        stored,
        primary_deg=10,
        secondary_deg=5,
        sdd_mm=fac.SDD,
        sid_mm=fac.SID,
        imager_spacing_rc=fac.SPACING[::-1],
    )
    centre = vol.center_ras().double()
    w_init = perturb_pose(truth.world_from_camera[0], centre, 3.0, 6.0, np.random.default_rng(1))
    init = tmp_path / "init.json"
    init.write_text(json.dumps({"world_from_camera": w_init.tolist()}))
    out = tmp_path / "r.json"
    rc = main(
        ["--volume", ct, "--image", xray, "--init", str(init), "--out", str(out), "--levels", "4", "2", "1", "--threads", "1", "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    e = pose_errors(torch.tensor(res["world_from_camera"]), truth.world_from_camera[0], centre)
    assert e["rotation_deg"] < 1.0 and e["translation_mm"] < 2.0, e
    assert res["size_px"] == list(fac.SIZE) and res["pixel_spacing_mm"] == pytest.approx(list(fac.SPACING))


def test_register_with_nett_weights_and_a_bad_weights_file(files, capsys):
    """--nett: a saved NeTT model (a monotone bone re-weighting) is applied and recorded; the pose is still
    recovered (the X-ray's bone weighting differs from the CT's anyway); a foreign .pt file is one clear error."""
    from XRayNeRFLib.registration.nett import NeTT, save_nett

    d = files["dir"]
    model = NeTT()
    with torch.no_grad():
        model.net[-1].bias.fill_(0.4)  # slope e^0.4 = 1.5 above 1.2 x water
    weights = str(d / "nett.pt")
    save_nett(model, weights)
    out = d / "result_nett.json"
    rc = main(
        [
            "--volume",
            files["ct"],
            "--image",
            files["xray"],
            "--camera",
            files["camera"],
            "--init",
            files["init"],
            "--out",
            str(out),
            "--levels",
            "4",
            "2",
            "1",
            "--threads",
            "1",
            "--quiet",
            "--nett",
            weights,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["nett"] == weights
    e = pose_errors(torch.tensor(res["world_from_camera"]), files["truth"], files["centre"])
    assert e["rotation_deg"] < 1.0 and e["translation_mm"] < 1.5, e
    bogus = d / "bogus.pt"
    torch.save({"weights": [1, 2]}, str(bogus))
    assert "not a NeTT weights file" in run_bad(files, capsys, **{"--nett": str(bogus)})


def test_init_pose_with_7_significant_digits_is_accepted(tmp_path):
    """--init written with 7 significant digits (or from float32) is snapped, not refused; a sheared
    one is refused by the same rule (XRayNeRFLib.geometry.nearest_rigid)."""
    from XRayNeRFLib.cli.register import read_init_json
    from XRayNeRFLib.errors import GeometryError

    w = Cameras.carm(
        12.0, -7.0, sid_mm=650, sdd_mm=1020, size_px=(8, 8), pixel_spacing_mm=1.0, isocenter_ras=(3.0, -40.0, 1210.0), dtype=torch.float64
    ).world_from_camera[0]
    text = "[" + ", ".join("[" + ", ".join(f"{v:.7g}" for v in row) + "]" for row in w.tolist()) + "]"
    path = tmp_path / "init7.json"
    path.write_text('{"world_from_camera": ' + text + "}")
    got = read_init_json(str(path))
    assert float((got - w).abs().max()) < 1e-3  # within the printed rounding (translations ~1000 mm)
    Cameras(
        got[None],
        torch.tensor([1020.0], dtype=torch.float64),
        torch.ones(1, 2, dtype=torch.float64),
        torch.full((1, 2), 4.0, dtype=torch.float64),
        (8, 8),
    )  # float64 rigidity check passes
    sheared = w.clone()
    sheared[:3, 0] += 1e-3 * w[:3, 1]
    path.write_text(json.dumps({"world_from_camera": sheared.tolist()}))
    with pytest.raises(GeometryError, match="not rigid"):
        read_init_json(str(path))


def _landmark_file(files, path, n=6, noise_px=0.3, **override):
    """Pairs from 6 CT points inside the body projected by the true camera, with seeded pixel noise."""
    from XRayNeRFLib.registration.simulate import landmarks

    vol = as_mu(load_volume(files["ct"]))
    pts = landmarks(vol, n, seed=5)
    cam = Cameras(files["truth"][None], 1020.0, (8.0, 8.0), (37.0, 28.5), (72, 60))
    g = torch.Generator().manual_seed(0)
    pix = cam.project(pts)[0][0] + noise_px * torch.randn(n, 2, generator=g, dtype=torch.float64)
    pairs = [{"label": f"L{i}", "ct_mm": p.tolist(), "pixel": q.tolist()} for i, (p, q) in enumerate(zip(pts, pix))]
    for i, pair in override.items():
        pairs[int(i[1:])].update(pair)
    path.write_text(json.dumps({"frame": "RAS", "pairs": pairs}))
    return str(path)


def test_landmarks_set_the_start_pose_and_the_correction_keeps_the_nominal_reference(files, capsys):
    """--init 30 deg / 60 mm off (outside the optimiser's reach) with --landmarks: the start comes from the
    landmarks, the result is within 1 mm / 1 deg, and ct_correction_ras is relative to the --init pose."""
    d = files["dir"]
    far = perturb_pose(files["truth"], files["centre"], 30.0, 60.0, np.random.default_rng(3))
    far_json = d / "init_far_lm.json"
    far_json.write_text(json.dumps({"world_from_camera": far.tolist()}))
    out = d / "result_lm.json"
    rc = main(
        [
            "--volume",
            files["ct"],
            "--image",
            files["xray"],
            "--camera",
            files["camera"],
            "--init",
            str(far_json),
            "--landmarks",
            _landmark_file(files, d / "lm.json"),
            "--out",
            str(out),
            "--levels",
            "4",
            "2",
            "1",
            "--threads",
            "1",
            # The defaults (CT-coverage mask on). With --no-ct-coverage this oblique view of the 48^3 CT has a depth
            # bias of its own, -1.5 mm even against an unblurred target (about 1 mm of it the trilinear DRR vs the
            # target's Siddon); the unmodelled 1 px blur used to cancel it, the fitted PSF no longer does
            # (docs/registration.md, "Blur in the X-ray that the DRR lacks").
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "landmark start from 6 pairs: reprojection RMS" in err
    res = json.loads(out.read_text())
    e = pose_errors(torch.tensor(res["world_from_camera"], dtype=torch.float64), files["truth"], files["centre"])
    assert e["rotation_deg"] < 1.0 and e["translation_mm"] < 1.0, e
    start = res["landmark_start"]
    assert start["rms_px"] < 1.0 and len(start["pairs"]) == 6 and start["pairs"][0]["label"] == "L0"
    assert torch.allclose(torch.tensor(res["initial_world_from_camera"]), torch.tensor(start["world_from_camera"]))
    expected = far @ torch.linalg.inv(torch.tensor(res["world_from_camera"], dtype=torch.float64))
    assert torch.allclose(torch.tensor(res["ct_correction_ras"], dtype=torch.float64), expected, atol=1e-6)


def test_landmarks_without_init_and_bad_landmark_files(files, capsys):
    d = files["dir"]
    out = d / "result_lm_noinit.json"
    rc = main(
        [
            "--volume",
            files["ct"],
            "--image",
            files["xray"],
            "--camera",
            files["camera"],
            "--landmarks",
            _landmark_file(files, d / "lm2.json"),
            "--out",
            str(out),
            "--levels",
            "4",
            "--iterations",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    # No nominal pose: the correction is relative to the landmark start.
    expected = torch.tensor(res["landmark_start"]["world_from_camera"], dtype=torch.float64) @ torch.linalg.inv(
        torch.tensor(res["world_from_camera"], dtype=torch.float64)
    )
    assert torch.allclose(torch.tensor(res["ct_correction_ras"], dtype=torch.float64), expected, atol=1e-6)
    few = d / "lm_few.json"
    few.write_text(json.dumps({"pairs": json.loads(Path(_landmark_file(files, d / "lm3.json")).read_text())["pairs"][:3]}))
    assert "3 landmark pairs: a pose needs at least 4" in run_bad(files, capsys, **{"--landmarks": str(few)})
    outside = _landmark_file(files, d / "lm_out.json", L2={"pixel": [80.0, 10.0]})
    assert "landmark 2 (L2): pixel [column, row] = [80, 10] lies outside the 72 x 60 X-ray" in run_bad(
        files, capsys, **{"--landmarks": outside}
    )
    nan = _landmark_file(files, d / "lm_nan.json", L1={"ct_mm": [float("nan"), 0.0, 0.0]})  # json writes NaN
    assert "landmark 1 (L1): the CT point [nan, 0.0, 0.0] (RAS mm) is not finite" in run_bad(files, capsys, **{"--landmarks": nan})


@pytest.fixture(scope="module")
def lateral(files):
    """A second X-ray of the same patient position: a lateral view on another grid (64 x 56 px of 9 mm), its camera
    JSON and its start (moved by the same patient motion as the first view's --init)."""
    d = files["dir"]
    vol = as_mu(load_volume(files["ct"]))
    cam = Cameras.carm(
        95.0, 5.0, sid_mm=650, sdd_mm=1000, size_px=(64, 56), pixel_spacing_mm=9.0, isocenter_ras=files["centre"], dtype=torch.float64
    )
    xray = str(d / "lateral.mha")
    sitk.WriteImage(sitk.GetImageFromArray(simulate_xray(vol, cam, seed=2)[0].numpy().astype(np.float32)), xray)
    camera = d / "lateral_camera.json"
    pp = [float(v) for v in cam.principal_point_px[0]]
    camera.write_text(json.dumps({"sdd_mm": 1000.0, "pixel_spacing_mm": [9.0, 9.0], "principal_point_px": pp, "size_px": [64, 56]}))
    motion = files["w_init"] @ torch.linalg.inv(files["truth"])
    init = d / "lateral_init.json"
    init.write_text(json.dumps({"world_from_camera": (motion @ cam.world_from_camera[0]).tolist()}))
    return {"xray": xray, "camera": str(camera), "init": str(init), "truth": cam.world_from_camera[0]}


def test_register_two_xrays_at_once(files, lateral, capsys):
    """--image a b with a camera and an initial pose each: one pose for both, one overlay per view; the
    one-X-ray command line is the test above, unchanged."""
    d = files["dir"]
    out, overlay = d / "biplane.json", d / "biplane.png"
    argv = ["--volume", files["ct"], "--image", files["xray"], lateral["xray"], "--camera", files["camera"], lateral["camera"]]
    argv += ["--init", files["init"], lateral["init"], "--out", str(out), "--overlay", str(overlay), "--levels", "4", "2", "1"]
    rc = main(argv + ["--threads", "1", "--no-ct-coverage"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "registered 2 X-rays in" in err
    res = json.loads(out.read_text())
    assert [v["size_px"] for v in res["views"]] == [[72, 60], [64, 56]] and res["views"][1]["image"] == lateral["xray"]
    for view, truth in zip(res["views"], (files["truth"], lateral["truth"])):
        e = pose_errors(torch.tensor(view["world_from_camera"]), truth, files["centre"])
        assert e["rotation_deg"] < 1.0 and e["translation_mm"] < 1.0, e
    assert res["loss"] == pytest.approx(sum(v["loss"] for v in res["views"]))
    assert not overlay.exists()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(d / "biplane_1.png"))).shape == (60, 72, 3)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(d / "biplane_2.png"))).shape == (56, 64, 3)


def test_two_xrays_bad_input(files, lateral, capsys):
    """Counts of --camera / --init that do not match the X-rays, an image file without a camera, --landmarks
    with two X-rays: one line each, nothing written."""
    two, inits = [files["xray"], lateral["xray"]], [files["init"], lateral["init"]]
    bad = run_bad(files, capsys, **{"--image": two, "--init": files["init"]})
    assert "1 --init files for 2 --image files" in bad
    bad = run_bad(files, capsys, **{"--image": two, "--init": inits, "--camera": [files["camera"], lateral["camera"], files["camera"]]})
    assert "3 --camera files for 2 --image files" in bad
    bad = run_bad(files, capsys, **{"--image": two, "--init": inits, "--camera": None})
    assert "xray.mha is not DICOM: give its camera with --camera" in bad
    bad = run_bad(files, capsys, **{"--image": two, "--init": inits, "--landmarks": files["init"]})
    assert "--landmarks solves the start of one X-ray" in bad
    # Shared intrinsics (one --camera for both) are allowed; the lateral X-ray's grid then disagrees with it.
    bad = run_bad(files, capsys, **{"--image": two, "--init": inits})
    assert "lateral.mha is 64x56" in bad and "fix size_px" in bad
    for path in ("bad_1.png", "bad_2.png", "bad.json"):
        assert not (files["dir"] / path).exists()


def test_register_with_an_mnerf_fitted_to_a_view_at_its_known_pose(files, lateral, capsys):
    """--mnerf: the lateral X-ray at its known (true) pose fits an mNeRF that is rendered instead of the CT; the
    frontal X-ray's pose is still recovered and the views are recorded. One view of X-rays simulated from this CT
    gives the field nothing the CT lacks, and the distilled field is a little blurrier than the CT: the bound is
    the engine test's (test_registration_mnerf: 3 mm mTRE), not plain registration's 1 mm. Bad input: an image
    file without its known pose, or --mnerf with --nett, is one clear error."""
    d = files["dir"]
    known = d / "lateral_known.json"
    known.write_text(json.dumps({"world_from_camera": lateral["truth"].tolist()}))
    out = d / "result_mnerf.json"
    argv = ["--volume", files["ct"], "--image", files["xray"], "--camera", files["camera"], "--init", files["init"], "--out", str(out)]
    argv += ["--threads", "1", "--quiet", "--mnerf", lateral["xray"], "--mnerf-camera", lateral["camera"], "--mnerf-init", str(known)]
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["mnerf"] == [os.path.abspath(lateral["xray"])]
    e = pose_errors(torch.tensor(res["world_from_camera"]), files["truth"], files["centre"])
    start = pose_errors(files["w_init"], files["truth"], files["centre"])
    # measured (loaded machine): 0.87 deg, 1.42 mm from 4 deg, 8 mm
    assert e["rotation_deg"] < 1.5 and e["translation_mm"] < 3.0 and e["translation_mm"] < 0.5 * start["translation_mm"], (e, start)
    err = run_bad(files, capsys, **{"--mnerf": lateral["xray"], "--mnerf-camera": lateral["camera"]})
    assert "--mnerf-init" in err
    weights = str(d / "identity_nett.pt")
    from XRayNeRFLib.registration.nett import NeTT, save_nett

    save_nett(NeTT(), weights)
    err = run_bad(
        files, capsys, **{"--mnerf": lateral["xray"], "--mnerf-camera": lateral["camera"], "--mnerf-init": str(known), "--nett": weights}
    )
    assert "--nett" in err


def test_starts_sets_the_coarse_search_and_the_engine_keeps_its_best(files, capsys):
    """--starts N: N candidate poses scored (the trace's first entry), the engine's keep_starts of them optimised at
    the coarsest level (its one rule; the command line passes only N); --starts 0 is one clear error."""
    from XRayNeRFLib.registration import RegistrationSettings

    out = files["dir"] / "result_starts.json"
    argv = ["--volume", files["ct"], "--image", files["xray"], "--camera", files["camera"], "--init", files["init"]]
    argv += ["--out", str(out), "--levels", "4", "2", "--iterations", "3", "--threads", "1", "--quiet"]
    rc = main(argv + ["--starts", "6", "--capture-range-deg", "5", "--capture-range-mm", "10"])
    assert rc == 0, capsys.readouterr().err
    trace = json.loads(out.read_text())["trace"]
    assert trace[0]["coarse_search_candidates"] == 6
    coarsest = {t["start"] for t in trace[1:] if t["level"] == 4}
    assert coarsest == set(range(RegistrationSettings.keep_starts)) and RegistrationSettings.keep_starts > 1
    assert {t["start"] for t in trace[1:] if t["level"] == 2} == {0}
    err = run_bad(files, capsys, **{"--starts": "0", "--capture-range-deg": "5"})
    assert "n_starts >= 1" in err
