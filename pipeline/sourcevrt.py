"""A one-band VRT that presents an input the way the pipeline must read it.

Real inputs need adjusting before they can be warped: a CRS assigned (or a
wrong one replaced), values packed as integers with ``scale_factor`` and
``add_offset`` unpacked to physical values, and a 0…360° longitude grid
rewritten as −180…180° so a −180…180° target grid receives both hemispheres.
All three are header-only rewrites that GDAL's VRT driver expresses exactly,
so the catalog builds one VRT document (an XML string GDAL opens directly,
nothing written to disk) and every later stage simply opens it: the warp, the
passthrough copy and GDAL's own reads all see the same adjusted raster.

The longitude rewrite is the one a user would do by hand: the part east of
180° becomes a second source shifted by −360° and placed before the rest
(two VRT halves, mosaicked), so warping the VRT equals ``gdalwarp`` of that
hand-made mosaic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from affine import Affine

#: Degrees in a full turn of longitude.
FULL_TURN = 360.0
#: The antimeridian of a −180…180° grid.
ANTIMERIDIAN = 180.0
#: A pixel size must divide 360° to within this many pixels for the two
#: halves of a wrapped source to meet without a gap or overlap.
WRAP_PIXEL_TOLERANCE = 1e-6

_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class Unpacking:
    """``value = raw × scale + offset`` for every raw value that is not nodata."""

    scale: float
    offset: float

    def dtype(self, raw_dtype: str) -> str:
        """float32 for small integers (exact for 16-bit), float64 for wider types."""
        return "float32" if np.dtype(raw_dtype).itemsize <= 2 else "float64"


@dataclass(frozen=True)
class Wrap:
    """Columns ``split`` onwards (east of 180°) move before column 0, shifted by −360°."""

    split: int
    width: int
    first_part_col: int


def plan_wrap(transform: Affine, width: int) -> Wrap | None:
    """How to rewrite a north-up geographic raster reaching east of 180° to −180…180°.

    None when nothing lies east of 180°, or when the pixel size does not divide
    360° (the halves could not meet exactly; the caller reports it).
    """
    west, step = transform.c, transform.a
    east = west + width * step
    if east <= ANTIMERIDIAN + WRAP_PIXEL_TOLERANCE * step:
        return None
    turn = FULL_TURN / step
    if abs(turn - round(turn)) > WRAP_PIXEL_TOLERANCE:
        return None
    split = max(0, math.ceil((ANTIMERIDIAN - west) / step - WRAP_PIXEL_TOLERANCE))
    first_part_col = round(turn) - split  # where column 0 lands after the shifted part
    tail = width - split
    if first_part_col < tail:  # more than a full turn: the overlap would be ambiguous
        return None
    return Wrap(split, max(first_part_col + split, tail), first_part_col)


def _source(
    name: str,
    band: int,
    src_rect: tuple[int, int, int, int],
    dst_rect: tuple[int, int, int, int],
    nodata: float | None,
    unpacking: Unpacking | None,
    kind: str = "ComplexSource",
) -> str:
    def rect(tag: str, r: tuple[int, int, int, int]) -> str:
        return f'<{tag} xOff="{r[0]}" yOff="{r[1]}" xSize="{r[2]}" ySize="{r[3]}"/>'

    parts = [
        f"<{kind}>",
        f'<SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>',
        f"<SourceBand>{band}</SourceBand>",
        rect("SrcRect", src_rect),
        rect("DstRect", dst_rect),
    ]
    if nodata is not None:
        parts.append(f"<NODATA>{_number(nodata)}</NODATA>")
    if unpacking is not None:
        parts.append(f"<ScaleOffset>{unpacking.offset!r}</ScaleOffset>")
        parts.append(f"<ScaleRatio>{unpacking.scale!r}</ScaleRatio>")
    parts.append(f"</{kind}>")
    return "".join(parts)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def build_vrt(
    name: str,
    band: int,
    width: int,
    height: int,
    dtype: str,
    transform: Affine,
    crs_wkt: str,
    nodata: float | None,
    unpacking: Unpacking | None = None,
    wrap: Wrap | None = None,
) -> str:
    """The VRT document: band ``band`` of ``name`` with the given CRS, unpacked and wrapped."""
    out_dtype = unpacking.dtype(dtype) if unpacking else dtype
    out_nodata = math.nan if unpacking and nodata is not None else nodata
    out_width = wrap.width if wrap else width
    sources = []
    if wrap is None:
        sources.append(
            _source(name, band, (0, 0, width, height), (0, 0, width, height), nodata, unpacking)
        )
        geotransform = transform
    else:
        tail = width - wrap.split
        sources.append(
            _source(
                name, band, (wrap.split, 0, tail, height), (0, 0, tail, height), nodata, unpacking
            )
        )
        if wrap.split:
            sources.append(
                _source(
                    name,
                    band,
                    (0, 0, wrap.split, height),
                    (wrap.first_part_col, 0, wrap.split, height),
                    nodata,
                    unpacking,
                )
            )
        west = transform.c + wrap.split * transform.a - FULL_TURN
        geotransform = Affine(transform.a, 0.0, west, 0.0, transform.e, transform.f)
    return _document(out_width, height, out_dtype, geotransform, crs_wkt, out_nodata, sources)


def _document(
    width: int,
    height: int,
    dtype: str,
    transform: Affine,
    crs_wkt: str,
    nodata: float | None,
    sources: list[str],
) -> str:
    """A one-band VRT document (``repr`` keeps every geotransform double exact)."""
    gt = ", ".join(repr(v) for v in transform.to_gdal())
    nodata_xml = "" if nodata is None else f"<NoDataValue>{_number(nodata)}</NoDataValue>"
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{escape(crs_wkt)}</SRS>"
        f"<GeoTransform>{gt}</GeoTransform>"
        f'<VRTRasterBand dataType={quoteattr(_GDAL_TYPES[dtype])} band="1">'
        f"{nodata_xml}{''.join(sources)}"
        "</VRTRasterBand></VRTDataset>"
    )


def array_vrt(
    array: np.ndarray,
    col_off: int,
    row_off: int,
    width: int,
    height: int,
    transform: Affine,
    crs_wkt: str,
    nodata: float | None,
) -> str:
    """A ``width`` × ``height`` raster with ``transform`` whose only pixels are ``array``,
    placed at (``col_off``, ``row_off``): a window of a source, already decoded, that GDAL
    warps with the source's own georeferencing (so its coordinates are computed as for
    the whole source). The array is read in place through GDAL's MEM driver (which needs
    ``GDAL_MEM_ENABLE_OPEN=YES``); it must be C-contiguous and outlive every dataset
    opened on the document.
    """
    if not array.flags.c_contiguous:
        raise ValueError("array_vrt needs a C-contiguous array")
    rows, cols = array.shape
    gdal_type = _GDAL_TYPES[array.dtype.name]
    name = f"MEM:::DATAPOINTER={array.ctypes.data},PIXELS={cols},LINES={rows},DATATYPE={gdal_type}"
    placed = _source(
        name, 1, (0, 0, cols, rows), (col_off, row_off, cols, rows), None, None, "SimpleSource"
    )
    return _document(width, height, array.dtype.name, transform, crs_wkt, nodata, [placed])
