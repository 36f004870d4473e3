"""Settings: every knob of the server, read once from the environment (and `.env`).

Each knob is declared once in `KNOBS` with its parser, default, allowed range and a one-line
description; `Settings` is generated from that table (one typed field per knob, the type
being what the knob's parser returns), so a new setting is one `Knob` and nothing else.
`Settings.from_env` reads and validates them all, and a bad value raises `ConfigError` whose
message names the variable, the value and what is allowed. The same table feeds
`.env.example` and the README's configuration table (see `knob_table`).
"""
from __future__ import annotations

import os
from dataclasses import fields, make_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

# ConfigError, Knob and redact_url are config's own names too (other modules import them
# from here); the parsers build the KNOBS table.
from knobs import (ConfigError, Knob, bakes, choice, credentials, flag, fraction,  # noqa: F401
                   integer, names, number, rate_limit, redact_url, redis_url, text)

PROJECT_DIR = Path(__file__).resolve().parent
TINY_MODEL_ID = "tiny-random"


KNOBS: tuple[Knob, ...] = (
    Knob("MODEL_ID", "CompVis/stable-diffusion-v1-4",
         "Hub model id, a local diffusers folder, or 'tiny-random' (a tiny random-weight "
         "model built offline: produces noise, for trying the server and for tests)",
         text, "a Hub id, a folder path or 'tiny-random'"),
    Knob("MODELS_DIR", "models", "Folder of local models: diffusers folders (SD 1.x, SD 2.x, "
         "SD-Turbo, SDXS) and single-file SD 1.x/2.x checkpoints (.safetensors; .ckpt "
         "pickles are refused), each with an optional <name>.json card, listed by the model "
         "APIs and the page; MODEL_ID may name one of them", text, "a folder path"),
    Knob("LORA_DIR", "models/lora", "Folder of LoRAs (.safetensors: kohya/A1111, LyCORIS "
         "LoCon/LoHa/LoKr or diffusers/peft format) for <lora:name:weight> prompts", text,
         "a folder path"),
    Knob("EMBEDDINGS_DIR", "models/embeddings", "Folder of textual-inversion embeddings "
         "(.safetensors, .pt, .bin; A1111's or diffusers' format): a prompt or negative prompt "
         "that writes an embedding's file name uses it, as in A1111", text, "a folder path"),
    Knob("HF_TOKEN", "", "Hugging Face token for gated models (HF_AUTH_TOKEN is read too); "
         "v1-4 needs none. Never logged", text, "any string"),
    Knob("HOST", "127.0.0.1", "Address to listen on; 0.0.0.0 to serve the LAN or inside a "
         "container (then set API_KEY)", text, "an IP address or host name"),
    Knob("PORT", "5000", "TCP port", integer(1, 65535), "an integer 1..65535"),
    Knob("THREADS", "16", "waitress worker threads; each synchronous /generate holds one "
         "while it waits and each open event stream one, so keep it at least QUEUE_SIZE + "
         "EVENT_STREAMS + 2", integer(2, 256), "an integer 2..256"),
    Knob("DEFAULT_STEPS", "25", "Denoising steps when a request names none", integer(1, 500),
         "an integer 1..500 and <= MAX_STEPS"),
    Knob("MAX_STEPS", "100", "Most steps a request may ask for", integer(1, 500),
         "an integer 1..500"),
    Knob("DEFAULT_GUIDANCE", "7.5", "Classifier-free guidance scale when a request names none",
         number(0.0, 20.0), "a number 0..20"),
    Knob("MAX_PROMPT_LENGTH", "200", "Most characters in a prompt (and negative prompt)",
         integer(1, 10000), "an integer 1..10000"),
    Knob("DEFAULT_SIZE", "512", "Image width and height when a request names none",
         integer(64, 2048, 8), "a multiple of 8 in MIN_SIZE..MAX_SIZE"),
    Knob("MIN_SIZE", "256", "Smallest width/height a request may ask for", integer(64, 2048, 8),
         "a multiple of 8 in 64..2048"),
    Knob("MAX_SIZE", "768", "Largest width/height a request may ask for", integer(64, 2048, 8),
         "a multiple of 8 in 64..2048"),
    Knob("MAX_HIRES_SIZE", "1024", "Largest width/height a hires fix may upscale to (its "
         "second pass and decode run at that size)", integer(64, 2048, 8),
         "a multiple of 8 in 64..2048"),
    Knob("HIRES_VAE_TILES", "on", "Hires fix: run the VAE at the large size in overlapping "
         "tiles of the model's own size (each decoded in row bands), blended at the seams: "
         "1024 px decodes and encodes with about a 512 px one's memory (bench/hires-memory.md); "
         "off = one exact pass: ~2.3x the memory, ~1/3 the decode time", choice("on", "off"),
         "on or off"),
    Knob("ENGINE", "torch", "What runs the model: torch (default: fits an 8 GB laptop, weights "
         "memory-mapped) or openvino (faster per step on x86, needs several GB more RAM and "
         "`pip install -r requirements-openvino.txt`; the model is exported once to "
         "OPENVINO_CACHE_DIR)", choice("torch", "openvino"), "torch or openvino"),
    Knob("OPENVINO_CACHE_DIR", "models/openvino-cache", "Where ENGINE=openvino keeps the "
         "exported model (keyed by the model files, so a changed model is exported again)",
         text, "a folder path"),
    Knob("OPENVINO_SHAPES", "shared", "How ENGINE=openvino compiles the UNet: shared = one "
         "compiled model for every size and batch (one copy of the weights in RAM; a size's "
         "first call is about 1 s slower); static = one per size and batch, the 2 most recent "
         "kept, each with its own copy of the weights (OpenVINO's CPU plugin shares none "
         "between compiled models: bench/openvino-pipeline-results.md)",
         choice("shared", "static"), "shared or static"),
    Knob("ATTENTION_SLICING", "auto", "auto = off where PyTorch SDPA is available (measured: "
         "slicing is 1.6x slower on CPU and saves no memory); on = the seed's behaviour",
         choice("auto", "on", "off"), "auto, on or off"),
    Knob("DTYPE", "float32", "Weights/compute type. auto = bfloat16 where a short probe at "
         "load measures it at least 1.3x faster than float32 on this CPU (the log and /health "
         "say when it is). bfloat16 changes pixels slightly; its weights are written once to "
         "BF16_CACHE_DIR (~1.9 GB for SD v1-4) and memory-mapped, like float32's",
         choice("float32", "bfloat16", "auto"), "float32, bfloat16 or auto"),
    Knob("BF16_CACHE_DIR", "models/bf16-cache", "Where the bfloat16 copy of the weights is "
         "kept (keyed by the model files, so a changed model is converted again)", text,
         "a folder path"),
    Knob("BAKE", "", "LoRAs baked into models at start: comma-separated "
         "[name=]model+lora[:weight][+lora[:weight]...]; each merged model is written once to "
         "MODELS_DIR/.baked/ (keyed by the model, the LoRA files and the weights), memory-mapped "
         "and listed as a model (default name model+lora); see README: Baking LoRAs", bakes,
         "[name=]model+lora[:weight]..., comma-separated, or empty"),
    Knob("SPEED_PRESET", "quality", "Default speed preset for requests that name none: "
         "quality (no lossy option), balanced or fast (see README: Speed options)",
         choice("quality", "balanced", "fast"), "quality, balanced or fast"),
    Knob("CFG_CUTOFF", "1", "Default fraction of the steps after which classifier-free "
         "guidance stops (the UNet then runs at batch 1); 1 = never (off)", fraction,
         "a number 0 < x <= 1"),
    Knob("DEEP_CACHE", "1", "Default DeepCache interval: the whole UNet runs every N-th step, "
         "the steps between reuse its deep features; 1 = off", integer(1, 5), "an integer 1..5"),
    Knob("VAE_DECODER", "full", "Default decoder of the final image: full (the model's VAE) or "
         "tiny (TAESD: much faster, softer detail; needs TAESD_MODEL)",
         choice("full", "tiny"), "full or tiny"),
    Knob("TAESD_MODEL", "madebyollin/taesd", "TAESD weights (Hub id or folder, ~10 MB) for "
         "VAE_DECODER=tiny and for live previews. Previews use them only when they are on "
         "this machine (a folder, or the Hub cache: `hf download madebyollin/taesd`), else a "
         "linear colour map; VAE_DECODER=tiny downloads them. Empty = never load them",
         text, "a Hub id, a folder or empty",
         empty_means_off=True),
    Knob("TORCH_THREADS", "0", "CPU threads for torch; 0 = adaptive: before each image, one "
         "per usable core that other programs leave free (a shared laptop runs faster with "
         "fewer threads than cores)", integer(0, 256), "an integer 0..256"),
    Knob("QUEUE_SIZE", "8", "Jobs that may wait behind the running one; more get 503",
         integer(1, 250), "an integer 1..250 and <= THREADS - EVENT_STREAMS - 2"),
    Knob("EVENT_STREAMS", "4", "Most GET /jobs/<id>/events streams this process keeps open "
         "at once; each holds one of THREADS until its job ends or its client leaves, so more "
         "are refused with 503 and Retry-After (the page then polls); 0 = no streams",
         integer(0, 64), "an integer 0..64 and <= THREADS - QUEUE_SIZE - 2"),
    Knob("QUEUE_BACKEND", "memory", "Where jobs wait: memory = in this process (one server, "
         "the model loads here); redis = a durable RQ queue on REDIS_URL served by any number "
         "of `python worker.py` processes (app.py then loads no model)",
         choice("memory", "redis"), "memory or redis"),
    Knob("REDIS_URL", "redis://127.0.0.1:6379/0", "The Redis server of QUEUE_BACKEND=redis "
         "(jobs, images, worker heartbeats, rate-limit counters); a password in it is never "
         "logged", redis_url, "a redis://, rediss:// or unix:// URL"),
    Knob("WORKER_MODELS", "", "QUEUE_BACKEND=redis: the models this `python worker.py` serves "
         "(catalogue names, comma-separated; loaded one at a time as its jobs ask); empty = "
         "MODEL_ID's. Each model has its own queue: a request for a model no live worker "
         "serves is a 400 listing the served ones", names, "model names or empty"),
    Knob("MAX_BATCH", "4", "Most images one request may ask for (A1111 batch_size x n_iter, "
         "OpenAI n)", integer(1, 64), "an integer 1..64 and <= QUEUE_SIZE"),
    Knob("JOB_RETENTION_SECONDS", "3600", "How long finished jobs and their images are kept "
         "in memory", integer(10, 7 * 24 * 3600), "an integer 10..604800"),
    Knob("JOB_RETENTION_COUNT", "50", "How many finished jobs are kept at most",
         integer(1, 10000), "an integer 1..10000"),
    Knob("OUTPUT_DIR", "outputs", "Every finished image is also saved here (empty = don't "
         "save); a relative path is inside the project folder", text, "a folder path or empty",
         empty_means_off=True),
    Knob("TINY_MODEL_DIR", "models/tiny-random", "Where MODEL_ID=tiny-random is built",
         text, "a folder path"),
    Knob("SAFETY_CHECKER", "off", "on = load the model's NSFW checker and blank flagged "
         "images (costs ~1.2 GB RAM and ~1 s per image)", choice("on", "off"), "on or off"),
    Knob("LOG_LEVEL", "INFO", "Logging level", choice("debug", "info", "warning", "error"),
         "DEBUG, INFO, WARNING or ERROR"),
    Knob("RATE_LIMIT", "10/minute", "Per-client limit on generating endpoints, Flask-Limiter "
         "syntax; empty = off", rate_limit, "e.g. 10/minute, '5 per minute;100/day' or empty",
         empty_means_off=True),
    Knob("RATE_LIMIT_STORAGE_URI", "memory://", "Where rate-limit counters live (memory:// "
         "or e.g. redis://host:6379 to share between processes)", text, "a storage URI"),
    Knob("CORS_ORIGINS", "", "Comma-separated origins allowed to call the API from a browser; "
         "empty = same origin only; * = anyone", names, "origins or *"),
    Knob("ALLOWED_HOSTS", "auto", "Host names this server answers to (the request's Host "
         "header), comma-separated; auto = localhost, 127.0.0.1 and ::1 when HOST is a "
         "loopback address (so a web page cannot reach a local server by DNS rebinding), any "
         "host otherwise; * = any", names, "auto, *, or host names"),
    Knob("API_KEY", "", "When set, generating, job and compatibility endpoints need "
         "'Authorization: Bearer <key>'", text, "any string or empty"),
    Knob("API_AUTH", "", "When set, the endpoints API_KEY protects also take HTTP Basic auth "
         "with these credentials (A1111's --api-auth; SillyTavern, Open WebUI). With API_KEY "
         "too, either one is enough. Never logged", credentials,
         "user:pass[,user2:pass2] or empty"),
    Knob("METRICS_PUBLIC", "0", "1 = GET /metrics answers without credentials even when "
         "API_KEY / API_AUTH is set (for a Prometheus inside a trusted network); 0 = it is "
         "protected like the API", flag, "0 or 1 (also true/false, yes/no, on/off)"),
    Knob("MAX_REQUEST_BYTES", "65536", "Largest request body without images; bigger gets 413",
         integer(1024, 16 * 1024 * 1024), "an integer 1024..16777216"),
    Knob("MAX_IMAGE_REQUEST_BYTES", "20971520", "Largest body of a request that carries "
         "images (img2img, inpainting, edits, extras, png-info); bigger gets 413",
         integer(65536, 256 * 1024 * 1024), "an integer 65536..268435456"),
    Knob("MAX_INPUT_PIXELS", "16777216", "Most pixels (width x height) an uploaded image may "
         "have before it is resized; bigger gets 400 (a decompression bomb never gets decoded)",
         integer(4096, 256 * 1024 * 1024), "an integer 4096..268435456"),
    Knob("FAIR_SHARE", "on", "on = queued jobs are taken round-robin across clients (the "
         "Basic user, the API key, or the address), so one client's batch does not hold up "
         "everyone else's single image; off = first come, first served",
         flag, "on or off (1/0, true/false, yes/no)"),
    Knob("JOURNAL_PATH", "state/jobs.sqlite", "QUEUE_BACKEND=memory: every accepted job is "
         "kept in this SQLite file, so after a crash or restart queued jobs run in their "
         "order, the running one resumes from its checkpoint and every job id answers; "
         "empty = jobs live in memory only", text, "a file path or empty",
         empty_means_off=True),
    Knob("CHECKPOINT_STEPS", "5", "A running job keeps a checkpoint every N steps (in Redis, "
         "or on disk beside JOURNAL_PATH), so a crashed or killed worker's job resumes from "
         "there with the same pixels; 0 = off", integer(0, 500), "an integer 0..500"),
    Knob("CHECKPOINT_MAX_COST", "0.02", "Checkpoints are skipped while they have cost more "
         "than this fraction of the steps' own time (measured per job)", fraction,
         "a number 0 < x <= 1"),
    Knob("JOB_MAX_ATTEMPTS", "2", "How many times a job may run: one whose worker died is run "
         "again (from its checkpoint) until this many attempts, then fails naming the workers",
         integer(1, 10), "an integer 1..10"),
    Knob("SHUTDOWN_GRACE_SECONDS", "30", "On SIGTERM/SIGINT, how long the running job may "
         "finish before it is cancelled", integer(0, 3600), "an integer 0..3600"),
)


