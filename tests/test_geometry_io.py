"""Geometry files: JSON round trips and validation; RTK XML round trips and agreement with itk-rtk.

RTK runs once per module in a subprocess (tests/rtk_tools/rtk_geometry.py): it writes reference XMLs
with its own writer and reads ours and its own with its own reader, reporting its projection
matrices (ITK physical LPS mm -> detector mm), source positions and parameters.
"""

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from XRayNeRFLib.geometry import Cameras, homogeneous
from XRayNeRFLib.geometry_io import (
    RTK_PARAMETERS,
    cameras_from_json,
    cameras_to_json,
    load_geometry,
    ours_from_rtk_layout,
    read_rtk_parameters,
    read_rtk_xml,
    rtk_default_origin_mm,
    rtk_layout_from_ours,
    rtk_matrix,
    rtk_parameters_from_cameras,
    save_geometry,
    write_rtk_xml,
)

SIZE = (40, 30)  # columns, rows
SPACING = (0.7, 0.9)  # mm [u, v], non-square
ORIGIN = (-11.0, 4.5)  # an RTK projection origin that is not the centred default
TOOL = os.path.join(os.path.dirname(__file__), "rtk_tools", "rtk_geometry.py")


def _rtk_available() -> bool:
    spec = importlib.util.find_spec("itk")  # not imported here: itk may clash with other modules
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(os.path.exists(os.path.join(p, "RTKPython.py")) for p in spec.submodule_search_locations)


needs_rtk = pytest.mark.skipif(not _rtk_available(), reason="itk-rtk is not installed (pip install itk-rtk==2.7.0.post1)")


def general_cameras() -> Cameras:
    """Views that exercise every RTK parameter: a circular orbit with an offset detector (its first
    view is at RTK's gimbal lock, out-of-plane 270 degrees), oblique C-arm views of a prone patient,
    and a free pose with an off-centre principal point."""
    d = torch.float64
    orbit = Cameras.circular_orbit(
        torch.tensor([0.0, 0.7, 2.0, 4.1], dtype=d),
        sid_mm=700.0,
        sdd_mm=1100.0,
        size_px=SIZE,
        pixel_spacing_mm=SPACING,
        isocenter_ras=(5.0, -3.0, 12.0),
        detector_offset_mm=(2.5, -1.5),
        dtype=d,
    )
    carm = Cameras.carm(
        [30.0, -65.0],
        [15.0, -35.0],
        sid_mm=[650.0, 720.0],
        sdd_mm=[1000.0, 1150.0],
        size_px=SIZE,
        pixel_spacing_mm=SPACING,
        isocenter_ras=(-8.0, 20.0, 3.0),
        patient_position="HFP",
        dtype=d,
    )
    g = torch.Generator().manual_seed(3)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=d))
    q = q * torch.sign(torch.diagonal(r))
    q = q if torch.det(q) > 0 else -q
    free = Cameras(
        homogeneous(q, torch.tensor([120.0, -340.0, 55.0], dtype=d)).unsqueeze(0),
        torch.tensor([900.0], dtype=d),
        torch.tensor([SPACING], dtype=d),
        torch.tensor([[17.3, 11.9]], dtype=d),
        SIZE,
    )
    return Cameras.concatenate([orbit, carm, free])


def assert_same_cameras(a: Cameras, b: Cameras, tol: float) -> None:
    assert a.size_px == b.size_px
    for f in ("world_from_camera", "sdd_mm", "pixel_spacing_mm", "principal_point_px"):
        x, y = getattr(a, f).double(), getattr(b, f).double()
        err = float((x - y).abs().max())
        assert err <= tol, f"{f} differs by {err:.3g} (tolerance {tol:g})"


