"""The one exception of the data loaders."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names it."""
