"""The ``xraynerf`` command line as a package: README's examples run on the sample data, the ``web`` hook, one
stack-input rule, and the structure the package promises (exit codes and the error wrapper once, no import
circle, no message-text matching, short functions, ruff clean)."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from XRayNeRFLib.cli import main
from XRayNeRFLib.cli.main import COMMANDS, build_parser
from XRayNeRFLib.projection_set import ProjectionSet, is_stack_input
from XRayNeRFLib.projections_io import load_projection_stack

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "XRayNeRFLib"
SAMPLE = ROOT / "Resources" / "SampleData"


# ----------------------------------------------------------------------------------------------------
# README and docs examples
# ----------------------------------------------------------------------------------------------------
def _xraynerf_lines(path: Path):
    """Every command line ``[.venv/bin/]xraynerf SUBCOMMAND ...`` in a Markdown file's code blocks and inline
    code, as argument lists (without the executable)."""
    text = path.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text):
        for line in block.splitlines():
            m = re.search(r"(?:\.venv/bin/)?\bxraynerf ((?:drr|convert|info|register|reconstruct|web)\b[^#]*)", line)
            if m:
                found.append(shlex.split(m.group(1)))
    return found


def test_readme_examples_parse_and_help_runs(capsys):
    """Every README command line parses with today's parser (same subcommand and flags), and each --help exits 0."""
    lines = _xraynerf_lines(ROOT / "README.md")
    assert any(a[0] == "drr" and "--help" not in a for a in lines) and any(a[0] == "reconstruct" and "--volume" not in a for a in lines)
    for argv in (a for a in lines if len(a) > 1):  # a bare `xraynerf reconstruct` in prose names the command only
        if "--help" in argv:
            with pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == 0, argv
            assert "usage: xraynerf " + argv[0] in capsys.readouterr().out
        else:
            args, rest = build_parser().parse_known_args(argv)
            assert rest == [] and args.command == argv[0], argv


def test_docs_examples_parse():
    """The command lines of docs/*.md without placeholders ([...], ...) parse with today's parser."""
    n = 0
    for md in sorted((ROOT / "docs").glob("*.md")):
        for argv in _xraynerf_lines(md):
            if any("[" in a or a == "..." for a in argv) or len(argv) == 1 or argv == [argv[0], "--help"]:
                continue
            args, rest = build_parser().parse_known_args(argv)
            assert rest == [] and args.command == argv[0], (md.name, argv)
            n += 1
    assert n >= 6


def test_readme_drr_example_runs_unchanged(tmp_path, monkeypatch, capsys):
    """README's DRR command with its exact flags (paths relative to the repository, output under out/)."""
    argv = next(a for a in _xraynerf_lines(ROOT / "README.md") if a[0] == "drr" and "--help" not in a)
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "Resources", tmp_path / "Resources")
    assert main(argv) == 0, capsys.readouterr().err
    images, spacing, _ = load_projection_stack(argv[argv.index("--out") + 1])
    assert tuple(images.shape) == (60, 154, 144) and float(images.max()) > 5.0  # the README's 144 x 154 x 60
    assert "wrote out/projections.mha" in capsys.readouterr().err


