"""XRayNeRF Reconstruction: cone-beam CT from a few X-ray projections (FDK, voxel + TV, hash-grid NeRF).

Module, Widget, Logic and Test in Slicer's scripted-module layout. The testable MRML <-> engine code lives
in XRayNeRFMRML/reconstruction.py; the Logic wires it to the scene and the Widget only gathers inputs and
shows state.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional


def _addExtensionPaths() -> None:
    """Make XRayNeRFMRML and XRayNeRFLib importable in the source tree and the build/install tree."""
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
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode  # noqa: E402
from slicer.i18n import tr as _  # noqa: E402
from slicer.i18n import translate  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from XRayNeRFMRML.choices import DEFAULT_FOV_REGION, FDK_WINDOWS, FOV_REGIONS  # noqa: E402  (the engine's lists)
from XRayNeRFMRML.reconstruction import (  # noqa: E402  (numpy, slicer and vtk only: torch loads on first use)
    GEOMETRY_SOURCES,
    INPUT_KINDS,
    METHODS,
    ORBIT_AXES,
    QUANTITIES,
    RENDERERS,
    VOXEL_SOLVERS,
)
from XRayNeRFMRML.widgets import XRayNeRFWidgetMixin  # noqa: E402


#
# Module
#
class XRayNeRFReconstruction(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XRayNeRF Reconstruction")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "XRayNeRF")]
        self.parent.dependencies = []
        self.parent.contributors = ["XRayNeRF developers"]
        self.parent.helpText = _(
            "Reconstructs a CT volume (Hounsfield units) from cone-beam X-ray projections with the XRayNeRF "
            "engine: FDK filtered backprojection, a voxel grid with total variation, or a hash-grid neural field "
            "(NeRF), optionally with a per-voxel uncertainty (spread over an ensemble).<br>"
            "<b>Inputs</b>: a sequence of 1-slice volumes (one per view), a volume whose slices are the views, "
            "or a DICOM X-ray series. <b>Geometry</b>: the cameras stored on the images (XRayNeRF DRR module, "
            "DICOM reader), a circular orbit (gantry angle as the C-arm primary angle: LAO positive, 0 = source "
            "posterior; about the patient's superior, right or anterior axis through an isocentre given as "
            "coordinates or a markups point, with an optional detector offset), an RTK XML or XRayNeRF JSON "
            "file, or the DICOM tags. <b>Values</b>: line integrals -ln(I/I0) (as DRRs) or raw intensities "
            "(I0 given or estimated from unattenuated air).<br>"
            "<b>Geometry conventions</b> (docs/geometry.md in the XRayNeRF repository): scene frame patient RAS "
            "in millimetres; images are seen from the source (beam's eye view): columns along the camera +x "
            "axis, rows along +y; stacks for RTK geometry are in RTK's row order. Attenuation mu in 1/mm, "
            "HU = 1000 (mu / mu_water - 1) at 60 keV. The output grid covers the scanned cylinder (voxels along "
            "its diameter, or a voxel size); the middle slice updates while an iterative method runs, and "
            "Cancel keeps the best volume so far."
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
class XRayNeRFReconstructionParameterNode:
    """Inputs (one of sequence / stack / DICOM path), geometry source, orbit form (degrees, mm; axis R/A/S;
    isocentre: the markups point when one is chosen, else the R/A/S coordinates), DICOM tag overrides,
    values, method and grid, outputs. Zero means "default" for i0 (estimate), voxel size (use the grid
    size), iterations (the method's default) and the DICOM overrides (use the tag). Output grid (as the CLI's
    --like / --size --spacing-mm --origin-ras / --fov-region): a reference volume wins; else an explicit size
    (all three > 0, with the voxel size; origin: voxel (0, 0, 0)'s centre in RAS mm unless centred on the
    isocentre); else the fovRegion cylinder. refineGeometry: self-calibration before reconstructing;
    refinedGeometryFile (with it): where the corrected cameras are written (empty: kept on the output node only)."""

    inputKind: Annotated[str, Choice(INPUT_KINDS)] = "sequence"
    inputSequence: vtkMRMLSequenceNode
    inputStack: vtkMRMLScalarVolumeNode
    dicomPath: str = ""
    geometrySource: Annotated[str, Choice(GEOMETRY_SOURCES)] = "circular"
    geometryFile: str = ""
    orbitStartDeg: Annotated[float, WithinRange(-360.0, 360.0)] = 0.0
    orbitArcDeg: Annotated[float, WithinRange(1.0, 720.0)] = 360.0
    orbitAxis: Annotated[str, Choice(ORBIT_AXES)] = "S"
    isocenterPoint: vtkMRMLMarkupsFiducialNode
    isocenterR: Annotated[float, WithinRange(-10000.0, 10000.0)] = 0.0
    isocenterA: Annotated[float, WithinRange(-10000.0, 10000.0)] = 0.0
    isocenterS: Annotated[float, WithinRange(-10000.0, 10000.0)] = 0.0
    detectorOffsetColumnMm: Annotated[float, WithinRange(-1000.0, 1000.0)] = 0.0
    detectorOffsetRowMm: Annotated[float, WithinRange(-1000.0, 1000.0)] = 0.0
    sourceIsocenterDistanceMm: Annotated[float, WithinRange(10.0, 5000.0)] = 750.0
    sourceDetectorDistanceMm: Annotated[float, WithinRange(10.0, 5000.0)] = 1200.0
    pixelSpacingMm: Annotated[float, WithinRange(0.001, 20.0)] = 1.0
    dicomSddMm: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    dicomSidMm: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    dicomPixelSpacingMm: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    quantity: Annotated[str, Choice(QUANTITIES)] = "line_integral"
    i0: Annotated[float, WithinRange(0.0, 1.0e12)] = 0.0
    method: Annotated[str, Choice(METHODS)] = "fdk"
    renderer: Annotated[str, Choice(RENDERERS)] = "trilinear"
    voxelSolver: Annotated[str, Choice(VOXEL_SOLVERS)] = "default"
    fdkWindow: Annotated[str, Choice(FDK_WINDOWS)] = "hann"
    fdkWindowCutoff: Annotated[float, WithinRange(0.05, 1.0)] = 1.0
    gridSize: Annotated[int, WithinRange(8, 1024)] = 128
    voxelSpacingMm: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    iterations: Annotated[int, WithinRange(0, 100000)] = 0
    computeUncertainty: bool = False
    ensembleSize: Annotated[int, WithinRange(2, 32)] = 4
    fovRegion: Annotated[str, Choice(FOV_REGIONS)] = DEFAULT_FOV_REGION
    gridReferenceVolume: vtkMRMLScalarVolumeNode
    explicitGridSizeX: Annotated[int, WithinRange(0, 4096)] = 0
    explicitGridSizeY: Annotated[int, WithinRange(0, 4096)] = 0
    explicitGridSizeZ: Annotated[int, WithinRange(0, 4096)] = 0
    explicitGridCentred: bool = True
    explicitGridOriginR: Annotated[float, WithinRange(-10000.0, 10000.0)] = 0.0
    explicitGridOriginA: Annotated[float, WithinRange(-10000.0, 10000.0)] = 0.0
    explicitGridOriginS: Annotated[float, WithinRange(-10000.0, 10000.0)] = 0.0
    refineGeometry: bool = False
    refinedGeometryFile: str = ""
    outputVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode


def _explicitSize(p) -> Optional[tuple]:
    """(NX, NY, NZ) of the parameter node's explicit grid, or None when any size is 0 (the default cylinder)."""
    sizes = (int(p.explicitGridSizeX), int(p.explicitGridSizeY), int(p.explicitGridSizeZ))
    return sizes if all(sizes) else None


