"""MRML nodes <-> XRayNeRFLib tensors.

Frames: Slicer's scene (world) frame is patient RAS in mm, the engine's world frame too. A volume node's
``IJKToRAS`` is relative to its parent transform; :func:`world_from_node` composes the parent transforms
(linear only) so that a CT under a transform renders as the transformed CT.

Arrays: ``slicer.util.arrayFromVolume`` gives [K, J, I]; the engine's ``Volume.data`` is (K, J, I) too.

Detector images: a view's image (H rows, W columns) is written as a 1-slice volume node (K=1, J=H, I=W)
whose IJK-to-RAS places voxel (i=column, j=row, k=0) at the centre of that detector pixel in RAS, i.e.
``ras_from_ijk = world_from_camera @ [[su, 0, 0, -cu su], [0, sv, 0, -cv sv], [0, 0, 1, sdd], [0, 0, 0, 1]]``
(su, sv pixel spacing, (cu, cv) principal point; camera frame of XRayNeRFLib.geometry). The k axis is the
camera's +z (source to detector), 1 mm "thick". The node then overlays in 3D exactly where the detector is.

The camera of such an image is kept on the node as the attribute ``XRayNeRF.Cameras`` (the JSON of
XRayNeRFLib.geometry_io.cameras_to_json, in world RAS), so a DRR or an X-ray read elsewhere carries its
geometry.
"""

from __future__ import annotations

import json

import numpy as np
import slicer
import vtk

CAMERAS_ATTRIBUTE = "XRayNeRF.Cameras"


def ijk_to_ras(volume_node) -> np.ndarray:
    """(4, 4) float64: the node's own IJK-to-RAS (relative to its parent transform)."""
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def new_node(scene, class_name: str, name: str):
    """A new node of ``class_name`` in ``scene`` named ``name`` (made unique in that scene)."""
    return scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))


def scene_of(*nodes):
    """The scene of the first node that has one (else ``slicer.mrmlScene``): new nodes go beside the inputs."""
    for node in nodes:
        scene = node.GetScene() if node is not None else None
        if scene is not None:
            return scene
    return slicer.mrmlScene


def world_from_node(node) -> np.ndarray:
    """(4, 4) float64: world RAS <- the node's local frame (product of its linear parent transforms).

    Raises ValueError for a non-linear (grid, B-spline, thin-plate) parent transform."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}': harden the transform "
            "on the volume (Data module, right-click > Harden transform) or use a linear transform"
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return slicer.util.arrayFromVTKMatrix(m)


def ras_from_ijk_world(volume_node) -> np.ndarray:
    """(4, 4) float64: world RAS mm <- continuous IJK of the node's voxel centres, parent transforms included."""
    return world_from_node(volume_node) @ ijk_to_ras(volume_node)


def volume_centre_ras(volume_node) -> np.ndarray:
    """(3,) float64 world RAS mm: the centre of the node's voxel grid (parent transforms applied)."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("no input volume: select a CT volume")
    dims = np.array(volume_node.GetImageData().GetDimensions(), dtype=np.float64)  # (I, J, K)
    return (ras_from_ijk_world(volume_node) @ np.r_[(dims - 1.0) / 2.0, 1.0])[:3]


def volume_from_node(volume_node, units: str = "hu", dtype=None):
    """The node's voxels and world placement as an ``XRayNeRFLib.volume.Volume``.

    volume_node: vtkMRMLScalarVolumeNode with a single-component image. units: "hu" (CT) or "mu" (1/mm).
    returns Volume(data (K, J, I) float32 copy, ras_from_ijk (4, 4) world RAS mm, units)."""
    import torch

    from XRayNeRFLib.volume import Volume

    if volume_node is None:
        raise ValueError("no input volume: select a CT volume")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(f"volume '{volume_node.GetName()}' has no voxels: load or select another volume")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components; a CT has one")
    array = slicer.util.arrayFromVolume(volume_node)  # (K, J, I)
    data = torch.from_numpy(np.array(array, dtype=np.float32))
    a = torch.from_numpy(ras_from_ijk_world(volume_node))
    volume = Volume(data, a.to(torch.float32), units)
    return volume if dtype is None else volume.to(dtype=dtype)


def detector_ras_from_ijk(cameras, view: int = 0) -> np.ndarray:
    """(4, 4) float64 IJK-to-RAS of view ``view``'s image as a 1-slice volume (see the module docstring)."""
    w = cameras.world_from_camera[view].detach().double().cpu().numpy()
    su, sv = cameras.pixel_spacing_mm[view].detach().double().cpu().tolist()
    cu, cv = cameras.principal_point_px[view].detach().double().cpu().tolist()
    sdd = float(cameras.sdd_mm[view])
    camera_from_ijk = np.array([[su, 0.0, 0.0, -cu * su], [0.0, sv, 0.0, -cv * sv], [0.0, 0.0, 1.0, sdd], [0.0, 0.0, 0.0, 1.0]])
    return w @ camera_from_ijk


