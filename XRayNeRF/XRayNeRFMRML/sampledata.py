"""XRayNeRF's sample data in Slicer's Sample Data module (category "XRayNeRF"), from the installed
``Resources/SampleData`` (file URIs: nothing is downloaded; SHA256 checksums are verified).

- **XRayNeRF chest CT**: ``chest_ct_128.nii.gz``, a real chest CT in HU (128 x 128 x 66 voxels of
  2.8 x 2.8 x 5 mm), loaded as an ordinary volume.
- **XRayNeRF chest projections**: ``chest_projections_30.mha`` + ``.json``, 30 simulated cone-beam views
  (line integrals) of that CT; loaded as a volume stack (K = views) with its cameras on the node
  (attribute ``XRayNeRF.Cameras``), ready for the Reconstruction module.
- **XRayNeRF chest fluoroscopy**: ``chest_fluoroscopy_lao20_cra10.dcm``, a simulated XA frame (LAO 20,
  CRA 10) of the CT moved by a known rigid transform; read with the engine's DICOM reader (geometry from
  the tags, isocentre and I0 from ``chest_fluoroscopy_setup.json``, which also holds the true transform)
  into a 1-slice X-ray node with its camera, ready for the Registration module.

The files are made by ``scripts/make_sample_data.py`` (deterministic); when they are rebuilt, update
:data:`CHECKSUMS` (the script prints the sums; tests/test_slicer_packaging.py compares them with the files).

:func:`register_sample_data` is called from the modules' startup (``startupCompleted()``); the two
loaders are the sources' ``customDownloader`` (called by the Sample Data module's button with the source).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import slicer

CATEGORY = "XRayNeRF"
CT_FILE = "chest_ct_128.nii.gz"
PROJECTIONS_FILES = ("chest_projections_30.mha", "chest_projections_30.json")
FLUOROSCOPY_FILES = ("chest_fluoroscopy_lao20_cra10.dcm", "chest_fluoroscopy_setup.json")

CHECKSUMS: Dict[str, str] = {
    "chest_ct_128.nii.gz": "SHA256:1c7bd58c8b995c98042cb4654a67d955b09f1c084b4a6c50215354dc4d279bd8",
    "chest_projections_30.mha": "SHA256:be57c632e3610933ba8d41cfade8e5abaaa54b629a6dbceb868d5afd0ea10471",
    "chest_projections_30.json": "SHA256:4dd0a76c6e47457d57e9ab0eeaf3b0fc0a782dfd81be75df05c759276868682c",
    "chest_fluoroscopy_lao20_cra10.dcm": "SHA256:1130fab4da177ddfc443f6f629ef75db2bd59bb07d1a9b10baf322eb314c13c5",
    "chest_fluoroscopy_setup.json": "SHA256:a3188e8ee81f526cff9b36682b415dd8dc59e8f13098d4921a6bd3f6474ee102",
}

_registered = False


def sample_data_dir() -> Path:
    """Resources/SampleData (XRayNeRFLib.resources: the source tree, the Slicer extension or an installed wheel)."""
    from XRayNeRFLib.resources import resources_dir

    return resources_dir() / "SampleData"


def file_uri(name: str) -> str:
    """``file:`` URI of an installed sample file (Sample Data copies it into Slicer's cache)."""
    return (sample_data_dir() / name).resolve().as_uri()


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "SHA256:" + digest.hexdigest()


def verify(path, name: Optional[str] = None) -> Path:
    """Check a file against :data:`CHECKSUMS`; raises RuntimeError (what to do) on a mismatch."""
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise RuntimeError(f"XRayNeRF sample file {path} is missing: reinstall the XRayNeRF extension")
    got = sha256(path)
    if got != CHECKSUMS[name]:
        raise RuntimeError(
            f"XRayNeRF sample file {path} is damaged (checksum {got}, expected {CHECKSUMS[name]}): reinstall the XRayNeRF extension"
        )
    return path


def _thumbnail(name: str) -> Optional[str]:
    path = sample_data_dir() / name
    return str(path) if path.is_file() else None


def sources() -> List[dict]:
    """The keyword arguments of the three ``registerCustomSampleDataSource`` calls."""

    def files(names):
        return dict(uris=[file_uri(n) for n in names], fileNames=list(names), checksums=[CHECKSUMS[n] for n in names])

    return [
        dict(
            category=CATEGORY,
            sampleName="XRayNeRFChestCT",
            nodeNames=["XRayNeRF chest CT"],
            thumbnailFileName=_thumbnail("chest_ct_128.png"),
            loadFileTypes=["VolumeFile"],
            **files([CT_FILE]),
        ),
        dict(
            category=CATEGORY,
            sampleName="XRayNeRFChestProjections",
            nodeNames=["XRayNeRF chest projections", None],
            thumbnailFileName=_thumbnail("chest_projections_30.png"),
            loadFiles=[False, False],
            customDownloader=load_projections,
            **files(PROJECTIONS_FILES),
        ),
        dict(
            category=CATEGORY,
            sampleName="XRayNeRFChestFluoroscopy",
            nodeNames=["XRayNeRF chest fluoroscopy", None],
            thumbnailFileName=_thumbnail("chest_fluoroscopy.png"),
            loadFiles=[False, False],
            customDownloader=load_fluoroscopy,
            **files(FLUOROSCOPY_FILES),
        ),
    ]


def register_sample_data(force: bool = False) -> bool:
    """Register the sources with the Sample Data module (once per session); False when that module is
    absent (e.g. Slicer started with it disabled)."""
    global _registered
    if _registered and not force:
        return True
    try:
        import SampleData
    except ImportError:
        return False
    for kwargs in sources():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**kwargs)
    _registered = True
    return True


