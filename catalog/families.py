"""Model families: what kind of Stable Diffusion model a folder or checkpoint is, read from its
diffusers configs (or a checkpoint's tensor names) without loading a weight and without torch.

    sd1       SD 1.x: CLIP ViT-L/14 text encoder (768), conv projections
    sd2       SD 2.x: OpenCLIP-H text encoder (1024), linear projections; 768-v models predict
              v (`prediction_type` in the scheduler config) and were trained at 768x768
    sd-turbo  SD-Turbo: SD 2.1-base's shape, shipped with Euler and trailing spacing
    sdxs      SDXS: a pruned UNet (no mid block, a tiny VAE), SD 2.1's or SD 1.5's text encoder
    unknown   a Hub model not in the local cache yet (known once it is loaded)

The same rules read a folder on disk (`folder_family`) and a loaded pipeline's configs (the
engine passes them to `family_from_configs`), so the catalogue and the engine agree. A model's
sidecar `<name>.json` may name its family itself (`"family": "sd-turbo"`), for a model the
rules cannot tell (an SD 2.1-base fine-tune shipped with Euler trailing, say).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

FAMILIES = ("sd1", "sd2", "sd-turbo", "sdxs", "unknown")
PREDICTION_TYPES = ("epsilon", "v_prediction")
LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sd-turbo": "SD-Turbo", "sdxs": "SDXS",
          "unknown": "unknown until loaded"}
# Text encoders by their width: CLIP ViT-L/14 (SD 1.x) and OpenCLIP ViT-H/14 (SD 2.x).
TEXT_ENCODER_OF_WIDTH = {768: "CLIP ViT-L/14 (SD 1.x)", 1024: "OpenCLIP ViT-H/14 (SD 2.x)"}


@dataclass(frozen=True)
class ModelFamily:
    """What a model is, as far as serving it goes (all read from configs, no weights)."""

    id: str = "unknown"             # one of FAMILIES
    openclip: bool = False          # an OpenCLIP-style text encoder (SD 2.x's), else CLIP's
    cross_attention_dim: int | None = None  # the text embeddings' width the UNet attends to
    prediction_type: str = "epsilon"        # or "v_prediction" (SD 2.x 768-v)
    mid_block: bool = True          # False: a pruned UNet (SDXS), nothing deep for DeepCache
    tiny_vae: bool = False          # its own VAE is an AutoencoderTiny (SDXS's vae/)
    native_size: int | None = None  # the image size its UNet was trained at

    @property
    def label(self) -> str:
        """The family as the page and the model lists show it, e.g. 'SD 2.x (v-prediction)'."""
        label = LABELS.get(self.id, self.id)
        if self.id == "sdxs" and self.cross_attention_dim:
            label += " (SD 2.1 text encoder)" if self.openclip else " (SD 1.5 text encoder)"
        if self.prediction_type == "v_prediction":
            label += " (v-prediction)"
        return label

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the label (for the model lists)."""
        return {**asdict(self), "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ModelFamily":
        """The family `as_dict` (or asdict) wrote; unknown keys (the label) are ignored."""
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def family_from_configs(unet: Mapping[str, Any], text_encoder: Mapping[str, Any],
                        scheduler: Mapping[str, Any], vae_class: str = "AutoencoderKL",
                        vae: Mapping[str, Any] | None = None) -> ModelFamily:
    """The family a model's component configs describe (the rules of the module docstring)."""
    openclip = text_encoder.get("hidden_act") == "gelu"  # CLIP ViT-L/14 uses quick_gelu
    tiny_vae = vae_class == "AutoencoderTiny"
    mid_block = unet.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None
    spacing = scheduler.get("timestep_spacing", "leading")
    if tiny_vae or not mid_block:
        family = "sdxs"
    elif openclip and scheduler.get("_class_name") == "EulerDiscreteScheduler" \
            and spacing == "trailing":
        family = "sd-turbo"
    elif openclip:
        family = "sd2"
    else:
        family = "sd1"
    factor = 2 ** (len((vae or {}).get("block_out_channels") or (0, 0, 0, 0)) - 1)
    sample = unet.get("sample_size")
    return ModelFamily(id=family, openclip=openclip,
                       cross_attention_dim=_int(unet.get("cross_attention_dim")),
                       prediction_type=scheduler.get("prediction_type") or "epsilon",
                       mid_block=mid_block, tiny_vae=tiny_vae,
                       native_size=sample * factor if isinstance(sample, int) else None)


def folder_family(folder: Path, card: Mapping[str, Any] | None = None) -> ModelFamily:
    """The family of a diffusers folder (configs only; `unknown` when they cannot be read),
    with what its card (`<name>.json`) says about family and prediction type applied."""
    folder = Path(folder)
    index = read_json(folder / "model_index.json")
    vae_class = (index.get("vae") or [None, "AutoencoderKL"])[-1] or "AutoencoderKL"
    unet = read_json(folder / "unet" / "config.json")
    if not unet:
        return with_card(ModelFamily(), card)
    family = family_from_configs(unet, read_json(folder / "text_encoder" / "config.json"),
                                 read_json(folder / "scheduler" / "scheduler_config.json"),
                                 vae_class, read_json(folder / "vae" / "config.json"))
    return with_card(family, card)


def with_card(family: ModelFamily, card: Mapping[str, Any] | None) -> ModelFamily:
    """The family with a card's `family` and `prediction_type` applied (when valid)."""
    card = card or {}
    changes: dict[str, Any] = {}
    if card.get("family") in FAMILIES:
        changes["id"] = card["family"]
    if card.get("prediction_type") in PREDICTION_TYPES:
        changes["prediction_type"] = card["prediction_type"]
    return replace(family, **changes) if changes else family


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is absent, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], int):
        return value[0]
    return None
