"""Errors a user can act on. The CLI prints them as one clear line (exit code 2), never a traceback."""


class EffiMiniVLMError(Exception):
    """Base class: bad input, a missing file, an unreachable weight source, a strict-mode data error."""


class DataError(EffiMiniVLMError):
    """Input data that cannot be read or violates the schema (names file and line where known)."""


class WeightsError(EffiMiniVLMError):
    """A pretrained weight source that cannot be resolved or does not match the architecture."""
