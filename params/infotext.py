"""A1111's infotext (the PNG `parameters` text): the one writer and the one parser.

The engine writes it into every image; png-info answers with `parse_parameters`, and the
history restored from OUTPUT_DIR reads a request back with `request_from_infotext`, which is
built on that same parser, so one PNG reads the same everywhere.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from params.hires import DEFAULT_DENOISING, DEFAULT_UPSCALER, HiresFix
from params.prompt import lora_tags
from params.request import DEFAULT_MASK_BLUR, DEFAULT_STRENGTH, GenerationRequest
from params.samplers import DEFAULT_SCHEDULER, SCHEDULERS

# A1111 infotext: "Key: value, Key: "quoted, value", ..." on the last line. A1111's own
# pattern, except that keys and leading blanks are bounded and matched possessively: as
# written by A1111 it takes seconds on a hostile 8 KB line, this one is linear.
PARAM = re.compile(r'\s{0,64}+(\w[\w \-/]{1,64}+):\s*+("(?:\\.|[^\\"])++"|[^,]*+)(?:,|$)')
IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
# A real settings line is a few KB; a longer last line is kept as prompt text, unparsed.
MAX_SETTINGS_LINE = 65536
NEGATIVE = "Negative prompt:"


def write_infotext(request: GenerationRequest, seed: int, model: str,
                   default_sampler: str = "PNDM",
                   lora_hashes: Mapping[str, str] | None = None,
                   ti_hashes: Mapping[str, str] | None = None,
                   model_hash: str | None = None) -> str:
    """A1111's `parameters` text: prompt (with every LoRA as a <lora:...> tag), negative
    prompt, then the settings line (with A1111's `Lora hashes` and `TI hashes`, each
    name: sha256[:12], and its `Model hash`, sha256[:10], for a model that is one file)."""
    r = request
    sampler = default_sampler if r.scheduler == DEFAULT_SCHEDULER else r.scheduler
    tagged = {name for name, *_ in lora_tags(r.prompt)[1]} if "<lora:" in r.prompt else set()
    extra_tags = " ".join(f"<lora:{name}:{te:g}>" if te == unet else
                          f"<lora:{name}:{te:g}:{unet:g}>"
                          for name, te, unet in r.loras if name not in tagged)
    lines = [f"{r.prompt} {extra_tags}".strip()]
    if r.negative_prompt:
        lines.append(f"{NEGATIVE} {r.negative_prompt}")
    speed = "".join(f", {label}: {value}" for label, value in (
        ("Eta", f"{r.eta:g}" if r.eta is not None else None),
        ("CFG cutoff", f"{r.cfg_cutoff:g}" if r.cfg_cutoff < 1 else None),
        ("DeepCache", r.deep_cache if r.deep_cache > 1 else None),
        ("VAE", "TAESD" if r.vae_decoder == "tiny" else None),
        ("Denoising strength", f"{r.strength:g}" if r.init_image is not None else None),
        ("Mask blur", r.mask_blur if r.mask_image is not None else None),
        *_hires_params(r, sampler),
        ("Lora hashes", _hashes(lora_hashes)), ("TI hashes", _hashes(ti_hashes)))
        if value is not None)
    model_part = (f"Model hash: {model_hash[:10]}, " if model_hash else "") + f"Model: {model}"
    lines.append(f"Steps: {r.steps}, Sampler: {sampler}, CFG scale: {r.guidance_scale:g}, "
                 f"Seed: {seed}, Size: {r.width}x{r.height}{speed}, {model_part}")
    return "\n".join(lines)


def _hires_params(r: GenerationRequest, sampler: str) -> list[tuple[str, Any]]:
    """A1111's hires fix keys (Denoising strength, Hires upscale or Hires resize, Hires
    steps, Hires upscaler, and the second pass's prompts and sampler where they differ)."""
    h = r.hires
    if h is None:
        return []
    return [("Denoising strength", f"{h.denoising_strength:g}"),
            ("Hires upscale", f"{h.scale:g}" if not (h.width or h.height) else None),
            ("Hires resize", f"{h.width}x{h.height}" if h.width or h.height else None),
            ("Hires steps", h.steps or None), ("Hires upscaler", h.upscaler),
            ("Hires prompt", json.dumps(h.prompt, ensure_ascii=False)
             if h.prompt and h.prompt != r.prompt else None),
            ("Hires negative prompt", json.dumps(h.negative_prompt, ensure_ascii=False)
             if h.negative_prompt and h.negative_prompt != r.negative_prompt else None),
            ("Hires sampler", h.scheduler if h.scheduler and h.scheduler != sampler
             else None)]


