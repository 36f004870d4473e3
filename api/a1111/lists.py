"""A1111 list endpoints: what this server really has, in A1111's shapes.

Clients (SillyTavern, webuiapi, Open WebUI) call these to fill their menus; a 404 or a 500
breaks them, a made-up entry misleads them. So each answers 200 with the truth: the Pillow
upscalers and ESRGAN-family files extras really uses (those in MODELS_DIR/RealESRGAN are the
Real-ESRGAN models too), the LoRAs in LORA_DIR, the embeddings in EMBEDDINGS_DIR, and empty
lists where this server has none (no hypernetworks, face restorers, styles, latent upscaling
or VAE files).
"""
from __future__ import annotations

import logging
from pathlib import Path

from flask import jsonify

from api import services
from api.a1111.blueprint import A1111_DOC, bp
from api.openapi import doc
from catalog.upscalers import NONE, PILLOW_UPSCALERS, list_upscalers
from system import meminfo, process_status

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]
NAMED_LIST = {"type": "array", "items": {"type": "object", "required": ["name"],
                                         "properties": {"name": {"type": "string"}}}}
UPSCALERS_RESPONSE = {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string"},
    **{key: {"type": "string", "nullable": True}
       for key in ("model_name", "model_path", "model_url")},
    "scale": {"type": "number", "nullable": True}}}}
MEMORY_RESPONSE = {"type": "object", "properties": {
    "ram": {"type": "object", "properties": {key: {"type": "integer"} for key in (
        "free", "used", "total")}},
    "cuda": {"type": "object", "properties": {"error": {"type": "string"}}}}}
NO_GPU = "no GPU: this server runs on the CPU"


def _empty_list(path: str, what: str) -> None:
    """Register GET `path` answering [] : this server has no `what`."""
    def view():
        return jsonify([])

    view.__name__ = path.replace("-", "_")
    view.__doc__ = f"No {what} here: an empty list, as A1111 answers when it has none."
    bp.get(f"/{path}")(doc(f"AUTOMATIC1111 {what}: none on this server (an empty list).",
                           responses={200: NAMED_LIST}, errors=(401,), **A1111_DOC)(view))


for _path, _what in (("hypernetworks", "hypernetworks"),
                     ("face-restorers", "face restorers"),
                     ("prompt-styles", "prompt styles"),
                     ("sd-vae", "VAE files (the vae_decoder option picks full or TAESD)")):
    _empty_list(_path, _what)


LORAS_RESPONSE = {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string"}, "alias": {"type": "string"}, "path": {"type": "string"},
    "metadata": {"type": "object"}}}}


@bp.get("/loras")
@doc("AUTOMATIC1111 LoRA list: the .safetensors LoRAs in LORA_DIR, for <lora:name:weight> "
     "prompts; `format` is kohya (A1111), locon, loha, lokr (LyCORIS) or peft (diffusers). "
     "`few_step` names a few-step LoRA's kind (lcm, hyper-sd, tcd, pcm) and `recipe` the "
     "settings a request using it gets for what it leaves out; `lcm` marks an LCM-LoRA.",
     responses={200: LORAS_RESPONSE}, errors=(401,), **A1111_DOC)
def loras():
    """The LoRAs a prompt may name, in A1111's shape (name, alias, path, metadata)."""
    from dataclasses import asdict

    from catalog.loras import list_loras
    from params import lora_recipe

    return jsonify([{"name": e.name, "alias": e.alias, "path": str(e.path),
                     "metadata": e.metadata, "format": e.format, "lcm": e.lcm,
                     "few_step": asdict(e.few_step) if e.few_step else None,
                     "recipe": lora_recipe(e)}
                    for e in list_loras(services().settings)])


@bp.post("/refresh-loras")
@doc("AUTOMATIC1111 refresh-loras: the folder is read on every request here, so there is "
     "nothing to refresh; answers 200.", responses={200: {"type": "object"}}, errors=(401,),
     **A1111_DOC)
def refresh_loras():
    """Nothing to do: /loras and prompts read LORA_DIR each time."""
    return jsonify({})


@bp.get("/upscalers")
@doc("AUTOMATIC1111 upscalers: None, the Pillow resamplers and the ESRGAN-family files in "
     "MODELS_DIR/ESRGAN and MODELS_DIR/RealESRGAN (scale from the file's keys, or its name for "
     "a .pth) that extra-single-image and extra-batch-images use; a file that cannot be read "
     "is left out (the log says why, and naming it is a 400 with the reason).",
     responses={200: UPSCALERS_RESPONSE}, errors=(401,), **A1111_DOC)
def upscalers():
    """The upscalers extras accepts, in A1111's UpscalerItem shape."""
    items = [{"name": name, "model_name": None, "model_path": None, "model_url": None,
              "scale": None} for name in (NONE, *PILLOW_UPSCALERS)]
    for entry in list_upscalers(services().settings):
        if entry.problem:
            log.warning("upscaler %s skipped: %s", entry.relative, entry.problem)
            continue
        items.append({"name": entry.name, "model_name": entry.path.stem,
                      "model_path": entry.relative, "model_url": None, "scale": entry.scale})
    return jsonify(items)


