"""XRayNeRF in the browser, end to end: the server (``python -m XRayNeRFWeb``) on 127.0.0.1 and a free port, driven
by Playwright in Debian's Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it), asserting on the pixels of the
slice view in the page and on the files the page downloads.

One server and one page for the module (the scene is shared; the tests run in file order and build on each other:
the sample data loaded first is used by the later tabs). Kept small for 2 CPU cores: the sample data, a 48-voxel
reconstruction grid, a 64 x 64 DRR.

Set XRAYNERF_SCREENSHOT_DIR=docs/images to refresh the README's screenshot (web_registration.png).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "Resources" / "SampleData"
MAX_UPLOAD_MB = 1

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install xraynerf[web] (playwright)")
pytest.importorskip("trame_slicer", reason="pip install xraynerf[web] (trame-slicer)")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("web-data")
    port = _free_port()
    # this tree's engine, MRML layer (XRayNeRF/XRayNeRFMRML) and app, also where another checkout is pip-installed editable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "XRayNeRF")]), VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "XRayNeRFWeb", "--port", str(port), "--data-dir", str(data), "--max-upload-mb", str(MAX_UPLOAD_MB)],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, lines, deadline = None, [], time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"XRayNeRF web app: (http://\S+)", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("the server did not start:\n" + "".join(lines[-40:]))
    yield {"url": url, "data": data, "proc": proc}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 860}, accept_downloads=True)
        pg.set_default_timeout(120_000)
        pg.goto(server["url"])
        pg.wait_for_selector("#sample-registration")
        yield pg
        browser.close()


# -- helpers ---------------------------------------------------------------------------------------------
def view_pixels(page, name: str = "Red") -> np.ndarray:
    """The view's image in the page as (H, W, 3) uint8 (a screenshot of its <img>)."""
    from PIL import Image

    img = page.locator(f"div:has(> .xr-view-{name}) img").first
    return np.asarray(Image.open(io.BytesIO(img.screenshot())).convert("RGB"))


def stable_view(page, name: str = "Red", timeout_s: float = 30) -> np.ndarray:
    """The view's pixels once two screenshots 0.5 s apart agree (the views redraw in full after a change settles)."""
    deadline, last = time.monotonic() + timeout_s, view_pixels(page, name).astype(int)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = view_pixels(page, name).astype(int)
        if now.shape == last.shape and np.abs(now - last).max() <= 2:
            return now
        last = now
    raise AssertionError(f"the {name} view kept changing for {timeout_s} s")


def message(page) -> str:
    return page.inner_text("#message")