def test_register_sample_fluoroscopy_without_init(tmp_path, capsys):
    """`xraynerf register` on the sample DICOM fluoroscopy and CT with no --init: the X-ray is read as the Slicer
    module reads it (ProjectionSet.from_dicom, isocentre at the CT centre) and the CT correction found is the
    transform the sample was made with (Resources/SampleData/chest_fluoroscopy_setup.json)."""
    setup = json.loads((SAMPLE / "chest_fluoroscopy_setup.json").read_text())
    out = tmp_path / "r.json"
    rc = main(
        [
            "register",
            "--volume",
            str(SAMPLE / "chest_ct_128.nii.gz"),
            "--image",
            str(SAMPLE / setup["dicom"]),
            "--out",
            str(out),
            "--levels",
            "4",
            "2",
            "--threads",
            "1",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    from XRayNeRFLib.registration.pose import pose_errors

    e = pose_errors(torch.tensor(res["ct_correction_ras"]), torch.tensor(setup["ct_to_parent_ras"]), torch.tensor(setup["isocenter_ras"]))
    assert e["rotation_deg"] < 1.0 and e["translation_mm"] < 2.0, e


def test_register_dicom_route_is_the_projection_set_route():
    """The command line's DICOM X-ray is the ProjectionSet the Slicer module gets, with the CT centre as isocentre."""
    from XRayNeRFLib.cli.register import load_xray, view_files
    from XRayNeRFLib.dicom_xray import GeometryOverrides
    from XRayNeRFLib.registration.pose import ct_isocenter_ras
    from XRayNeRFLib.volume import load_volume

    setup = json.loads((SAMPLE / "chest_fluoroscopy_setup.json").read_text())
    volume = load_volume(str(SAMPLE / "chest_ct_128.nii.gz"))
    assert ct_isocenter_ras(volume).tolist() == pytest.approx(setup["isocenter_ras"], abs=1e-4)
    args = build_parser().parse_args(["register", "--volume", "v", "--image", str(SAMPLE / setup["dicom"]), "--out", "o.json"])
    ((path, camera, init),) = view_files(args)
    image, mask, cams, notes = load_xray(path, camera, init, args, volume)
    ps = ProjectionSet.from_dicom([str(SAMPLE / setup["dicom"])], GeometryOverrides(isocenter_ras=setup["isocenter_ras"]))
    torch.testing.assert_close(cams.world_from_camera, ps.cameras.world_from_camera.double(), rtol=0, atol=1e-4)
    assert torch.equal(image, ps.images[0]) and torch.equal(mask, ps.masks[0])
    assert not any("RAS origin" in n for n in notes)


def test_ct_correction_from_poses_matches_the_parametrization():
    from XRayNeRFLib.registration.pose import PoseParametrization, ct_correction_from_poses

    w0 = torch.eye(4, dtype=torch.float64)
    w0[:3, 3] = torch.tensor([10.0, -800.0, 5.0])
    param = PoseParametrization(w0, torch.tensor([1.0, 2.0, 3.0]))
    x = torch.tensor([2.0, -1.0, 3.0, 4.0, -5.0, 6.0], dtype=torch.float64)
    torch.testing.assert_close(ct_correction_from_poses(param.world_from_camera(x), w0), param.ct_correction_ras(x), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# xraynerf web
# ----------------------------------------------------------------------------------------------------
def test_web_without_the_extra_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "XRayNeRFWeb", None)  # not importable, as without `pip install xraynerf[web]`
    monkeypatch.delitem(sys.modules, "XRayNeRFWeb.cli", raising=False)
    assert main(["web", "--port", "8080"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xraynerf web:") and "pip install xraynerf[web]" in err, err


def test_web_hands_its_arguments_to_the_web_package(monkeypatch, capsys):
    seen = {}
    web = types.ModuleType("XRayNeRFWeb.cli")
    web.add_arguments = lambda p: p.add_argument("--port", type=int, default=1234)

    def run(args):
        seen["port"] = args.port
        if args.port == 13:
            raise ValueError("port 13 is taken")
        return 0

    web.run = run
    monkeypatch.setitem(sys.modules, "XRayNeRFWeb", types.ModuleType("XRayNeRFWeb"))
    monkeypatch.setitem(sys.modules, "XRayNeRFWeb.cli", web)
    assert main(["web", "--port", "8080"]) == 0 and seen["port"] == 8080
    assert main(["web"]) == 0 and seen["port"] == 1234
    assert main(["web", "--port", "13"]) == 2 and "xraynerf web: error: port 13 is taken" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["web", "--help"])
    assert e.value.code == 0 and "--port" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # other subcommands still refuse unknown flags
        main(["info", "x.dcm", "--port", "1"])
    assert e.value.code == 2


# ----------------------------------------------------------------------------------------------------
# One rule for "is this a projection stack?"
# ----------------------------------------------------------------------------------------------------
def test_stack_input_rule(tmp_path):
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes(b"")
    (tmp_path / "dicoms").mkdir()
    (tmp_path / "dicoms" / "a.dcm").write_bytes(b"")
    for name, stack in (
        ("p.mha", True),
        ("P.MHD", True),
        ("p.nrrd", True),
        ("p.nii", True),
        ("p.nii.gz", True),
        ("x.dcm", False),
        ("IM0001", False),
        ("pngs", True),
        ("dicoms", False),
    ):
        assert is_stack_input(str(tmp_path / name)) is stack, name


def test_mhd_stack_is_read_as_a_stack_by_info_and_reconstruct(tmp_path, capsys):
    """A MetaImage .mhd/.raw stack (RTK's tools write them) is a projection stack for every command (cli_inputs
    sent it to the DICOM reader, cli_recon did not: one rule now)."""
    import SimpleITK as sitk

    from XRayNeRFLib.geometry import Cameras

    cams = Cameras.circular_orbit(
        torch.linspace(0, 6.0, 8), sid_mm=500.0, sdd_mm=800.0, size_px=(12, 10), pixel_spacing_mm=4.0, dtype=torch.float64
    )
    ProjectionSet(torch.rand(8, 10, 12) + 0.5, cams).save(str(tmp_path / "p.mha"), str(tmp_path / "g.json"))
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "p.mha")), str(tmp_path / "p.mhd"))
    assert main(["info", str(tmp_path / "p.mhd")]) == 2
    assert "is a projection stack: give its geometry with --geometry" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "p.mhd"), "--geometry", str(tmp_path / "g.json")]) == 0
    assert "8 views, 12 x 10 pixels" in capsys.readouterr().out
    assert main(["reconstruct", "--projections", str(tmp_path / "p.mhd"), "--out", str(tmp_path / "v.nii.gz"), "--quiet"]) == 2
    assert "is a projection stack" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------------------
def _py_files(*dirs):
    for d in dirs:
        yield from sorted(Path(d).rglob("*.py"))


