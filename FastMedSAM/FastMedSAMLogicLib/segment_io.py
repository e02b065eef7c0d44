"""Read and replace one box-shaped region of one segment, in the voxel grid of the source volume.

Only the region is written: `SetBinaryLabelmapToSegment` with MODE_REPLACE would replace the whole segment even
with an extent, so the region is first cleared (MERGE_MIN with zeros: only this segment's voxels drop) and then
filled with MERGE_MASK, which writes the segment's own label value. (MERGE_MAX would copy the mask's raw 1s into a
shared labelmap, i.e. into whichever segment has label value 1.) Other segments are never overwritten: where the
mask overlaps another segment of a shared labelmap, Slicer moves the written segment to its own layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import vtk
from slicer import util, vtkOrientedImageData, vtkOrientedImageDataResample, vtkSlicerSegmentationsModuleLogic
from vtk.util import numpy_support

from FastMedSAMLib.errors import FastMedSAMError

from .geometry import ijk_to_segmentation


@dataclass(frozen=True)
class Region:
    """Inclusive voxel index ranges of the volume grid: slices k0..k1, rows j0..j1, columns i0..i1."""

    k0: int
    k1: int
    j0: int
    j1: int
    i0: int
    i1: int

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.k1 - self.k0 + 1, self.j1 - self.j0 + 1, self.i1 - self.i0 + 1)

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        """Index of this region in a (K, J, I) array."""
        return (slice(self.k0, self.k1 + 1), slice(self.j0, self.j1 + 1), slice(self.i0, self.i1 + 1))

    def union(self, other: "Region") -> "Region":
        return Region(
            min(self.k0, other.k0), max(self.k1, other.k1), min(self.j0, other.j0), max(self.j1, other.j1),
            min(self.i0, other.i0), max(self.i1, other.i1),
        )

    def clipped(self, shape_kji: Tuple[int, int, int]) -> "Region":
        depth, height, width = shape_kji
        return Region(
            max(self.k0, 0), min(self.k1, depth - 1), max(self.j0, 0), min(self.j1, height - 1),
            max(self.i0, 0), min(self.i1, width - 1),
        )


def region_labelmap(volume, segmentation, region: Region, mask: Optional[np.ndarray] = None) -> vtkOrientedImageData:
    """A uint8 labelmap covering `region` of the volume's grid, placed in the segmentation's frame; holds `mask`
    (bool, `region.shape`) or zeros."""
    image = vtkOrientedImageData()
    image.SetExtent(region.i0, region.i1, region.j0, region.j1, region.k0, region.k1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(0)
    image.SetImageToWorldMatrix(util.vtkMatrixFromArray(ijk_to_segmentation(volume, segmentation)))
    if mask is not None:
        if mask.shape != region.shape:
            raise ValueError(f"mask shape {mask.shape} does not match region shape {region.shape}")
        _voxels(image, region.shape)[:] = mask
        image.GetPointData().GetScalars().Modified()
    return image


def _voxels(image: vtkOrientedImageData, shape: Tuple[int, int, int]) -> np.ndarray:
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def read_region(segmentation, segment_id: str, volume, region: Region) -> np.ndarray:
    """The segment's voxels inside `region` as a bool array of `region.shape`."""
    if segmentation.GetSegmentation().GetSegment(segment_id) is None:
        raise FastMedSAMError(f"segmentation {segmentation.GetName()!r} has no segment {segment_id!r}")
    labelmap = vtkOrientedImageData()
    vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation, segment_id, labelmap, False)
    extent = labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return np.zeros(region.shape, dtype=bool)
    reference = region_labelmap(volume, segmentation, region)
    resampled = vtkOrientedImageData()
    if not vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, resampled):
        raise FastMedSAMError(f"could not read segment {segment_id!r} in the volume's geometry")
    label_value = segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return _voxels(resampled, region.shape) == label_value  # a shared labelmap holds several segments


def write_region(segmentation, segment_id: str, volume, region: Region, mask: np.ndarray) -> None:
    """Replace the segment inside `region` by `mask` (bool, `region.shape`); nothing outside the region changes."""
    if mask.shape != region.shape:
        raise ValueError(f"mask shape {mask.shape} does not match region shape {region.shape}")
    logic = vtkSlicerSegmentationsModuleLogic
    zeros = region_labelmap(volume, segmentation, region)
    extent = zeros.GetExtent()
    logic.SetBinaryLabelmapToSegment(zeros, segmentation, segment_id, logic.MODE_MERGE_MIN, extent)
    if mask.any():
        filled = region_labelmap(volume, segmentation, region, mask)
        logic.SetBinaryLabelmapToSegment(filled, segmentation, segment_id, logic.MODE_MERGE_MASK, extent)


def has_voxels(segmentation) -> bool:
    """True when any segment of the segmentation holds at least one voxel."""
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        labelmap = vtkOrientedImageData()
        vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation, segments.GetNthSegmentID(index), labelmap, False
        )
        extent = labelmap.GetExtent()
        if extent[0] <= extent[1] and extent[2] <= extent[3] and extent[4] <= extent[5]:
            if labelmap.GetScalarRange()[1] > 0:
                return True
    return False


def region_on_geometry(volume, segmentation, region: Region, mask: np.ndarray,
                       geometry: vtkOrientedImageData) -> vtkOrientedImageData:
    """`mask` (on `region` of the volume's grid) resampled (nearest voxel) onto the grid of `geometry`, e.g. the
    Segment Editor's `defaultModifierLabelmap()`, cropped to the region's footprint there: what the editor's
    masking and overwrite rules need (they drop a modifier whose geometry differs from theirs)."""
    source = region_labelmap(volume, segmentation, region, mask)
    to_world = vtk.vtkMatrix4x4()
    geometry.GetImageToWorldMatrix(to_world)
    world_to_grid = np.linalg.inv(util.arrayFromVTKMatrix(to_world))
    corners = np.array([[i, j, k, 1.0] for i in (region.i0 - 0.5, region.i1 + 0.5)
                        for j in (region.j0 - 0.5, region.j1 + 0.5) for k in (region.k0 - 0.5, region.k1 + 0.5)])
    grid = (corners @ ijk_to_segmentation(volume, segmentation).T @ world_to_grid.T)[:, :3]
    lo, hi = np.floor(grid.min(axis=0)).astype(int), np.ceil(grid.max(axis=0)).astype(int)
    full = geometry.GetExtent()
    extent = [max(lo[0], full[0]), min(hi[0], full[1]), max(lo[1], full[2]), min(hi[1], full[3]),
              max(lo[2], full[4]), min(hi[2], full[5])]
    reference = vtkOrientedImageData()
    reference.SetImageToWorldMatrix(to_world)
    reference.SetExtent(*extent)
    reference.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    out = vtkOrientedImageData()
    if not vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(source, reference, out):
        raise FastMedSAMError("could not bring the mask onto the Segment Editor's geometry")
    return out
