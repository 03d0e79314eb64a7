"""The three ways getting a data set can fail, each with its own exception type.

- :class:`DataFileError`: a file is there but its content is wrong (not IDX, truncated, corrupt
  gzip, checksum mismatch, labels out of range). Its message starts with the file it is about.
- :class:`DatasetNotFoundError`: no source holds the files; the message lists what was tried.
- :class:`DownloadError`: no mirror delivered a verified copy; the message lists each attempt.
"""

from __future__ import annotations


class DataFileError(ValueError):
    """A data file exists but its content is not what it must be.

    Every message names the file first, then what is wrong and what would be right, e.g.
    ``"t10k-labels-idx1-ubyte.gz: expected 10000 bytes of labels after the header, got 9987
    (truncated?)"``.
    """


class DatasetNotFoundError(FileNotFoundError):
    """No source that was tried holds the files of the requested data set."""


class DownloadError(OSError):
    """No mirror delivered a complete copy of a file whose checksum matched."""
