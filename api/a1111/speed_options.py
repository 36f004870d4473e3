"""The options an A1111 client POSTed, kept per app: the store, and the speed options in it
applied as defaults of later A1111 generations (read by generation.py, written by options.py)."""
from __future__ import annotations

from typing import Any, Mapping

from flask import current_app

from api import services
from jobs.options import OptionsStore
from params import PRESETS, SPEED_OPTIONS, speed_fields

EXTENSION = "sd_a1111_options"
# A1111 has about 400 options; their JSON is ~20 KB. This bounds what clients can store.
MAX_OPTIONS_BYTES = 256 * 1024
# The keys clients read, with A1111's defaults where they describe this server too. They
# have no effect here (PNG only, no CLIP skip, no eta noise); they are what a client expects.
A1111_DEFAULTS: dict[str, Any] = {
    "samples_format": "png", "save_images_add_number": True,
    "send_seed": True, "send_size": True, "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0, "eta_ancestral": 1.0, "sd_vae": "Automatic",
    "live_previews_enable": True, "show_progress_every_n_steps": 1,
    "enable_pnginfo": True, "jpeg_quality": 80, "img2img_fix_steps": False,
}

def store() -> OptionsStore:
    """This app's options store, made on first use with the server's defaults."""
    stores = current_app.extensions
    if EXTENSION not in stores:
        settings = services().settings
        # samples_save: whether finished images are saved (OUTPUT_DIR set), as it is.
        initial = {**A1111_DEFAULTS, "samples_save": bool(settings.output_dir),
                   "outdir_samples": settings.output_dir,
                   **{spec.name: spec.default for spec in speed_fields(settings)}}
        # setdefault: two first requests racing both get the one store that won.
        stores.setdefault(EXTENSION, OptionsStore(initial, MAX_OPTIONS_BYTES))
    return stores[EXTENSION]


def with_speed_defaults(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An A1111 generation's native `fields` with the stored speed options filled in. They
    act as the server's own knobs (CFG_CUTOFF, DEEP_CACHE, ...): a field the request names
    wins, and so does a preset it names, for the fields that preset sets."""
    snapshot = store().snapshot()
    preset = fields.get("speed_preset") or snapshot.get("speed_preset")
    out = dict(fields)
    for name in SPEED_OPTIONS:
        value = snapshot.get(name)
        if fields.get(name) is not None or value is None:
            continue
        if name != "speed_preset" and name in PRESETS.get(preset, {}):
            continue
        out[name] = value
    return out