@bp.get("/realesrgan-models")
@doc("AUTOMATIC1111 realesrgan-models: the usable files in MODELS_DIR/RealESRGAN (name, path, "
     "scale), also listed by GET upscalers.", responses={200: {"type": "array", "items": {
         "type": "object", "properties": {"name": {"type": "string"},
                                          "path": {"type": "string"},
                                          "scale": {"type": "integer", "nullable": True}}}}},
     errors=(401,), **A1111_DOC)
def realesrgan_models():
    """The Real-ESRGAN files, in A1111's RealesrganItem shape."""
    return jsonify([{"name": e.name, "path": e.relative, "scale": e.scale}
                    for e in list_upscalers(services().settings)
                    if not e.problem and e.relative.startswith("RealESRGAN/")])


EMBEDDING_RESPONSE = {"type": "object", "properties": {
    "step": {"type": "integer", "nullable": True},
    "sd_checkpoint": {"type": "string", "nullable": True},
    "sd_checkpoint_name": {"type": "string", "nullable": True},
    "shape": {"type": "integer", "nullable": True},
    "vectors": {"type": "integer", "nullable": True}}}
EMBEDDINGS_RESPONSE = {"type": "object", "properties": {
    "loaded": {"type": "object", "additionalProperties": EMBEDDING_RESPONSE},
    "skipped": {"type": "object", "additionalProperties": EMBEDDING_RESPONSE}}}


@bp.get("/embeddings")
@doc("AUTOMATIC1111 textual-inversion embeddings: the files in EMBEDDINGS_DIR (.safetensors, "
     ".pt, .bin), `loaded` those a prompt may use with the served model (by writing the "
     "file name), `skipped` the others, each with its `reason` (a width that is not the "
     "model's text encoder's, an unreadable file).",
     responses={200: EMBEDDINGS_RESPONSE}, errors=(401,), **A1111_DOC)
def embeddings():
    """A1111's shape: {"loaded": {name: {step, sd_checkpoint, sd_checkpoint_name, shape,
    vectors}}, "skipped": {...}}."""
    from catalog.embeddings import embedding_problem, list_embeddings

    svc = services()
    model = svc.engine.model
    answer: dict[str, dict] = {"loaded": {}, "skipped": {}}
    for entry in list_embeddings(svc.settings):
        problem = embedding_problem(entry, model.family if model is not None else None)
        item = {"step": entry.step, "sd_checkpoint": entry.sd_checkpoint,
                "sd_checkpoint_name": entry.sd_checkpoint_name, "shape": entry.shape,
                "vectors": entry.vectors}
        if problem:
            item["reason"] = problem
        answer["skipped" if problem else "loaded"][entry.name] = item
    return jsonify(answer)


@bp.get("/cmd-flags")
@doc("AUTOMATIC1111 command-line flags, as the values that describe this server (listen "
     "address, port, auth required or not; never a credential).",
     responses={200: {"type": "object"}}, errors=(401,), **A1111_DOC)
def cmd_flags():
    """The A1111 flags clients read, filled from this server's settings."""
    settings = services().settings
    full = settings.dtype == "float32"
    return jsonify({
        "api": True, "nowebui": False, "server_name": settings.host,
        "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
        "port": settings.port, "share": False,
        # Whether Basic auth is required, never the credentials themselves.
        "api_auth": "(set; not shown)" if settings.api_auth else None, "gradio_auth": None,
        "api_log": True, "api_server_stop": False,
        "cors_allow_origins": ",".join(settings.cors_origins) or None,
        "data_dir": str(PROJECT_DIR), "models_dir": settings.models_dir,
        "ckpt_dir": settings.models_dir, "lora_dir": settings.lora_dir,
        "embeddings_dir": settings.embeddings_dir, "hypernetwork_dir": None,
        "ckpt": settings.model_source,
        "use_cpu": ["all"], "skip_torch_cuda_test": True, "lowvram": False,
        "medvram": False, "xformers": False, "no_half": full, "no_half_vae": full,
        "precision": "full" if full else "autocast", "device_id": None,
        "enable_insecure_extension_access": False, "disable_safe_unpickle": False,
    })


def _rss() -> int:
    """This process's resident memory in bytes."""
    rss = process_status().get("VmRSS")
    if rss is None:
        raise OSError("no VmRSS in /proc/self/status")
    return rss


@bp.get("/memory")
@doc("AUTOMATIC1111 memory: ram.total and ram.free (available) from /proc/meminfo, ram.used "
     "= this process's resident memory (as A1111 reports it); cuda says there is no GPU.",
     responses={200: MEMORY_RESPONSE}, errors=(401,), **A1111_DOC)
def memory():
    """RAM figures from /proc; no CUDA here."""
    try:
        info = meminfo()
        ram = {"free": info.get("MemAvailable", info["MemFree"]), "used": _rss(),
               "total": info["MemTotal"]}
    except (OSError, KeyError, ValueError) as exc:  # not Linux: say so, as A1111 does
        log.warning("memory: cannot read /proc (%s)", exc)
        ram = {"error": f"cannot read /proc: {exc}"}
    return jsonify({"ram": ram, "cuda": {"error": NO_GPU}})
