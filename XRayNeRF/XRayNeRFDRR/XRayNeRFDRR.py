"""XRayNeRF DRR: a digitally reconstructed radiograph of a CT at a C-arm pose.

Module, Widget, Logic and Test in Slicer's scripted-module layout. The Logic converts MRML nodes to the
engine's tensors (XRayNeRFLib) and back; the Widget only gathers inputs and shows state.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, Sequence


def _addExtensionPaths() -> None:
    """Make XRayNeRFMRML (next to the module directories) and XRayNeRFLib (extension root) importable,
    both in the source tree and in the build/install tree (where both lie beside this file)."""
    here = Path(__file__).resolve().parent
    for parent in (here, *here.parents):
        for package in ("XRayNeRFMRML", "XRayNeRFLib"):
            if (parent / package / "__init__.py").is_file() and str(parent) not in sys.path:
                sys.path.insert(0, str(parent))
        if (parent / "XRayNeRFLib" / "__init__.py").is_file():
            break


_addExtensionPaths()

import numpy as np  # noqa: E402
import slicer  # noqa: E402
from slicer import vtkMRMLModelNode, vtkMRMLScalarVolumeNode  # noqa: E402
from slicer.i18n import tr as _  # noqa: E402
from slicer.i18n import translate  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from XRayNeRFMRML.choices import DEFAULT_RENDERER, PATIENT_POSITIONS, RENDERERS  # noqa: E402  (the engine's lists and default)
from XRayNeRFMRML.widgets import XRayNeRFWidgetMixin  # noqa: E402


#
# Module
#
class XRayNeRFDRR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XRayNeRF DRR")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "XRayNeRF")]
        self.parent.dependencies = []
        self.parent.contributors = ["XRayNeRF developers"]
        self.parent.helpText = _(
            "Renders a digitally reconstructed radiograph (DRR) of a CT volume (Hounsfield units) for an "
            "isocentric C-arm pose, with the XRayNeRF engine (trilinear ray marching by default, or exact Siddon ray tracing).<br>"
            "<b>Geometry conventions</b> (details: docs/geometry.md in the XRayNeRF repository): the scene "
            "frame is patient RAS in millimetres. Primary angle: LAO positive / RAO negative; secondary angle: "
            "CRA positive / CAU negative (DICOM); at 0/0 the source is posterior and the detector anterior. "
            "Angles are in the C-arm/table frame and turned into patient RAS by the patient position (HFS, "
            "...). The isocentre is the centre of the CT. The DRR is a line integral of the linear attenuation "
            "(1/mm, from HU at 60 keV), shown as a 1-slice volume lying on the detector plane in 3D, seen from "
            "the source (beam's eye view): columns run along the camera +x axis, rows along +y. The CT's "
            "parent transform (linear) is applied; oblique CT volumes are handled. The C-arm is shown as a "
            "line model (source, detector outline, central ray)."
        )
        self.parent.acknowledgementText = _("XRayNeRF is an open-source 3D Slicer extension. Uses 3D Slicer (www.slicer.org) and PyTorch.")
        # XRayNeRF's sample data (CT, projections, fluoroscopy) in the Sample Data module, once Slicer is up
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add XRayNeRF's sample data sets to the Sample Data module (XRayNeRFMRML/sampledata.py)."""
    from XRayNeRFMRML.sampledata import register_sample_data

    register_sample_data()


#
# Parameter node
#
@parameterNodeWrapper
class XRayNeRFDRRParameterNode:
    """inputVolume: CT in HU. Angles in degrees, distances and spacing in mm, detector size in pixels."""

    inputVolume: vtkMRMLScalarVolumeNode
    primaryAngleDeg: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    secondaryAngleDeg: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
    sourceIsocenterDistanceMm: Annotated[float, WithinRange(10.0, 5000.0)] = 750.0
    sourceDetectorDistanceMm: Annotated[float, WithinRange(10.0, 5000.0)] = 1200.0
    detectorColumns: Annotated[int, WithinRange(2, 4096)] = 256
    detectorRows: Annotated[int, WithinRange(2, 4096)] = 256
    pixelSpacingMm: Annotated[float, WithinRange(0.01, 20.0)] = 1.5
    patientPosition: Annotated[str, Choice(PATIENT_POSITIONS)] = "HFS"
    renderer: Annotated[str, Choice(RENDERERS)] = DEFAULT_RENDERER
    outputVolume: vtkMRMLScalarVolumeNode
    cameraModel: vtkMRMLModelNode