def test_exit_codes_and_error_wrapper_live_in_common_only():
    for path in _py_files(LIB):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id.startswith("EXIT_"):
                        assert path.name == "common.py", f"{path}: {t.id} defined outside cli/common.py"
            if isinstance(node, ast.ExceptHandler) and path.parent.name == "cli" and path.name != "common.py":
                names = ast.dump(node.type) if node.type is not None else "bare"
                wrapper = "KeyboardInterrupt" in names or ("'ValueError'" in names and "'RuntimeError'" in names) or names == "bare"
                assert not wrapper, f"{path}:{node.lineno}: an error wrapper outside common.py"
    assert set(COMMANDS) == {"drr", "convert", "info", "register", "reconstruct"}


def test_no_branching_on_error_message_text():
    """No ``... in str(exc)`` / ``str(error).startswith`` on exceptions: callers branch on the class (errors.py)."""
    pattern = re.compile(
        r"""(["'][^"']*["']\s+(not\s+)?in\s+str\((e|exc|err|error|ex)\))|str\((e|exc|err|error|ex)\)\.(startswith|endswith|find)"""
    )
    offenders = [
        f"{p}:{i}"
        for p in _py_files(LIB, ROOT / "XRayNeRF")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_cli_imports_form_no_circle_and_are_at_module_level():
    """cli/common.py imports no sibling; the sibling graph is acyclic; no function-level imports dodge a circle
    (the one exception: main.run_web's importlib of the optional web package)."""
    cli = LIB / "cli"
    graph = {}
    for path in _py_files(cli):
        tree = ast.parse(path.read_text())
        mod = path.stem
        graph[mod] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                graph[mod] |= {node.module} if node.module else {a.name for a in node.names}
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert inner == [], f"{path}: {fn.name} imports inside the function"
    assert graph["common"] == set()
    seen, stack = set(), []

    def visit(m):
        assert m not in stack, f"import circle: {stack + [m]}"
        if m in seen or m not in graph:
            return
        stack.append(m)
        for n in graph[m]:
            visit(n)
        stack.pop()
        seen.add(m)

    for m in graph:
        visit(m)
    # and each module imports on its own, in a fresh interpreter (no import-order dependence)
    code = (
        "import importlib\nfor m in ('common', 'drr', 'inputs', 'reconstruct', 'register', 'main'):\n    "
        "importlib.import_module('XRayNeRFLib.cli.' + m)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(ROOT))


def test_no_function_over_120_lines():
    """No function in the engine is longer than 120 lines (none is exempt: split long ones at their section comments)."""
    long = []
    for path in _py_files(LIB):
        rel = path.relative_to(LIB).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 120:
                long.append(f"{rel}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_is_clean(command):
    """`ruff check .` and `ruff format --check .` (pyproject's [tool.ruff]: line length 140 enforced) on the whole tree:
    engine, Slicer modules, web app, tests, benchmarks, scripts. ruff is in the test extra, so a missing ruff fails here
    rather than skipping."""
    proc = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=str(ROOT), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_progress_bar_counts_deciles_on_a_pipe():
    import io

    from XRayNeRFLib.cli.common import TextProgress
    from XRayNeRFLib.progress import Progress

    stream = io.StringIO()
    bar = TextProgress("x", stream=stream)
    for i in range(0, 101):
        assert bar(Progress(i, 100, "")) is True
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("x [" + "#" * 30 + "] 100.0%")
    assert np.all(np.diff([float(ln.split("]")[1].split("%")[0]) for ln in lines]) > 0)


# ----------------------------------------------------------------------------------------------------
# Typed DICOM errors: a front end words its own remedy from the fields, the command line prints one line
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tags, overrides, tag_text",
    [
        ({"sdd_mm": 0.0}, ("sdd_mm",), "(0018,1110)"),
        ({"sdd_mm": 700.0, "sid_mm": 900.0}, ("sid_mm", "sdd_mm"), "(0018,1110)"),
        ({"sdd_mm": None}, ("sdd_mm",), "(0018,1110)"),
    ],
)
def test_unusable_dicom_geometry_is_a_typed_error_naming_file_tag_and_flag(tmp_path, capsys, tags, overrides, tag_text):
    fac = pytest.importorskip("dicom_factory")
    from XRayNeRFLib.dicom_xray import FLAG, read_dicom_xray
    from XRayNeRFLib.errors import TagValueError

    kw = {"sdd_mm": fac.SDD, "sid_mm": fac.SID, "imager_spacing_rc": fac.SPACING[::-1]}
    kw.update(tags)
    path = fac.write_xray(str(tmp_path / "bad.dcm"), np.full((1, fac.SIZE[1], fac.SIZE[0]), 1000.0), **kw)
    with pytest.raises(TagValueError) as err:
        read_dicom_xray(path)
    e = err.value
    assert e.overrides == overrides and e.flags == tuple(FLAG[k] for k in overrides) and e.path == path
    assert str(e).startswith(e.problem + "; ") and "--" not in e.problem and tag_text in e.problem
    assert main(["info", path]) == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and "bad.dcm" in line and tag_text in line and all(f in line for f in e.flags), line


def test_python_dash_m_runs_the_command_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "XRayNeRFLib.cli", "--version"], capture_output=True, text=True, env=env, cwd=str(ROOT))
    assert proc.returncode == 0 and proc.stdout.startswith("xraynerf "), proc.stderr
