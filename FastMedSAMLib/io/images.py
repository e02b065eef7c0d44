"""Images in and masks out, with their geometry kept exact.

`Image.array` is in numpy index order: (Z, Y, X) for a volume, (Y, X) for a grey 2D image, (Y, X, 3) for RGB.
Geometry is ITK's (LPS): `spacing` (x, y, z) mm, `origin` the centre of voxel (0, 0, 0), `direction` 3x3 whose
columns are the i, j, k axis directions. 2D images carry 3D geometry too (k = 0), so a mask of any image can be
written back onto exactly the grid it came from.

Shape rules (applied by `Image` itself, so arrays, files and Slicer volumes all agree):
- a volume one voxel thick along k, (1, Y, X), is a 2D image: `array` is (Y, X) (or (Y, X, 3)) and `is_volume` is
  False; its geometry keeps the slice's 3D position and z spacing, and its masks are written as one-slice volumes;
- a 3-D array whose last axis has length 3 is one RGB image (Y, X, 3); RGB volumes and 4D images are refused.

SimpleITK reads and writes every format it knows; Pillow reads what it cannot (GIF, palette label PNGs);
numpy reads the CVPR24 "MedSAM on laptop" npz (`imgs`, `gts`, optional `spacing`, `direction`, `origin`).
"""
from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ImageError

if TYPE_CHECKING:  # SimpleITK is imported where a file is read or written: arrays need no SimpleITK
    import SimpleITK as sitk

PathLike = Union[str, Path]
SegmentNames = Union[Sequence[str], Mapping[int, str], None]

MASK_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
NPZ_IMAGE_KEY = "imgs"
NPZ_LABEL_KEY = "gts"
MEMBER_SEPARATOR = "::"
DICOM_MODALITY_TAG = "0008|0060"
DICOM_POSITION_TAG = "0020|0032"
SLICE_SPACING_TOLERANCE = 0.01  # relative; DICOM slices further off a uniform grid than this are refused
# Distinct segment colours (RGB 0-1) for .seg.nrrd, cycled by label value.
SEGMENT_COLORS = (
    (0.902, 0.098, 0.294), (0.235, 0.706, 0.294), (1.000, 0.882, 0.098), (0.263, 0.388, 0.847),
    (0.961, 0.510, 0.192), (0.569, 0.118, 0.706), (0.259, 0.831, 0.957), (0.941, 0.196, 0.902),
    (0.749, 0.937, 0.271), (0.980, 0.745, 0.831), (0.275, 0.600, 0.565), (0.863, 0.745, 1.000),
)


@dataclass(frozen=True, eq=False)
class Image:
    """An image array with its ITK (LPS) geometry. Construction validates and normalises (see module doc)."""

    array: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality_hint: Optional[str] = None  # e.g. "CT" (DICOM Modality); decides the intensity rule when given
    source: Optional[str] = None  # where it was read from, for messages only
    _identity: Optional[str] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        spacing = _vector3(self.spacing, "spacing", fill=1.0)
        if not all(s > 0 for s in spacing):
            raise ImageError(f"spacing must be positive, got {self.spacing}")
        hint = None if self.modality_hint is None else str(self.modality_hint).strip() or None
        normalised = {
            "array": _normalise_array(self.array, self.source),
            "spacing": spacing,
            "origin": _vector3(self.origin, "origin", fill=0.0),
            "direction": _direction3(self.direction),
            "modality_hint": hint,
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: normalise once, here

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: Optional[Sequence[float]] = None,
        origin: Optional[Sequence[float]] = None,
        direction: Optional[Union[np.ndarray, Sequence[float]]] = None,
        modality: Optional[str] = None,
    ) -> "Image":
        """An Image from a numpy array in index order; geometry defaults to 1 mm, origin 0, identity direction."""
        return cls(
            np.asarray(array),
            spacing=(1.0, 1.0, 1.0) if spacing is None else tuple(spacing),
            origin=(0.0, 0.0, 0.0) if origin is None else tuple(origin),
            direction=np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64),
            modality_hint=modality,
        )

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 3 and self.array.shape[2] == 3

    @property
    def is_volume(self) -> bool:
        return self.array.ndim == 3 and not self.is_rgb

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        """(Z, Y, X) of the voxel grid; Z = 1 for a 2D image."""
        if self.is_volume:
            return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]
        return (1, int(self.array.shape[0]), int(self.array.shape[1]))

    @property
    def identity(self) -> str:
        """A stable key for this exact content, geometry and modality hint (the embedding cache key)."""
        if self._identity is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((self.array.shape, self.array.dtype.str, self.modality_hint)).encode())
            h.update(np.asarray(self.spacing + self.origin, dtype=np.float64).tobytes())
            h.update(self.direction.tobytes())
            h.update(np.ascontiguousarray(self.array).data)
            object.__setattr__(self, "_identity", h.hexdigest())
        return self._identity  # type: ignore[return-value]


