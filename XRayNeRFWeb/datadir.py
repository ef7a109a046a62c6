"""The one folder the web app reads from and writes to (``--data-dir``), and the checks on what comes in.

Every path the page names is relative to the data folder and resolved here, once: absolute paths, ``..``
components and symbolic links that lead out of the folder are refused (:class:`UnsafePathError`). Uploads
are bounded in size (:class:`UploadTooLargeError`), stored under ``uploads/`` with a cleaned file name, and
kept only when they are a readable image, DICOM file or JSON document (:class:`UnreadableUploadError`).
All three are ``ValueError`` subclasses whose text the page shows as is.

No Slicer, VTK or torch here: the rules are tested without a server (tests/test_web_datadir.py).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

# What an upload may be, by role. Images are read by SimpleITK (the engine's volume and stack reader), DICOM by
# pydicom, geometry and camera files are JSON.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
JSON_SUFFIXES = (".json",)
UPLOADS = "uploads"


class UnsafePathError(ValueError):
    """A path that is absolute, climbs out with ``..``, or resolves (through a link) outside the data folder."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"refused '{path}': {reason}; name a file inside the data folder")


class UploadTooLargeError(ValueError):
    def __init__(self, name: str, size_bytes: int, limit_bytes: int):
        self.name, self.size_bytes, self.limit_bytes = name, int(size_bytes), int(limit_bytes)
        super().__init__(
            f"refused '{name}': {size_bytes / 2**20:.1f} MB is over the upload limit of {limit_bytes / 2**20:.0f} MB "
            "(start the server with a larger --max-upload-mb)"
        )


class UnreadableUploadError(ValueError):
    def __init__(self, name: str, why: str):
        self.name, self.why = name, why
        super().__init__(f"refused '{name}': {why}")


def default_data_dir() -> Path:
    """A fresh folder under the user's temporary directory (the default ``--data-dir``)."""
    return Path(tempfile.mkdtemp(prefix="xraynerf-web-"))


def _suffix(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(lower).suffix


def clean_file_name(name: str) -> str:
    """The last component of a client's file name with anything but letters, digits, ``._-`` replaced by ``_``."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base or "upload"


def check_readable(path: Path, name: str) -> str:
    """Read enough of ``path`` to know it is DICOM, an image SimpleITK reads, or JSON; returns the kind.
    Raises UnreadableUploadError naming what was expected."""
    suffix = _suffix(name)
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        import pydicom

        try:
            pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as error:  # pydicom raises several types on a damaged file
            raise UnreadableUploadError(name, f"a damaged DICOM file ({error})") from error
        return "dicom"
    if suffix in JSON_SUFFIXES:
        try:
            json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UnreadableUploadError(name, f"not a JSON document ({error})") from error
        return "json"
    if suffix in IMAGE_SUFFIXES:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise UnreadableUploadError(name, f"not a readable {suffix} image") from error
        return "image"
    raise UnreadableUploadError(
        name, "not a readable image or DICOM file (expected DICOM, " + ", ".join(IMAGE_SUFFIXES) + ", or .json for geometry)"
    )


@dataclass
class DataDir:
    """The data folder (created if missing) and the upload limit in bytes."""

    root: Path
    max_upload_bytes: int

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        if self.max_upload_bytes <= 0:
            raise ValueError("the upload limit must be positive")

    def resolve(self, relative: str, must_exist: bool = True) -> Path:
        """The file ``relative`` (to the data folder) as an absolute path inside it. Raises UnsafePathError for
        an absolute path, a ``..`` component or a link out of the folder; FileNotFoundError when absent."""
        text = str(relative).strip()
        if not text:
            raise UnsafePathError(text, "the name is empty")
        if "\x00" in text:
            raise UnsafePathError(text, "the name holds a NUL character")
        parts = re.split(r"[\\/]", text)
        if text.startswith(("/", "\\")) or os.path.isabs(text) or re.match(r"^[A-Za-z]:", text):
            raise UnsafePathError(text, "absolute paths are not served")
        if ".." in parts:
            raise UnsafePathError(text, "'..' leads out of the data folder")
        candidate = self.root.joinpath(*[p for p in parts if p not in ("", ".")])
        resolved = candidate.resolve()  # follows links
        if resolved != self.root and self.root not in resolved.parents:
            raise UnsafePathError(text, "it links outside the data folder")
        if must_exist and not resolved.is_file():
            raise FileNotFoundError(f"'{text}' is not a file in the data folder")
        return resolved

    def output_path(self, name: str) -> Path:
        """Where the app writes a result called ``name`` (a cleaned file name) inside the data folder."""
        return self.resolve(clean_file_name(name), must_exist=False)

    def check_upload_size(self, name: str, size_bytes: int) -> None:
        if int(size_bytes) > self.max_upload_bytes:
            raise UploadTooLargeError(name, size_bytes, self.max_upload_bytes)

    def save_upload(self, name: str, content: bytes) -> Path:
        """Store an upload under ``uploads/`` (name cleaned, never overwriting) once it is within the limit and
        readable; returns its path. Raises UploadTooLargeError / UnreadableUploadError (nothing kept)."""
        self.check_upload_size(name, len(content))
        folder = self.root / UPLOADS
        folder.mkdir(exist_ok=True)
        base = clean_file_name(name)
        path, n = folder / base, 1
        while path.exists():
            suffix = _suffix(base)
            stem = base[: len(base) - len(suffix)] if suffix else base
            path, n = folder / f"{stem}-{n}{suffix}", n + 1
        path.write_bytes(content)
        try:
            check_readable(path, base)
        except UnreadableUploadError as error:
            path.unlink()
            raise UnreadableUploadError(clean_file_name(name), error.why) from None
        return path

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def listing(self) -> List[str]:
        """The regular files in the data folder (links skipped), relative, sorted."""
        out = []
        for dirpath, _dirnames, filenames in os.walk(self.root, followlinks=False):
            for f in filenames:
                p = Path(dirpath) / f
                if not p.is_symlink() and p.is_file():
                    out.append(p.relative_to(self.root).as_posix())
        return sorted(out)
