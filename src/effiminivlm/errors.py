"""Errors a user can act on. The CLI prints them as one clear line (exit code 2), never a traceback.

Why a hierarchy: `cli.main` catches `EffiMiniVLMError` only, so a genuine bug (any other exception) keeps its
traceback. Every place that turns user input (files, recipes, options, names) into a failure raises one of
these, with one line naming the file, key or value.
"""


class EffiMiniVLMError(Exception):
    """Base class: bad input, a missing file, an unreachable weight source, a strict-mode data error."""


class DataError(EffiMiniVLMError, ValueError):
    """Input data that cannot be read or violates the schema (names file and line where known).

    Also a ValueError: values handed to the metrics (non-finite predictions of a diverged model, mismatched
    lengths) are bad data when they come from a user's files, and a ValueError to library callers.
    """


class WeightsError(EffiMiniVLMError):
    """A pretrained weight source that cannot be resolved or does not match the architecture."""


class ConfigError(EffiMiniVLMError, ValueError):
    """A recipe, a `--set` override, a model's config.json or an option with a bad key or value.

    Also a ValueError, so library callers that validated values with `except ValueError` keep working.
    """


class UnknownNameError(EffiMiniVLMError, KeyError):
    """A name (recipe, encoder, head, loss, architecture) that is not registered; says what is.

    Also a KeyError for library callers; printed as its message (KeyError would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
