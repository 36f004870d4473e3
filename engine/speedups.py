"""Opt-in ways to do less UNet work per image, each off by default (they change the pixels).

- CFG cutoff: after a fraction of the steps, stop classifier-free guidance, so the UNet
  runs at batch 1 instead of 2 (diffusers' `SDCFGCutoffCallback`, done in our step callback).
- DeepCache (arXiv 2312.00858): on all but every `interval`-th UNet call, reuse the deep
  features of the last full call and compute only the shallowest branch.
"""
from __future__ import annotations

from typing import Any


def cfg_cutoff_step(cfg_cutoff: float, pipeline_steps: int) -> int | None:
    """The pipeline step index after which guidance stops, or None if it never does.

    As diffusers' SDCFGCutoffCallback: `int(steps * ratio)`; a ratio of 1 never triggers.
    """
    step = int(pipeline_steps * cfg_cutoff)
    return step if step < pipeline_steps else None


def cut_guidance(pipeline, callback_kwargs: dict[str, Any]) -> None:
    """Stop classifier-free guidance from the next step on (batch 2 -> 1).

    The embeddings are [negative, positive]; keep the conditional half. Inpainting's mask
    tensors are doubled for guidance too, and its latent blend uses the whole mask once
    guidance is off, so they are cut the same way (else the latents would grow to batch 2).
    `_guidance_scale` is reset by the pipeline at the start of every call, so later jobs are
    unaffected.
    """
    for name in ("prompt_embeds", "mask", "masked_image_latents"):
        if name in callback_kwargs:
            callback_kwargs[name] = callback_kwargs[name][-1:]
    pipeline._guidance_scale = 0.0


class DeepCache:
    """Reuse the UNet's deep features between steps (DeepCache, branch 0), as a context:

        with DeepCache(pipe.unet, interval=3):
            pipe(...)

    Every `interval`-th UNet call runs in full and keeps each wrapped block's output; the
    calls in between run only conv_in, the last up-block's last layer and conv_out, taking
    everything deeper from that cache. When a CFG cutoff shrinks the batch from [negative,
    positive] to [positive], the cache keeps its conditional half, which is exactly what
    those features are for the smaller batch. This is the package `deepcache`'s scheme
    (cache_branch_id=0), written here because its step counter looks timesteps up by value
    (PNDM repeats one, which shifts its schedule) and its cache breaks when the batch size
    changes mid-run.
    """

    def __init__(self, unet, interval: int):
        self.unet = unet
        self.interval = interval
        self.calls = 0
        self.full = True
        self.batch: int | None = None
        self._cache: dict[int, Any] = {}
        self._originals: list[tuple[Any, Any]] = []

    @property
    def active(self) -> bool:
        """Whether it caches at all (an interval of 1 runs every call in full)."""
        return self.interval > 1

    def _skippable(self) -> list:
        """Every module whose output is reused on a cached call, shallow to deep."""
        unet = self.unet
        mid = [unet.mid_block] if unet.mid_block is not None else []  # SDXS's UNet has none
        modules = list(unet.down_blocks) + mid + list(unet.up_blocks[:-1])
        last = unet.up_blocks[-1]
        # In the last up-block every layer but the last one is deep enough to reuse.
        modules += list(last.resnets[:-1]) + list(getattr(last, "attentions", None) or [])[:-1]
        return modules

    def __enter__(self) -> "DeepCache":
        if self.interval <= 1:
            return self
        unet_forward = self.unet.forward

        def counting_forward(*args, **kwargs):
            sample = args[0] if args else kwargs["sample"]
            batch = sample.shape[0]
            shrunk = self.batch is not None and batch < self.batch
            if shrunk and not self._keep_last(batch):
                self.calls = 0  # the cache could not follow: restart from a full call
            self.full = self.calls % self.interval == 0 or (
                self.batch is not None and batch > self.batch)
            self.batch = batch
            self.calls += 1
            return unet_forward(*args, **kwargs)

        self._wrap(self.unet, counting_forward)
        for module in self._skippable():
            self._wrap(module, self._cached(module, module.forward))
        return self

    def _keep_last(self, batch: int) -> bool:
        """Cut every cached output to its last `batch` items; False if one can't be cut."""
        import torch

        def cut(value):
            if isinstance(value, torch.Tensor):
                return value[-batch:]
            if isinstance(value, (tuple, list)):
                return type(value)(cut(v) for v in value)
            raise TypeError(type(value).__name__)

        try:
            self._cache = {key: cut(value) for key, value in self._cache.items()}
        except TypeError:
            self._cache.clear()
            return False
        return True

    def _wrap(self, module, forward) -> None:
        """Shadow the module's forward with an instance attribute, remembering any earlier one."""
        self._originals.append((module, module.__dict__.get("forward")))
        module.forward = forward

    def _cached(self, module, forward):
        key = id(module)

        def cached_forward(*args, **kwargs):
            if not self.full and key in self._cache:
                return self._cache[key]
            out = forward(*args, **kwargs)
            self._cache[key] = out
            return out

        return cached_forward

    def __exit__(self, *exc_info) -> None:
        for module, earlier in reversed(self._originals):
            if earlier is None:
                del module.forward  # the class's forward shows again
            else:
                module.forward = earlier
        self._originals.clear()
        self._cache.clear()