#
# Widget
#
class XRayNeRFDRRWidget(XRayNeRFWidgetMixin, ScriptedLoadableModuleWidget):
    """Parameter node, Apply <-> Cancel, progress and status line come from XRayNeRFMRML.widgets."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        XRayNeRFWidgetMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupWidget("XRayNeRFDRR.ui", XRayNeRFDRRLogic())
        self.ui.patientPositionComboBox.clear()
        self.ui.patientPositionComboBox.addItems(list(PATIENT_POSITIONS))
        self.ui.rendererComboBox.clear()
        self.ui.rendererComboBox.addItems(list(RENDERERS))
        self.initializeParameterNode()

    def onParameterNodeInitialized(self) -> None:
        if self._parameterNode and not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def whyCannotApply(self) -> Optional[str]:
        return self.logic.whyCannotRender(self._parameterNode)

    def applyToolTip(self) -> str:
        return _("Render the DRR")

    def onApplyButton(self) -> None:
        def work(progress):
            out = self.logic.renderDRRUsingParameterNode(self._parameterNode, progress=progress)
            layoutManager = getattr(slicer.app, "layoutManager", lambda: None)()  # None without main window
            slicer.util.setSliceViewerLayers(background=out.volume_node, fit=layoutManager is not None)
            return out

        self.runApply(
            _("Failed to render the DRR."),
            work,
            lambda out: _("Rendered '{name}'.").format(name=out.volume_node.GetName()),
        )


#
# Logic
#
class XRayNeRFDRRLogic(ScriptedLoadableModuleLogic):
    """MRML in and out through the engine. Two entry points: :meth:`renderDRR` (explicit arguments) and
    :meth:`renderDRRUsingParameterNode` (thin adapter)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.cancelRequested = False

    def getParameterNode(self):
        return XRayNeRFDRRParameterNode(super().getParameterNode())

    @staticmethod
    def whyCannotRender(parameterNode) -> Optional[str]:
        """None when Apply can run, else the reason shown in the status line."""
        if parameterNode is None:
            return _("No parameter node.")
        if not parameterNode.inputVolume:
            return _("Select an input CT volume.")
        if parameterNode.inputVolume.GetImageData() is None:
            return _("The input volume has no voxels.")
        if parameterNode.sourceDetectorDistanceMm <= parameterNode.sourceIsocenterDistanceMm:
            return _("The source-detector distance must exceed the source-isocentre distance.")
        return None

    @staticmethod
    def cameras(
        ctNode,
        *,
        primaryAngleDeg: float = 0.0,
        secondaryAngleDeg: float = 0.0,
        sourceIsocenterDistanceMm: float = 750.0,
        sourceDetectorDistanceMm: float = 1200.0,
        detectorColumns: int = 256,
        detectorRows: int = 256,
        pixelSpacingMm: float = 1.5,
        patientPosition: str = "HFS",
        isocenterRas: Optional[Sequence[float]] = None,
    ):
        """The C-arm view as XRayNeRFLib Cameras (1 view, float64, world RAS). isocenterRas: (3,) RAS mm;
        default the centre of the CT in world coordinates (parent transforms applied)."""
        from XRayNeRFMRML.drr import carm_cameras

        return carm_cameras(
            ctNode,
            primary_deg=primaryAngleDeg,
            secondary_deg=secondaryAngleDeg,
            sid_mm=sourceIsocenterDistanceMm,
            sdd_mm=sourceDetectorDistanceMm,
            size_px=(detectorColumns, detectorRows),
            pixel_spacing_mm=pixelSpacingMm,
            patient_position=patientPosition,
            isocenter_ras=isocenterRas,
        )

    def renderDRR(
        self,
        ctNode,
        outputNode=None,
        cameraModelNode=None,
        *,
        renderer: str = DEFAULT_RENDERER,
        progress: Optional[Callable] = None,
        **pose,
    ):
        """Render the DRR of ``ctNode`` (scalar volume, HU; linear parent transforms applied).

        pose: keyword arguments of :meth:`cameras` (angles in degrees, distances and spacing in mm,
        detector size in pixels, patient position, isocentre). renderer: "trilinear" (the engine's default,
        ``XRayNeRFLib.render.DEFAULT_RENDERER``) or "siddon" (exact path lengths).
        outputNode / cameraModelNode: nodes to overwrite; new ones are created (named after the CT) when
        None, and only after the rendering succeeded, so a failed or cancelled run leaves the scene as it was.
        progress: ``Callable[[XRayNeRFLib.Progress], bool]``; returning False (or setting ``cancelRequested``)
        cancels (raises XRayNeRFLib.Cancelled).
        returns XRayNeRFMRML.drr.DRROutput (volume_node: 1-slice (1, H, W) line integrals on the detector
        plane with the camera in its ``XRayNeRF.Cameras`` attribute; camera_model_node: the C-arm lines).
        """
        from XRayNeRFMRML.drr import render_drr

        self.cancelRequested = False
        if ctNode is None:
            raise ValueError("no input volume: select a CT volume")

        def onProgress(p):
            keepGoing = progress(p) if progress is not None else True
            return bool(keepGoing) and not self.cancelRequested

        return render_drr(
            ctNode,
            self.cameras(ctNode, **pose),
            renderer=renderer,
            output_node=outputNode,
            camera_model_node=cameraModelNode,
            progress=onProgress,
        )

    def renderDRRUsingParameterNode(self, parameterNode, progress: Optional[Callable] = None):
        """Adapter: read the parameter node, render, store the output nodes back on it."""
        reason = self.whyCannotRender(parameterNode)
        if reason is not None:
            raise ValueError(reason)
        p = parameterNode
        out = self.renderDRR(
            p.inputVolume,
            p.outputVolume,
            p.cameraModel,
            renderer=p.renderer,
            progress=progress,
            primaryAngleDeg=p.primaryAngleDeg,
            secondaryAngleDeg=p.secondaryAngleDeg,
            sourceIsocenterDistanceMm=p.sourceIsocenterDistanceMm,
            sourceDetectorDistanceMm=p.sourceDetectorDistanceMm,
            detectorColumns=p.detectorColumns,
            detectorRows=p.detectorRows,
            pixelSpacingMm=p.pixelSpacingMm,
            patientPosition=p.patientPosition,
        )
        p.outputVolume = out.volume_node
        p.cameraModel = out.camera_model_node
        return out


