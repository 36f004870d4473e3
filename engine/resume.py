"""Checkpoints of a running generation, and resuming one so that the image is byte-identical
to an uninterrupted run with the same seed.

A checkpoint is taken in the step callback, after the scheduler's step: the latents, the
scheduler's whole state (multistep samplers keep earlier model outputs, PNDM its `ets`, Heun
its first-order half-step), the RNG's state (ancestral and SDE samplers draw noise every
step) and, with DeepCache, its call count (taken only where the next UNet call is a full
one, so no cached features are needed).

Resuming runs the same pipeline call from the start with the UNet replaced by a zero stub
(`FastForward`): the prompt is encoded, the initial noise drawn and every callback run (so a
CFG cutoff happens where it did), at the cost of the scheduler's arithmetic only. At the
checkpoint's step the latents, scheduler, RNG and DeepCache state are put back and the real
UNet returns: from there the run is the uninterrupted one.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

# The one config attribute diffusers keeps on every scheduler: fixed by the class, not state.
_CONFIG_ATTRIBUTE = "_internal_dict"
_NDARRAY = "__ndarray__"
FORMAT = 1


@dataclass
class Checkpoint:
    """Where a generation stood after one of its pipeline steps."""

    step_index: int  # the pipeline's own index of the step just finished
    user_step: int  # the same step as the user counts it
    latents: Any
    scheduler: dict[str, Any]
    generator: Any
    deep_cache_calls: int | None = None
    deep_cache_batch: int | None = None

    def to_bytes(self) -> bytes:
        """The checkpoint as bytes (torch's format, loadable with weights_only=True)."""
        import torch

        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "step_index": self.step_index,
                    "user_step": self.user_step, "latents": self.latents,
                    "scheduler": _encode(self.scheduler), "generator": self.generator,
                    "deep_cache_calls": self.deep_cache_calls,
                    "deep_cache_batch": self.deep_cache_batch}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Checkpoint":
        """Read a checkpoint written by `to_bytes` (never an arbitrary pickle); ValueError
        when the bytes are not one."""
        import torch

        try:
            raw = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # a damaged or foreign blob: the job starts over instead
            raise ValueError(f"not a checkpoint ({type(exc).__name__})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("not a checkpoint of this version")
        return cls(step_index=raw["step_index"], user_step=raw["user_step"],
                   latents=raw["latents"], scheduler=_decode(raw["scheduler"]),
                   generator=raw["generator"], deep_cache_calls=raw["deep_cache_calls"],
                   deep_cache_batch=raw["deep_cache_batch"])


def capture(pipeline, step_index: int, user_step: int, latents, generator,
            deep_cache) -> Checkpoint:
    """The checkpoint of the step just finished (copies: the pipeline goes on changing its
    own tensors)."""
    return Checkpoint(step_index=step_index, user_step=user_step,
                      latents=latents.detach().clone(),
                      scheduler=_copy({k: v for k, v in vars(pipeline.scheduler).items()
                                       if k != _CONFIG_ATTRIBUTE}),
                      generator=generator.get_state(),
                      deep_cache_calls=deep_cache.calls if deep_cache.active else None,
                      deep_cache_batch=deep_cache.batch if deep_cache.active else None)


def aligned_with_deep_cache(deep_cache) -> bool:
    """True when a checkpoint now needs no cached features: DeepCache is off, or its next
    UNet call runs in full."""
    return not deep_cache.active or deep_cache.calls % deep_cache.interval == 0


class FastForward:
    """Replays a pipeline call up to a checkpoint without running the UNet, then restores the
    checkpoint's state there (a context around the pipeline call; see the module docstring)."""

    def __init__(self, checkpoint: Checkpoint, unet, generator, deep_cache):
        self.checkpoint = checkpoint
        self.unet = unet
        self.generator = generator
        self.deep_cache = deep_cache
        self.done = False
        self._earlier: Any = None

    def __enter__(self) -> "FastForward":
        import torch

        def zero_unet(sample, *args, return_dict: bool = True, **kwargs):
            # Shaped like the UNet's answer; the scheduler's step is then cheap arithmetic
            # whose result the checkpoint overwrites.
            return (torch.zeros_like(sample),)

        self._earlier = self.unet.__dict__.get("forward")
        self.unet.forward = zero_unet
        return self

    def restore_at(self, pipeline, step_index: int, callback_kwargs: dict) -> bool:
        """At the checkpoint's step, put its state back and the real UNet in; True then."""
        if self.done or step_index != self.checkpoint.step_index:
            return False
        checkpoint = self.checkpoint
        callback_kwargs["latents"] = checkpoint.latents.clone()
        vars(pipeline.scheduler).update(_copy(checkpoint.scheduler))
        self.generator.set_state(checkpoint.generator)
        if checkpoint.deep_cache_calls is not None:
            self.deep_cache.calls = checkpoint.deep_cache_calls
            self.deep_cache.batch = checkpoint.deep_cache_batch
        self._uninstall()
        return True

    def __exit__(self, *exc_info) -> None:
        if not self.done:
            self._uninstall()

    def _uninstall(self) -> None:
        """Give the UNet its forward back (DeepCache's wrapper, or the class's own)."""
        if self._earlier is None:
            self.unet.__dict__.pop("forward", None)
        else:
            self.unet.forward = self._earlier
        self.done = True


def _copy(value):
    """A deep copy of scheduler state: tensors cloned, containers rebuilt, numbers kept."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def _encode(value):
    """Scheduler state in types torch.load(weights_only=True) reads: numpy arrays become
    tensors marked as such."""
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def _decode(value):
    """The inverse of `_encode`."""
    if isinstance(value, dict):
        if set(value) == {_NDARRAY}:
            return value[_NDARRAY].numpy()
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value
