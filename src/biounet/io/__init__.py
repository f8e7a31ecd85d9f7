"""Reading and writing images and masks, with validation that names the file and the problem.

Images cross module boundaries as lists of (H, W) numpy arrays, or (C, H, W) for images of
several channels (a TIFF stack is a list of its slices; a folder is a list of its files,
which may differ in size). A TIFF's axes come from its ImageJ, OME or tifffile metadata: a
C (channel) axis gives each slice C channels, never C slices; without axes metadata every
page is a slice. Colour inputs are converted to gray unless channels are asked for
(:func:`parse_channels`: ``"rgb"`` or indices); masks are checked to hold classes and
mapped to class indices, so a 0/255 mask can never be misread as "everything is class 0".

Reading never silently drops data: a TIFF whose pages or page data end before what the
file declares (ImageJ ``images=``, a tifffile shape, OME planes, the page chain, the page
data's offsets) is refused, and so is a NaN or infinite pixel. Each array's pixel size
(ImageJ, OME, TIFF or PNG resolution) is kept in :attr:`Images.pixel_sizes`, and
:class:`StackWriter` writes it into its TIFFs, ImageJ style, so outputs overlay their
inputs in Fiji and napari.

One idea per module, each importing only those below it:

- :mod:`.read`: :class:`Images`, :func:`read_images` (a file or a folder), :func:`read_sources` (or several folders), masks as class
  maps, instance labels, pairing images with masks.
- :mod:`.formats`: TIFF (axes, colour samples) and PNG pixels.
- :mod:`.tiff_integrity`: the page-chain and page-data checks of a TIFF.
- :mod:`.channels`: ``--channels`` specs and channel counts.
- :mod:`.pixel_size`: pixel sizes and their units from the metadata.
- :mod:`.bundled`: the folders of the bundled data sets.
- :mod:`.write`: atomic files, stale temp files, the run lock, :class:`StackWriter`.

This package re-exports their public names, so ``from biounet.io import read_images``
works as well as ``from biounet.io.read import read_images``.
"""

from .bundled import find_data, resolve_data_path
from .channels import Channels, channels_of, channels_text, parse_channels, pick_channels
from .formats import IMAGE_SUFFIXES, read_png, read_tiff
from .pixel_size import MICRONS, PixelSize, dpi_pixel_size, imagej_unit, tiff_pixel_size
from .read import (
    Images,
    as_instances,
    check_pairs,
    list_image_files,
    read_images,
    read_instances,
    read_masks,
    read_sources,
    where_of,
)
from .tiff_integrity import check_complete, ifd_chain_damage
from .write import (
    RunLock,
    StackWriter,
    atomic_path,
    named,
    remove_stale_temps,
    reserve,
    write_text,
    write_tiff,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "MICRONS",
    "Channels",
    "Images",
    "PixelSize",
    "RunLock",
    "StackWriter",
    "as_instances",
    "atomic_path",
    "channels_of",
    "channels_text",
    "check_complete",
    "check_pairs",
    "dpi_pixel_size",
    "find_data",
    "ifd_chain_damage",
    "imagej_unit",
    "list_image_files",
    "named",
    "parse_channels",
    "pick_channels",
    "read_images",
    "read_instances",
    "read_masks",
    "read_png",
    "read_sources",
    "read_tiff",
    "remove_stale_temps",
    "reserve",
    "resolve_data_path",
    "tiff_pixel_size",
    "where_of",
    "write_text",
    "write_tiff",
]
