"""A1111 options: GET the settings clients read, POST any subset of them."""
from __future__ import annotations

from flask import jsonify

from api import services
from api.a1111 import A1111_DOC, bp, model_hash, model_title
from api.openapi import doc


@bp.get("/options")
@doc("AUTOMATIC1111 options, read-only: the served checkpoint and a few settings.",
     responses={200: {"type": "object", "properties": {
         "sd_model_checkpoint": {"type": "string"}}}}, errors=(401,), **A1111_DOC)
def options():
    """A read-only subset of A1111's options; sd_model_checkpoint names the served model."""
    settings = services().settings
    return jsonify({"sd_model_checkpoint": model_title(), "sd_checkpoint_hash": model_hash(),
                    "samples_format": "png", "outdir_samples": settings.output_dir,
                    "live_previews_enable": True, "show_progress_every_n_steps": 1,
                    "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"})