#
# Widget
#
class XRayNeRFReconstructionWidget(XRayNeRFWidgetMixin, ScriptedLoadableModuleWidget):
    """Parameter node, Apply <-> Cancel, progress and status line come from XRayNeRFMRML.widgets; this class
    fills the combo boxes, shows only the fields that apply, and words the outcome."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        XRayNeRFWidgetMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupWidget("XRayNeRFReconstruction.ui", XRayNeRFReconstructionLogic())
        for combo, items in (
            (self.ui.inputKindComboBox, INPUT_KINDS),
            (self.ui.geometrySourceComboBox, GEOMETRY_SOURCES),
            (self.ui.orbitAxisComboBox, ORBIT_AXES),
            (self.ui.quantityComboBox, QUANTITIES),
            (self.ui.methodComboBox, METHODS),
            (self.ui.rendererComboBox, RENDERERS),
            (self.ui.voxelSolverComboBox, VOXEL_SOLVERS),
            (self.ui.fdkWindowComboBox, FDK_WINDOWS),
            (self.ui.fovRegionComboBox, FOV_REGIONS),
        ):
            combo.clear()
            combo.addItems(list(items))
        self.ui.dicomBrowseButton.connect("clicked(bool)", self.onBrowseDicom)
        self.ui.geometryFileBrowseButton.connect("clicked(bool)", self.onBrowseGeometry)
        self.ui.refinedGeometryFileBrowseButton.connect("clicked(bool)", self.onBrowseRefinedGeometry)
        self.initializeParameterNode()

    def onParameterNodeInitialized(self) -> None:
        """Default input: the first sequence; else the first stack that carries cameras (e.g. the sample
        projections), with the geometry taken from it."""
        p = self._parameterNode
        if p is None or p.inputSequence or p.inputStack:
            return
        first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
        if first:
            p.inputSequence = first
            return
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            image = node.GetImageData()
            if node.GetAttribute("XRayNeRF.Cameras") and image is not None and image.GetDimensions()[2] > 1:
                p.inputKind, p.inputStack, p.geometrySource = "stack", node, "images"
                return

    def whyCannotApply(self) -> Optional[str]:
        return self.logic.whyCannotReconstruct(self._parameterNode)

    def applyToolTip(self) -> str:
        return _("Reconstruct the volume")

    def updateButtons(self, reason: Optional[str]) -> None:
        """Show only the fields that apply to the chosen input, geometry source and method."""
        p = self._parameterNode
        if p is None:
            return
        ui = self.ui
        ui.inputSequenceSelector.setVisible(p.inputKind == "sequence")
        ui.inputStackSelector.setVisible(p.inputKind == "stack")
        ui.dicomPathLineEdit.setVisible(p.inputKind == "dicom")
        ui.dicomBrowseButton.setVisible(p.inputKind == "dicom")
        ui.dicomOverridesCollapsibleButton.setVisible(p.inputKind == "dicom")
        for spinBox in (ui.isocenterRSpinBox, ui.isocenterASpinBox, ui.isocenterSSpinBox):
            spinBox.setEnabled(not p.isocenterPoint)  # a chosen point wins over the coordinates
        ui.orbitCollapsibleButton.setVisible(p.geometrySource == "circular")
        ui.geometryFileLineEdit.setVisible(p.geometrySource == "file")
        ui.geometryFileBrowseButton.setVisible(p.geometrySource == "file")
        ui.quantityComboBox.setEnabled(p.inputKind != "dicom")  # DICOM: the Pixel Intensity Relationship tag
        ui.i0SpinBox.setEnabled(p.inputKind == "dicom" or p.quantity == "intensity")
        ui.iterationsSpinBox.setEnabled(p.method != "fdk")
        ui.rendererComboBox.setEnabled(p.method != "fdk")
        ui.voxelSolverComboBox.setEnabled(p.method == "voxel")
        ui.fdkWindowComboBox.setEnabled(p.method == "fdk")
        ui.fdkWindowCutoffSpinBox.setEnabled(p.method == "fdk")
        ui.ensembleSizeSpinBox.setEnabled(p.computeUncertainty)
        explicit = not p.gridReferenceVolume and _explicitSize(p) is not None
        ui.fovRegionComboBox.setEnabled(not p.gridReferenceVolume and not explicit)
        ui.gridSizeSpinBox.setEnabled(not p.gridReferenceVolume and not explicit)
        for spinBox in (ui.explicitGridOriginRSpinBox, ui.explicitGridOriginASpinBox, ui.explicitGridOriginSSpinBox):
            spinBox.setEnabled(explicit and not p.explicitGridCentred)
        ui.uncertaintyVolumeSelector.setEnabled(p.computeUncertainty)
        ui.refinedGeometryFileLineEdit.setEnabled(p.refineGeometry)
        ui.refinedGeometryFileBrowseButton.setEnabled(p.refineGeometry)

    def onBrowseDicom(self) -> None:
        import qt

        path = qt.QFileDialog.getExistingDirectory(None, _("DICOM X-ray series directory"), self._parameterNode.dicomPath)
        if path:
            self._parameterNode.dicomPath = path

    def onBrowseGeometry(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(None, _("Geometry file"), self._parameterNode.geometryFile, _("Geometry (*.xml *.json)"))
        if path:
            self._parameterNode.geometryFile = path

    def onBrowseRefinedGeometry(self) -> None:
        import qt

        path = qt.QFileDialog.getSaveFileName(
            None, _("Refined geometry file"), self._parameterNode.refinedGeometryFile, _("Geometry (*.json *.matrices.txt *.xml)")
        )
        if path:
            self._parameterNode.refinedGeometryFile = path

    @staticmethod
    def outcomeMessage(out) -> str:
        """The status line after a run: done, or cancelled with the best volume so far kept; the refined geometry
        file when one was written."""
        if out.cancelled:
            text = _("Cancelled: '{name}' holds the best volume so far ({s:.1f} s).").format(
                name=out.volume_node.GetName(), s=out.result.seconds
            )
        else:
            text = _("Reconstructed '{name}' in {s:.1f} s.").format(name=out.volume_node.GetName(), s=out.result.seconds)
        if out.refined_geometry_file:
            text += " " + _("Refined geometry written to {path}.").format(path=out.refined_geometry_file)
        return text

    def onApplyButton(self):
        """Apply, or Cancel while running; returns the ReconstructionOutput (None when cancelled without a
        result or when this click was the Cancel)."""
        return self.runApply(
            _("Reconstruction failed."),
            lambda progress: self.logic.reconstructUsingParameterNode(self._parameterNode, progress=progress),
            self.outcomeMessage,
        )


#
# Logic
#
class XRayNeRFReconstructionLogic(ScriptedLoadableModuleLogic):
    """MRML in and out through the engine. Entry points: :meth:`projections` (inputs + geometry ->
    ProjectionSet), :meth:`reconstruct` (explicit arguments), :meth:`reconstructUsingParameterNode`
    (thin adapter)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.cancelRequested = False

    def getParameterNode(self):
        return XRayNeRFReconstructionParameterNode(super().getParameterNode())

    @staticmethod
    def whyCannotReconstruct(p) -> Optional[str]:
        """None when Apply can run, else the reason shown in the status line."""
        if p is None:
            return _("No parameter node.")
        if p.inputKind == "sequence" and not p.inputSequence:
            return _("Select the projection sequence (a sequence of 1-slice volumes, one per view).")
        if p.inputKind == "stack" and not p.inputStack:
            return _("Select the projection stack (a volume whose slices are the views).")
        if p.inputKind == "dicom":
            if not p.dicomPath.strip():
                return _("Choose the DICOM X-ray series (a file or its directory).")
            if not Path(p.dicomPath).exists():
                return _("The DICOM path does not exist.")
            if p.geometrySource != "dicom":
                return _("A DICOM series brings its own geometry: choose the geometry source 'dicom'.")
        elif p.geometrySource == "dicom":
            return _("DICOM geometry needs a DICOM series as input: choose 'images', 'circular' or 'file'.")
        if p.geometrySource == "file":
            if not p.geometryFile.strip():
                return _("Choose the geometry file (RTK .xml or XRayNeRF .json).")
            if not Path(p.geometryFile).is_file():
                return _("The geometry file does not exist.")
        if p.geometrySource == "circular" and p.sourceDetectorDistanceMm <= p.sourceIsocenterDistanceMm:
            return _("The source-detector distance must exceed the source-isocentre distance.")
        if p.geometrySource == "circular" and p.isocenterPoint and p.isocenterPoint.GetNumberOfControlPoints() < 1:
            return _("The isocentre point list is empty: place a point at the rotation centre, or choose none to use the coordinates.")
        if p.inputKind == "dicom" and p.dicomSddMm and p.dicomSidMm and p.dicomSddMm <= p.dicomSidMm:
            return _("DICOM overrides: the source-detector distance must exceed the source-isocentre distance.")
        sizes = (p.explicitGridSizeX, p.explicitGridSizeY, p.explicitGridSizeZ)
        if not p.gridReferenceVolume and any(sizes) and not all(sizes):
            return _("The explicit grid needs all three sizes (X, Y, Z > 0), or all three 0 for the default cylinder.")
        if not p.gridReferenceVolume and all(sizes) and not p.voxelSpacingMm:
            return _("The explicit grid needs a voxel size > 0 mm.")
        if p.geometrySource == "images" and p.inputKind != "dicom":
            node = p.inputSequence if p.inputKind == "sequence" else p.inputStack
            first = node.GetNthDataNode(0) if node is not None and node.IsA("vtkMRMLSequenceNode") and node.GetNumberOfDataNodes() else node
            if first is None or not first.GetAttribute("XRayNeRF.Cameras"):
                return _("The images carry no camera geometry: choose the circular-orbit form or a geometry file.")
        return None

    def projections(
        self,
        inputNode=None,
        *,
        dicomPath: Optional[str] = None,
        geometrySource: str = "circular",
        geometryFile: Optional[str] = None,
        orbitStartDeg: float = 0.0,
        orbitArcDeg: float = 360.0,
        sourceIsocenterDistanceMm: float = 750.0,
        sourceDetectorDistanceMm: float = 1200.0,
        pixelSpacingMm: float = 1.0,
        isocenterRas=(0.0, 0.0, 0.0),
        isocenterNode=None,
        orbitAxis: str = "S",
        detectorOffsetMm=(0.0, 0.0),
        dicomSddMm: Optional[float] = None,
        dicomSidMm: Optional[float] = None,
        dicomPixelSpacingMm: Optional[float] = None,
        quantity: str = "line_integral",
        i0: Optional[float] = None,
    ):
        """The projections as an ``XRayNeRFLib.projection_set.ProjectionSet`` (line integrals + cameras).

        inputNode: vtkMRMLSequenceNode of 1-slice volumes or a stack vtkMRMLScalarVolumeNode; or dicomPath.
        geometrySource: "images" | "circular" (orbit arguments: degrees, mm) | "file" | "dicom".
        Circular orbit: about ``orbitAxis`` "S" | "R" | "A" through the isocentre, which is the first point of
        ``isocenterNode`` (a markups point list, world RAS) when given, else ``isocenterRas`` (3,) RAS mm;
        ``detectorOffsetMm`` [column, row] mm shifts the detector in its plane.
        dicomSddMm / dicomSidMm / dicomPixelSpacingMm: values that win over the DICOM tags (None or 0: the tags).
        quantity: "line_integral" | "intensity" (i0 None or 0: estimated per view)."""
        from XRayNeRFMRML.inputs import projection_set_from_dicom
        from XRayNeRFMRML.reconstruction import CircularOrbit, isocenter_from_markups, projection_set_from_nodes

        if dicomPath:
            if inputNode is not None:
                raise ValueError("give either image nodes or a DICOM path, not both")
            if geometrySource != "dicom":
                raise ValueError("a DICOM series brings its own geometry: use the geometry source 'dicom'")
            return projection_set_from_dicom(dicomPath, i0=i0, sdd_mm=dicomSddMm, sid_mm=dicomSidMm, pixel_spacing_mm=dicomPixelSpacingMm)
        if geometrySource == "circular" and isocenterNode is not None:
            isocenterRas = isocenter_from_markups(isocenterNode)
        orbit = CircularOrbit(
            sid_mm=float(sourceIsocenterDistanceMm),
            sdd_mm=float(sourceDetectorDistanceMm),
            pixel_spacing_mm=float(pixelSpacingMm),
            start_deg=float(orbitStartDeg),
            arc_deg=float(orbitArcDeg),
            isocenter_ras=tuple(float(x) for x in isocenterRas),
            axis=orbitAxis,
            detector_offset_mm=tuple(float(x) for x in detectorOffsetMm),
        )
        return projection_set_from_nodes(inputNode, geometrySource, geometry_file=geometryFile, orbit=orbit, quantity=quantity, i0=i0)

    def reconstruct(
        self,
        inputNode=None,
        outputNode=None,
        uncertaintyNode=None,
        *,
        method: str = "fdk",
        renderer: Optional[str] = None,
        voxelSolver: Optional[str] = None,
        gridSize: Optional[int] = 128,
        voxelSpacingMm: Optional[float] = None,
        fovRegion: Optional[str] = None,
        gridReferenceNode=None,
        explicitGridSize: Optional[tuple] = None,
        explicitGridOriginRas: Optional[tuple] = None,
        refineGeometry: bool = False,
        refinedGeometryFile: Optional[str] = None,
        iterations: Optional[int] = None,
        uncertainty: bool = False,
        ensembleSize: int = 4,
        seed: int = 0,
        options: Optional[dict] = None,
        progress: Optional[Callable] = None,
        previewIntervalS: float = 0.1,
        showResult: bool = True,
        **inputs,
    ):
        """Reconstruct into scalar volume nodes (HU) through ``XRayNeRFLib.recon.api.reconstruct``.

        inputNode / inputs: as :meth:`projections` (dicomPath, geometrySource, orbit, quantity, i0, ...).
        outputNode / uncertaintyNode: nodes to overwrite; created (named after the input) when None.
        method "fdk" | "voxel" | "nerf"; renderer for the iterative methods (None: the engine's default); voxelSolver for "voxel":
        None / "default" (the engine's default), "adam" or "os-tv" (when the engine offers them); gridSize voxels across the scanned
        cylinder or voxelSpacingMm (wins when > 0); the output grid as XRayNeRFMRML.reconstruction.GridRequest: fovRegion
        (the cylinder seen by "every" view or by "any"; None: the engine's default), gridReferenceNode (a scalar volume
        whose grid the output takes: wins), explicitGridSize (NX, NY, NZ) with voxelSpacingMm and explicitGridOriginRas
        (None: centred on the isocentre); refineGeometry: self-calibrate the views first (the corrected cameras are
        stored on the output node, and written to refinedGeometryFile when given: .json, .matrices.json, .matrices.txt
        or .xml, by the command line's writer); iterations None or 0: the method's default.
        progress: ``Callable[[XRayNeRFLib.Progress], bool]``; returning False (or setting ``cancelRequested``)
        stops: iterative methods keep the best volume so far (``output.cancelled``), FDK raises
        ``XRayNeRFLib.progress.Cancelled``. On any error the scene is left as it was.
        showResult: make the output node the slice views' background as soon as it exists (the preview).
        returns XRayNeRFMRML.reconstruction.ReconstructionOutput (volume_node, uncertainty_node, result, ...).
        """
        import time

        from XRayNeRFMRML.overlay import restore_slice_backgrounds, save_slice_backgrounds
        from XRayNeRFMRML.reconstruction import GridRequest, run_reconstruction, solver_options

        self.cancelRequested = False
        options = solver_options(method, voxelSolver, options)
        projections = self.projections(inputNode, **inputs)
        if inputNode is not None:
            name = f"{inputNode.GetName()} {method.upper()}"
        else:
            name = f"{Path(str(inputs.get('dicomPath'))).name} {method.upper()}"
        lastEvents = [0.0]

        def onProgress(p) -> bool:
            keepGoing = progress(p) if progress is not None else True
            now = time.monotonic()
            if now - lastEvents[0] >= previewIntervalS:  # let the views redraw the preview (~10 Hz)
                slicer.app.processEvents()
                lastEvents[0] = now
            return keepGoing is not False and not self.cancelRequested

        appLogic = slicer.app.applicationLogic()
        views = save_slice_backgrounds(appLogic, slicer.mrmlScene)
        out = run_reconstruction(
            projections,
            method=method,
            renderer=renderer,
            grid_request=GridRequest(
                grid=gridSize or None,
                spacing_mm=voxelSpacingMm or None,
                region=fovRegion or None,
                size=tuple(int(n) for n in explicitGridSize) if explicitGridSize else None,
                origin_ras=tuple(float(x) for x in explicitGridOriginRas) if explicitGridOriginRas is not None else None,
                like_node=gridReferenceNode,
            ),
            refine_geometry=bool(refineGeometry),
            refined_geometry_file=(str(refinedGeometryFile).strip() or None) if refinedGeometryFile else None,
            iterations=iterations or None,
            uncertainty=uncertainty,
            ensemble_size=ensembleSize,
            seed=seed,
            options=options,
            output_node=outputNode,
            uncertainty_node=uncertaintyNode,
            name=name,
            progress=onProgress,
            preview_interval_s=previewIntervalS,
            on_output_node=self.showVolume if showResult else None,
            on_failure=lambda: restore_slice_backgrounds(appLogic, views),  # the views show what they showed before
        )
        for note in projections.assumptions:
            logging.info(f"XRayNeRF reconstruction: {note}")
        logging.info(
            f"XRayNeRF reconstruction: {method} of {len(projections)} views in {out.result.seconds:.2f} s"
            + (" (cancelled: best so far)" if out.cancelled else "")
        )
        return out

    @staticmethod
    def showVolume(volumeNode) -> None:
        """Make ``volumeNode`` the background of every slice view (the application's volume selection)."""
        from XRayNeRFMRML.overlay import show_volume

        show_volume(slicer.app.applicationLogic(), volumeNode)

    def reconstructUsingParameterNode(self, p, progress: Optional[Callable] = None, **extra):
        """Adapter: read the parameter node, reconstruct, store the output nodes back on it."""
        reason = self.whyCannotReconstruct(p)
        if reason is not None:
            raise ValueError(reason)
        inputs = dict(
            geometrySource=p.geometrySource,
            geometryFile=p.geometryFile or None,
            orbitStartDeg=p.orbitStartDeg,
            orbitArcDeg=p.orbitArcDeg,
            sourceIsocenterDistanceMm=p.sourceIsocenterDistanceMm,
            sourceDetectorDistanceMm=p.sourceDetectorDistanceMm,
            pixelSpacingMm=p.pixelSpacingMm,
            orbitAxis=p.orbitAxis,
            isocenterNode=p.isocenterPoint or None,
            isocenterRas=(p.isocenterR, p.isocenterA, p.isocenterS),
            detectorOffsetMm=(p.detectorOffsetColumnMm, p.detectorOffsetRowMm),
            quantity=p.quantity,
            i0=p.i0 or None,
        )
        if p.inputKind == "dicom":
            inputs.update(
                dicomSddMm=p.dicomSddMm or None, dicomSidMm=p.dicomSidMm or None, dicomPixelSpacingMm=p.dicomPixelSpacingMm or None
            )
        if p.inputKind == "dicom":
            inputNode, inputs["dicomPath"] = None, p.dicomPath
        else:
            inputNode = p.inputSequence if p.inputKind == "sequence" else p.inputStack
        inputs.update(extra)
        options = {"window": p.fdkWindow, "window_cutoff": float(p.fdkWindowCutoff)} if p.method == "fdk" else None
        out = self.reconstruct(
            inputNode,
            p.outputVolume,
            p.uncertaintyVolume if p.computeUncertainty else None,
            method=p.method,
            renderer=p.renderer,
            voxelSolver=p.voxelSolver,
            gridSize=p.gridSize,
            voxelSpacingMm=p.voxelSpacingMm or None,
            fovRegion=p.fovRegion,
            gridReferenceNode=p.gridReferenceVolume or None,
            explicitGridSize=_explicitSize(p),
            explicitGridOriginRas=None if p.explicitGridCentred else (p.explicitGridOriginR, p.explicitGridOriginA, p.explicitGridOriginS),
            refineGeometry=p.refineGeometry,
            refinedGeometryFile=(p.refinedGeometryFile.strip() or None) if p.refineGeometry else None,
            iterations=p.iterations or None,
            uncertainty=p.computeUncertainty,
            ensembleSize=p.ensembleSize,
            options=options,
            progress=progress,
            **inputs,
        )
        p.outputVolume = out.volume_node
        if out.uncertainty_node is not None:
            p.uncertaintyVolume = out.uncertainty_node
        return out