# -- loaders (the sources' customDownloader) -----------------------------------------------------------
def _local_paths(source) -> List[Path]:
    """The verified local files of a source (file URIs; a source without URIs uses the installed files)."""
    names = list(source.fileNames)
    uris = list(getattr(source, "uris", None) or [file_uri(n) for n in names])
    paths = []
    for uri, name in zip(uris, names):
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme != "file":
            raise RuntimeError(f"XRayNeRF sample {name}: expected a file URI, got {uri}")
        paths.append(verify(Path(urllib.request.url2pathname(parsed.path)), name))
    return paths


def _node_name(source, default: str) -> str:
    names = [n for n in (getattr(source, "nodeNames", None) or []) if n]
    return slicer.mrmlScene.GenerateUniqueName(names[0] if names else default)


def load_projections(source) -> list:
    """Load the projection stack as a scalar volume (K = views, placed as Slicer places a MetaImage: LPS
    file frame -> RAS) with the cameras from the JSON geometry in its ``XRayNeRF.Cameras`` attribute.
    returns [volume node]."""
    from XRayNeRFMRML.engine import ensure_engine

    stack_path, geometry_path = _local_paths(source)
    ensure_engine()
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.projections_io import check_projections_match, load_projection_stack
    from XRayNeRFMRML.nodes import remove_node, set_cameras_attribute

    images, spacing, origin = load_projection_stack(str(stack_path))  # (V, H, W), [su, sv], [u0, v0]
    cameras = load_geometry(str(geometry_path))
    check_projections_match(images, cameras, what=f"sample projection stack {stack_path}")
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", _node_name(source, "XRayNeRF chest projections"))
    try:
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(images.numpy(), dtype=np.float32))
        ijk_to_ras = np.diag([-float(spacing[0]), -float(spacing[1]), 1.0, 1.0])  # LPS -> RAS, as Slicer loads it
        ijk_to_ras[:3, 3] = (-float(origin[0]), -float(origin[1]), 0.0)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
        set_cameras_attribute(node, cameras)
        node.SetAttribute("XRayNeRF.Quantity", "line_integral")
        node.CreateDefaultDisplayNodes()
    except Exception:
        remove_node(node)
        raise
    return [node]


def fluoroscopy_setup(path=None) -> dict:
    """The fluoroscopy's setup: isocentre (RAS mm), I0, the true CT transform ``ct_to_parent_ras`` (4, 4)."""
    path = Path(path) if path is not None else sample_data_dir() / FLUOROSCOPY_FILES[1]
    setup = json.loads(Path(path).read_text(encoding="utf-8"))
    setup["ct_to_parent_ras"] = np.asarray(setup["ct_to_parent_ras"], dtype=np.float64)
    return setup


def load_fluoroscopy(source) -> list:
    """Read the XA file with the engine's DICOM reader (geometry from its tags, the isocentre and I0 from
    the setup JSON) into a 1-slice X-ray node (line integrals) on its detector with its camera, through the
    modules' DICOM route (``XRayNeRFMRML.inputs``). returns [X-ray volume node]."""
    from XRayNeRFMRML.engine import ensure_engine

    dicom_path, setup_path = _local_paths(source)
    ensure_engine()
    from XRayNeRFMRML.inputs import xray_node_from_dicom

    setup = fluoroscopy_setup(setup_path)
    names = [n for n in (getattr(source, "nodeNames", None) or []) if n]
    node = xray_node_from_dicom(
        str(dicom_path),
        0,
        isocenter_ras=setup["isocenter_ras"],
        i0=setup["i0"],
        name=names[0] if names else "XRayNeRF chest fluoroscopy",
        scene=slicer.mrmlScene,
    )
    return [node]