class SettingsBase:
    """What every `Settings` does; its fields, one per knob, are generated from KNOBS below."""

    if TYPE_CHECKING:  # a type checker cannot see generated fields: it takes them as Any
        __dataclass_fields__: ClassVar[dict[str, Any]]

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, field: str) -> Any: ...

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every knob from `environ` (default: os.environ after loading `.env`)."""
        if environ is None:
            from dotenv import load_dotenv

            load_dotenv(PROJECT_DIR / ".env")
            environ = os.environ
        environ = dict(environ)
        if not environ.get("HF_TOKEN") and environ.get("HF_AUTH_TOKEN"):
            environ["HF_TOKEN"] = environ["HF_AUTH_TOKEN"]  # the seed's name for it
        values = {}
        for knob in KNOBS:
            raw = environ.get(knob.name)
            if raw is None or (not raw.strip() and not knob.empty_means_off):
                raw = knob.default
            values[knob.field] = knob.parse(raw, knob)
        return cls(**values)._checked()

    def _checked(self) -> "Settings":
        """Cross-field rules that a single knob cannot check alone."""
        if self.min_size > self.max_size:
            raise ConfigError(f"MIN_SIZE={self.min_size} is not valid: allowed <= MAX_SIZE "
                              f"({self.max_size})")
        if not self.min_size <= self.default_size <= self.max_size:
            raise ConfigError(f"DEFAULT_SIZE={self.default_size} is not valid: allowed a "
                              f"multiple of 8 in MIN_SIZE..MAX_SIZE ({self.min_size}.."
                              f"{self.max_size})")
        if self.default_steps > self.max_steps:
            raise ConfigError(f"DEFAULT_STEPS={self.default_steps} is not valid: allowed "
                              f"1..MAX_STEPS ({self.max_steps})")
        if self.max_batch > self.queue_size:
            raise ConfigError(f"MAX_BATCH={self.max_batch} is not valid: allowed <= QUEUE_SIZE "
                              f"({self.queue_size}), or a full batch could never be queued")
        if self.max_image_request_bytes < self.max_request_bytes:
            raise ConfigError(f"MAX_IMAGE_REQUEST_BYTES={self.max_image_request_bytes} is not "
                              f"valid: allowed >= MAX_REQUEST_BYTES ({self.max_request_bytes})")
        if self.threads < self.queue_size + self.event_streams + 2:
            raise ConfigError(f"THREADS={self.threads} is not valid: allowed >= QUEUE_SIZE + "
                              f"EVENT_STREAMS + 2 ({self.queue_size + self.event_streams + 2})"
                              " so /health answers while every queued request waits and "
                              "every event stream is open")
        return self

    def with_overrides(self, **changes: Any) -> "Settings":
        """A copy with some fields changed, validated again (for tests and tools)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)._checked()

    def path(self, value: str) -> Path:
        """Resolve a folder setting: relative paths are inside the project folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else PROJECT_DIR / p

    @property
    def model_source(self) -> str:
        """What `from_pretrained` loads: the tiny model's folder or MODEL_ID itself."""
        if self.model_id == TINY_MODEL_ID:
            return str(self.path(self.tiny_model_dir))
        return self.model_id