def hires_from_infotext(values: Mapping[str, Any]) -> HiresFix | None:
    """The hires fix a parsed infotext describes (A1111's keys), or None when it has none."""
    if not any(key in values for key in ("Hires upscale", "Hires resize-1", "Hires upscaler")):
        return None
    sampler = values.get("Hires sampler")
    return HiresFix(scale=float(values.get("Hires upscale", 2)),
                    width=int(values.get("Hires resize-1", 0)),
                    height=int(values.get("Hires resize-2", 0)),
                    upscaler=values.get("Hires upscaler", DEFAULT_UPSCALER),
                    steps=int(values.get("Hires steps", 0)),
                    denoising_strength=float(values.get("Denoising strength",
                                                        DEFAULT_DENOISING)),
                    prompt=values.get("Hires prompt") or None,
                    negative_prompt=values.get("Hires negative prompt") or None,
                    scheduler=sampler if sampler in SCHEDULERS else None)


def _hashes(hashes: Mapping[str, str] | None) -> str | None:
    """A1111's quoted "name: sha256[:12], ..." list, or None for none."""
    if not hashes:
        return None
    return '"' + ", ".join(f"{name}: {sha[:12]}" for name, sha in hashes.items()) + '"'


def parse_parameters(text: str) -> dict[str, Any]:
    """A1111's infotext parser: Prompt, Negative prompt and each "Key: value" of the last
    line (a "WxH" value split into Key-1 and Key-2, quoted values unquoted); {} for no text."""
    if not text.strip():
        return {}
    *lines, last = text.strip().split("\n")
    if len(last) > MAX_SETTINGS_LINE or len(PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE):
            line, in_negative = line[len(NEGATIVE):].strip(), True
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in PARAM.findall(last):
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = IMAGE_SIZE.match(value) if isinstance(value, str) else None
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.group(1), size.group(2)
        else:
            out[key] = value
    return out


def request_from_infotext(text: str) -> tuple[GenerationRequest, int]:
    """The request and seed an infotext this server wrote describes (read with
    `parse_parameters`), or ValueError naming what is missing."""
    values = parse_parameters(text)
    try:
        hires = hires_from_infotext(values)
        sampler = values.get("Sampler", DEFAULT_SCHEDULER)
        request = GenerationRequest(
            prompt=values["Prompt"], negative_prompt=values["Negative prompt"],
            seed=int(values["Seed"]), steps=int(values["Steps"]),
            guidance_scale=float(values["CFG scale"]),
            width=int(values["Size-1"]), height=int(values["Size-2"]),
            scheduler=sampler if sampler in SCHEDULERS else DEFAULT_SCHEDULER,
            eta=float(values["Eta"]) if "Eta" in values else None,
            cfg_cutoff=float(values.get("CFG cutoff", 1)),
            deep_cache=int(values.get("DeepCache", 1)),
            vae_decoder="tiny" if values.get("VAE") == "TAESD" else "full",
            strength=float(values.get("Denoising strength", DEFAULT_STRENGTH)
                           if hires is None else DEFAULT_STRENGTH),
            mask_blur=int(values.get("Mask blur", DEFAULT_MASK_BLUR)), hires=hires)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not an infotext this server wrote: missing or bad {exc}") from None
    return request, request.seed
