"""A non-editable install (``pip install .``) carries the data files the app reads: the wheel is built from a copy
of this tree (pip, no build isolation: no network) and its file list is checked; then the unpacked wheel, and
nothing else of this tree, is imported to see that ``XRayNeRFMRML.sampledata`` and the nerf method's default
head find their files inside it (XRayNeRFLib/resources.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ("pyproject.toml", "README.md", "XRayNeRFLib", "XRayNeRF/XRayNeRFMRML", "XRayNeRFWeb", "Resources")
SAMPLE_FILES = ("chest_ct_128.nii.gz", "chest_projections_30.mha", "chest_projections_30.json")
SAMPLE_FILES += ("chest_fluoroscopy_lao20_cra10.dcm", "chest_fluoroscopy_setup.json")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for rel in PACKAGED:
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / rel, src / rel)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (found,) = out.glob("xraynerf-*.whl")
    return found


def test_the_wheel_carries_the_sample_data_and_model_heads_the_app_reads(wheel):
    from XRayNeRFMRML import sampledata

    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {sampledata.CT_FILE, *sampledata.PROJECTIONS_FILES, *sampledata.FLUOROSCOPY_FILES}
    assert needed == set(SAMPLE_FILES)  # the list above is the loaders' (a new sample file must be packaged too)
    for name in needed:
        assert f"XRayNeRFLib/Resources/SampleData/{name}" in names, name
    for head in ("hashgrid_head_prior_norm.pt", "hashgrid_head_prior_plain.pt"):
        assert f"XRayNeRFLib/Resources/Models/{head}" in names, head
    assert "XRayNeRFWeb/app.py" in names and "XRayNeRFMRML/sampledata.py" in names


def test_the_installed_wheel_finds_its_own_sample_data(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import XRayNeRFLib, XRayNeRFMRML.sampledata as s\n"
        "from XRayNeRFLib.recon.nerf import NerfSettings, default_mci_path\n"
        "print(XRayNeRFLib.__file__)\n"
        "print(s.sample_data_dir())\n"
        "for n in (s.CT_FILE, *s.PROJECTIONS_FILES, *s.FLUOROSCOPY_FILES): s.verify(s.sample_data_dir() / n)\n"
        "print(default_mci_path(NerfSettings().normalize))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))  # the unpacked wheel only: not this tree
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lib, data, head = (Path(line) for line in r.stdout.split("\n")[-4:-1])
    assert lib.is_relative_to(site) and data.is_relative_to(site) and head.is_relative_to(site), r.stdout
    assert head.is_file()