#
# Test
#
class XRayNeRFReconstructionTest(ScriptedLoadableModuleTest):
    """Self-test on tiny scenes built in code (Slicer and slicer-core)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_SequenceFDKMatchesEngine()
        self.setUp()
        self.test_CancelKeepsBestSoFar()
        self.setUp()
        self.test_FailureLeavesScene()
        self.setUp()
        self.test_ParameterNode()
        self.setUp()
        self.test_OrbitAboutRightAxisThroughPoint()

    # -- helpers -------------------------------------------------------------------------------------
    ORBIT = dict(sourceIsocenterDistanceMm=250.0, sourceDetectorDistanceMm=400.0, pixelSpacingMm=2.0)

    # (centre RAS mm, radius mm, mu 1/mm): a 40 mm water ball holding a denser 12 mm ball
    BALLS = (((0.0, 0.0, 0.0), 20.0, 0.02059), ((6.0, -4.0, 0.0), 6.0, 0.02))

    @classmethod
    def _projections(cls, views=24, size=(40, 32)):
        """Exact line integrals (V, H, W) float64 of the balls (chord lengths, no renderer involved) on a
        full circular orbit (SID 250 mm, SDD 400 mm, 2 mm pixels), and its cameras."""
        import torch

        from XRayNeRFLib.geometry import Cameras

        angles = torch.arange(views, dtype=torch.float64) * (2 * np.pi / views)
        cams = Cameras.circular_orbit(angles, sid_mm=250.0, sdd_mm=400.0, size_px=size, pixel_spacing_mm=2.0, dtype=torch.float64)
        pixels = cams.pixel_grid().reshape(1, -1, 2).expand(views, -1, -1)
        target = cams.pixel_to_world(pixels).numpy()  # (V, H*W, 3)
        source = cams.source_positions().numpy()[:, None, :]  # (V, 1, 3)
        d = target - source
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        out = np.zeros(target.shape[:2])
        for centre, radius, mu in cls.BALLS:
            s = source - np.asarray(centre)
            b = (d * s).sum(-1)
            disc = b**2 - ((s**2).sum(-1) - radius**2)
            out += mu * 2.0 * np.sqrt(np.clip(disc, 0.0, None))
        return out.reshape(views, size[1], size[0]), cams

    @staticmethod
    def _sequence(images, name="projections"):
        """A sequence node with one 1-slice volume per view (unit spacing, no cameras on the items)."""
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        item = slicer.vtkMRMLScalarVolumeNode()
        for v, image in enumerate(images):
            slicer.util.updateVolumeFromArray(item, np.ascontiguousarray(image[None], dtype=np.float32))
            item.SetName(f"view {v}")
            sequence.SetDataNodeAtValue(item, str(v))
        return sequence

    @staticmethod
    def _ijkToRas(node) -> np.ndarray:
        from XRayNeRFMRML.nodes import ijk_to_ras

        return ijk_to_ras(node)

    # -- tests -------------------------------------------------------------------------------------------
    def test_SequenceFDKMatchesEngine(self):
        """A projection sequence with the circular-orbit form: the node's IJK-to-RAS is the engine's grid,
        its voxels are the engine's FDK in HU, and the water ball reads about 0 HU."""
        self.delayDisplay("FDK from a projection sequence")
        import torch

        from XRayNeRFLib.recon.fdk import fdk
        from XRayNeRFLib.recon.fov import default_grid
        from XRayNeRFLib.volume import mu_to_hu

        images, cams = self._projections()
        sequence = self._sequence(images)
        logic = XRayNeRFReconstructionLogic()
        out = logic.reconstruct(sequence, method="fdk", gridSize=24, geometrySource="circular", **self.ORBIT)
        node = out.volume_node
        like = default_grid(cams, grid=24)
        np.testing.assert_allclose(self._ijkToRas(node), like.ras_from_ijk.double().numpy(), atol=1e-5)
        got = slicer.util.arrayFromVolume(node)
        engine = fdk(torch.from_numpy(images).float(), cams, volume=like, window="hann")
        np.testing.assert_allclose(got, mu_to_hu(engine.data.double()).numpy(), atol=0.5)
        k, j, i = (np.array(got.shape) - 1) / 2.0
        # water (0 HU) away from the dense ball: i, j, k run along R, A, S on this orbit's grid
        water = got[int(k) - 1 : int(k) + 2, int(j) + 3 : int(j) + 6, int(i) - 6 : int(i) - 3]
        self.assertLess(abs(float(np.median(water))), 60.0, f"water reads {np.median(water):.0f} HU")
        dense = got[int(k), int(j) - 2, int(i) + 3]  # (6, -4, 0) mm: water + 0.02/mm, about 970 HU
        self.assertGreater(float(dense), 600.0)
        self.assertEqual(node.GetName(), "projections FDK")
        self.assertFalse(out.cancelled)

    def test_CancelKeepsBestSoFar(self):
        """Cancelling a voxel reconstruction (the default solver) at its first preview keeps the best volume
        so far in a node on the right grid and creates no other node."""
        self.delayDisplay("cancel keeps the best so far")
        images, _ = self._projections(views=8, size=(24, 20))
        sequence = self._sequence(images)
        logic = XRayNeRFReconstructionLogic()
        before = slicer.mrmlScene.GetNumberOfNodes()
        calls = []

        def stopAtFirstPreview(p):  # os-tv reports every subset, with a preview slice after each pass
            calls.append(p.preview is not None)
            return p.preview is None

        out = logic.reconstruct(
            sequence,
            method="voxel",
            renderer="trilinear",
            gridSize=12,
            iterations=200,
            progress=stopAtFirstPreview,
            previewIntervalS=0.0,
            geometrySource="circular",
            **self.ORBIT,
        )
        self.assertTrue(out.cancelled)
        self.assertTrue(calls[-1] and not any(calls[:-1]))
        self.assertGreaterEqual(out.preview_updates, 1)
        hu = slicer.util.arrayFromVolume(out.volume_node)
        self.assertTrue(np.isfinite(hu).all() and hu.min() >= -1000.5 and hu.max() > -900.0)
        created = slicer.mrmlScene.GetNumberOfNodes() - before
        self.assertEqual(created, 2, "the output volume and its display node")  # nothing else

    def test_FailureLeavesScene(self):
        """Images and geometry that disagree, a missing geometry file, an all-zero stack: errors, and the
        scene (including a given output node's voxels) is as it was."""
        self.delayDisplay("bad input leaves the scene unchanged")
        images, _ = self._projections(views=6, size=(24, 20))
        sequence = self._sequence(images)
        keep = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "user's volume")
        slicer.util.updateVolumeFromArray(keep, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
        keep.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-1.5, -1.5, 2.0, 1.0])))
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic = XRayNeRFReconstructionLogic()
        with self.assertRaises(ValueError):
            logic.reconstruct(sequence, keep, geometrySource="file", geometryFile="/nonexistent/geometry.json")
        with self.assertRaises(ValueError):  # an orbit without an arc
            logic.reconstruct(sequence, keep, geometrySource="circular", orbitArcDeg=0.0, **self.ORBIT)
        flat = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flat")
        slicer.util.updateVolumeFromArray(flat, -np.ones((6, 20, 24), np.float32))
        before += 1
        with self.assertRaises(ValueError):  # negative "line integrals": intensities given as line integrals
            logic.reconstruct(flat, keep, method="fdk", gridSize=12, geometrySource="circular", **self.ORBIT)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(keep), np.arange(24).reshape(2, 3, 4))
        np.testing.assert_allclose(self._ijkToRas(keep), np.diag([-1.5, -1.5, 2.0, 1.0]))

    def test_OrbitAboutRightAxisThroughPoint(self):
        """The orbit form about the patient's right axis through a markups point with a detector offset:
        sources on a circle of radius SID about that axis through the point, posterior at angle 0, the
        principal rays through the point, the principal point moved by -offset / spacing."""
        self.delayDisplay("orbit about R through a point")
        iso = np.array([15.0, -25.0, 40.0])
        point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "isocentre")
        point.AddControlPoint(*iso)
        images, _ = self._projections(views=6, size=(24, 20))
        logic = XRayNeRFReconstructionLogic()
        ps = logic.projections(
            self._sequence(images),
            geometrySource="circular",
            orbitAxis="R",
            isocenterNode=point,
            detectorOffsetMm=(8.0, -4.0),
            **self.ORBIT,
        )
        cams = ps.cameras
        src = cams.source_positions().double().numpy() - iso  # (V, 3)
        np.testing.assert_allclose(np.linalg.norm(src, axis=1), 250.0, atol=1e-6)
        np.testing.assert_allclose(src[:, 0], 0.0, atol=1e-6)  # in the plane through the point, normal to R
        np.testing.assert_allclose(src[0], [0.0, -250.0, 0.0], atol=1e-6)  # posterior at angle 0
        beam = cams.principal_directions().double().numpy()
        miss = -src - np.einsum("vi,vi->v", -src, beam)[:, None] * beam
        np.testing.assert_allclose(np.linalg.norm(miss, axis=1), 0.0, atol=1e-6)
        np.testing.assert_allclose(cams.principal_point_px.double().numpy()[0], [11.5 - 4.0, 9.5 + 2.0], atol=1e-9)

    def test_ParameterNode(self):
        """The adapter says why Apply is disabled, validates ranges, and writes into the nodes it names."""
        self.delayDisplay("parameter node")
        logic = XRayNeRFReconstructionLogic()
        p = logic.getParameterNode()
        self.assertIn("projection sequence", logic.whyCannotReconstruct(p))
        with self.assertRaises(ValueError):
            p.orbitArcDeg = 0.0
        with self.assertRaises(ValueError):
            p.method = "art"
        images, _ = self._projections(views=12, size=(24, 20))
        p.inputSequence = self._sequence(images)
        p.geometrySource = "images"
        self.assertIn("no camera geometry", logic.whyCannotReconstruct(p))
        p.geometrySource = "dicom"
        self.assertIn("DICOM series as input", logic.whyCannotReconstruct(p))
        p.geometrySource = "circular"
        p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm = 500.0, 400.0
        self.assertIn("source-detector distance", logic.whyCannotReconstruct(p))
        p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm, p.pixelSpacingMm = 250.0, 400.0, 2.0
        p.gridSize = 10
        self.assertIsNone(logic.whyCannotReconstruct(p))
        out = logic.reconstructUsingParameterNode(p)
        self.assertIs(p.outputVolume, out.volume_node)
        self.assertEqual(slicer.util.arrayFromVolume(out.volume_node).shape[1:], (10, 10))
        again = logic.reconstructUsingParameterNode(p)  # a second run overwrites the same node
        self.assertEqual(again.volume_node.GetID(), out.volume_node.GetID())
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")), 1)
        # the FDK window reaches the engine: a lower Hann cut-off smooths, the plain ramp sharpens
        self.assertEqual((p.fdkWindow, p.fdkWindowCutoff), ("hann", 1.0))
        with self.assertRaises(ValueError):
            p.fdkWindowCutoff = 0.0
        with self.assertRaises(ValueError):
            p.fdkWindow = "cosine"

        def roughness():
            a = slicer.util.arrayFromVolume(logic.reconstructUsingParameterNode(p).volume_node).astype(float)
            return float(np.abs(np.diff(a, axis=2)).mean() + np.abs(np.diff(a, axis=1)).mean())

        full = roughness()
        p.fdkWindowCutoff = 0.5
        half = roughness()
        p.fdkWindow, p.fdkWindowCutoff = "ram-lak", 1.0
        ramp = roughness()
        self.assertLess(half, 0.9 * full)
        self.assertGreater(ramp, 1.1 * full)
