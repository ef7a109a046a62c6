"""``xraynerf reconstruct`` end to end on a tiny phantom: a stack + RTK XML (FDK, metrics against the
ground truth), a stack + JSON (voxel, HU, uncertainty), a synthetic DICOM rotational run (geometry and
LOG intensities from the tags), Ctrl-C -> best so far written with a warning, and bad inputs (exit 2,
one line naming what to fix, nothing written)."""

import os
import re
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import dicom_factory as fac  # noqa: E402
from recon_phantoms import analytic_projections, ground_truth, orbit  # noqa: E402

from XRayNeRFLib.cli import main  # noqa: E402
from XRayNeRFLib.cli import reconstruct as cli_recon  # noqa: E402
from XRayNeRFLib.projection_set import ProjectionSet  # noqa: E402
from XRayNeRFLib.recon.fov import default_grid  # noqa: E402
from XRayNeRFLib.volume import Volume, load_volume, save_volume  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("recon_cli")
    cams = orbit(12)
    proj = analytic_projections(cams).float()
    ProjectionSet(proj, cams).save(str(d / "p.mha"), str(d / "g.xml"))
    ProjectionSet(proj, cams).save(str(d / "pj.mha"), str(d / "g.json"))
    ProjectionSet(proj[:6], cams[:6]).save(str(d / "p6.mha"), str(d / "g6.json"))
    like = default_grid(cams, grid=16)
    save_volume(Volume(ground_truth(like), like.ras_from_ijk), str(d / "gt.nii.gz"))
    return d, cams, proj, like


def _psnr(out: str) -> float:
    return float(re.search(r"PSNR (-?[\d.]+) dB", out).group(1))


