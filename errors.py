"""The errors every layer may raise or catch, in one leaf module that imports nothing of ours.

Validation (params), the catalogue, the engine and the job queue raise these; the HTTP layer
turns each into its dialect's JSON shape. Keeping them here means no package has to import
another one (the engine, say) only to name the error it catches.
"""
from __future__ import annotations


class ValidationError(ValueError):
    """A request field is missing or out of range; `field` names it for the client."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class UnsupportedRequest(ValueError):
    """A valid request that the loaded model cannot run (e.g. a LoRA made for another
    model); raised by the engine, it fails the job with this message and the HTTP layer
    answers 4xx, as for a bad field."""


class LoraError(UnsupportedRequest):
    """A LoRA cannot be used: unknown name, unreadable file or wrong shape. The message
    says why and what to do; the HTTP layer answers it with a 4xx."""


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do about it."""


class NotEnoughDisk(ModelLoadError):
    """The model's download would not fit: needs X in the cache folder, Y free."""


class DownloadInterrupted(ModelLoadError):
    """The download stopped (network error); a restart resumes where it stopped."""


class UnknownModel(LookupError):
    """No model of the catalogue has that name; the message lists the names we have."""


class ModelUnavailable(ModelLoadError):
    """The model is known but cannot be loaded; the message says why and what to do."""