def set_cameras_attribute(node, cameras) -> None:
    from XRayNeRFLib.geometry_io import cameras_to_json

    node.SetAttribute(CAMERAS_ATTRIBUTE, json.dumps(cameras_to_json(cameras)))


def cameras_from_node(node):
    """The Cameras stored on an image node (attribute ``XRayNeRF.Cameras``), float64, world RAS."""
    from XRayNeRFLib.geometry_io import cameras_from_json

    text = node.GetAttribute(CAMERAS_ATTRIBUTE) if node is not None else None
    if not text:
        name = node.GetName() if node is not None else "(none)"
        raise ValueError(
            f"image '{name}' has no camera geometry (attribute {CAMERAS_ATTRIBUTE}): load the X-ray through "
            "XRayNeRF's DICOM reader or render it with the XRayNeRF DRR module"
        )
    return cameras_from_json(json.loads(text))


def write_image_node(node, image: np.ndarray, cameras, view: int = 0) -> None:
    """Write a detector image into a scalar volume node placed on view ``view``'s detector.

    image: (H, W) float array, image[row, column]. The node's parent transform, if any, is compensated so
    that the image lands on the detector in world coordinates."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or image.shape != (cameras.height, cameras.width):
        raise ValueError(f"image must be (H, W) = {(cameras.height, cameras.width)}, got {image.shape}")
    slicer.util.updateVolumeFromArray(node, image[None].copy())  # (1, H, W) = (K, J, I)
    local = np.linalg.inv(world_from_node(node)) @ detector_ras_from_ijk(cameras, view)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(local))
    set_cameras_attribute(node, cameras[view : view + 1])
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.Modified()


def camera_points_ras(cameras, view: int = 0) -> np.ndarray:
    """(6, 3) float64 RAS mm: source, the detector's four outer corners (pixel edges, in the order
    (col, row) = (-0.5, -0.5), (W-0.5, -0.5), (W-0.5, H-0.5), (-0.5, H-0.5)), and the principal point."""
    import torch

    c = cameras[view : view + 1].to(dtype=torch.float64)
    w, h = c.width, c.height
    pix = torch.tensor([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], dtype=torch.float64)
    pix = torch.cat([pix, c.principal_point_px[:1]], dim=0)[None]  # (1, 5, 2)
    detector = c.pixel_to_world(pix)[0].detach().numpy()
    return np.concatenate([c.source_positions().detach().numpy(), detector], axis=0)


def camera_polydata(cameras, view: int = 0) -> "vtk.vtkPolyData":
    """Lines showing the C-arm: source -> detector corners, the detector outline, the central ray."""
    pts = camera_points_ras(cameras, view)
    points = vtk.vtkPoints()
    for p in pts:
        points.InsertNextPoint(*p)
    lines = vtk.vtkCellArray()
    for corner in (1, 2, 3, 4, 5):  # rays from the source to the corners and the principal point
        lines.InsertNextCell(2)
        lines.InsertCellPoint(0)
        lines.InsertCellPoint(corner)
    lines.InsertNextCell(5)  # detector outline (closed)
    for corner in (1, 2, 3, 4, 1):
        lines.InsertCellPoint(corner)
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetLines(lines)
    return poly


def update_camera_model(model_node, cameras, view: int = 0) -> None:
    """Show the C-arm of ``view`` as a line model in world RAS (the node's parent transform is removed)."""
    model_node.SetAndObserveTransformNodeID(None)
    model_node.SetAndObservePolyData(camera_polydata(cameras, view))
    if model_node.GetDisplayNode() is None:
        model_node.CreateDefaultDisplayNodes()
    display = model_node.GetDisplayNode()
    display.SetColor(1.0, 0.8, 0.1)
    display.SetLineWidth(2)
    display.SetVisibility2D(False)


def remove_node(node) -> None:
    """Remove a node with its display and storage nodes (what the Data module's delete does). The node goes
    first: removing a display node of a volume still shown in a slice view makes a new one appear."""
    scene = node.GetScene()
    if scene is None:
        return
    others = []
    for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
        others.append(node.GetNthDisplayNode(i))
    if hasattr(node, "GetStorageNode"):
        others.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for other in others:
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)