def test_stack_xml_fdk_with_reference(data, capsys):
    d, cams, proj, like = data
    out = str(d / "fdk.nii.gz")
    rc = main(
        [
            "reconstruct",
            "--projections",
            str(d / "p.mha"),
            "--geometry",
            str(d / "g.xml"),
            "--out",
            out,
            "--grid",
            "16",
            "--reference",
            str(d / "gt.nii.gz"),
            "--quiet",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    vol = load_volume(out)
    assert vol.data.shape == like.data.shape
    assert torch.allclose(vol.ras_from_ijk.double(), like.ras_from_ijk.double(), atol=1e-4)  # RAS placement survives the file
    assert _psnr(text) > 24.0 and "SSIM" in text and "MAE inside the body" in text  # measured 27.1 dB
    assert not [n for n in os.listdir(d) if ".part" in n]


def test_an_mhd_output_is_two_files_under_their_final_names(data, tmp_path, capsys):
    """.mhd is a header naming its data file: both land under the output's name, and nothing temporary is left."""
    d, *_ = data
    out = tmp_path / "fdk.mhd"
    rc = main(
        ["reconstruct", "--projections", str(d / "p.mha"), "--geometry", str(d / "g.xml"), "--out", str(out), "--grid", "8", "--quiet"]
    )
    assert rc == 0, capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["fdk.mhd", "fdk.raw"]
    assert "ElementDataFile = fdk.raw" in out.read_text()
    (tmp_path / "moved").mkdir()
    for name in ("fdk.mhd", "fdk.raw"):
        os.replace(tmp_path / name, tmp_path / "moved" / name)
    assert load_volume(str(tmp_path / "moved" / "fdk.mhd")).data.shape[1:] == (8, 8)


def test_missing_output_directories_are_created_only_on_success(data, tmp_path, capsys):
    d, *_ = data
    out = tmp_path / "new" / "deeper" / "fdk.nii.gz"
    bad = main(
        ["reconstruct", "--projections", str(d / "p6.mha"), "--geometry", str(d / "g.json"), "--out", str(out), "--grid", "8", "--quiet"]
    )
    assert bad == 2 and not (tmp_path / "new").exists()  # a failed run creates nothing
    rc = main(
        ["reconstruct", "--projections", str(d / "p.mha"), "--geometry", str(d / "g.xml"), "--out", str(out), "--grid", "8", "--quiet"]
    )
    assert rc == 0 and load_volume(str(out)).data.shape[1:] == (8, 8)  # 8 across the scanned cylinder
    (tmp_path / "afile").write_text("x")
    capsys.readouterr()
    rc = main(
        [
            "reconstruct",
            "--projections",
            str(d / "p.mha"),
            "--geometry",
            str(d / "g.xml"),
            "--out",
            str(tmp_path / "afile" / "v.nii.gz"),
            "--grid",
            "8",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "is a file" in err and err.count("\n") == 1


def test_stack_json_voxel_hu_uncertainty(data, capsys):
    d, *_ = data
    out, unc = str(d / "vox.nii.gz"), str(d / "unc.nrrd")
    rc = main(
        [
            "reconstruct",
            "--projections",
            str(d / "pj.mha"),
            "--geometry",
            str(d / "g.json"),
            "--out",
            out,
            "--grid",
            "12",
            "--method",
            "voxel",
            "--iterations",
            "8",
            "--renderer",
            "trilinear",
            "--units",
            "hu",
            "--uncertainty",
            unc,
            "--ensemble-size",
            "2",
            "--quiet",
        ]
    )  # the default voxel solver: os-tv, default passes
    assert rc == 0, capsys.readouterr().err
    v, u = load_volume(out, units="hu"), load_volume(unc, units="hu")
    assert float(v.data.min()) < -500 and float(v.data.max()) > 0  # air and the water-like body in HU
    assert u.data.shape == v.data.shape and float(u.data.min()) >= 0 and float(u.data.max()) > 1.0


def test_stack_voxel_os_tv_solver(data, capsys):
    """--solver os-tv (3 passes of 4 subsets) beats FDK against the reference on the same data."""
    d, *_ = data
    psnrs = {}
    for name, extra in (
        ("fdk", []),
        (
            "ostv",
            [
                "--method",
                "voxel",
                "--solver",
                "os-tv",
                "--iterations",
                "3",
                "--subsets",
                "4",
                "--relaxation",
                "1.0",
                "--renderer",
                "trilinear",
            ],
        ),
    ):
        out = str(d / f"cmp_{name}.nii.gz")
        rc = main(
            [
                "reconstruct",
                "--projections",
                str(d / "pj.mha"),
                "--geometry",
                str(d / "g.json"),
                "--out",
                out,
                "--grid",
                "16",
                "--reference",
                str(d / "gt.nii.gz"),
                "--quiet",
                *extra,
            ]
        )
        text = capsys.readouterr().out
        assert rc == 0, text
        psnrs[name] = _psnr(text)
    assert psnrs["ostv"] > psnrs["fdk"] + 2.0, psnrs


def test_dicom_rotational_run(tmp_path, capsys):
    angles = np.arange(-165.0, 180.0, 30.0)
    cams = fac.truth_cameras(angles, [0.0] * len(angles))
    vol = fac.phantom_volume()
    stored = fac.stored_from_bev(1000 * fac.drr(cams, vol).numpy() + 100)
    path = fac.write_xray(
        str(tmp_path / "run.dcm"),
        stored,
        primary_deg=float(angles[0]),
        primary_increments=angles,
        sdd_mm=fac.SDD,
        sid_mm=fac.SID,
        imager_spacing_rc=fac.SPACING[::-1],
        relationship="LOG",
        sign=-1,
    )
    save_volume(vol, str(tmp_path / "phantom.nii.gz"))
    out = str(tmp_path / "d.nii.gz")
    rc = main(
        [
            "reconstruct",
            "--projections",
            path,
            "--out",
            out,
            "--grid",
            "32",
            "--log-scale",
            "1000",
            "--reference",
            str(tmp_path / "phantom.nii.gz"),
            "--quiet",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "resampled" in text and _psnr(text) > 25.0  # measured 27.7 dB (12 views, FDK)


def test_ctrl_c_writes_best_so_far(data, capsys, monkeypatch):
    d, *_ = data

    class SoonInterrupted(cli_recon._Interrupt):
        reads = 0

        @property
        def requested(self):
            SoonInterrupted.reads += 1
            return SoonInterrupted.reads > 3

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(cli_recon, "_Interrupt", SoonInterrupted)
    out = str(d / "stopped.nii.gz")
    rc = main(
        [
            "reconstruct",
            "--projections",
            str(d / "pj.mha"),
            "--geometry",
            str(d / "g.json"),
            "--out",
            out,
            "--grid",
            "12",
            "--method",
            "voxel",
            "--iterations",
            "200",
            "--renderer",
            "trilinear",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0 and "stopped early; wrote the best volume so far" in err
    assert float(load_volume(out).data.max()) > 0.005


@pytest.mark.parametrize(
    "args, message",
    [
        (["--projections", "{d}/p6.mha", "--geometry", "{d}/g.json"], "6 projections but the geometry has 12 views"),
        (["--projections", "{d}/pj.mha", "--geometry", "{d}/g6.json"], "12 projections but the geometry has 6 views"),
        (["--projections", "{d}/pj.mha"], "give its geometry with --geometry"),
        (["--projections", "{d}/zero.mha", "--geometry", "{d}/g.json"], "outside the field of view"),
        (["--projections", "{d}/same.mha", "--geometry", "{d}/same.json"], "same direction"),
        (["--projections", "{d}/nan.mha", "--geometry", "{d}/g.json"], "NaN"),
        (
            ["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--window", "hann", "--method", "voxel"],
            "--window applies to --method fdk",
        ),
        (
            ["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--iterations", "5"],
            "--iterations applies to --method voxel or nerf",
        ),
        (
            ["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--renderer", "siddon"],
            "--renderer applies to --method voxel or nerf only",
        ),
        (["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--reference", "{d}/far.nii.gz"], "does not contain the centre"),
        (
            ["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--method", "voxel", "--solver", "os-tv", "--lr", "0.1"],
            "--lr apply to --solver adam only",
        ),
        (
            ["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--method", "voxel", "--solver", "adam", "--subsets", "4"],
            "--subsets applies to --method voxel --solver os-tv",
        ),
        (["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--solver", "os-tv"], "--solver applies to --method voxel"),
        (
            ["--projections", "{d}/pj.mha", "--geometry", "{d}/g.json", "--method", "voxel", "--rays-per-view", "50"],
            "(the default voxel solver); add --solver adam to use them",
        ),
    ],
)
def test_bad_inputs(data, capsys, args, message):
    d, cams, proj, like = data
    if not (d / "zero.mha").exists():
        ProjectionSet(torch.zeros_like(proj), cams).save(str(d / "zero.mha"), str(d / "zero.json"))
        same = cams[[0] * 12]
        ProjectionSet(proj[[0] * 12], same).save(str(d / "same.mha"), str(d / "same.json"))
        from XRayNeRFLib.projections_io import save_projection_stack

        bad = proj.clone()
        bad[2, 3, 4] = float("nan")
        save_projection_stack(
            bad, str(d / "nan.mha"), spacing_mm=[2.0, 2.0], metadata={"quantity": "line_integral", "row_order": "xraynerf"}
        )
        a = like.ras_from_ijk.clone()
        a[:3, 3] += 1000.0
        save_volume(Volume(torch.ones(like.data.shape), a), str(d / "far.nii.gz"))
    out = d / "never.nii.gz"
    rc = main(["reconstruct", *[a.format(d=d) for a in args], "--out", str(out), "--grid", "8", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xraynerf reconstruct: error:") and message in lines[0], err
    assert not out.exists()


def test_documented_examples(data, tmp_path, monkeypatch, capsys):
    """Every ``xraynerf reconstruct`` line of docs/reconstruction.md runs (grids and iterations made tiny)."""
    import shlex
    import shutil

    d, cams, proj, like = data
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "reconstruction.md")) as f:
        lines = [ln.strip() for ln in f if ln.strip().startswith("xraynerf reconstruct")]
    assert len(lines) >= 4
    for src, dst in (("p.mha", "proj.mha"), ("g.xml", "geom.xml"), ("gt.nii.gz", "gt.nii.gz")):
        shutil.copy(d / src, tmp_path / dst)
    ProjectionSet(proj, cams).save(str(tmp_path / "proj_json.mha"), str(tmp_path / "geom.json"))
    angles = np.arange(-165.0, 180.0, 30.0)
    dcams = fac.truth_cameras(angles, [0.0] * len(angles))
    stored = fac.stored_from_bev(1000 * fac.drr(dcams, fac.phantom_volume()).numpy() + 100)
    os.makedirs(tmp_path / "dicom_dir")
    fac.write_xray(
        str(tmp_path / "dicom_dir" / "run.dcm"),
        stored,
        primary_deg=float(angles[0]),
        primary_increments=angles,
        sdd_mm=fac.SDD,
        sid_mm=fac.SID,
        imager_spacing_rc=fac.SPACING[::-1],
        relationship="LOG",
        sign=-1,
    )
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("XRayNeRFLib.recon.nerf")
    for line in lines:
        argv = shlex.split(line)[1:]
        if "geom.json" in argv:
            argv[argv.index("proj.mha")] = "proj_json.mha"
        for flag, value in (("--grid", "12"), ("--iterations", "4"), ("--spacing-mm", "5")):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
        if "--method" in argv and argv[argv.index("--method") + 1] == "nerf":
            argv += ["--grid", "10", "--rays-per-view", "50"]
        rc = main(argv + ["--quiet"])
        captured = capsys.readouterr()
        assert rc == 0, (line, captured.err)
        assert os.path.exists(argv[argv.index("--out") + 1]), line


def test_readme_main_command_on_the_sample_data(tmp_path, capsys):
    """README's quick start (grid reduced to 48 voxels across, 3 passes, to stay quick): the bundled 30-view chest
    projections reconstruct with the default voxel solver to a volume that beats FDK against the bundled CT."""
    import shlex

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        line = next(ln.strip() for ln in f if "xraynerf reconstruct --projections Resources/SampleData" in ln)
    argv = shlex.split(line.split("&&", 1)[1])[1:]  # drop setup and the executable
    assert argv[0] == "reconstruct" and "--reference" in argv
    argv = [os.path.join(root, a) if a.startswith("Resources/") else a for a in argv]
    argv[argv.index("--out") + 1] = str(tmp_path / "out" / "chest_recon.nii.gz")
    scores = {}
    for method, extra in (("voxel", ["--iterations", "3"]), ("fdk", [])):
        run = list(argv)
        if method == "fdk":
            if "--renderer" in run:  # FDK has no renderer
                i = run.index("--renderer")
                del run[i : i + 2]
            run[run.index("--method") + 1] = "fdk"
        assert main(run + ["--grid", "48", "--quiet"] + extra) == 0, capsys.readouterr().err
        scores[method] = _psnr(capsys.readouterr().out)
    assert (tmp_path / "out" / "chest_recon.nii.gz").is_file()
    assert scores["voxel"] > scores["fdk"] + 2.0, scores
