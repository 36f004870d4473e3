"""LyCORIS LoHa and LoKr LoRAs, applied as forward hooks (diffusers' `load_lora_weights` reads
kohya LoRAs and LoCon, not these).

Each adapted layer keeps only the file's small factors; while a job uses the file, a forward
hook rebuilds the layer's weight change from them (LoHa: the Hadamard product
(w1_a @ w1_b) * (w2_a @ w2_b); LoKr: the Kronecker product of w1 and w2, each whole or as a
product of two factors; both times alpha / rank) and adds it, applied to the layer's input,
to the layer's output. Rebuilding costs about rank / tokens of the layer's own work, and keeps
no full-size copy of any layer: a LoHa over the whole UNet would otherwise hold a second
UNet in anonymous memory. The base weights are never changed, so they stay memory-mapped, and
removing the hooks after the job leaves the model exactly as it was. Formats with a Tucker
core (`hada_t1`, `lokr_t2`) are refused with their name. Worker thread only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from errors import LoraError

log = logging.getLogger(__name__)

LYCORIS_FORMATS = ("loha", "lokr")
# The pipeline components kohya-style key prefixes name.
PREFIXES = (("lora_unet_", "unet"), ("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"))
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


@dataclass
class LycorisLayers:
    """One LoHa/LoKr file's weight changes, by pipeline component and module, and the hooks
    that apply them while it is active."""

    name: str
    # component -> [(module, the layer's factors, its delta's builder)]
    deltas: dict[str, list[tuple[object, dict, object]]]
    hooks: list = field(default_factory=list)

    @classmethod
    def load(cls, pipe, path, fmt: str, name: str) -> "LycorisLayers":
        """Read the file's factors and check each layer's change against this pipeline;
        LoraError naming the format when a layer is missing, has another shape, or uses a
        Tucker core."""
        from safetensors.torch import load_file

        tensors = load_file(str(path), device="cpu")
        modules = [(component, _kohya_modules(getattr(pipe, component, None), prefix))
                   for prefix, component in PREFIXES]
        # LyCORIS names its tensors "<layer>.hada_w1_a", "<layer>.alpha" (no ".weight")
        by_layer: dict[str, dict] = {}
        for key, value in tensors.items():
            layer, _, part = key.partition(".")
            by_layer.setdefault(layer, {})[part.removesuffix(".weight")] = value.float()
        deltas: dict[str, list] = {}
        for layer, weights in sorted(by_layer.items()):
            found = next(((component, table[layer]) for component, table in modules
                          if layer in table), None)
            if found is None:
                raise LoraError(f"{fmt} layer '{layer}' is not in this model")
            component, module = found
            build = _loha_delta if fmt == "loha" else _lokr_delta
            size = build(weights, layer).numel()  # checked once, then rebuilt per use
            if size != module.weight.numel():
                raise LoraError(f"{fmt} layer '{layer}' has {size} weights; the model's "
                                f"has {module.weight.numel()}")
            deltas.setdefault(component, []).append((module, weights, build))
        if not deltas:
            raise LoraError(f"no {fmt} layers found")
        return cls(name=name, deltas=deltas)

    def activate(self, weight: float | dict[str, float]) -> None:
        """Add each change (times its component's weight) to its layer's output."""
        self.deactivate()
        for component, layers in self.deltas.items():
            scale = weight.get(component, 1.0) if isinstance(weight, dict) else weight
            if scale == 0:
                continue
            for module, weights, build in layers:
                self.hooks.append(module.register_forward_hook(
                    _adder(weights, build, scale)))

    def deactivate(self) -> None:
        """Remove the hooks: the layers compute what the base weights alone give."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def _kohya_modules(model, prefix: str) -> dict:
    """{kohya layer name: module} for a component's layers with a weight (a text encoder's
    under transformers 4's names too, `text_model.encoder...`, which files use; transformers
    5's CLIPTextModel drops the `text_model.`)."""
    if model is None:
        return {}
    table = {}
    for name, module in model.named_modules():
        module = getattr(module, "base_layer", module)  # under a peft LoRA's wrapper
        if name and getattr(module, "weight", None) is not None:
            table[prefix + name.replace(".", "_")] = module
            if prefix != "lora_unet_" and not name.startswith("text_model."):
                table[prefix + "text_model_" + name.replace(".", "_")] = module
    return table


def _scale(weights: dict, rank: int | None) -> float:
    alpha = weights.get("alpha")
    if alpha is None or not rank:
        return 1.0
    return float(alpha) / rank


def _loha_delta(weights: dict, layer: str):
    if "hada_t1" in weights or "hada_t2" in weights:
        raise LoraError(f"loha layer '{layer}' uses a Tucker core (hada_t1/hada_t2), which "
                        "this server cannot apply")
    missing = [key for key in LOHA_KEYS if key not in weights]
    if missing:
        raise LoraError(f"loha layer '{layer}' lacks {', '.join(missing)}")
    w = {key: weights[key].float().flatten(1) for key in LOHA_KEYS}
    delta = (w["hada_w1_a"] @ w["hada_w1_b"]) * (w["hada_w2_a"] @ w["hada_w2_b"])
    return delta * _scale(weights, w["hada_w1_b"].shape[0])


def _lokr_delta(weights: dict, layer: str):
    import torch

    if "lokr_t2" in weights:
        raise LoraError(f"lokr layer '{layer}' uses a Tucker core (lokr_t2), which this "
                        "server cannot apply")
    rank = None
    factors = []
    for part in ("lokr_w1", "lokr_w2"):
        if part in weights:
            factors.append(weights[part].float())
        elif f"{part}_a" in weights and f"{part}_b" in weights:
            a, b = weights[f"{part}_a"].float(), weights[f"{part}_b"].float()
            rank = b.shape[0]
            factors.append((a @ b.flatten(1)).reshape(a.shape[0], *b.shape[1:]))
        else:
            raise LoraError(f"lokr layer '{layer}' lacks {part} (or {part}_a and {part}_b)")
    w1, w2 = factors
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    return torch.kron(w1, w2) * _scale(weights, rank)


def _adder(weights: dict, build, scale: float):
    """A forward hook adding `scale` x the layer's change (rebuilt from its factors) applied
    to the layer's input."""
    import torch.nn.functional as F

    def hook(module, inputs, output):
        x = inputs[0]
        target = module.weight
        delta = build(weights, "").reshape(target.shape).to(target.dtype)
        if delta.dim() == 4:
            extra = F.conv2d(x, delta, None, module.stride, module.padding, module.dilation,
                             module.groups)
        else:
            extra = F.linear(x, delta)
        return output + scale * extra

    return hook