def our_view_in_rtk_terms(cams: Cameras, origin) -> np.ndarray:
    """Our projection matrices (pixels <- RAS) turned into RTK's (detector mm <- LPS), independently
    of geometry_io's decomposition: P_rtk = -A @ Flip @ P_ours @ diag(-1, -1, 1, 1), where Flip maps
    our row r to RTK row H - 1 - r and A maps RTK pixel indices to mm (spacing, origin). The sign:
    RTK's homogeneous coordinate is negative in front of the source, ours is the depth."""
    p = cams.projection_matrices().double().numpy()
    rows = cams.size_px[1]
    su, sv = cams.pixel_spacing_mm[0].double().tolist()
    ou, ov = rtk_default_origin_mm(cams.size_px, (su, sv)) if origin is None else origin
    flip = np.array([[1.0, 0, 0], [0, -1, rows - 1], [0, 0, 1]])
    a = np.array([[su, 0, ou], [0, sv, ov], [0, 0, 1.0]])
    return -(a @ flip @ p @ np.diag([-1.0, -1.0, 1.0, 1.0]))


def _angle_diff_deg(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


# ---------------------------------------------------------------------------------------------
# RTK in a subprocess, once per module
# ---------------------------------------------------------------------------------------------
VARIED = [
    dict(
        SourceToIsocenterDistance=1000.0,
        SourceToDetectorDistance=1500.0,
        GantryAngle=30.0,
        ProjectionOffsetX=5.0,
        ProjectionOffsetY=7.0,
        OutOfPlaneAngle=2.0,
        InPlaneAngle=3.0,
        SourceOffsetX=10.0,
        SourceOffsetY=20.0,
    ),
    dict(
        SourceToIsocenterDistance=900.0,
        SourceToDetectorDistance=1400.0,
        GantryAngle=160.0,
        ProjectionOffsetX=-5.0,
        ProjectionOffsetY=3.0,
        OutOfPlaneAngle=-8.0,
        InPlaneAngle=4.0,
        SourceOffsetX=11.0,
        SourceOffsetY=-21.0,
    ),
    dict(
        SourceToIsocenterDistance=950.0,
        SourceToDetectorDistance=1450.0,
        GantryAngle=275.5,
        ProjectionOffsetX=0.0,
        ProjectionOffsetY=-2.0,
        OutOfPlaneAngle=91.0,
        InPlaneAngle=-40.0,
        SourceOffsetX=0.0,
        SourceOffsetY=3.0,
    ),
]
GLOBAL = [
    dict(
        SourceToIsocenterDistance=1000.0,
        SourceToDetectorDistance=1536.0,
        GantryAngle=a,
        ProjectionOffsetX=0.0,
        ProjectionOffsetY=0.0,
        OutOfPlaneAngle=0.0,
        InPlaneAngle=0.0,
        SourceOffsetX=0.0,
        SourceOffsetY=0.0,
    )
    for a in (0.0, 72.0, 144.0, 216.0, 288.0)
]


def _sticky_xml(path: str) -> None:
    """A hand-written file using RTK's reading rules: lower-case and old ('Angle') element names,
    values set in one projection staying in force for the next ones. The matrices are computed
    from our reading; RTK accepts them only if it reads the parameters the same way."""
    params = [
        dict(GLOBAL[0], GantryAngle=10.0, SourceOffsetX=5.0),
        dict(GLOBAL[0], GantryAngle=20.0, SourceOffsetX=5.0, ProjectionOffsetY=-3.0),
        dict(GLOBAL[0], GantryAngle=30.0, SourceOffsetX=5.0, ProjectionOffsetY=-3.0),
    ]
    extra = [
        "<GantryAngle>10</GantryAngle><SourceOffsetX>5</SourceOffsetX>",
        "<Angle>20</Angle><projectionoffsety>-3</projectionoffsety>",
        "<GantryAngle>30</GantryAngle>",
    ]
    body = "".join(
        f"<Projection>{e}<Matrix>{' '.join(repr(float(v)) for v in rtk_matrix(p).ravel())}</Matrix></Projection>\n"
        for p, e in zip(params, extra)
    )
    with open(path, "w") as f:
        f.write(
            '<?xml version="1.0"?>\n<RTKThreeDCircularGeometry version="3">\n<SourceToIsocenterDistance>1000</SourceToIsocenterDistance>\n'
            f"<sourcetodetectordistance>1536</sourcetodetectordistance>\n{body}</RTKThreeDCircularGeometry>\n"
        )


@pytest.fixture(scope="module")
def rtk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rtk_geometry")
    cams = general_cameras()
    files = {
        name: str(tmp / f"{name}.xml")
        for name in ("ours", "ours_default", "rtk_global", "rtk_varied", "rtk_from_ours", "sticky", "bad_matrix")
    }
    write_rtk_xml(cams, files["ours"], origin_mm=ORIGIN)
    write_rtk_xml(cams, files["ours_default"])
    _sticky_xml(files["sticky"])
    text = open(files["ours"]).read()
    first = text.index("<Matrix>") + len("<Matrix>")
    entry = text[first:].split()[0]
    with open(files["bad_matrix"], "w") as f:  # one entry off by 0.01: RTK and we must refuse it
        f.write(text[:first] + text[first:].replace(entry, repr(float(entry) + 0.01), 1))
    job = {
        "write": [
            {"path": files["rtk_global"], "projections": GLOBAL},
            {"path": files["rtk_varied"], "projections": VARIED},
            {"path": files["rtk_from_ours"], "projections": rtk_parameters_from_cameras(cams, origin_mm=ORIGIN)},
        ],
        "read": list(files.values()),
    }
    job_path, result_path = tmp / "job.json", tmp / "result.json"
    job_path.write_text(json.dumps(job))
    done = subprocess.run([sys.executable, TOOL, str(job_path), str(result_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"RTK subprocess failed:\n{done.stderr[-3000:]}"
    return {"cameras": cams, "files": files, "result": json.loads(result_path.read_text())}


# which projection origin each file was made for (None: RTK's centred default)
FILE_ORIGINS = {"ours": ORIGIN, "ours_default": None, "rtk_global": None, "rtk_varied": None, "rtk_from_ours": ORIGIN, "sticky": None}


# ---------------------------------------------------------------------------------------------
# RTK XML against RTK
# ---------------------------------------------------------------------------------------------
@needs_rtk
@pytest.mark.parametrize("name", list(FILE_ORIGINS))
def test_rtk_matrices_equal_ours(rtk, name):
    """For each file (ours, RTK's own in per-projection and global form, hand-written), the cameras we
    read project exactly like RTK's matrices, after LPS/RAS, pixels/mm and the row flip."""
    res = rtk["result"][rtk["files"][name]]
    assert "error" not in res, f"RTK refused {name}.xml: {res.get('error', '')[:500]}"
    cams = read_rtk_xml(rtk["files"][name], size_px=SIZE, spacing_mm=SPACING, origin_mm=FILE_ORIGINS[name])
    expected = our_view_in_rtk_terms(cams, FILE_ORIGINS[name])
    got = np.asarray(res["matrices"])
    assert got.shape == expected.shape == (len(cams), 3, 4)
    for v in range(len(cams)):
        rel = np.linalg.norm(got[v] - expected[v]) / np.linalg.norm(got[v])
        assert rel < 1e-6, (
            f"{name}.xml view {v}: RTK matrix differs from ours by {rel:.2e} (relative)\nRTK:\n{got[v]}\nours:\n{expected[v]}"
        )
    sources_lps = np.asarray(res["sources"])
    sources_ours = cams.source_positions().numpy() * np.array([-1.0, -1.0, 1.0])
    assert np.abs(sources_lps - sources_ours).max() < 1e-6, f"{name}.xml: source positions differ"


@needs_rtk
def test_rtk_reads_our_parameters(rtk):
    """RTK's reader recovers the parameters we wrote (angles modulo 360 degrees)."""
    ours = rtk_parameters_from_cameras(rtk["cameras"], origin_mm=ORIGIN)
    theirs = rtk["result"][rtk["files"]["ours"]]["params"]
    for v, p in enumerate(ours):
        for name in RTK_PARAMETERS:
            if name.endswith("Angle"):
                assert _angle_diff_deg(theirs[name][v], p[name]) < 1e-9, (v, name, theirs[name][v], p[name])
            else:
                assert abs(theirs[name][v] - p[name]) < 1e-9, (v, name, theirs[name][v], p[name])


@needs_rtk
@pytest.mark.parametrize("name", ["rtk_global", "rtk_varied", "rtk_from_ours", "sticky"])
def test_parameters_parsed_like_rtk(rtk, name):
    """Our parser reads RTK's own files (global and per-projection forms) and RTK's reading rules
    to the same 9 parameters per projection as RTK's reader."""
    ours = read_rtk_parameters(rtk["files"][name])
    theirs = rtk["result"][rtk["files"][name]]["params"]
    assert len(ours) == len(theirs["GantryAngle"])
    for v, p in enumerate(ours):
        for key in RTK_PARAMETERS:
            diff = _angle_diff_deg(theirs[key][v], p[key]) if key.endswith("Angle") else abs(theirs[key][v] - p[key])
            assert diff < 1e-9, f"{name}.xml projection {v} {key}: ours {p[key]}, RTK {theirs[key][v]}"
    if name == "rtk_global":  # RTK wrote the common values once, before the first projection
        text = open(rtk["files"][name]).read()
        assert text.count("<SourceToDetectorDistance>") == 1 and text.count("<GantryAngle>") == len(GLOBAL)
        assert all(p["SourceToDetectorDistance"] == 1536.0 for p in ours)


@needs_rtk
def test_rtk_written_parameters_of_our_cameras_read_back(rtk):
    """Our decomposition of the cameras, written by RTK's writer (15 digits), reads back as the same cameras."""
    back = read_rtk_xml(rtk["files"]["rtk_from_ours"], size_px=SIZE, spacing_mm=SPACING, origin_mm=ORIGIN)
    assert_same_cameras(back, rtk["cameras"], 1e-8)


@needs_rtk
def test_inconsistent_matrix_refused_like_rtk(rtk):
    res = rtk["result"][rtk["files"]["bad_matrix"]]
    assert "not consistent" in res.get("error", ""), "RTK accepted a matrix that disagrees with its parameters"
    with pytest.raises(ValueError, match=r"bad_matrix\.xml.*<Matrix> of projection 0 disagrees"):
        read_rtk_xml(rtk["files"]["bad_matrix"], size_px=SIZE, spacing_mm=SPACING)


# ---------------------------------------------------------------------------------------------
# RTK XML on our own
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", [None, ORIGIN])
def test_rtk_xml_round_trip(tmp_path, origin):
    cams = general_cameras()
    path = str(tmp_path / "g.xml")
    write_rtk_xml(cams, path, origin_mm=origin)
    back = read_rtk_xml(path, size_px=SIZE, spacing_mm=SPACING, origin_mm=origin)
    assert back.dtype == torch.float64
    assert_same_cameras(back, cams, 1e-9)
    # the pixel at which a scene point lands is the same
    pts = torch.tensor([[0.0, 0.0, 0.0], [30.0, -20.0, 45.0]], dtype=torch.float64)
    assert (back.project(pts)[0] - cams.project(pts)[0]).abs().max() < 1e-9


def test_rtk_xml_origin_moves_offsets_not_cameras(tmp_path):
    """Changing the projection origin changes the detector offsets in the file (by the origin shift),
    not the cameras; reading with the wrong origin shifts the principal point by shift / spacing."""
    cams = general_cameras()
    default = rtk_parameters_from_cameras(cams)
    shifted = rtk_parameters_from_cameras(cams, origin_mm=ORIGIN)
    o0 = rtk_default_origin_mm(SIZE, SPACING)
    for a, b in zip(default, shifted):
        assert abs((a["ProjectionOffsetX"] - b["ProjectionOffsetX"]) - (ORIGIN[0] - o0[0])) < 1e-9
        assert abs((a["ProjectionOffsetY"] - b["ProjectionOffsetY"]) - (ORIGIN[1] - o0[1])) < 1e-9
    path = str(tmp_path / "g.xml")
    write_rtk_xml(cams, path, origin_mm=ORIGIN)
    wrong = read_rtk_xml(path, size_px=SIZE, spacing_mm=SPACING)
    shift = (torch.tensor(ORIGIN, dtype=torch.float64) - torch.from_numpy(o0)) / torch.tensor(SPACING, dtype=torch.float64)
    assert torch.allclose(
        wrong.principal_point_px - cams.principal_point_px, torch.stack([shift[0], -shift[1]]).expand(len(cams), 2), atol=1e-9
    )


def test_rtk_parameters_of_a_plain_rtk_orbit():
    """RTK's gantry 0 in our terms: the source at +z LPS (superior), the beam towards inferior,
    columns along RTK's +u = +x LPS (patient's left), rows along RTK's -v = -y LPS (anterior)."""
    p = dict(GLOBAL[0])
    cams = read_rtk_xml_from_params([p])
    w = cams.world_from_camera[0]
    assert torch.allclose(w[:3, 3], torch.tensor([0.0, 0.0, 1000.0], dtype=torch.float64), atol=1e-9)  # source superior
    assert torch.allclose(w[:3, 2], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64), atol=1e-12)  # looking inferior
    # camera +x (columns) = RTK +u = LPS +x = RAS -x; camera +y (rows) = RTK -v = LPS -y = RAS +y
    assert torch.allclose(w[:3, 0], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(w[:3, 1], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    # the centred default origin puts the principal point at the image centre
    assert torch.allclose(cams.principal_point_px[0], torch.tensor([(SIZE[0] - 1) / 2, (SIZE[1] - 1) / 2], dtype=torch.float64))


def read_rtk_xml_from_params(params):
    from XRayNeRFLib.geometry_io import cameras_from_rtk_parameters

    return cameras_from_rtk_parameters(params, size_px=SIZE, spacing_mm=SPACING)


def test_write_refuses_views_with_different_spacings(tmp_path):
    cams = general_cameras()
    spacing = cams.pixel_spacing_mm.clone()
    spacing[1] = torch.tensor([0.5, 0.5], dtype=torch.float64)
    mixed = Cameras(cams.world_from_camera, cams.sdd_mm, spacing, cams.principal_point_px, cams.size_px)
    with pytest.raises(ValueError, match="different detector pixel spacings"):
        write_rtk_xml(mixed, str(tmp_path / "g.xml"))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEAD = '<?xml version="1.0"?>\n<RTKThreeDCircularGeometry version="3">\n'
MALFORMED_XML = {
    "not_xml": ("SourceToIsocenterDistance = 1000", "not valid XML"),
    "wrong_root": ('<?xml version="1.0"?><Geometry><Projection/></Geometry>', "root element is <Geometry>"),
    "old_version": ('<RTKThreeDCircularGeometry version="1"><Projection/></RTKThreeDCircularGeometry>', "version 1"),
    "no_projection": (HEAD + "<SourceToDetectorDistance>1500</SourceToDetectorDistance></RTKThreeDCircularGeometry>", "no <Projection>"),
    "no_sdd": (
        HEAD
        + "<SourceToIsocenterDistance>1000</SourceToIsocenterDistance>"
        + "<Projection><GantryAngle>0</GantryAngle></Projection></RTKThreeDCircularGeometry>",
        "no SourceToDetectorDistance",
    ),
    "not_a_number": (
        HEAD + "<SourceToDetectorDistance>15OO</SourceToDetectorDistance><Projection/></RTKThreeDCircularGeometry>",
        "is not a number: '15OO'",
    ),
    "nan": (
        HEAD
        + "<SourceToDetectorDistance>1500</SourceToDetectorDistance>"
        + "<Projection><GantryAngle>nan</GantryAngle></Projection></RTKThreeDCircularGeometry>",
        "must be finite",
    ),
    "cylindrical": (
        HEAD
        + "<SourceToDetectorDistance>1500</SourceToDetectorDistance>"
        + "<RadiusCylindricalDetector>1200</RadiusCylindricalDetector><Projection/></RTKThreeDCircularGeometry>",
        "cylindrical detector",
    ),
    "parallel": (HEAD + "<SourceToDetectorDistance>0</SourceToDetectorDistance><Projection/></RTKThreeDCircularGeometry>", "parallel-beam"),
    "short_matrix": (
        HEAD
        + "<SourceToDetectorDistance>1500</SourceToDetectorDistance>"
        + "<Projection><Matrix>1 2 3 4 5 6 7 8 9 10 11</Matrix></Projection></RTKThreeDCircularGeometry>",
        "has 11 numbers, expected 12",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_XML))
def test_malformed_rtk_xml(tmp_path, case):
    text, message = MALFORMED_XML[case]
    path = _write(tmp_path, f"{case}.xml", text)
    with pytest.raises(ValueError) as info:
        load_geometry(path, size_px=SIZE, spacing_mm=SPACING)
    assert message in str(info.value), str(info.value)
    assert f"{case}.xml" in str(info.value), f"the error does not name the file: {info.value}"


def test_rtk_xml_without_matrix_is_read(tmp_path):
    path = _write(
        tmp_path,
        "m.xml",
        HEAD + "<SourceToIsocenterDistance>1000</SourceToIsocenterDistance><SourceToDetectorDistance>1500</SourceToDetectorDistance>"
        "<Projection><GantryAngle>90</GantryAngle></Projection></RTKThreeDCircularGeometry>",
    )
    cams = load_geometry(path, size_px=SIZE, spacing_mm=SPACING)
    # gantry 90: RTK's source moves from +z to +x LPS (patient's left) = -x RAS
    assert torch.allclose(cams.source_positions()[0], torch.tensor([-1000.0, 0.0, 0.0], dtype=torch.float64), atol=1e-9)


def test_xml_needs_detector_size_and_spacing(tmp_path):
    path = str(tmp_path / "g.xml")
    write_rtk_xml(general_cameras(), path)
    with pytest.raises(ValueError, match="--detector-size.*--detector-spacing"):
        load_geometry(path)
    with pytest.raises(ValueError, match="missing: spacing_mm"):
        load_geometry(path, size_px=SIZE)


def test_layout_flip():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    y = rtk_layout_from_ours(x)
    assert y[1, 0, 2] == x[1, 2, 2] and y[0, 2, 3] == x[0, 0, 3]  # row r <-> row H - 1 - r, columns kept
    assert np.array_equal(ours_from_rtk_layout(y), x)
    t = torch.from_numpy(x)
    assert torch.equal(rtk_layout_from_ours(t), torch.from_numpy(y))


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
def test_json_round_trip_exact(tmp_path):
    cams = general_cameras()
    back = cameras_from_json(json.loads(json.dumps(cameras_to_json(cams))))
    assert back.dtype == torch.float64
    assert_same_cameras(back, cams, 1e-12)
    path = str(tmp_path / "g.json")
    save_geometry(cams, path)
    assert_same_cameras(load_geometry(path, size_px=SIZE, spacing_mm=SPACING), cams, 1e-12)
    doc = json.load(open(path))
    assert doc["format"] == "xraynerf-geometry" and doc["version"] == 1 and doc["frame"] == "RAS" and doc["units"] == "mm"
    assert doc["size_px"] == list(SIZE) and len(doc["views"]) == len(cams) and len(doc["views"][0]["world_from_camera"]) == 4


def test_json_compact_forms_equal_constructors():
    orbit = {
        "format": "xraynerf-geometry",
        "version": 1,
        "size_px": [40, 30],
        "circular_orbit": {
            "angles_deg": [0, 90, 200],
            "sid_mm": 700,
            "sdd_mm": 1100,
            "pixel_spacing_mm": [0.7, 0.9],
            "isocenter_ras": [5, -3, 12],
            "detector_offset_mm": [2.5, -1.5],
        },
    }
    expected = Cameras.circular_orbit(
        torch.deg2rad(torch.tensor([0.0, 90.0, 200.0], dtype=torch.float64)),
        sid_mm=700.0,
        sdd_mm=1100.0,
        size_px=SIZE,
        pixel_spacing_mm=SPACING,
        isocenter_ras=(5.0, -3.0, 12.0),
        detector_offset_mm=(2.5, -1.5),
        dtype=torch.float64,
    )
    assert_same_cameras(cameras_from_json(orbit), expected, 1e-12)
    rad = copy.deepcopy(orbit)
    rad["circular_orbit"]["angles_rad"] = [math.radians(a) for a in rad["circular_orbit"].pop("angles_deg")]
    assert_same_cameras(cameras_from_json(rad), expected, 1e-12)
    carm = {
        "format": "xraynerf-geometry",
        "version": 1,
        "carm": {
            "primary_deg": [30, -65],
            "secondary_deg": [15, -35],
            "sid_mm": [650, 720],
            "sdd_mm": [1000, 1150],
            "size_px": [40, 30],
            "pixel_spacing_mm": 0.7,
            "patient_position": "HFP",
        },
    }
    expected = Cameras.carm(
        [30.0, -65.0],
        [15.0, -35.0],
        sid_mm=[650.0, 720.0],
        sdd_mm=[1000.0, 1150.0],
        size_px=SIZE,
        pixel_spacing_mm=0.7,
        patient_position="HFP",
        dtype=torch.float64,
    )
    assert_same_cameras(cameras_from_json(carm), expected, 1e-12)


def test_json_hand_rounded_rotation_is_snapped():
    doc = cameras_to_json(general_cameras())
    for view in doc["views"]:
        view["world_from_camera"] = [[round(v, 6) for v in row] for row in view["world_from_camera"]]
    cams = cameras_from_json(doc)
    r = cams.world_from_camera[:, :3, :3]
    assert (r.transpose(-1, -2) @ r - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-12
    given = torch.tensor([v["world_from_camera"] for v in doc["views"]], dtype=torch.float64)
    assert (cams.world_from_camera - given).abs().max() < 2e-6


def _explicit():
    return cameras_to_json(general_cameras())


def _set(path, value):
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return doc

    return mutate


MALFORMED_JSON = {
    "missing_sdd": (_set(["views", 2, "sdd_mm"], KeyError), "missing the field 'views[2].sdd_mm'"),
    "missing_size": (_set(["size_px"], KeyError), "missing the field 'size_px'"),
    "short_principal": (_set(["views", 0, "principal_point_px"], [1.0]), "'views[0].principal_point_px' must have shape [2]"),
    "nan_spacing": (_set(["views", 1, "pixel_spacing_mm"], [0.7, float("nan")]), "'views[1].pixel_spacing_mm' contains NaN"),
    "text_sdd": (_set(["views", 0, "sdd_mm"], "far"), "'views[0].sdd_mm' must be numbers"),
    "matrix_3x4": (_set(["views", 0, "world_from_camera"], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), "must have shape [4, 4]"),
    "mirror": (_set(["views", 0, "world_from_camera"], [[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "reflection"),
    "not_rigid": (_set(["views", 0, "world_from_camera"], [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "not a rotation"),
    "typo": (_set(["views", 0, "sdd"], 1000.0), "unknown field(s) ['sdd']"),
    "format": (_set(["format"], "rtk"), "'format' must be 'xraynerf-geometry'"),
    "version": (_set(["version"], 2), "'version' must be 1"),
    "lps": (_set(["frame"], "LPS"), "'frame' must be 'RAS'"),
    "size": (_set(["size_px"], [40, 0]), "two positive integers"),
    "no_views": (_set(["views"], []), "non-empty list"),
    "negative_sdd": (_set(["views", 0, "sdd_mm"], -5.0), "source-to-detector distance must be > 0"),
    "two_forms": (_set(["carm"], {}), "exactly one of 'views', 'circular_orbit', 'carm'"),
}


@pytest.mark.parametrize("case", list(MALFORMED_JSON))
def test_malformed_json(tmp_path, case):
    mutate, message = MALFORMED_JSON[case]
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(mutate(_explicit())))
    with pytest.raises(ValueError) as info:
        load_geometry(str(path))
    assert message in str(info.value), str(info.value)
    assert f"{case}.json" in str(info.value)


def test_malformed_compact_json():
    base = {
        "format": "xraynerf-geometry",
        "version": 1,
        "size_px": [40, 30],
        "circular_orbit": {"angles_deg": [0, 90], "sid_mm": 700, "sdd_mm": 1100, "pixel_spacing_mm": 0.7},
    }
    for mutate, message in (
        (_set(["circular_orbit", "angles_deg"], KeyError), "exactly one of 'angles_deg', 'angles_rad'"),
        (_set(["circular_orbit", "sid_mm"], KeyError), "missing the field 'circular_orbit.sid_mm'"),
        (_set(["circular_orbit", "sid"], 700), "unknown field(s) ['sid']"),
        (_set(["circular_orbit", "isocenter_ras"], [0, 0]), "'circular_orbit.isocenter_ras' must have shape [3]"),
        (_set(["circular_orbit", "sid_mm"], 1200), "smaller than the source-to-detector distance"),
    ):
        with pytest.raises(ValueError) as info:
            cameras_from_json(mutate(copy.deepcopy(base)))
        assert message in str(info.value), str(info.value)
    carm = {
        "format": "xraynerf-geometry",
        "version": 1,
        "size_px": [40, 30],
        "carm": {"primary_deg": [0, 10, 20], "secondary_deg": [0, 5], "sid_mm": 700, "sdd_mm": 1100, "pixel_spacing_mm": 0.7},
    }
    with pytest.raises(ValueError, match="'carm.secondary_deg' has 2 values; expected 1 or 3"):
        cameras_from_json(carm)


def test_load_geometry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown extension '.txt'"):
        load_geometry(str(tmp_path / "g.txt"))
    with pytest.raises(ValueError, match="does not exist"):
        load_geometry(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{'format': 1}")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        load_geometry(str(bad))
    good = tmp_path / "g.json"
    save_geometry(general_cameras(), str(good))
    with pytest.raises(ValueError, match=r"has detector size \[40, 30\], but \[64, 64\] was given"):
        load_geometry(str(good), size_px=(64, 64))


def test_json_examples_in_docs_load():
    """Every JSON block of docs/geometry_io.md is a valid geometry (the docs cannot drift)."""
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "geometry_io.md")).read()
    blocks = re.findall(r"```json\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 4
    from XRayNeRFLib.projection_matrices import MATRICES_FORMAT, cameras_from_matrices_json

    data = [json.loads(b) for b in blocks]
    matrices = [d for d in data if d["format"] == MATRICES_FORMAT]
    cams = [cameras_from_json(d) for d in data if d["format"] != MATRICES_FORMAT]
    assert [len(c) for c in cams] == [1, 5, 2]
    # the projection-matrix example is the worked example of docs/geometry.md (rounded to 4 decimals)
    (example,) = [cameras_from_matrices_json(d) for d in matrices]
    worked = Cameras.carm(
        30.0,
        10.0,
        sid_mm=750.0,
        sdd_mm=1200.0,
        size_px=(1024, 768),
        pixel_spacing_mm=0.4,
        isocenter_ras=(10.0, -20.0, 30.0),
        dtype=torch.float64,
    )
    assert torch.allclose(example.source_positions(), worked.source_positions(), atol=1.0)
    assert torch.allclose(example.sdd_mm, worked.sdd_mm, rtol=1e-3)
    # the explicit example is the PA view it claims to be
    pa = Cameras.circular_orbit([0.0], sid_mm=600.0, sdd_mm=1000.0, size_px=(4, 3), pixel_spacing_mm=0.5, dtype=torch.float64)
    assert_same_cameras(cams[0], pa, 1e-12)
