"""DICOM X-ray reading: synthetic XA / RF / DX / Enhanced XA files written from DRRs of a real CT (the shipped
chest CT, downsampled) at a known geometry must read back to the same projection matrices (1e-6) and the
same line integrals, a DRR rendered from the read geometry must line up with the read image, and bad
files must fail with the file, the tag and the flag that supplies a missing value."""

from __future__ import annotations

import dicom_factory as fac
import numpy as np
import pytest
import torch
from dicom_factory import SDD, SID, SIZE, SPACING, ct_volume, drr, normalized_p, truth_cameras

from XRayNeRFLib.dicom_xray import GeometryOverrides, Orientation, read_dicom_series, read_dicom_xray
from XRayNeRFLib.errors import MissingTagError, NotAnXrayImageError
from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.intensities import intensities_from_line_integrals, to_line_integrals


def _line_integrals(x, **kw):
    rel = x.intensity["relationship"]
    return to_line_integrals(
        x.images, relationship=rel, sign=x.intensity["sign"], max_value=x.intensity["max_value"], mask=x.masks, **kw
    ).images


def _assert_same_geometry(read: Cameras, truth: Cameras, tol: float = 1e-6):
    assert read.size_px == truth.size_px
    assert torch.allclose(read.pixel_spacing_mm, truth.pixel_spacing_mm, atol=1e-9)
    diff = (normalized_p(read) - normalized_p(truth)).abs().max().item()
    assert diff < tol, f"projection matrices differ by {diff:.3g}"


def _assert_aligned(images: torch.Tensor, cameras: Cameras, tol: float):
    """A DRR rendered from the read geometry matches the read image; its mirror image does not."""
    again = drr(cameras)
    err = (again - images).abs().mean().item()
    err_mirror = (again.flip(-1) - images).abs().mean().item()
    assert err < tol, f"DRR from the read geometry differs from the image by {err:.4f}"
    assert err < 0.2 * err_mirror, (err, err_mirror)


# ---------------------------------------------------------------------------------------------
# The convention itself, checked with a bead on the patient's left, near the head
# ---------------------------------------------------------------------------------------------
def test_radiological_layout_puts_patient_left_on_the_right_and_reader_returns_beams_eye(tmp_path):
    vol = ct_volume()
    bead = vol.data.clone() * 0
    ijk = torch.linalg.inv(vol.ras_from_ijk.double()) @ torch.tensor([-90.0, 0.0, 90.0, 1.0], dtype=torch.float64)
    i, j, k = (int(round(float(x))) for x in ijk[:3])
    bead[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2] = 0.5
    from XRayNeRFLib.volume import Volume

    cams = truth_cameras([0.0], [0.0])
    p = drr(cams, Volume(bead, vol.ras_from_ijk, "mu"))[0].numpy()
    r, c = np.unravel_index(np.argmax(p), p.shape)
    assert c < SIZE[0] / 2 - 5 and r < SIZE[1] / 2 - 5  # beam's eye view at PA: patient's left on the left, head up
    stored = fac.stored_from_bev(p[None])
    r2, c2 = np.unravel_index(np.argmax(stored[0]), stored[0].shape)
    assert c2 > SIZE[0] / 2 + 5 and r2 == r  # radiological display: patient's left on the viewer's right
    path = fac.write_xray(
        str(tmp_path / "bead.dcm"),
        stored * 1000 + 100,
        relationship="LOG",
        sign=-1,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
    )
    x = read_dicom_xray(path)
    r3, c3 = np.unravel_index(int(torch.argmax(x.images[0])), x.images[0].shape)
    assert (r3, c3) == (r, c)
    assert any("radiological layout" in a for a in x.assumptions)


