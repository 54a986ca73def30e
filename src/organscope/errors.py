"""Project exceptions: every message is one sentence for a person, saying what is wrong and what to do."""


class OrganscopeError(Exception):
    """Base class of every error organscope raises on purpose."""


class InputError(OrganscopeError):
    """The input file or array is not a usable CT volume."""


class GeometryError(OrganscopeError):
    """An affine, spacing or orientation is unusable."""


class ModelError(OrganscopeError):
    """A shipped or user-given model is missing or inconsistent."""


class VolumeTooLarge(InputError):
    """A scan whose declared size passes a cap on voxels or decompressed bytes (refused before allocating)."""


class DicomSeriesError(InputError):
    """A DICOM series is incomplete, mixed or unevenly spaced."""
