"""The web app's data folder rules (XRayNeRFWeb/datadir.py) and its scene hand-over between the event loop and
a worker (XRayNeRFWeb/jobs.py), without a browser or a server."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from XRayNeRFWeb.datadir import DataDir, UnreadableUploadError, UnsafePathError, UploadTooLargeError, clean_file_name
from XRayNeRFWeb.jobs import BusyError, JobRunner
from XRayNeRFWeb.pose import mean_target_error_mm, nudged

pytest.importorskip("SimpleITK")


@pytest.fixture
def data(tmp_path):
    return DataDir(tmp_path / "data", max_upload_bytes=1000)


def test_paths_inside_are_served(data):
    (data.root / "sub").mkdir()
    (data.root / "sub" / "ct.nii.gz").write_bytes(b"x")
    assert data.resolve("sub/ct.nii.gz") == data.root / "sub" / "ct.nii.gz"
    assert data.resolve("./sub/./ct.nii.gz") == data.root / "sub" / "ct.nii.gz"
    with pytest.raises(FileNotFoundError):
        data.resolve("sub/missing.nii.gz")


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "sub/../../x", "..", "", "a\x00b", "..\\x", "C:/Windows/win.ini"])
def test_escapes_are_refused(data, bad):
    with pytest.raises(UnsafePathError) as info:
        data.resolve(bad)
    assert "refused" in str(info.value)


def test_links_out_are_refused_links_in_are_served(data, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, data.root / "link_out")
    os.symlink(tmp_path, data.root / "dir_out")
    (data.root / "inside.json").write_text("{}")
    os.symlink(data.root / "inside.json", data.root / "link_in")
    with pytest.raises(UnsafePathError, match="links outside"):
        data.resolve("link_out")
    with pytest.raises(UnsafePathError, match="links outside"):
        data.resolve("dir_out/secret.txt")
    assert data.resolve("link_in") == data.root / "inside.json"
    assert "link_out" not in data.listing() and "inside.json" in data.listing()


def test_uploads_bounded_and_checked(data):
    with pytest.raises(UploadTooLargeError) as info:
        data.save_upload("big.nii.gz", b"0" * 1001)
    assert info.value.size_bytes == 1001 and info.value.limit_bytes == 1000
    with pytest.raises(UnreadableUploadError, match="not a readable image or DICOM"):
        data.save_upload("notes.txt", b"hello")
    with pytest.raises(UnreadableUploadError, match="not a readable .nii.gz image"):
        data.save_upload("fake.nii.gz", b"hello")
    with pytest.raises(UnreadableUploadError, match="not a JSON document"):
        data.save_upload("geometry.json", b"{oops")
    assert not (data.root / "uploads").exists() or not any((data.root / "uploads").iterdir())
    path = data.save_upload("../../evil name.json", b'{"a": 1}')
    assert path.parent == data.root / "uploads" and path.name == "evil_name.json"
    again = data.save_upload("evil name.json", b'{"a": 2}')
    assert again.name == "evil_name-1.json" and path.read_text() == '{"a": 1}'


def test_clean_file_name():
    assert clean_file_name("..\\..\\x y.dcm") == "x_y.dcm"
    assert clean_file_name("/etc/passwd") == "passwd"
    assert clean_file_name("...") == "upload"


def test_nudge_is_a_rigid_move_about_the_ct_centre():
    import numpy as np

    base = np.eye(4)
    base[:3, 3] = (1.0, 2.0, 3.0)
    centre = np.array([10.0, -5.0, 20.0])
    assert np.allclose(nudged(base, centre, (0, 0, 0), (0, 0, 0)), base)
    m = nudged(base, centre, (0, 0, 30), (0, 0, 0))
    c = base @ np.r_[centre, 1.0]
    assert np.allclose(m @ np.r_[centre, 1.0], c)  # the centre stays
    assert np.isclose(np.linalg.det(m[:3, :3]), 1.0)
    t = nudged(base, centre, (0, 0, 0), (2.0, -1.0, 0.5))
    assert np.allclose(t[:3, 3] - base[:3, 3], (2.0, -1.0, 0.5))
    assert mean_target_error_mm(t, base, np.zeros((3, 3))) == pytest.approx(np.linalg.norm((2.0, -1.0, 0.5)))


def test_gate_parks_the_loop_while_the_worker_holds_the_scene():
    """While the worker holds the scene no loop callback runs; inside ``job.call_engine`` (the layer's hook,
    XRayNeRFMRML/engine_call.py) they do, and the engine's progress callback runs holding the scene."""
    loop = asyncio.new_event_loop()
    ticks = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    runner = JobRunner()  # as the app gets it: attached to the server's loop when the server is ready
    with pytest.raises(RuntimeError, match="not attached"):
        runner.start("early", lambda job: None, lambda r, e: None)
    runner.attach(loop)

    def engine(seconds, progress=None):
        time.sleep(seconds)
        return progress(1)

    spans = {}

    def work(job):
        t0 = time.monotonic()
        time.sleep(0.2)  # "MRML work": the loop must not tick
        spans["held"] = (t0, time.monotonic())
        t1 = time.monotonic()
        seen = job.call_engine(engine, 0.2, progress=lambda p: job.gate.held_here())
        spans["free"] = (t1, time.monotonic())
        return seen, job.gate.held_here()

    results = []

    async def main():
        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        runner.start("test", work, lambda r, e: results.append((r, e)))
        with pytest.raises(BusyError):
            runner.start("second", work, lambda r, e: None)
        while not results:
            await asyncio.sleep(0.01)
        task.cancel()

    loop.run_until_complete(main())
    loop.close()
    assert results == [((True, True), None)]  # the progress callback ran holding the scene, and the worker got it back
    held, free = spans["held"], spans["free"]
    assert not [t for t in ticks if held[0] + 0.01 < t < held[1] - 0.01]
    assert len([t for t in ticks if free[0] < t < free[1]]) >= 5
    assert threading.active_count() >= 1 and runner.job is None
    with pytest.raises(RuntimeError, match="holds the scene"):  # not from a thread that does not hold the scene
        runner.gate.call_engine(engine, 0.0, progress=lambda p: p)


def test_cli_help_and_the_host_warning():
    """``python -m XRayNeRFWeb --help`` (the arguments of ``xraynerf web``) without importing trame or VTK."""
    import subprocess
    import sys

    from XRayNeRFWeb.cli import host_warning

    out = subprocess.run([sys.executable, "-m", "XRayNeRFWeb", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--data-dir", "--host", "--port", "--max-upload-mb"):
        assert flag in out.stdout
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert "no login" in host_warning("0.0.0.0")