# ---------------------------------------------------------------------------------------------
# Dialects
# ---------------------------------------------------------------------------------------------
def test_xa_single_frame_lin(tmp_path):
    cams = truth_cameras([30.0], [10.0])
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LIN", i0=60000.0))
    path = fac.write_xray(
        str(tmp_path / "xa.dcm"), stored, primary_deg=30, secondary_deg=10, sdd_mm=SDD, sid_mm=SID, imager_spacing_rc=SPACING[::-1]
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    li = _line_integrals(x, i0=60000.0)
    assert (li - torch.from_numpy(p)).abs().max() < 0.02
    _assert_aligned(li, x.cameras, tol=0.02)
    v = x.views[0]
    assert v["primary_deg"] == 30 and v["secondary_deg"] == 10 and v["sdd_mm"] == SDD and v["sid_mm"] == SID
    assert v["pixel_spacing_mm"] == list(SPACING)


@pytest.mark.parametrize("mode", ["first", "previous"])
def test_xa_rotational_multiframe_with_increments_rle(tmp_path, mode):
    angles = np.array([-40.0, -20.0, 0.0, 25.0, 50.0])
    cams = truth_cameras(angles, [5.0] * 5)
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LOG", sign=-1, i0=200.0, log_scale=2000.0))
    inc = angles - angles[0] if mode == "first" else np.diff(angles, prepend=angles[0])
    path = fac.write_xray(
        str(tmp_path / "rot.dcm"),
        stored,
        primary_deg=angles[0],
        secondary_deg=5.0,
        primary_increments=inc,
        secondary_increments=np.zeros(5),
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LOG",
        sign=-1,
        compress=True,
    )
    x = read_dicom_xray(path, GeometryOverrides(angle_increments=mode))
    assert [v["primary_deg"] for v in x.views] == pytest.approx(angles.tolist(), abs=1e-9)
    _assert_same_geometry(x.cameras, cams)
    li = _line_integrals(x, i0=200.0, log_scale=2000.0)
    assert (li - torch.from_numpy(p)).abs().max() < 1e-3
    _assert_aligned(li, x.cameras, tol=0.01)


def test_absolute_angle_lists_are_detected(tmp_path):
    angles = np.array([10.0, 30.0, 50.0])
    cams = truth_cameras(angles, [0.0] * 3)
    stored = fac.stored_from_bev(1000 * drr(cams).numpy() + 100)
    path = fac.write_xray(
        str(tmp_path / "abs.dcm"),
        stored,
        primary_deg=10.0,
        primary_increments=angles,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LOG",
        sign=-1,
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    assert any("absolute" in a for a in x.assumptions)


def test_rf_stored_in_beams_eye_layout_follows_patient_orientation(tmp_path):
    """An RF image stored unmirrored: Patient Orientation says so and wins over the radiological default."""
    cams = truth_cameras([-20.0], [0.0])
    p = drr(cams).numpy()
    r = cams.world_from_camera[0, :3, :3].numpy()
    po = [fac.letters(r[:, 0]), fac.letters(r[:, 1])]  # +column, +row directions of the stored pixels
    assert po == ["RP", "F"]  # RAO 20: columns towards the right and a little posterior
    stored = fac.stored_from_bev(
        intensities_from_line_integrals(p, relationship="LOG", sign=-1, i0=100.0, log_scale=1000.0), layout="beams_eye"
    )
    path = fac.write_xray(
        str(tmp_path / "rf.dcm"),
        stored,
        kind="RF",
        primary_deg=-20,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LOG",
        sign=-1,
        patient_orientation=po,
    )
    x = read_dicom_xray(path)
    assert x.modality == "RF" and x.views[0]["layout_ops"] == []
    assert any("Patient Orientation (0020,0020)" in a and "disagrees" in a for a in x.assumptions)
    _assert_same_geometry(x.cameras, cams)
    li = _line_integrals(x, i0=100.0, log_scale=1000.0)
    assert (li - torch.from_numpy(p)).abs().max() < 1e-3
    _assert_aligned(li, x.cameras, tol=0.01)


def test_dx_view_position_and_calibrated_pixel_spacing(tmp_path):
    """DX AP without positioner angles; only Pixel Spacing calibrated at the patient (GEOMETRY)."""
    cams = truth_cameras([180.0], [0.0])
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LOG", sign=1, i0=60000.0, log_scale=4000.0))
    mag = SDD / SID
    path = fac.write_xray(
        str(tmp_path / "dx.dcm"),
        stored,
        kind="DX",
        angles=False,
        view_position="AP",
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=None,
        pixel_spacing_rc=[s / mag for s in SPACING[::-1]],
        calibration="GEOMETRY",
        relationship="LOG",
        sign=1,
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    li = _line_integrals(x, i0=60000.0, log_scale=4000.0)
    assert (li - torch.from_numpy(p)).abs().max() < 1e-3
    # the estimated air value finds the unattenuated background
    est = _line_integrals(x, log_scale=4000.0)
    assert (est - torch.from_numpy(p)).abs().max() < 2e-3
    assert any("View Position" in a for a in x.assumptions) and any("magnification" in a for a in x.assumptions)


def test_enhanced_xa_per_frame_patient_angles(tmp_path):
    prim, sec = [-30.0, 0.0, 30.0], [10.0, 0.0, -10.0]
    cams = truth_cameras(prim, sec)
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LOG", sign=-1, i0=100.0, log_scale=1000.0))
    path = fac.write_enhanced_xa(
        str(tmp_path / "exa.dcm"),
        stored,
        primary_deg=prim,
        secondary_deg=sec,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        patient_position="FFS",
        isocenter_primary_deg=[0, 0, 0],
        isocenter_secondary_deg=[0, 0, 0],
    )
    x = read_dicom_xray(path)
    assert x.intensity == {"relationship": "LOG", "sign": -1, "max_value": 65535.0}
    _assert_same_geometry(x.cameras, cams)  # patient-based angles win and are anatomical (FFS does not change them)
    _assert_aligned(_line_integrals(x, i0=100.0, log_scale=1000.0), x.cameras, tol=0.01)


def test_enhanced_xa_isocenter_angles_and_table_motion(tmp_path):
    """Equipment angles + table positions, feet-first supine: the table frame (left, down, head) is the
    patient's (right, posterior, inferior); the isocentre moves opposite to the table."""
    iso_p, iso_s = [20.0, 40.0], [0.0, 5.0]
    table = [(0.0, 0.0, 0.0), (10.0, -5.0, 30.0)]
    iso1 = -(np.array([1.0, 0, 0]) * 10.0 + np.array([0, -1.0, 0]) * -5.0 + np.array([0, 0, -1.0]) * 30.0)
    cams = Cameras.concatenate(
        [
            Cameras.carm(
                [iso_p[f]],
                [iso_s[f]],
                sid_mm=SID,
                sdd_mm=SDD,
                size_px=SIZE,
                pixel_spacing_mm=SPACING,
                patient_position="FFS",
                isocenter_ras=iso,
                dtype=torch.float64,
            )
            for f, iso in enumerate([np.zeros(3), iso1])
        ]
    )
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LOG", sign=-1, i0=100.0, log_scale=1000.0))
    path = fac.write_enhanced_xa(
        str(tmp_path / "iso.dcm"),
        stored,
        isocenter_primary_deg=iso_p,
        isocenter_secondary_deg=iso_s,
        table_xyz_mm=table,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        patient_position="FFS",
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    assert x.views[1]["isocenter_ras"] == pytest.approx(iso1.tolist())
    _assert_aligned(_line_integrals(x, i0=100.0, log_scale=1000.0), x.cameras, tol=0.01)


@pytest.mark.parametrize("rotation,flip", [(90, True), (180, False), (270, False)])
def test_field_of_view_rotation_and_flip_are_undone(tmp_path, rotation, flip):
    cams = truth_cameras([15.0], [-5.0])
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(1000.0 * p + 100.0, fov_rotation_deg=rotation, fov_flip=flip)
    assert stored.shape[1:] == ((SIZE[0], SIZE[1]) if rotation % 180 else (SIZE[1], SIZE[0]))
    spacing_rc = SPACING[::-1] if rotation % 180 == 0 else SPACING  # the stored rows run along the camera's columns
    path = fac.write_xray(
        str(tmp_path / "fov.dcm"),
        stored,
        primary_deg=15,
        secondary_deg=-5,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=spacing_rc,
        fov_rotation_deg=rotation,
        fov_flip=flip,
        relationship="LOG",
        sign=-1,
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    assert (_line_integrals(x, i0=100.0, log_scale=1000.0) - torch.from_numpy(p)).abs().max() < 1e-3


def test_shutter_mask_and_offset_detector_principal_point(tmp_path):
    """A rectangular shutter becomes the mask (mirrored with the image); a field of view that is not centred
    on the detector's active area moves the principal point."""
    w, h = SIZE
    # Active area 100 x 120 detector elements of 0.5 mm (binned 2x2 -> 1 mm image pixels? no: use 1:1 with
    # the image spacing), field of view starting 10 rows / 6 columns in: centre of the active area at
    # element (row 60, col 50) -> image pixel (row 50 - 0.5, col 44 - 0.5).
    el_r, el_c = SPACING[1], SPACING[0]
    det = {
        "DetectorElementSpacing": [el_r, el_c],
        "DetectorActiveOrigin": [0.0, 0.0],
        "DetectorActiveDimensions": [120 * el_r, 100 * el_c],
        "FieldOfViewOrigin": [10, 6],
    }
    pp_stored = (50 - 0.5, 44 - 0.5)  # (row, column) in stored pixels
    pp_ours = np.array([w - 1 - pp_stored[1], pp_stored[0]])  # columns mirrored
    base = truth_cameras([0.0], [0.0])
    cams = Cameras(base.world_from_camera, base.sdd_mm, base.pixel_spacing_mm, torch.from_numpy(pp_ours)[None], base.size_px)
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(1000.0 * p + 100.0)
    path = fac.write_xray(
        str(tmp_path / "sh.dcm"),
        stored,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LOG",
        sign=-1,
        shutter_rc=(5, 30, 3, 40),
        detector=det,
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    m = x.masks[0].numpy()
    expect = np.zeros((h, w), dtype=bool)
    expect[2:40, 4:30] = True  # 1-based inclusive edges, stored layout
    assert (m == expect[:, ::-1]).all()
    li = _line_integrals(x)  # the air estimate ignores the collimated pixels
    assert li.shape == (1, h, w)


def test_overrides_fill_missing_tags_and_win(tmp_path):
    cams = truth_cameras([0.0], [0.0])
    stored = fac.stored_from_bev(1000 * drr(cams).numpy() + 100)
    path = fac.write_xray(str(tmp_path / "bare.dcm"), stored, sdd_mm=None, sid_mm=None, imager_spacing_rc=None, relationship="LOG", sign=-1)
    x = read_dicom_xray(path, GeometryOverrides(sdd_mm=SDD, sid_mm=SID, pixel_spacing_mm=SPACING))
    _assert_same_geometry(x.cameras, cams)
    path2 = fac.write_xray(str(tmp_path / "wrong.dcm"), stored, sdd_mm=SDD + 50, sid_mm=SID, imager_spacing_rc=SPACING[::-1])
    y = read_dicom_xray(path2, GeometryOverrides(sdd_mm=SDD))
    _assert_same_geometry(y.cameras, cams)
    assert any("given SDD" in a for a in y.assumptions)


def test_series_directory_sorted_by_angle_and_non_images_skipped(tmp_path):
    angles = [30.0, -30.0, 0.0]
    uid = "1.2.826.0.1.3680043.8.498.77"
    for i, a in enumerate(angles):
        cams = truth_cameras([a], [0.0])
        fac.write_xray(
            str(tmp_path / f"im{i}.dcm"),
            fac.stored_from_bev(1000 * drr(cams).numpy() + 100),
            primary_deg=a,
            series_uid=uid,
            sdd_mm=SDD,
            sid_mm=SID,
            imager_spacing_rc=SPACING[::-1],
            relationship="LOG",
            sign=-1,
            instance=i + 1,
        )
    fac.write_non_image(str(tmp_path / "report.dcm"), "SR")
    (tmp_path / "README.txt").write_text("not dicom")
    x = read_dicom_series([str(tmp_path)])
    assert [v["primary_deg"] for v in x.views] == [-30.0, 0.0, 30.0]
    _assert_same_geometry(x.cameras, truth_cameras([-30.0, 0.0, 30.0], [0.0] * 3))
    assert any("README.txt" in a for a in x.assumptions) and any("report.dcm" in a for a in x.assumptions)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def good_file(tmp_path):
    stored = np.full((1, SIZE[1], SIZE[0]), 1000.0)
    return lambda name="ok.dcm", **kw: fac.write_xray(
        str(tmp_path / name), kw.pop("stored", stored), **{**dict(sdd_mm=SDD, sid_mm=SID, imager_spacing_rc=SPACING[::-1]), **kw}
    )


@pytest.mark.parametrize(
    "kwargs,needles",
    [
        (dict(sdd_mm=None), ["(0018,1110)", "--sdd-mm"]),
        (dict(sid_mm=None), ["(0018,1111)", "--sid-mm"]),
        (dict(imager_spacing_rc=None), ["(0018,1164)", "--pixel-spacing-mm"]),
        (dict(angles=False), ["(0018,1510/1511)", "--primary-deg"]),
        (dict(sdd_mm=0.0), ["(0018,1110)", "> 0", "--sdd-mm"]),
        (dict(sid_mm=-5.0), ["(0018,1111)", "> 0", "--sid-mm"]),
        (dict(sid_mm=1500.0), ["not smaller", "(0018,1110)"]),
        (dict(stored=np.full((3, SIZE[1], SIZE[0]), 10.0), primary_increments=[0.0, 1.0]), ["(0018,1520)", "2 values", "3 frames"]),
        (dict(stored=np.full((3, SIZE[1], SIZE[0]), 10.0), secondary_increments=[0.0]), ["(0018,1521)"]),
        (
            dict(stored=np.full((3, SIZE[1], SIZE[0]), 10.0), detector={"PositionerMotion": "DYNAMIC"}),
            ["(0018,1500)", "(0018,1520/1521)", "--primary-deg"],
        ),
        (dict(detector={"DetectorPrimaryAngle": 5.0}), ["(0018,1530)", "not perpendicular"]),
        (dict(patient_position="SITTING"), ["(0018,5100)", "--patient-position"]),
        (dict(imager_spacing_rc=[0.0, 0.8]), ["(0018,1164)", "--pixel-spacing-mm"]),
        (dict(fov_rotation_deg=45), ["(0018,7032)", "multiples of 90"]),
    ],
)
def test_bad_geometry_names_file_tag_and_flag(good_file, kwargs, needles):
    path = good_file("bad.dcm", **kwargs)
    with pytest.raises(ValueError) as err:
        read_dicom_xray(path)
    msg = str(err.value)
    assert path in msg
    if isinstance(err.value, MissingTagError):  # the typed error carries what a caller needs
        assert err.value.path == path and err.value.flag in msg and err.value.tags in msg
    for needle in needles:
        assert needle in msg, msg


def test_corrupt_truncated_and_non_image_files(tmp_path, good_file):
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a DICOM file"):
        read_dicom_xray(str(text))
    path = good_file()
    data = open(path, "rb").read()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 2000])
    with pytest.raises(ValueError, match=r"cut\.dcm.*(Pixel Data|truncated)"):
        read_dicom_xray(str(cut))
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:132] + bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"garbage\.dcm"):
        read_dicom_xray(str(garbage))
    for kind in ("RT_PLAN", "SR"):
        p = fac.write_non_image(str(tmp_path / f"{kind}.dcm"), kind)
        with pytest.raises(NotAnXrayImageError, match=r"holds no image.*\(7FE0,0010\)") as err:
            read_dicom_xray(p)
        assert err.value.path == p and err.value.reason == "no-pixel-data"
    with pytest.raises(ValueError, match="no such file"):
        read_dicom_xray(str(tmp_path / "missing.dcm"))


def test_enhanced_frame_count_mismatch(tmp_path):
    stored = np.full((3, SIZE[1], SIZE[0]), 10.0)
    path = fac.write_enhanced_xa(str(tmp_path / "e.dcm"), stored, primary_deg=[0, 1, 2], secondary_deg=[0, 0, 0], per_frame_items=2)
    with pytest.raises(ValueError, match=r"e\.dcm.*\(5200,9230\) has 2 items for 3 frames"):
        read_dicom_xray(path)


def test_mixed_series_and_modalities_refused(tmp_path, good_file):
    a = good_file("a.dcm", series_uid="1.2.3.1")
    b = good_file("b.dcm", series_uid="1.2.3.2")
    with pytest.raises(ValueError, match=r"mixed series.*a\.dcm.*b\.dcm.*\(0020,000E\)"):
        read_dicom_series([a, b])
    c = good_file("c.dcm", series_uid="1.2.3.1", kind="RF")
    with pytest.raises(ValueError, match="mixed modalities"):
        read_dicom_series([a, c])
    d = good_file("d.dcm", series_uid="1.2.3.1", stored=np.full((1, SIZE[1] - 2, SIZE[0]), 1000.0))
    with pytest.raises(ValueError, match=r"d\.dcm.*one detector size per series"):
        read_dicom_series([a, d])
    e = good_file("e.dcm", series_uid="1.2.3.1", relationship="LOG", sign=-1)
    with pytest.raises(ValueError, match=r"e\.dcm.*\(0028,1040/1041\)"):
        read_dicom_series([a, e])
    non = fac.write_non_image(str(tmp_path / "plan.dcm"))
    with pytest.raises(ValueError, match=r"plan\.dcm.*holds no image"):
        read_dicom_series([a, non])  # named explicitly: not skipped


def test_orientation_ops_on_points_match_arrays():
    rng = np.random.default_rng(1)
    for _ in range(20):
        ops = list(rng.choice(["fliplr", "flipud", "transpose"], size=rng.integers(0, 5)))
        o = Orientation(ops)
        a = np.zeros((5, 7))
        a[1, 4] = 1  # row 1, column 4
        b = o.array(a)
        c, r, w, h = o.point(4.0, 1.0, 7, 5)
        assert b.shape == (h, w) and b[int(r), int(c)] == 1
        assert (o.inverse().array(b) == a).all()


def test_jpeg_baseline_compressed_xa_decodes(tmp_path):
    """A lossy JPEG (8-bit) XA, as exported by many systems: decoded through Pillow, geometry intact."""
    cams = truth_cameras([45.0], [0.0])
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(250.0 * np.exp(-p))
    path = fac.write_xray(
        str(tmp_path / "jpeg.dcm"), stored, primary_deg=45, sdd_mm=SDD, sid_mm=SID, imager_spacing_rc=SPACING[::-1], jpeg=True
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    expect = np.rint(250.0 * np.exp(-p[0]))
    assert np.abs(x.images[0].numpy() - expect).mean() < 1.0  # grey levels (lossy)
    again = 250.0 * torch.exp(-drr(x.cameras))  # intensities: 8 bits resolve little of the dense parts' line integrals
    err, err_mirror = (again - x.images).abs().mean().item(), (again.flip(-1) - x.images).abs().mean().item()
    assert err < 1.0 and err < 0.2 * err_mirror, (err, err_mirror)


def test_synthetic_phantom_is_asymmetric():
    """The synthetic phantom (the reconstruction CLI tests' DICOM runs) must tell mirror images apart like the CT does."""
    vol = fac.phantom_volume()
    assert torch.allclose(vol.center_ras(), torch.zeros(3), atol=1e-4)
    img = drr(truth_cameras([0.0], [0.0]), vol)[0]
    assert (img - img.flip(-1)).abs().mean() > 0.05 * img.mean()


def test_given_angles_per_frame_and_display_processed_pixels(tmp_path):
    from XRayNeRFLib.projection_set import ProjectionSet

    angles = [0.0, 20.0, 40.0]
    cams = truth_cameras(angles, [0.0] * 3)
    stored = fac.stored_from_bev(1000 * drr(cams).numpy() + 100)
    path = fac.write_xray(
        str(tmp_path / "noangles.dcm"),
        stored,
        angles=False,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="DISP",
        sign=-1,
    )
    with pytest.raises(ValueError, match="--primary-deg"):
        read_dicom_xray(path)
    x = read_dicom_xray(path, GeometryOverrides(primary_deg=angles))
    _assert_same_geometry(x.cameras, cams)
    with pytest.raises(ValueError, match="one per frame"):
        read_dicom_xray(path, GeometryOverrides(primary_deg=[0.0, 1.0]))
    with pytest.raises(ValueError, match=r"noangles\.dcm.*DISP.*--intensity"):
        ProjectionSet.from_dicom(path, GeometryOverrides(primary_deg=angles))
    ps = ProjectionSet.from_dicom(path, GeometryOverrides(primary_deg=angles), relationship="LOG", i0=100.0, log_scale=1000.0)
    assert (ps.images - drr(cams)).abs().max() < 1e-3
    assert any("DISP" in a for a in ps.assumptions)


def test_circular_shutter_mask(tmp_path):
    stored = np.full((1, SIZE[1], SIZE[0]), 1000.0)
    det = {"ShutterShape": "CIRCULAR", "CenterOfCircularShutter": [20, 30], "RadiusOfCircularShutter": 10}
    path = fac.write_xray(str(tmp_path / "circ.dcm"), stored, sdd_mm=SDD, sid_mm=SID, imager_spacing_rc=SPACING[::-1], detector=det)
    m = read_dicom_xray(path).masks[0].numpy()[:, ::-1]  # back to the stored layout
    rr, cc = np.mgrid[1 : SIZE[1] + 1, 1 : SIZE[0] + 1]
    assert (m == ((rr - 20) ** 2 + (cc - 30) ** 2 <= 100)).all() and m.sum() > 300


# ---------------------------------------------------------------------------------------------
# Lossless compressed transfer syntaxes (the `dicom-codecs` extra: pylibjpeg + libjpeg + openjpeg)
# ---------------------------------------------------------------------------------------------
def _only_dicom_codecs(monkeypatch, uid):
    """Decode ``uid`` with the `dicom-codecs` extra's plugin only (pylibjpeg), as a user who installed
    `xraynerf[dicom-codecs]` would: pyjpegls and Pillow, installed for the tests' encoders, are hidden."""
    from pydicom.pixels import get_decoder

    dec = get_decoder(uid)
    assert "pylibjpeg" in dec._available, f"pylibjpeg cannot decode {uid.name}: install the test extra"
    monkeypatch.setattr(dec, "_available", {"pylibjpeg": dec._available["pylibjpeg"]})


@pytest.mark.parametrize("codec", ["jpeg-ls", "jpeg2000", "jpeg-lossless", "jpeg-lossless-sv1"])
def test_lossless_compressed_rotational_run_decodes_to_the_original_pixels(tmp_path, monkeypatch, codec):
    """A 3-frame rotational XA, 16-bit LOG pixels, stored uncompressed and compressed: the compressed file
    holds a different (encapsulated) bitstream, decodes to exactly the same pixels, the same cameras and
    the DRR line integrals."""
    import pydicom
    from pydicom.uid import UID

    angles = np.array([-25.0, 5.0, 35.0])
    cams = truth_cameras(angles, [0.0] * 3)
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LOG", sign=-1, i0=300.0, log_scale=3000.0))
    kw = dict(
        primary_deg=angles[0],
        primary_increments=angles - angles[0],
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        relationship="LOG",
        sign=-1,
        series_uid="1.2.826.0.1.3680043.8.498.5",
    )
    plain = fac.write_xray(str(tmp_path / "plain.dcm"), stored, **kw)
    packed = fac.write_xray(str(tmp_path / f"{codec}.dcm"), stored, lossless=codec, **kw)
    ds = pydicom.dcmread(packed)
    uid = UID(fac.LOSSLESS[codec])
    assert ds.file_meta.TransferSyntaxUID == uid and uid.is_compressed
    raw = pydicom.dcmread(plain).PixelData
    assert ds.PixelData[:4] == b"\xfe\xff\x00\xe0" and len(ds.PixelData) < len(raw)  # encapsulated and smaller than the raw frames
    _only_dicom_codecs(monkeypatch, uid)
    a, b = read_dicom_xray(plain), read_dicom_xray(packed)
    assert torch.equal(a.images, b.images)  # lossless: every pixel
    assert b.images.std() > 100  # not a blank image
    _assert_same_geometry(b.cameras, cams)
    li = _line_integrals(b, i0=300.0, log_scale=3000.0)
    assert (li - torch.from_numpy(p)).abs().max() < 1e-3
    _assert_aligned(li, b.cameras, tol=0.01)


def test_jpeg_lossless_encoder_edge_values_decode_exactly():
    """The tests' own JPEG lossless encoder against libjpeg: full 16-bit range, the +32768 difference
    (category 16, no extra bits), 12-bit precision, 0xFF bytes that need stuffing."""
    from libjpeg import decode

    rng = np.random.default_rng(3)
    img = rng.integers(0, 65536, size=(9, 17)).astype(np.uint16)
    img[1, ::2], img[1, 1::2] = 0, 32768
    img[2] = 65535
    assert (decode(fac.encode_jpeg_lossless(img, 16)) == img).all()
    img12 = rng.integers(0, 4096, size=(5, 7)).astype(np.uint16)
    assert (decode(fac.encode_jpeg_lossless(img12, 12)) == img12).all()


def test_missing_or_unknown_decoder_names_the_syntax_and_what_to_do(tmp_path, monkeypatch):
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    stored = np.full((1, SIZE[1], SIZE[0]), 1000.0)
    path = fac.write_xray(str(tmp_path / "jls.dcm"), stored, sdd_mm=SDD, sid_mm=SID, imager_spacing_rc=SPACING[::-1], lossless="jpeg-ls")
    assert read_dicom_xray(path).images.max() == 1000.0
    dec = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(dec, "_available", {})  # a user without the codecs
    with pytest.raises(ValueError) as err:
        read_dicom_xray(path)
    msg = str(err.value)
    assert "jls.dcm" in msg and "(7FE0,0010)" in msg and "JPEG-LS Lossless" in msg and "1.2.840.10008.1.2.4.80" in msg
    assert 'pip install "xraynerf[dicom-codecs]"' in msg
    # a compressed syntax that pydicom cannot decode at all: say how to convert, not which extra to install
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    odd = str(tmp_path / "video.dcm")
    ds.save_as(odd)
    with pytest.raises(ValueError, match=r"video\.dcm.*1\.2\.840\.10008\.1\.2\.4\.102.*convert the file") as err:
        read_dicom_xray(odd)
    assert "dicom-codecs" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Detector rotation (0018,9465)
# ---------------------------------------------------------------------------------------------
def _rotate_about_axis(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rodrigues: right-handed rotation by angle about the unit vector axis (a world-frame statement)."""
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx


def _with_rotated_detector(cams: Cameras, rotation_deg) -> Cameras:
    """The truth: each detector turned about the isocentre->source axis (DICOM Yp) by the right-hand rule."""
    m = cams.world_from_camera.clone().numpy()
    for v, a in enumerate(rotation_deg):
        yp = -m[v, :3, 2]  # camera z runs source -> detector: Yp (isocentre -> source) is its opposite
        m[v, :3, :3] = _rotate_about_axis(yp, a) @ m[v, :3, :3]
    return Cameras(torch.from_numpy(m), cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px)


def test_enhanced_xa_detector_rotation_round_trips(tmp_path):
    """Equipment angles, head-first prone, with the detector turned about the central ray by a different
    angle per frame: read back to the same projection matrices and line integrals."""
    iso_p, iso_s, rot = [20.0, -35.0, 60.0], [10.0, 0.0, -15.0], [90.0, -30.0, 12.5]
    base = Cameras.carm(
        iso_p, iso_s, sid_mm=SID, sdd_mm=SDD, size_px=SIZE, pixel_spacing_mm=SPACING, patient_position="HFP", dtype=torch.float64
    )
    cams = _with_rotated_detector(base, rot)
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LOG", sign=-1, i0=100.0, log_scale=1000.0))
    path = fac.write_enhanced_xa(
        str(tmp_path / "rot.dcm"),
        stored,
        isocenter_primary_deg=iso_p,
        isocenter_secondary_deg=iso_s,
        detector_rotation_deg=rot,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        patient_position="HFP",
    )
    x = read_dicom_xray(path)
    _assert_same_geometry(x.cameras, cams)
    assert [v["detector_rotation_deg"] for v in x.views] == rot
    assert any("(0018,9465)" in a for a in x.assumptions)
    li = _line_integrals(x, i0=100.0, log_scale=1000.0)
    assert (li - torch.from_numpy(p)).abs().max() < 1e-3
    _assert_aligned(li, x.cameras, tol=0.01)
    # without the rotation the matrices differ by 1000x the tolerance: the test can tell
    unrotated = (normalized_p(base) - normalized_p(x.cameras)).abs().max().item()
    assert unrotated > 1e-3


def test_detector_rotation_sign_counter_clockwise_seen_from_the_source(tmp_path):
    """HFS, PA beam, Ap3 = +90: the detector's +Xp (stored +column, the patient's left at 0) turns
    counter-clockwise as seen from the source (behind the patient) to point at the feet, and +Zp (stored
    'up', the head at 0) to the patient's left. A bead on the patient's left near the head must therefore
    land in the stored image's first rows (towards the patient's left = -row) and first columns (towards the
    head = -column); Patient Orientation written for that layout (columns F, rows R) agrees with the reader."""
    vol = ct_volume()
    bead = vol.data.clone() * 0
    ijk = torch.linalg.inv(vol.ras_from_ijk.double()) @ torch.tensor([-90.0, 0.0, 90.0, 1.0], dtype=torch.float64)
    i, j, k = (int(round(float(x))) for x in ijk[:3])
    bead[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2] = 0.5
    from XRayNeRFLib.volume import Volume

    stored = np.full((1, SIZE[1], SIZE[0]), 100.0)
    path = fac.write_enhanced_xa(
        str(tmp_path / "r90.dcm"),
        stored,
        isocenter_primary_deg=[0.0],
        isocenter_secondary_deg=[0.0],
        detector_rotation_deg=[90.0],
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        patient_position="HFS",
    )
    x = read_dicom_xray(path)
    ours = drr(x.cameras, Volume(bead, vol.ras_from_ijk, "mu"))[0].numpy()
    as_stored = ours[:, ::-1]  # the reader mirrored the columns of the radiological layout
    r, c = np.unravel_index(np.argmax(as_stored), as_stored.shape)
    assert as_stored.max() > 1.0
    assert r < SIZE[1] / 2 - 5 and c < SIZE[0] / 2 - 5, (r, c)
    # Patient Orientation letters of that stored layout: +column towards the feet, +row towards the right
    from pydicom import dcmread

    ds = dcmread(path)
    ds.PatientOrientation = ["F", "R"]
    po = str(tmp_path / "r90_po.dcm")
    ds.save_as(po)
    y = read_dicom_xray(po)
    assert y.views[0]["layout_ops"] == x.views[0]["layout_ops"] == ["fliplr"]
    assert not any("disagrees" in a for a in y.assumptions)


# ---------------------------------------------------------------------------------------------
# Shutters and collimators
# ---------------------------------------------------------------------------------------------
def _convex_polygon_mask(vertices_rc, h, w):
    """Independent reference for convex polygons: inside (or on) every edge's half-plane."""
    rr, cc = np.mgrid[1 : h + 1, 1 : w + 1].astype(np.float64)
    v = np.asarray(vertices_rc, dtype=np.float64)
    area2 = sum(v[i, 1] * v[(i + 1) % len(v), 0] - v[(i + 1) % len(v), 1] * v[i, 0] for i in range(len(v)))
    inside = np.ones((h, w), dtype=bool)
    for i in range(len(v)):
        (r1, c1), (r2, c2) = v[i], v[(i + 1) % len(v)]
        side = (c2 - c1) * (rr - r1) - (r2 - r1) * (cc - c1)
        inside &= side * np.sign(area2) >= 0
    return inside


def test_polygonal_shutter_and_rectangle_become_the_mask(tmp_path):
    h, w = SIZE[1], SIZE[0]
    pentagon = [(5, 20), (18, 58), (44, 50), (40, 8), (20, 3)]  # (row, column), 1-based, edges through pixel centres
    det = {"ShutterShape": "POLYGONAL", "VerticesOfThePolygonalShutter": [int(x) for rc in pentagon for x in rc]}
    stored = np.full((1, h, w), 1000.0)
    path = fac.write_xray(str(tmp_path / "poly.dcm"), stored, sdd_mm=SDD, sid_mm=SID, imager_spacing_rc=SPACING[::-1], detector=det)
    m = read_dicom_xray(path).masks[0].numpy()[:, ::-1]  # back to the stored layout
    expect = _convex_polygon_mask(pentagon, h, w)
    assert (m == expect).all() and 0.3 * h * w < m.sum() < 0.9 * h * w
    assert m[4, 19] and m[17, 57] and not m[0, 0]  # vertices are inside, corners are not
    # a concave polygon (even-odd): an L shape
    ell = [(3, 3), (3, 30), (20, 30), (20, 15), (40, 15), (40, 3)]
    det = {
        "ShutterShape": "RECTANGULAR\\POLYGONAL",
        "VerticesOfThePolygonalShutter": [x for rc in ell for x in rc],
        "ShutterLeftVerticalEdge": 10,
        "ShutterRightVerticalEdge": 64,
        "ShutterUpperHorizontalEdge": 1,
        "ShutterLowerHorizontalEdge": 48,
    }
    path = fac.write_xray(str(tmp_path / "ell.dcm"), stored, sdd_mm=SDD, sid_mm=SID, imager_spacing_rc=SPACING[::-1], detector=det)
    m = read_dicom_xray(path).masks[0].numpy()[:, ::-1]
    rr, cc = np.mgrid[1 : h + 1, 1 : w + 1]
    ell_ref = ((rr >= 3) & (rr <= 20) & (cc >= 3) & (cc <= 30)) | ((rr >= 20) & (rr <= 40) & (cc >= 3) & (cc <= 15))
    assert (m == (ell_ref & (cc >= 10))).all()
    bad = fac.write_xray(
        str(tmp_path / "bad.dcm"),
        stored,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        detector={"ShutterShape": "POLYGONAL", "VerticesOfThePolygonalShutter": [1, 1, 5, 5]},
    )
    with pytest.raises(ValueError, match=r"bad\.dcm.*\(0018,1620\).*pairs"):
        read_dicom_xray(bad)


def test_enhanced_xrf_frame_shutters_and_collimator(tmp_path):
    """Enhanced XRF: per-frame Frame Display Shutter (0018,9472) (polygon, circle) and a shared Collimator
    Shape Sequence (0018,9407) rectangle: each frame's mask is the intersection; geometry still reads."""
    h, w = SIZE[1], SIZE[0]
    prim, sec = [0.0, 30.0], [0.0, 0.0]
    cams = truth_cameras(prim, sec)
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LOG", sign=-1, i0=100.0, log_scale=1000.0))
    tri = [(2, 2), (2, 60), (46, 31)]
    shutters = [
        {"ShutterShape": "POLYGONAL", "VerticesOfThePolygonalShutter": [x for rc in tri for x in rc]},
        {"ShutterShape": "CIRCULAR", "CenterOfCircularShutter": [24, 32], "RadiusOfCircularShutter": 20},
    ]
    coll = {
        "CollimatorShape": "RECTANGULAR",
        "CollimatorLeftVerticalEdge": 5,
        "CollimatorRightVerticalEdge": 56,
        "CollimatorUpperHorizontalEdge": 4,
        "CollimatorLowerHorizontalEdge": 44,
    }
    path = fac.write_enhanced_xa(
        str(tmp_path / "xrf.dcm"),
        stored,
        primary_deg=prim,
        secondary_deg=sec,
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=SPACING[::-1],
        frame_shutters=shutters,
        collimator=coll,
        kind="ENHANCED_XRF",
    )
    x = read_dicom_xray(path)
    assert x.modality == "RF"
    _assert_same_geometry(x.cameras, cams)
    rr, cc = np.mgrid[1 : h + 1, 1 : w + 1]
    rect = (cc >= 5) & (cc <= 56) & (rr >= 4) & (rr <= 44)
    m = x.masks.numpy()[:, :, ::-1]
    assert (m[0] == (_convex_polygon_mask(tri, h, w) & rect)).all()
    assert (m[1] == (((rr - 24) ** 2 + (cc - 32) ** 2 <= 400) & rect)).all()
    li = _line_integrals(x, i0=100.0, log_scale=1000.0)
    inside = x.masks
    assert (li - torch.from_numpy(p))[inside].abs().max() < 1e-3


def test_cr_with_uncalibrated_pixel_spacing(tmp_path):
    """CR: no Imager Pixel Spacing, Pixel Spacing without a calibration type (taken at the detector, noted),
    View Position PA, LIN intensities."""
    cams = truth_cameras([0.0], [0.0])
    p = drr(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LIN", i0=60000.0))
    path = fac.write_xray(
        str(tmp_path / "cr.dcm"),
        stored,
        kind="CR",
        angles=False,
        view_position="PA",
        sdd_mm=SDD,
        sid_mm=SID,
        imager_spacing_rc=None,
        pixel_spacing_rc=SPACING[::-1],
    )
    x = read_dicom_xray(path)
    assert x.modality == "CR"
    _assert_same_geometry(x.cameras, cams)
    assert any("taken as the detector-plane spacing" in a for a in x.assumptions)
    li = _line_integrals(x, i0=60000.0)
    assert (li - torch.from_numpy(p)).abs().max() < 0.02
    _assert_aligned(li, x.cameras, tol=0.02)


def test_source_isocentre_distance_precedence(tmp_path):
    """(0018,9402) wins over a disagreeing (0018,1111) (noted); without both, SDD / (0018,1114) gives it.
    Positioner Type other than CARM is read as a C-arm and noted."""
    cams = truth_cameras([10.0], [0.0])
    stored = fac.stored_from_bev(1000 * drr(cams).numpy() + 100)
    kw = dict(primary_deg=10, sdd_mm=SDD, imager_spacing_rc=SPACING[::-1], relationship="LOG", sign=-1)
    a = fac.write_xray(
        str(tmp_path / "iso.dcm"),
        stored,
        sid_mm=SID,
        sid_tag="DistanceSourceToIsocenter",
        detector={"DistanceSourceToPatient": SID - 60.0},
        **kw,
    )
    x = read_dicom_xray(a)
    _assert_same_geometry(x.cameras, cams)
    assert x.views[0]["sid_from"].startswith("Distance Source to Isocenter") and any(
        "(0018,1111)" in n and "differs" in n for n in x.assumptions
    )
    b = fac.write_xray(
        str(tmp_path / "mag.dcm"),
        stored,
        sid_mm=None,
        detector={"EstimatedRadiographicMagnificationFactor": SDD / SID, "PositionerType": "COLUMN"},
        **kw,
    )
    y = read_dicom_xray(b)
    _assert_same_geometry(y.cameras, cams)
    assert "(0018,1114)" in y.views[0]["sid_from"]
    assert any("Positioner Type (0018,1508) is COLUMN" in n for n in y.assumptions)
