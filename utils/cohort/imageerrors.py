"""Errors of reading an image file or DICOM folder, in plain words.

:class:`ImageFileError` is every refusal of :mod:`utils.cohort.imagecheck`,
:mod:`utils.cohort.voxeldata` and :mod:`utils.cohort.dicom`; :func:`plain_itk_error` turns
ITK's exception text into words (also for registration's ITK failures).
"""

from __future__ import annotations

import re

ITK_MESSAGES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gzip", "zlib", "inflate", "compressed", "unexpected end of file"),
     "truncated or corrupt compressed data"),
    (("could not create io object", "unable to determine imageio"),
     "not an image format SimpleITK can read (NIfTI, NRRD, MHA or a DICOM folder)"),
    (("does not exist", "unable to open", "no such file", "cannot be read", "cannot open"),
     "cannot open file"),
    (("all samples map outside moving image buffer",),
     "the two exams do not overlap after initial alignment"),
    (("too many samples map outside moving image buffer",),
     "too few overlapping voxels between the two exams"),
    (("joint pdf summed to zero",), "no overlapping intensities (empty or constant image)"),
    (("bad_alloc", "out of memory", "failed to allocate"), "not enough memory"),
)


class ImageFileError(ValueError):
    """An image file or DICOM folder that must not be used; the message is plain words."""


def plain_itk_error(exc: BaseException) -> str:
    """``"<plain words> (ITK: <first informative line>)"`` for an ITK exception.

    Messages of this package's own errors (:class:`ImageFileError`) pass unchanged.
    """
    if isinstance(exc, ImageFileError):
        return str(exc)
    plain, detail = itk_words(exc)
    return f"{plain} (ITK: {detail})"


def itk_words(exc: BaseException, fallback: str = "SimpleITK could not read it"
              ) -> tuple[str, str]:
    """``(plain words, ITK's first informative line)`` for an ITK exception."""
    text = str(exc)
    lowered = re.sub(r'"[^"]*"|\S*/\S*', " ", text).lower()  # file names say nothing
    plain = next((words for keys, words in ITK_MESSAGES if any(k in lowered for k in keys)),
                 fallback)
    return plain, _first_line(text) or type(exc).__name__


def _first_line(text: str, limit: int = 160) -> str:
    """The first line of ITK's text that says something (not 'Exception thrown in ...')."""
    for line in text.strip().splitlines():
        line = re.sub(r"^((?:sitk|itk)::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):)?\s*", "",
                      line.strip())
        if line and not line.startswith("Exception thrown in"):
            return line[:limit]
    return ""