def wait_message(page, pattern: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = message(page) if page.is_visible("#message") else ""
        if re.search(pattern, text, re.I):
            return text
        time.sleep(0.2)
    raise AssertionError(f"no message matching {pattern!r}; the page says {message(page)!r}")


# true when the Red view's image in the page has more than `arg` of its pixels red (R exceeds G and B by > 40)
RED_FRACTION_JS = """
(minimum) => {
  const img = document.querySelector('div:has(> .xr-view-Red) img');
  if (!img || !img.complete || !img.naturalWidth) return false;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let red = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] - d[i + 1] > 40 && d[i] - d[i + 2] > 40) red++;
  return red / (d.length / 4) > minimum;
}
"""


def overlay_count(page) -> int:
    return int(page.inner_text("#overlay-updates").split(":")[1])


def wait_overlay_after(page, n: int) -> None:
    page.wait_for_function(f"() => parseInt(document.querySelector('#overlay-updates').textContent.split(':')[1]) > {n}")


def wait_idle(page) -> None:
    page.wait_for_selector("#busy", state="hidden")


def download(page, selector: str) -> Path:
    """Click a download button; the file under its suggested name (the suffix tells readers the format)."""
    import tempfile

    with page.expect_download() as info:
        page.click(selector)
    path = Path(tempfile.mkdtemp(prefix="xraynerf-dl-")) / info.value.suggested_filename
    info.value.save_as(str(path))
    return path


def server_answers(server) -> bool:
    with urllib.request.urlopen(server["url"], timeout=30) as r:
        return r.status == 200 and server["proc"].poll() is None


def sample_truth() -> np.ndarray:
    return np.array(json.loads((SAMPLES / "chest_fluoroscopy_setup.json").read_text())["ct_to_parent_ras"])


def ct_corners() -> np.ndarray:
    """The sample CT grid's 8 corners in its own frame (RAS mm), the points of the mTRE."""
    import torch

    from XRayNeRFLib.volume import load_volume

    v = load_volume(str(SAMPLES / "chest_ct_128.nii.gz"))
    k, j, i = (n - 1 for n in v.data.shape)
    ijk = torch.tensor([[a, b, c, 1.0] for a in (0, i) for b in (0, j) for c in (0, k)], dtype=torch.float64)
    return (ijk @ v.ras_from_ijk.double().T)[:, :3].numpy()


def mtre_mm(a: np.ndarray, b: np.ndarray) -> float:
    from XRayNeRFWeb.pose import mean_target_error_mm

    return mean_target_error_mm(a, b, ct_corners())


# -- the tests, in order -----------------------------------------------------------------------------------
def test_sample_data_one_click_and_overlay_in_the_slice_view(page):
    page.click("#sample-registration")
    wait_message(page, "Loaded the sample chest CT")
    page.wait_for_function("() => parseInt(document.querySelector('#overlay-updates').textContent.split(':')[1]) >= 1")
    time.sleep(1.0)
    rgb = view_pixels(page).astype(int)
    # the X-ray (grey) under the DRR (green): real image content, green dominant where the CT projects
    assert rgb.std() > 10, "the Red view shows no image"
    green = (rgb[..., 1] - rgb[..., 0]) > 20
    assert 0.05 < green.mean() < 0.99, f"DRR overlay covers {green.mean():.2f} of the view"


def test_overlay_follows_the_translation_control(page):
    before = view_pixels(page).astype(int)
    n = overlay_count(page)
    page.locator("#slider-tr .v-slider-thumb").focus()
    for _ in range(20):  # 20 steps of 0.5 mm: the CT moves 10 mm to the patient's right
        page.keyboard.press("ArrowRight")
    wait_overlay_after(page, n)
    page.wait_for_function("() => document.querySelector('#slider-tr input').value == '10'")
    wait_overlay_after(page, overlay_count(page) - 1)
    deadline = time.monotonic() + 30
    while True:
        time.sleep(0.5)
        after = view_pixels(page).astype(int)
        if after.shape != before.shape:  # a drag frame (a smaller image stretched to the view): wait for the rest frame
            changed = np.zeros(1, bool)
            if time.monotonic() > deadline:
                break
            continue
        changed = np.abs(after - before).max(axis=-1) > 12  # the DRR is smooth: a shift changes pixels gently
        if changed.mean() > 0.02 or time.monotonic() > deadline:
            break
    assert changed.mean() > 0.02, f"the overlay did not change ({changed.mean():.4f} of the pixels)"
    pose = json.loads(download(page, "#download-pose").read_text())
    m = np.array(pose["ct_to_parent_ras"])
    np.testing.assert_allclose(m[:3, 3], (10.0, 0.0, 0.0), atol=1e-6)
    np.testing.assert_allclose(m[:3, :3], np.eye(3), atol=1e-9)
    page.click("#reset-pose")
    page.wait_for_function("() => document.querySelector('#slider-tr input').value == '0'")


def test_register_progress_cancel_keeps_the_pose_then_revert(page):
    # Register pressed while the overlay follows a control (there and back: the pose is the start's again): the
    # registration starts once the overlay has the controls' last pose
    page.locator("#slider-tr .v-slider-thumb").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    page.click("#register")
    page.wait_for_selector("#cancel-registration")
    page.wait_for_function("() => parseFloat(document.querySelector('#progress').getAttribute('aria-valuenow')) > 0")
    page.click("#cancel-registration")
    text = wait_message(page, r"Registration cancelled")
    assert "best pose so far is kept" in text
    wait_idle(page)
    kept = np.array(json.loads(download(page, "#download-pose").read_text())["ct_to_parent_ras"])
    assert mtre_mm(kept, np.eye(4)) > 0.05, "cancel kept no movement of the pose"
    assert json.loads(download(page, "#download-pose").read_text())["cancelled"] is True
    page.click("#revert")
    wait_message(page, "Reverted")
    back = np.array(json.loads(download(page, "#download-pose").read_text())["ct_to_parent_ras"])
    np.testing.assert_allclose(back, np.eye(4), atol=1e-9)


def test_register_to_completion_within_1_mm_of_the_true_pose(page, server):
    from XRayNeRFLib.registration.transform_io import read_ct_correction

    page.click("#register")
    page.wait_for_selector("#cancel-registration")
    text = wait_message(page, r"Registration done", timeout_s=600)
    wait_idle(page)
    page.click("#accept")
    wait_message(page, "Accepted")
    pose = np.array(json.loads(download(page, "#download-pose").read_text())["ct_to_parent_ras"])
    error = mtre_mm(pose, sample_truth())
    assert error < 1.0, f"mTRE {error:.2f} mm after registration ({text})"
    assert mtre_mm(np.eye(4), sample_truth()) > 5.0  # the start was off
    itk = read_ct_correction(str(download(page, "#download-itk"))).numpy()
    np.testing.assert_allclose(itk, pose, atol=1e-6)
    shot_dir = os.environ.get("XRAYNERF_SCREENSHOT_DIR")
    page.evaluate("() => document.querySelectorAll('.v-navigation-drawer__content').forEach(e => e.scrollTop = 0)")
    time.sleep(1.0)
    page.screenshot(path=str(server["data"] / "web_registration.png"))
    if shot_dir:
        shutil.copy(server["data"] / "web_registration.png", Path(shot_dir) / "web_registration.png")


def test_bad_inputs_are_refused_with_a_message_and_the_server_keeps_going(page, server, tmp_path):
    # a text file as the CT
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#upload-ct", str(notes))
    assert "refused 'notes.txt'" in wait_message(page, "not a readable image or DICOM")
    # an upload over --max-upload-mb (refused before it is sent)
    big = tmp_path / "big.nii.gz"
    big.write_bytes(b"\0" * (MAX_UPLOAD_MB * 2**20 + 1))
    page.set_input_files("#upload-ct", str(big))
    wait_message(page, "over the upload limit")
    # paths out of the data folder
    for path in ("../../etc/passwd", "/etc/passwd"):
        page.fill("#ct-path", path)
        page.click("#ct-load")
        wait_message(page, "refused '" + re.escape(path))
    assert server_answers(server)
    # a second job while one runs
    page.click("#register")
    page.wait_for_selector("#cancel-registration")
    page.click("#tab-reconstruction")
    page.click("#reconstruct")
    wait_message(page, "busy: registration is running")
    page.click("#tab-registration")
    try:  # from the registered pose it may converge before the click
        page.click("#cancel-registration", timeout=5000)
    except playwright_api.TimeoutError:
        pass
    wait_message(page, "Registration (cancelled|done)")
    wait_idle(page)
    page.click("#revert")
    wait_message(page, "Reverted")
    assert server_answers(server)
    assert not any(p.name in ("notes.txt", "big.nii.gz") for p in (server["data"] / "uploads").glob("*"))
    # and a good upload still goes through: the sample's XA DICOM file as the X-ray, with its C-arm geometry
    n = overlay_count(page)
    page.set_input_files("#upload-xray", str(SAMPLES / "chest_fluoroscopy_lao20_cra10.dcm"))
    wait_message(page, "Loaded the X-ray 'chest_fluoroscopy_lao20_cra10' with its C-arm geometry")
    wait_overlay_after(page, n)
    assert (server["data"] / "uploads" / "chest_fluoroscopy_lao20_cra10.dcm").is_file()


def test_xray_as_image_and_camera_json_is_the_dicom_xray(page, server, tmp_path):
    """The sample fluoroscopy as an image file (.mha, line integrals) + camera JSON (intrinsics and
    world_from_camera), uploaded through the page, gives the same overlay pixels as the DICOM file it was made
    from (the previous test's last step): the image route (the command line's xray_from_image_file) and the DICOM
    route agree on pixels, orientation and pose."""
    import SimpleITK as sitk
    import torch

    from XRayNeRFLib.dicom_xray import GeometryOverrides
    from XRayNeRFLib.projection_set import ProjectionSet

    setup = json.loads((SAMPLES / "chest_fluoroscopy_setup.json").read_text())
    # the DICOM route puts the C-arm's isocentre at the CT's centre where the CT is now (its pose: the registered one)
    pose = np.array(json.loads(download(page, "#download-pose").read_text())["ct_to_parent_ras"])
    isocentre = (pose @ np.r_[setup["isocenter_ras"], 1.0])[:3]  # setup: the CT file's centre
    ps = ProjectionSet.from_dicom([str(SAMPLES / setup["dicom"])], GeometryOverrides(isocenter_ras=isocentre.tolist()))
    c = ps.cameras.to(dtype=torch.float64)
    image = tmp_path / "fluoro_as_image.mha"
    sitk.WriteImage(sitk.GetImageFromArray(ps.images[0].numpy()), str(image))
    camera = tmp_path / "fluoro_camera.json"
    camera.write_text(
        json.dumps(
            {
                "sdd_mm": float(c.sdd_mm[0]),
                "pixel_spacing_mm": c.pixel_spacing_mm[0].tolist(),
                "principal_point_px": c.principal_point_px[0].tolist(),
                "size_px": list(c.size_px),
                "world_from_camera": c.world_from_camera[0].tolist(),
            }
        )
    )
    assert page.inner_text("#reg-inputs").endswith("X-ray: chest_fluoroscopy_lao20_cra10")  # the DICOM route's X-ray
    dicom_view = stable_view(page)
    n = overlay_count(page)
    page.set_input_files("#upload-xray-image", str(image))
    wait_message(page, "Uploaded uploads/fluoro_as_image.mha")
    page.set_input_files("#upload-camera", str(camera))
    wait_message(page, "Uploaded uploads/fluoro_camera.json")
    page.click("#xray-image-load")
    wait_message(page, "Loaded the X-ray 'fluoro_as_image' with its camera JSON")
    wait_overlay_after(page, n)
    assert page.inner_text("#reg-inputs").endswith("X-ray: fluoro_as_image")
    image_view = stable_view(page)
    assert image_view.std() > 10
    differs = np.abs(image_view - dicom_view).max(axis=-1) > 12
    if differs.mean() >= 0.002:  # kept for a look
        from PIL import Image

        for name, rgb in (("dicom", dicom_view), ("image", image_view)):
            Image.fromarray(rgb.astype(np.uint8)).save(server["data"] / f"route_{name}.png")
    assert differs.mean() < 0.002, f"{differs.mean():.4f} of the Red view's pixels differ between the two routes"
    # a camera JSON without the pose is refused in the page, and the X-ray stays
    (tmp_path / "intrinsics.json").write_text(
        json.dumps({k: v for k, v in json.loads(camera.read_text()).items() if k != "world_from_camera"})
    )
    page.set_input_files("#upload-camera", str(tmp_path / "intrinsics.json"))
    wait_message(page, "Uploaded uploads/intrinsics.json")
    page.click("#xray-image-load")
    wait_message(page, 'lacks "world_from_camera"')
    assert page.inner_text("#reg-inputs").endswith("X-ray: fluoro_as_image")


def test_xray_image_with_landmarks_gets_the_dicom_xray_pose(page, server, tmp_path):
    """An X-ray image whose camera JSON holds only the intrinsics, with a landmark file (the command line's
    --landmarks format: CT points in the CT file's frame, their pixels on the X-ray): the page solves the pose from
    the landmarks and shows the same overlay as the DICOM X-ray at the same CT pose; three pairs are refused with
    the engine's message and the X-ray is kept."""
    import torch

    from XRayNeRFLib.dicom_xray import GeometryOverrides
    from XRayNeRFLib.projection_set import ProjectionSet

    setup = json.loads((SAMPLES / "chest_fluoroscopy_setup.json").read_text())
    pose = np.array(json.loads(download(page, "#download-pose").read_text())["ct_to_parent_ras"])  # the CT's pose now
    isocentre = (pose @ np.r_[setup["isocenter_ras"], 1.0])[:3]
    ps = ProjectionSet.from_dicom([str(SAMPLES / setup["dicom"])], GeometryOverrides(isocenter_ras=isocentre.tolist()))
    cams = ps.cameras.to(dtype=torch.float64)
    # 8 points spread about the CT's centre (its file's frame, RAS mm; a box of about 70 x 70 x 65 mm, inside the
    # fluoroscopy's field of view) and their pixels on the fluoroscopy (the true camera, the CT posed as now)
    corners = ct_corners()
    centre = corners.mean(axis=0)
    points = centre + 0.2 * (corners - centre)
    world = (pose @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    pixels = cams.project(torch.as_tensor(world))[0][0].numpy()
    assert (pixels > 2).all() and (pixels < np.array(cams.size_px) - 3).all(), pixels  # the set-up itself
    pairs = [{"label": f"p{i}", "ct_mm": points[i].tolist(), "pixel": pixels[i].tolist()} for i in range(len(points))]
    (tmp_path / "fluoro_landmarks.json").write_text(json.dumps({"frame": "RAS", "pairs": pairs}))
    image = tmp_path / "fluoro_lm.mha"
    shutil.copy(server["data"] / "uploads" / "fluoro_as_image.mha", image)
    page.set_input_files("#upload-xray-image", str(image))
    wait_message(page, "Uploaded uploads/fluoro_lm.mha")
    page.fill("#camera-path", "uploads/intrinsics.json")  # the previous test's camera JSON without the pose
    page.set_input_files("#upload-landmarks", str(tmp_path / "fluoro_landmarks.json"))
    wait_message(page, "Uploaded uploads/fluoro_landmarks.json")
    n = overlay_count(page)
    page.click("#xray-image-load")
    wait_message(page, "Loaded the X-ray 'fluoro_lm' with its pose from the landmarks")
    wait_overlay_after(page, n)
    assert page.inner_text("#reg-inputs").endswith("X-ray: fluoro_lm")
    landmark_view = stable_view(page)
    # the DICOM X-ray's overlay at the same CT pose, for comparison
    n = overlay_count(page)
    shutil.copy(SAMPLES / setup["dicom"], server["data"] / "fluoro.dcm")
    page.fill("#xray-path", "fluoro.dcm")
    page.click("#xray-load")
    wait_message(page, "Loaded the X-ray 'fluoro'")
    wait_overlay_after(page, n)
    dicom_view = stable_view(page)
    differs = np.abs(landmark_view - dicom_view).max(axis=-1) > 12
    assert landmark_view.std() > 10 and differs.mean() < 0.002, f"{differs.mean():.4f} of the Red view's pixels differ"
    # three pairs only: the engine's LandmarkError in the page, the X-ray kept
    (tmp_path / "three.json").write_text(json.dumps({"pairs": pairs[:3]}))
    page.set_input_files("#upload-landmarks", str(tmp_path / "three.json"))
    wait_message(page, "Uploaded uploads/three.json")
    page.click("#xray-image-load")
    wait_message(page, "3 landmark pairs: a pose needs at least 4")
    assert page.inner_text("#reg-inputs").endswith("X-ray: fluoro")
    page.fill("#landmarks-path", "")


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of the pixels of two (H, W, 3) view images that differ by more than 12 grey levels."""
    return float((np.abs(a - b).max(axis=-1) > 12).mean())


def shows_preview(image: np.ndarray, start: np.ndarray) -> bool:
    """A view image that differs from the view at the job's start and has contrast (the flat -1000 HU grid of a
    new reconstruction has none)."""
    return changed_fraction(image, start) > 0.002 and float(image.std()) > 20


def progress_percent(page) -> float:
    return float(page.get_attribute("#progress", "aria-valuenow") or 0.0)


def correlation_with_the_sample_ct(path: Path) -> float:
    """Pearson correlation of a downloaded reconstruction with the sample CT resampled onto its grid."""
    from XRayNeRFLib.metrics import resample_like
    from XRayNeRFLib.volume import load_volume

    out = load_volume(str(path))
    ref = resample_like(load_volume(str(SAMPLES / "chest_ct_128.nii.gz")), out).float()
    return float(np.corrcoef(out.data.float().numpy().ravel(), ref.numpy().ravel())[0, 1])


def test_uploaded_stack_and_geometry_preview_updates_and_cancel_keeps_the_best_volume(page):
    """The sample projections uploaded as a stack + geometry file; while the reconstruction runs the preview
    slice in the Red view changes; Cancel keeps the best volume so far, which already resembles the CT."""
    page.click("#tab-reconstruction")
    page.set_input_files("#upload-stack", str(SAMPLES / "chest_projections_30.mha"))
    wait_message(page, "Uploaded uploads/chest_projections_30.mha")
    page.set_input_files("#upload-geometry", str(SAMPLES / "chest_projections_30.json"))
    wait_message(page, "Uploaded uploads/chest_projections_30.json")
    page.click("#stack-load")
    wait_message(page, "Loaded .*30 views of")
    page.fill("#rec-grid", "48")
    page.fill("#rec-iterations", "400")  # long enough to cancel in the middle
    page.click("#reconstruct")
    page.wait_for_selector("#cancel-reconstruction")
    page.fill("#rec-iterations", "0")  # the job has its form; the later tests use the default
    try:
        # the solver converges in a few passes, so the first previews change the slice most: "early" is the first
        # preview shown (an image with contrast, unlike the -1000 HU grid, that differs from the view at the start)
        start, deadline = view_pixels(page).astype(int), time.monotonic() + 30
        early = start
        while not shows_preview(early, start) and time.monotonic() < deadline:
            time.sleep(0.05)
            early = view_pixels(page).astype(int)
        assert shows_preview(early, start), "no preview slice was shown"
        at = progress_percent(page)
        page.wait_for_function(f"() => parseFloat(document.querySelector('#progress').getAttribute('aria-valuenow')) >= {at + 8}")
        time.sleep(0.5)
        later = view_pixels(page).astype(int)
    finally:  # a failure here must not leave the job running for the next tests
        page.click("#cancel-reconstruction")
    # without preview updates after the first the two are the same image (0 pixels change)
    changed = changed_fraction(later, early)
    assert changed > 0.002, f"the preview slice did not change ({changed:.4f} of the pixels) between {at}% and later"
    text = wait_message(page, "Reconstruction done")
    assert "cancelled: the best volume so far is kept" in text
    wait_idle(page)
    r = correlation_with_the_sample_ct(download(page, "#download-nifti"))
    assert r > 0.5, f"the kept volume correlates {r:.2f} with the CT"


def test_reconstruction_beats_fdk_against_the_sample_ct(page, server):
    import torch

    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.metrics import psnr, resample_like
    from XRayNeRFLib.projections_io import load_projection_stack
    from XRayNeRFLib.recon.api import reconstruct
    from XRayNeRFLib.recon.fov import default_grid
    from XRayNeRFLib.volume import load_volume

    page.click("#tab-reconstruction")
    page.click("#sample-projections")
    wait_message(page, "30 views")
    page.fill("#rec-grid", "48")
    page.click("#reconstruct")
    wait_message(page, "Reconstruction done", timeout_s=600)
    wait_idle(page)
    out = load_volume(str(download(page, "#download-nifti")))
    assert tuple(out.data.shape)[1:] == (48, 48)
    ct = load_volume(str(SAMPLES / "chest_ct_128.nii.gz"))
    images, _, _ = load_projection_stack(str(SAMPLES / "chest_projections_30.mha"))
    cams = load_geometry(str(SAMPLES / "chest_projections_30.json"))
    fdk = reconstruct(images, cams, "fdk", volume=default_grid(cams, grid=48), units="hu").volume
    ref = resample_like(ct, out).float()
    ours, theirs = psnr(out.data.float(), ref, data_range=2000.0), psnr(fdk.data.float(), ref, data_range=2000.0)
    assert ours > theirs + 1.0, f"web voxel {ours:.2f} dB vs FDK {theirs:.2f} dB"
    # the result is in the slice view: the Red view shows the volume's pixels
    assert view_pixels(page).std() > 10
    assert torch.isfinite(out.data).all()


def choose(page, select_id: str, item: str) -> None:
    """Pick ``item`` in the page's v-select ``#select_id`` (opens its menu, clicks the item)."""
    page.locator(f".v-field:has(#{select_id})").click()  # the field (its <input> is covered by the field's text)
    page.locator(".v-overlay .v-list-item", has_text=re.compile(rf"^\s*{re.escape(item)}\s*$")).click()
    page.wait_for_selector(".v-overlay .v-list-item", state="hidden")


def test_nerf_reconstruction_beats_fdk_on_a_small_grid(page):
    """The neural-field method through the page (24-voxel grid, 60 iterations): the downloaded volume correlates
    better with the sample CT than FDK of the same projections on the same grid, and the Red view shows it."""
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.projections_io import load_projection_stack
    from XRayNeRFLib.recon.api import reconstruct
    from XRayNeRFLib.recon.fov import default_grid
    from XRayNeRFLib.volume import save_volume

    page.click("#tab-reconstruction")
    page.click("#sample-projections")
    wait_message(page, "30 views")
    choose(page, "rec-method", "nerf")
    page.fill("#rec-grid", "24")
    page.fill("#rec-iterations", "60")
    before = page.inner_text("#rec-result")
    try:
        page.click("#reconstruct")
        page.wait_for_function(
            f"() => document.querySelector('#rec-result').textContent.trim() !== {json.dumps(before.strip())}", timeout=600_000
        )
    finally:  # the later tests use the voxel method and the default iterations
        wait_idle(page)
        choose(page, "rec-method", "voxel")
        page.fill("#rec-iterations", "0")
    assert page.inner_text("#rec-result").startswith("nerf:"), page.inner_text("#rec-result")
    path = download(page, "#download-nifti")
    images, _, _ = load_projection_stack(str(SAMPLES / "chest_projections_30.mha"))
    cams = load_geometry(str(SAMPLES / "chest_projections_30.json"))
    fdk = reconstruct(images, cams, "fdk", volume=default_grid(cams, grid=24), units="hu").volume
    fdk_path = path.with_name("fdk.nii.gz")
    save_volume(fdk, str(fdk_path))
    ours, theirs = correlation_with_the_sample_ct(path), correlation_with_the_sample_ct(fdk_path)
    assert ours > theirs, f"web nerf correlates {ours:.3f} with the CT, FDK {theirs:.3f}"
    assert view_pixels(page).std() > 10


def test_uncertainty_volume_shown_as_an_overlay(page):
    """A reconstruction with the uncertainty volume: the Red view shows it over the volume (red), and the
    downloaded uncertainty is a non-negative, not all-zero volume on the reconstruction's grid."""
    from XRayNeRFLib.volume import load_volume

    page.click("#tab-reconstruction")
    page.click("#sample-projections")
    wait_message(page, "Loaded chest projections.*: 30 views")
    reddish = lambda rgb: ((rgb[..., 0] - rgb[..., 1]) > 40) & ((rgb[..., 0] - rgb[..., 2]) > 40)  # noqa: E731
    assert reddish(view_pixels(page).astype(int)).mean() < 0.001  # the volume alone is grey
    page.fill("#rec-grid", "24")
    page.fill("#rec-iterations", "40")
    page.check("#rec-uncertainty")
    before = page.inner_text("#rec-result")  # the previous run's; the page's message still says "done" from it
    page.click("#reconstruct")
    page.wait_for_function(
        f"() => document.querySelector('#rec-result').textContent.trim() !== {json.dumps(before.strip())}", timeout=600_000
    )
    wait_message(page, "Reconstruction done")
    wait_idle(page)
    # the views are drawn after the job's end reaches the page (the Red frame can follow "done" by seconds on a
    # loaded machine: the server draws every view, the 3D volume rendering included, on the CPU): wait for the
    # page's Red image itself to show the overlay, not for a time
    page.wait_for_function(RED_FRACTION_JS, arg=0.02, timeout=120_000)
    red = reddish(view_pixels(page).astype(int))
    assert red.mean() > 0.02, f"no uncertainty overlay in the Red view ({red.mean():.4f} of the pixels red)"
    unc = load_volume(str(download(page, "#download-uncertainty")))
    vol = load_volume(str(download(page, "#download-nifti")))
    assert tuple(unc.data.shape) == tuple(vol.data.shape) and tuple(vol.data.shape)[1:] == (24, 24)
    np.testing.assert_allclose(unc.ras_from_ijk.numpy(), vol.ras_from_ijk.numpy(), atol=1e-4)
    u = unc.data.float().numpy()
    assert np.isfinite(u).all() and u.min() >= 0 and u.max() > 0
    page.uncheck("#rec-uncertainty")
    page.fill("#rec-iterations", "0")


def test_drr_tab_equals_the_engine_render(page):
    import torch

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.render import DEFAULT_RENDERER, render
    from XRayNeRFLib.volume import as_mu, load_volume

    page.click("#tab-drr")
    page.click("#sample-ct")
    wait_message(page, "Loaded the sample chest CT")
    for key, value in (("drr-primary", "30"), ("drr-secondary", "-10"), ("drr-cols", "64"), ("drr-rows", "48"), ("drr-spacing", "5")):
        page.fill(f"#{key}", value)
    page.click("#render-drr")
    wait_message(page, "DRR rendered")
    wait_idle(page)
    import SimpleITK as sitk

    got = sitk.GetArrayFromImage(sitk.ReadImage(str(download(page, "#download-drr"))))[0]
    ct = as_mu(load_volume(str(SAMPLES / "chest_ct_128.nii.gz")))
    k, j, i = ct.data.shape
    centre = (ct.ras_from_ijk.double() @ torch.tensor([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0], dtype=torch.float64))[:3]
    cams = Cameras.carm(
        30.0,
        -10.0,
        sid_mm=800.0,
        sdd_mm=1200.0,
        size_px=(64, 48),
        pixel_spacing_mm=(5.0, 5.0),
        isocenter_ras=centre.tolist(),
        patient_position="HFS",
        dtype=torch.float64,
    )
    want = render(ct, cams.to(dtype=torch.float32), renderer=DEFAULT_RENDERER)[0].numpy()  # the tab's default
    assert got.shape == want.shape == (48, 64)
    assert want.max() > 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_drr_tab_shows_the_carm_line_model_in_3d(page):
    """The DRR tab's C-arm line model (yellow lines: source, detector outline, central ray) is in the 3D view, and
    turns with the C-arm: its pixels at LAO 30 (the previous test) and at RAO 60 are mostly different ones (the
    registration's C-arm, also yellow, stays where it was)."""

    def yellow() -> np.ndarray:
        rgb = view_pixels(page, "ThreeD").astype(int)
        return (rgb[..., 0] > 170) & (rgb[..., 1] > 120) & (rgb[..., 2] < 90) & (rgb[..., 0] - rgb[..., 1] < 90)

    time.sleep(1.0)
    at_lao30 = yellow()
    page.fill("#drr-primary", "-60")
    page.fill("#drr-cols", "80")
    page.click("#render-drr")
    wait_message(page, r"DRR rendered: .*\(80 x 48")
    wait_idle(page)
    time.sleep(1.0)
    at_rao60 = yellow()
    assert at_lao30.sum() > 150 and at_rao60.sum() > 150, f"yellow C-arm pixels: {at_lao30.sum()}, {at_rao60.sum()}"
    overlap = (at_lao30 & at_rao60).sum() / (at_lao30 | at_rao60).sum()
    assert overlap < 0.6, f"the C-arm model did not turn with the C-arm (overlap {overlap:.2f})"