def _normalise_array(array: np.ndarray, source: Optional[str]) -> np.ndarray:
    where = f" ({source})" if source else ""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ImageError(f"image voxels must be numbers, not {array.dtype}{where}")
    if array.size == 0:
        raise ImageError(f"image is empty: shape {array.shape}{where}")
    if array.ndim == 4 and array.shape[0] == 1 and array.shape[3] == 3:
        array = array[0]
    elif array.ndim == 4 and array.shape[3] == 3:
        raise ImageError(
            f"RGB volumes are not supported: shape {array.shape}{where}; convert to greyscale or pass one slice"
        )
    elif array.ndim == 3 and array.shape[0] == 1 and array.shape[2] != 3:
        array = array[0]
    if array.ndim == 4:
        raise ImageError(f"4D images are not supported: shape {array.shape}{where}; extract one 3D volume first")
    if array.ndim not in (2, 3):
        raise ImageError(f"an image must be 2D (Y, X), RGB (Y, X, 3) or a volume (Z, Y, X), got shape {array.shape}{where}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ImageError(f"image has {bad} NaN/Inf voxel(s){where}; replace them (e.g. with the background value) first")
    view = np.ascontiguousarray(array).view()
    view.flags.writeable = False  # the identity hash must stay true to the content
    return view


def _vector3(values: Sequence[float], name: str, fill: float) -> Tuple[float, float, float]:
    flat = [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]
    if len(flat) == 2:
        flat.append(fill)
    if len(flat) != 3 or not all(np.isfinite(flat)):
        raise ImageError(f"{name} must be 2 or 3 finite numbers (x, y[, z]), got {values}")
    return (flat[0], flat[1], flat[2])


def _direction3(direction: Union[np.ndarray, Sequence[float]]) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    if d.size == 4:
        d = np.block([[d.reshape(2, 2), np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    if d.size != 9 or not np.isfinite(d).all():
        raise ImageError(f"direction must be a 3x3 (or 2x2) matrix of finite numbers, got {direction!r}")
    d = d.reshape(3, 3).copy()
    if abs(np.linalg.det(d)) < 1e-6:
        raise ImageError(f"direction matrix is singular: {d.tolist()}")
    d.flags.writeable = False
    return d


# -- reading -----------------------------------------------------------------------------------------------------
def _split_member(path: PathLike) -> Tuple[Path, Optional[str]]:
    text = str(path)
    if MEMBER_SEPARATOR in text:
        file_part, member = text.rsplit(MEMBER_SEPARATOR, 1)
        return Path(file_part), member
    return Path(text), None


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"image not found: {path}")


def read_image(path: PathLike) -> Image:
    """Read an image: NIfTI, NRRD, MHA, a DICOM series folder or file, PNG, JPG, TIFF, GIF, BMP or a CVPR24 npz
    (`file.npz` reads `imgs`; `file.npz::key` another array)."""
    file_path, member = _split_member(path)
    _check_exists(file_path)
    if file_path.is_dir():
        return _read_dicom_series(file_path)
    if file_path.suffix.lower() == ".npz":
        return _read_npz(file_path, member or NPZ_IMAGE_KEY)
    if member is not None:
        raise ImageError(f"'{MEMBER_SEPARATOR}{member}' selects an array inside an .npz file; {file_path} is not one")
    try:
        return _image_from_sitk(_sitk_read(file_path), str(file_path))
    except _SitkCannotRead as sitk_error:
        return Image(_read_with_pillow(file_path, label=False, cause=sitk_error), source=str(file_path))


def read_label(path: PathLike) -> Image:
    """Read a label map (integer values) with its geometry; accepts the manifest's `file.npz::gts` form
    (a bare `file.npz` reads `gts`). Palette images give their palette indices; grey-as-RGB labels one channel."""
    file_path, member = _split_member(path)
    _check_exists(file_path)
    if file_path.is_dir():
        image = _read_dicom_series(file_path)
    elif file_path.suffix.lower() == ".npz":
        image = _read_npz(file_path, member or NPZ_LABEL_KEY)
    elif member is not None:
        raise ImageError(f"'{MEMBER_SEPARATOR}{member}' selects an array inside an .npz file; {file_path} is not one")
    else:
        try:
            itk_image = _sitk_read(file_path)
        except _SitkCannotRead as sitk_error:
            image = Image(_read_with_pillow(file_path, label=True, cause=sitk_error), source=str(file_path))
        else:
            components = itk_image.GetNumberOfComponentsPerPixel()
            if components > 1 and itk_image.GetDimension() != 2:
                raise ImageError(f"{file_path} has {components} values per voxel; a label map has one")
            array = _read_with_pillow(file_path, label=True, cause=None) if components > 1 else None
            image = _image_from_sitk(itk_image, str(file_path), array=array)
    return replace(image, array=_as_labels(image.array, str(path)))


def _as_labels(array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise ImageError(f"label map has non-integer values ({source}); labels must be whole numbers")
        array = array.astype(np.int64)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return array


class _SitkCannotRead(Exception):
    pass


def _sitk_read(path: Path) -> sitk.Image:
    try:
        import SimpleITK as sitk
    except ImportError as error:  # a bare compute box: Pillow still reads the 2D formats
        raise _SitkCannotRead("SimpleITK is not installed") from error
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise _SitkCannotRead(_first_line(error)) from error


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception thrown", "/"))]
    return (useful or lines or [type(error).__name__])[-1]


def _image_from_sitk(
    image: sitk.Image, source: str, array: Optional[np.ndarray] = None, modality: Optional[str] = None
) -> Image:
    """An `Image` from a SimpleITK image (2D, 3D, or 4D with one time point), keeping its geometry."""
    import SimpleITK as sitk

    if image.GetDimension() == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise ImageError(
                f"4D images are not supported: {source} has size {size} (x, y, z, t); extract one 3D volume first"
            )
        image = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
    if image.GetDimension() not in (2, 3):
        raise ImageError(f"{source} is a {image.GetDimension()}D image; only 2D and 3D images are supported")
    if array is None:
        array = sitk.GetArrayFromImage(image)
        components = image.GetNumberOfComponentsPerPixel()
        if components == 4:
            array = array[..., :3]  # drop alpha
        elif components == 2:
            array = array[..., 0]  # grey + alpha
        elif components not in (1, 3):
            raise ImageError(f"{source} has {components} values per pixel; only grey and RGB images are supported")
    if modality is None and image.HasMetaDataKey(DICOM_MODALITY_TAG):
        modality = image.GetMetaData(DICOM_MODALITY_TAG)
    return Image(
        array,
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.asarray(image.GetDirection(), dtype=np.float64),
        modality_hint=modality,
        source=source,
    )


def _read_with_pillow(path: Path, label: bool, cause: Optional[_SitkCannotRead]) -> np.ndarray:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise ImageError(f"{path} has {im.n_frames} frames; multi-frame GIF/TIFF stacks are not supported")
            if label:
                if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                    return np.array(im)
                return _grey_from_rgb_label(np.array(im.convert("RGB")), path)
            if im.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                return np.array(im)
            return np.array(im.convert("L" if im.mode in ("1", "LA") else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        reason = f"SimpleITK: {cause}; Pillow: {error}" if cause else str(error)
        raise ImageError(f"cannot read {path} as an image ({reason})") from error


def _grey_from_rgb_label(rgb: np.ndarray, path: Path) -> np.ndarray:
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ImageError(f"{path} is a colour label image; labels must be grey values or palette indices")
    return rgb[..., 0]


def _read_npz(path: Path, key: str) -> Image:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                raise ImageError(f"{path} has no array {key!r} (it has: {', '.join(npz.files)})")
            array = npz[key]
            spacing = npz["spacing"] if "spacing" in npz.files else (1.0, 1.0, 1.0)
            origin = npz["origin"] if "origin" in npz.files else (0.0, 0.0, 0.0)
            direction = npz["direction"] if "direction" in npz.files else np.eye(3)
    except ImageError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ImageError(f"cannot read {path} as an npz archive: {error}") from error
    return Image(array, spacing=spacing, origin=origin, direction=direction, source=f"{path}{MEMBER_SEPARATOR}{key}")


def _read_dicom_series(folder: Path) -> Image:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageError(f"{folder} is a folder without a DICOM series; give an image file or a DICOM series folder")
    if len(series) > 1:
        raise ImageError(f"{folder} holds {len(series)} DICOM series ({', '.join(series)}); give a folder with one")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ImageError(f"cannot read the DICOM series in {folder}: {_first_line(error)}") from error
    _check_uniform_slices(reader, image, folder)
    modality = reader.GetMetaData(0, DICOM_MODALITY_TAG) if reader.HasMetaDataKey(0, DICOM_MODALITY_TAG) else None
    return _image_from_sitk(image, str(folder), modality=modality)


def _check_uniform_slices(reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path) -> None:
    """ITK assumes equal slice spacing; refuse a series whose slice positions say otherwise (gaps, duplicates)."""
    count = len(reader.GetFileNames())
    if count < 3 or not all(reader.HasMetaDataKey(i, DICOM_POSITION_TAG) for i in range(count)):
        return
    positions = np.array(
        [[float(v) for v in reader.GetMetaData(i, DICOM_POSITION_TAG).split("\\")] for i in range(count)]
    )
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    steps = np.diff(positions @ normal)
    spacing = image.GetSpacing()[2]
    if np.max(np.abs(np.abs(steps) - spacing)) > SLICE_SPACING_TOLERANCE * spacing:
        raise ImageError(
            f"the DICOM series in {folder} has uneven slice spacing ({np.min(np.abs(steps)):.4g} to "
            f"{np.max(np.abs(steps)):.4g} mm); resample it to a regular grid first"
        )


# -- writing -----------------------------------------------------------------------------------------------------
def _mask_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in MASK_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise ImageError(f"cannot write a mask to {path}: use one of {', '.join(MASK_SUFFIXES)}")


def _label_volume(mask: np.ndarray, reference: Image) -> np.ndarray:
    """The mask as a (Z, Y, X) label volume on the reference grid, in the smallest unsigned type that holds it."""
    mask = np.asarray(mask)
    z, y, x = reference.shape_zyx
    if mask.shape == (y, x) and not reference.is_volume:
        mask = mask[None]
    if mask.shape != (z, y, x):
        expected = f"{(z, y, x)}" if reference.is_volume else f"{(y, x)} or {(1, y, x)}"
        raise ImageError(f"mask shape {mask.shape} does not match the image: expected {expected}")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if mask.dtype.kind not in "iu":
        raise ImageError(f"a mask must be bool or integer labels, not {mask.dtype}")
    low, high = int(mask.min()), int(mask.max())
    if low < 0:
        raise ImageError(f"mask has negative label values (min {low})")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return mask.astype(dtype)
    raise ImageError(f"mask label value {high} is too large (max {np.iinfo(np.uint32).max})")


def _on_reference_grid(volume: np.ndarray, reference: Image) -> sitk.Image:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(reference.spacing)
    image.SetOrigin(reference.origin)
    image.SetDirection(reference.direction.ravel().tolist())
    return image


def write_mask(mask: np.ndarray, reference: Image, path: PathLike, segment_names: SegmentNames = None) -> Path:
    """Write `mask` (bool, or integer labels) with exactly `reference`'s geometry, atomically.

    Formats by suffix: .nii.gz, .nii, .nrrd, .mha, and Slicer's .seg.nrrd (a label map whose values are segments).
    A 2D image's mask may be (Y, X) or (1, Y, X) and is written as a one-slice volume.
    `segment_names` (.seg.nrrd only): names for label values 1, 2, ... (a sequence) or {value: name}; values present
    in the mask without a name are named "Segment_<value>". A bool mask is one segment, label value 1.
    """
    path = Path(path)
    suffix = _mask_suffix(path)
    volume = _label_volume(mask, reference)
    image = _on_reference_grid(volume, reference)
    if suffix == ".seg.nrrd":
        for key, value in segmentation_fields(volume, reference, segment_names).items():
            image.SetMetaData(key, value)
    if not path.parent.is_dir():
        raise ImageError(f"cannot write {path}: folder {path.parent} does not exist")
    _write_atomically(image, path, suffix)
    return path


def _write_atomically(image: sitk.Image, path: Path, suffix: str) -> None:
    import SimpleITK as sitk

    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}")
    try:
        sitk.WriteImage(image, str(temporary), useCompression=suffix != ".nii")
        os.replace(temporary, path)
    except (RuntimeError, OSError) as error:
        raise ImageError(f"could not write {path}: {_first_line(error)}") from error
    finally:
        temporary.unlink(missing_ok=True)


def _segments(volume: np.ndarray, names: SegmentNames) -> Dict[int, Tuple[str, bool]]:
    """label value -> (name, name was generated)."""
    present = [int(v) for v in np.unique(volume) if v != 0]
    if names is None:
        named: Dict[int, str] = {}
    elif isinstance(names, Mapping):
        named = {int(value): str(name) for value, name in names.items()}
    else:
        named = {value: str(name) for value, name in enumerate(names, start=1)}
    if any(value <= 0 for value in named):
        raise ImageError(f"segment label values must be positive, got {sorted(named)}")
    for name in named.values():
        if "\n" in name or "\r" in name:
            raise ImageError(f"segment name {name!r} has a line break")
    segments = {value: (name, False) for value, name in named.items()}
    for value in present:
        segments.setdefault(value, (f"Segment_{value}", True))
    if not segments:
        segments[1] = ("Segment_1", True)
    return dict(sorted(segments.items()))


def _extent(volume: np.ndarray, value: int) -> str:
    """Slicer's segment extent: 'i0 i1 j0 j1 k0 k1' of the label's bounding box, '0 -1 0 -1 0 -1' when empty."""
    k, j, i = np.nonzero(volume == value)
    if len(i) == 0:
        return "0 -1 0 -1 0 -1"
    return f"{i.min()} {i.max()} {j.min()} {j.max()} {k.min()} {k.max()}"


def ijk_to_lps_matrix(image: Image) -> np.ndarray:
    """4x4 homogeneous index -> LPS matrix: [direction · diag(spacing) | origin]."""
    matrix = np.eye(4)
    matrix[:3, :3] = image.direction @ np.diag(image.spacing)
    matrix[:3, 3] = image.origin
    return matrix


def ijk_to_ras_matrix(image: Image) -> np.ndarray:
    """Slicer's IJKToRAS: diag(-1, -1, 1, 1) · ijk_to_lps_matrix."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps_matrix(image)


def segmentation_fields(volume: np.ndarray, reference: Image, names: SegmentNames = None) -> Dict[str, str]:
    """The NRRD key/value fields that make a (Z, Y, X) label volume a Slicer .seg.nrrd (one layer)."""
    fields: Dict[str, str] = {}
    for index, (value, (name, generated)) in enumerate(_segments(volume, names).items()):
        prefix = f"Segment{index}_"
        color = SEGMENT_COLORS[(value - 1) % len(SEGMENT_COLORS)]
        fields[prefix + "ID"] = f"Segment_{value}"
        fields[prefix + "Name"] = name
        fields[prefix + "NameAutoGenerated"] = "1" if generated else "0"
        fields[prefix + "LabelValue"] = str(value)
        fields[prefix + "Layer"] = "0"
        fields[prefix + "Extent"] = _extent(volume, value)
        fields[prefix + "Color"] = " ".join(f"{c:g}" for c in color)
        fields[prefix + "ColorAutoGenerated"] = "0"
    z, y, x = volume.shape
    geometry = ";".join(repr(float(v)) for v in ijk_to_ras_matrix(reference).ravel())
    fields["Segmentation_MasterRepresentation"] = "Binary labelmap"
    fields["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    fields["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    fields["Segmentation_ConversionParameters"] = (
        f"Reference image geometry|{geometry};0;{x - 1};0;{y - 1};0;{z - 1};|Image geometry description&"
    )
    return fields


__all__ = [
    "Image",
    "read_image",
    "read_label",
    "write_mask",
    "segmentation_fields",
    "ijk_to_lps_matrix",
    "ijk_to_ras_matrix",
    "MASK_SUFFIXES",
]