#
# Test
#
class XRayNeRFDRRTest(ScriptedLoadableModuleTest):
    """Self-test on tiny scenes built in code; runs in Slicer (Reload and Test, or
    ``Slicer --testing --no-main-window --python-script ...``) and on slicer-core in CI."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_DRRGeometry()
        self.setUp()
        self.test_DRRWaterSlab()
        self.setUp()
        self.test_DRRParentTransform()
        self.setUp()
        self.test_DRRFailureLeavesScene()
        self.setUp()
        self.test_ParameterNode()
        self.setUp()
        self.test_DRRObliqueFileFixture()

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _ctNode(array_kji: np.ndarray, ras_from_ijk: np.ndarray, name: str = "CT"):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji, dtype=np.float32))
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ras_from_ijk))
        node.CreateDefaultDisplayNodes()
        return node

    @staticmethod
    def _ijkToRas(node) -> np.ndarray:
        from XRayNeRFMRML.nodes import ijk_to_ras

        return ijk_to_ras(node)

    @staticmethod
    def _obliqueAffine(spacing, angleDeg, origin) -> np.ndarray:
        a = np.radians(angleDeg)
        rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        out = np.eye(4)
        out[:3, :3] = rot @ np.diag(spacing)
        out[:3, 3] = origin
        return out

    @staticmethod
    def _testData(name: str) -> str:
        """Testing/Data/<name> above this file (source tree; build/install tree: qt-scripted-modules)."""
        here = Path(__file__).resolve().parent
        for parent in (here, *here.parents):
            candidate = parent / "Testing" / "Data" / name
            if candidate.is_file():
                return str(candidate)
        raise RuntimeError(f"test fixture Testing/Data/{name} not found above {here}: reinstall the XRayNeRF extension")

    # -- tests ----------------------------------------------------------------------------------------
    def test_DRRObliqueFileFixture(self):
        """Testing/Data/TinyObliqueSlabCT.nrrd (7^3 voxels of 4 mm turned 30 degrees about S, written in LPS)
        read by Slicer's volumes logic: IJK-to-RAS is the header's LPS geometry flipped to RAS; at LAO 30 the
        beam crosses the 12 mm water slab perpendicularly (central pixel = 12 mu_water), and the DRR equals
        the engine's rendering of the file read by XRayNeRFLib (its own LPS -> RAS conversion)."""
        self.delayDisplay("DRR of an oblique CT file")
        import torch

        from XRayNeRFLib.render import render
        from XRayNeRFLib.volume import as_mu, load_volume, mu_water_per_mm

        path = self._testData("TinyObliqueSlabCT.nrrd")
        volumesLogic = slicer.vtkSlicerVolumesLogic()
        volumesLogic.SetMRMLScene(slicer.mrmlScene)
        ct = volumesLogic.AddArchetypeVolume(path, "TinyObliqueSlabCT")
        self.assertIsNotNone(ct)
        c, s = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
        lps = np.array([[4 * c, -4 * s, 0.0, 10.0], [4 * s, 4 * c, 0.0, 20.0], [0.0, 0.0, 4.0, -12.0], [0.0, 0.0, 0.0, 1.0]])
        np.testing.assert_allclose(self._ijkToRas(ct), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-6)
        hu = slicer.util.arrayFromVolume(ct)
        self.assertEqual(hu.shape, (7, 7, 7))
        self.assertTrue((hu[:, 2:5, :] == 0).all() and (hu[:, [0, 1, 5, 6], :] == -1000).all())
        pose = dict(
            primaryAngleDeg=30.0,
            secondaryAngleDeg=0.0,
            sourceIsocenterDistanceMm=400.0,
            sourceDetectorDistanceMm=600.0,
            detectorColumns=9,
            detectorRows=7,
            pixelSpacingMm=1.5,
        )
        logic = XRayNeRFDRRLogic()
        drr = logic.renderDRR(ct, renderer="siddon", **pose).volume_node  # exact path lengths: 12 mm of water
        got = slicer.util.arrayFromVolume(drr)[0]
        self.assertAlmostEqual(float(got[3, 4]), 12.0 * mu_water_per_mm(), delta=1e-4)
        cams = logic.cameras(ct, **pose)
        engine = render(as_mu(load_volume(path)), cams.to(dtype=torch.float32), renderer="siddon")[0].numpy()
        np.testing.assert_allclose(got, engine, atol=1e-4)

    def test_DRRGeometry(self):
        """The DRR node lies on the detector: voxel (0,0,0) at pixel (0,0)'s centre, spacing = pixel
        spacing, the central pixel on the source-isocentre line at the source-detector distance."""
        self.delayDisplay("DRR geometry")
        ct = self._ctNode(np.zeros((6, 7, 8)), self._obliqueAffine((2.0, 2.5, 3.0), 30.0, (-5.0, 4.0, 10.0)))
        logic = XRayNeRFDRRLogic()
        sid, sdd, cols, rows, spacing = 400.0, 700.0, 9, 5, 1.25
        out = logic.renderDRR(
            ct,
            primaryAngleDeg=30.0,
            secondaryAngleDeg=-20.0,
            sourceIsocenterDistanceMm=sid,
            sourceDetectorDistanceMm=sdd,
            detectorColumns=cols,
            detectorRows=rows,
            pixelSpacingMm=spacing,
        )
        drr, model = out.volume_node, out.camera_model_node
        self.assertEqual(slicer.util.arrayFromVolume(drr).shape, (1, rows, cols))
        a = self._ijkToRas(drr)
        np.testing.assert_allclose(np.linalg.norm(a[:3, :3], axis=0), [spacing, spacing, 1.0], atol=1e-9)
        iso = np.array(ct.GetImageData().GetDimensions(), dtype=float)  # grid centre of the CT, in RAS
        isoRas = (self._ijkToRas(ct) @ np.r_[(iso - 1) / 2.0, 1.0])[:3]
        points = slicer.util.arrayFromModelPoints(model)  # source, 4 detector corners, principal point
        source, principal = points[0], points[5]
        np.testing.assert_allclose(np.linalg.norm(isoRas - source), sid, atol=1e-4)
        beam = (isoRas - source) / sid
        np.testing.assert_allclose(principal, source + sdd * beam, atol=1e-4)
        centre = a @ np.array([(cols - 1) / 2.0, (rows - 1) / 2.0, 0.0, 1.0])
        np.testing.assert_allclose(centre[:3], source + sdd * beam, atol=1e-4)
        np.testing.assert_allclose(a[:3, 2], beam, atol=1e-9)  # k axis: source -> detector
        # primary 30 (LAO), secondary -20 (CAU), HFS: beam direction from docs/geometry.md
        p, s = np.radians(30.0), np.radians(-20.0)
        expected = np.array([-np.sin(p) * np.cos(s), np.cos(p) * np.cos(s), np.sin(s)])
        np.testing.assert_allclose(beam, expected, atol=1e-9)
        # corner 0 is pixel (0, 0)'s outer corner: half a pixel before voxel (0, 0, 0)
        np.testing.assert_allclose(points[1], (a @ np.array([-0.5, -0.5, 0.0, 1.0]))[:3], atol=1e-4)
        self.assertTrue(drr.GetAttribute("XRayNeRF.Cameras"))

    def test_DRRWaterSlab(self):
        """A 20 mm water slab (0 HU) crossed perpendicularly by the central ray: DRR = mu_water * 20 mm."""
        self.delayDisplay("DRR values")
        from XRayNeRFLib.volume import mu_water_per_mm

        hu = np.full((10, 10, 10), -1000.0)
        hu[:, 3:7, :] = 0.0  # 4 voxels of 5 mm along j = anterior (A): 20 mm of water
        ct = self._ctNode(hu, self._obliqueAffine((5.0, 5.0, 5.0), 0.0, (-22.5, -22.5, -22.5)))
        drr = (
            XRayNeRFDRRLogic()
            .renderDRR(
                ct,
                detectorColumns=5,
                detectorRows=5,
                pixelSpacingMm=1.0,
                sourceIsocenterDistanceMm=600.0,
                sourceDetectorDistanceMm=1000.0,
            )
            .volume_node
        )
        values = slicer.util.arrayFromVolume(drr)[0]
        self.assertAlmostEqual(float(values[2, 2]), mu_water_per_mm() * 20.0, delta=1e-4)
        self.assertAlmostEqual(mu_water_per_mm(), 0.02059, delta=1e-5)

    def test_DRRParentTransform(self):
        """A CT under a linear transform T renders as the moved CT: same DRR as the untransformed CT seen
        by the camera moved by inverse(T)."""
        self.delayDisplay("DRR of a transformed CT")
        import torch

        from XRayNeRFLib.geometry import Cameras
        from XRayNeRFLib.render import render
        from XRayNeRFLib.volume import Volume, hu_to_mu

        rng = np.random.default_rng(3)
        hu = rng.uniform(-1000.0, 1000.0, size=(8, 9, 10))
        affine = self._obliqueAffine((3.0, 2.0, 2.5), 15.0, (-12.0, -9.0, -10.0))
        ct = self._ctNode(hu, affine)
        t = self._obliqueAffine((1.0, 1.0, 1.0), 25.0, (6.0, -4.0, 3.0))
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(t))
        ct.SetAndObserveTransformNodeID(transform.GetID())
        pose = dict(
            primaryAngleDeg=-40.0,
            secondaryAngleDeg=10.0,
            sourceIsocenterDistanceMm=300.0,
            sourceDetectorDistanceMm=500.0,
            detectorColumns=12,
            detectorRows=10,
            pixelSpacingMm=3.0,
            isocenterRas=(2.0, 1.0, -1.0),
        )
        logic = XRayNeRFDRRLogic()
        drr = logic.renderDRR(ct, renderer="siddon", **pose).volume_node
        cams = logic.cameras(ct, **pose)
        moved = Cameras(
            torch.tensor(np.linalg.inv(t)) @ cams.world_from_camera,
            cams.sdd_mm,
            cams.pixel_spacing_mm,
            cams.principal_point_px,
            cams.size_px,
        )
        plain = Volume(hu_to_mu(torch.tensor(hu, dtype=torch.float64)), torch.tensor(affine), "mu")
        expected = render(plain, moved, renderer="siddon")[0].numpy()
        got = slicer.util.arrayFromVolume(drr)[0]
        self.assertGreater(float(expected.max()), 0.5)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        # and it differs from the DRR of the CT without its transform
        ct.SetAndObserveTransformNodeID(None)
        drr2 = logic.renderDRR(ct, **pose).volume_node
        self.assertGreater(float(np.abs(slicer.util.arrayFromVolume(drr2)[0] - got).max()), 0.1)

    def test_DRRFailureLeavesScene(self):
        """Missing input and a cancelled run raise and add no node."""
        self.delayDisplay("failures leave the scene as it was")
        from XRayNeRFLib.progress import Cancelled

        ct = self._ctNode(np.zeros((4, 4, 4)), np.eye(4))
        logic = XRayNeRFDRRLogic()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            logic.renderDRR(None)
        with self.assertRaises(Cancelled):
            logic.renderDRR(ct, detectorColumns=8, detectorRows=8, progress=lambda p: False)
        with self.assertRaises(ValueError):  # source-isocentre farther than the detector
            logic.renderDRR(ct, sourceIsocenterDistanceMm=900.0, sourceDetectorDistanceMm=800.0)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_ParameterNode(self):
        """The parameter-node adapter renders into the nodes it names and says why it cannot run."""
        self.delayDisplay("parameter node")
        logic = XRayNeRFDRRLogic()
        p = logic.getParameterNode()
        self.assertEqual(logic.whyCannotRender(p), "Select an input CT volume.")
        with self.assertRaises(ValueError):
            p.primaryAngleDeg = 200.0
        with self.assertRaises(ValueError):
            p.renderer = "cone"  # not one of the engine's renderers
        self.assertEqual(p.renderer, DEFAULT_RENDERER)  # the engine's default, as the command line's
        p.inputVolume = self._ctNode(np.zeros((4, 4, 4)), np.eye(4))
        p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm = 500.0, 400.0
        self.assertIn("source-detector distance", logic.whyCannotRender(p))
        p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm = 300.0, 400.0
        p.detectorColumns, p.detectorRows = 6, 4
        out = logic.renderDRRUsingParameterNode(p)
        drr = out.volume_node
        self.assertIs(p.outputVolume, drr)
        self.assertIs(p.cameraModel, out.camera_model_node)
        self.assertEqual(slicer.util.arrayFromVolume(drr).shape, (1, 4, 6))
        again = logic.renderDRRUsingParameterNode(p).volume_node  # second run overwrites the same nodes
        self.assertEqual(again.GetID(), drr.GetID())
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLModelNode")), 1)