def settings_class(knobs: tuple[Knob, ...]) -> type[SettingsBase]:
    """A frozen dataclass with one field per knob, named and typed by it (MODEL_ID -> model_id:
    str), and the behaviour of `SettingsBase`."""
    return make_dataclass(
        "Settings", [(knob.field, knob.type) for knob in knobs], bases=(SettingsBase,),
        frozen=True, namespace={
            "__module__": __name__,  # Python 3.11 would say 'types' (repr, pickling)
            "__doc__": "Validated, typed settings, one field per knob (MODEL_ID -> model_id); "
                       "build with `Settings.from_env()`. The defaults live in KNOBS only: "
                       "`from_env({})` gives them."})


if TYPE_CHECKING:
    Settings = SettingsBase
else:
    Settings = settings_class(KNOBS)


def process_settings() -> Settings | None:
    """An entry point's settings (app.py, worker.py) with logging set up from LOG_LEVEL, or
    None after printing the one-line error for an invalid knob."""
    import logging
    import sys

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return None
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def env_example() -> str:
    """The text of .env.example: each knob's help and allowed values, then its default."""
    import textwrap

    out = ["# Copy to .env and edit. Every variable is optional; the value shown is the default.",
           "# Each is validated at startup: a bad value stops the server with one line naming it.",
           ""]
    for k in KNOBS:
        out += [f"# {line}" for line in textwrap.wrap(f"{k.help} (allowed: {k.allowed})", 88)]
        out += [f"{k.name}={k.default}", ""]
    return "\n".join(out)


def knob_table() -> str:
    """The configuration table as Markdown, for the README."""
    rows = ["| Variable | Default | Allowed | What it does |", "|---|---|---|---|"]
    for k in KNOBS:
        rows.append(f"| `{k.name}` | `{k.default}` | {k.allowed} | {k.help} |")
    return "\n".join(rows)
