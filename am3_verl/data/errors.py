"""The one error type the data commands raise for problems that stop a run (bad input files, empty results)."""

from __future__ import annotations


class DataPrepError(Exception):
    """A problem that stops a conversion: unreadable or missing input, an empty result, a broken count.

    Problems with single records never raise this; they become reject rows instead.
    """
