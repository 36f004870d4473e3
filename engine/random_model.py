"""Random-weight Stable Diffusion pipelines: a tiny one for tests and for trying the server
offline, and the full-size SD v1-4 architecture for benchmarks (compute and memory do not
depend on the weights' values)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog.files import staged


def _byte_characters() -> list[str]:
    """GPT-2/CLIP's printable stand-in character for each of the 256 byte values."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _byte_tokenizer_vocab() -> dict[str, int]:
    """A CLIP BPE vocab with one token per byte-character (plus word ends): any text tokenizes."""
    chars = _byte_characters()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    return vocab


_TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(32, 64), norm_num_groups=8,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=4)
_TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                 block_out_channels=(16, 16, 16, 16), norm_num_groups=8, sample_size=64,
                 down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4)
_TINY_TEXT = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                  hidden_act="quick_gelu")
# SD 2.x's text encoder is OpenCLIP-H's, saved as a CLIPTextModel: GELU instead of CLIP's
# quick GELU (and 1024 wide); its tokenizer pads with "!" instead of the end token.
_TINY_OPENCLIP = dict(_TINY_TEXT, hidden_size=48, intermediate_size=53, projection_dim=48,
                      hidden_act="gelu")
_SD1_SCHEDULER = ("PNDMScheduler", dict(beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", skip_prk_steps=True,
                                        steps_offset=1, num_train_timesteps=1000))
_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              num_train_timesteps=1000)
# stabilityai/stable-diffusion-2-1 (768-v): DDIM, v-prediction, read from this config.
_SD2_V_SCHEDULER = ("DDIMScheduler", dict(_BETAS, prediction_type="v_prediction",
                                          steps_offset=1, clip_sample=False,
                                          set_alpha_to_one=False))
# stabilityai/sd-turbo: Euler with trailing spacing (one step starts at t=999).
_TURBO_SCHEDULER = ("EulerDiscreteScheduler", dict(_BETAS, timestep_spacing="trailing",
                                                   steps_offset=1))
# A pruned SDXS-style UNet: three levels, one layer per block, no mid block, cross-attention
# at the top level only (and a linear projection, as SD 2.x's).
_TINY_SDXS_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                       block_out_channels=(32, 64, 64), norm_num_groups=8,
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
                       mid_block_type=None, cross_attention_dim=48, attention_head_dim=4,
                       use_linear_projection=True)

# Full-size stand-ins for the benchmark. SD 2.1-base's UNet (SD-Turbo's), 865M parameters.
_SD21_BASE_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                       block_out_channels=(320, 640, 1280, 1280),
                       down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                       cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                       use_linear_projection=True)
# SDXS-512's pruned UNet, reconstructed (its config could not be fetched here): three levels,
# one layer per block, no mid block, cross-attention at the two lower-resolution levels. This
# layout counts 318.7M parameters, the paper's 319M; attention only at the top level would
# count 192M.
_SDXS_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(320, 640, 1280), mid_block_type=None,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  cross_attention_dim=1024, attention_head_dim=(5, 10, 20),
                  use_linear_projection=True)
_FULL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                 block_out_channels=(128, 256, 512, 512), sample_size=512,
                 down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4)
_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
               hidden_act="quick_gelu")
# OpenCLIP-H as SD 2.x ships it: 23 of its 24 layers (the penultimate layer's output is used).
_OPENCLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                   num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                   projection_dim=512, hidden_act="gelu")

# Each architecture: the UNet, VAE (`vae_class` "tiny": an AutoencoderTiny of
# TAESD_ARCHITECTURES[vae]) and text encoder configs, the scheduler (class, config) and the
# tokenizer's pad token. New families are one entry here (the benchmark builds them too).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    # Small enough that a 64x64 image takes well under a second on one core; attention
    # only at the lower resolution, so a 512x512 image stays cheap too.
    "tiny": {"unet": _TINY_UNET, "vae": _TINY_VAE, "text": _TINY_TEXT},
    # SD 2.x 768-v, tiny: linear projections, OpenCLIP-style text, v-prediction, a native
    # size of 96 (12 latent rows) like the real one's 768.
    "tiny-sd2-v": {"unet": dict(_TINY_UNET, sample_size=12, cross_attention_dim=48,
                                use_linear_projection=True, upcast_attention=True),
                   "vae": _TINY_VAE, "text": _TINY_OPENCLIP, "scheduler": _SD2_V_SCHEDULER,
                   "pad_token": "!"},
    # SD-Turbo, tiny: SD 2.1-base's shape with Euler trailing.
    "tiny-sd-turbo": {"unet": dict(_TINY_UNET, cross_attention_dim=48,
                                   use_linear_projection=True),
                      "vae": _TINY_VAE, "text": _TINY_OPENCLIP, "scheduler": _TURBO_SCHEDULER,
                      "pad_token": "!"},
    # SDXS-512-0.9, tiny: the pruned UNet, SD 2.1's text encoder, AutoencoderTiny as vae/.
    # (SDXS ships its full VAE beside it as vae_large/, which from_pretrained leaves alone.)
    "tiny-sdxs": {"unet": _TINY_SDXS_UNET, "vae": "tiny", "vae_class": "tiny",
                  "vae_large": _TINY_VAE, "text": _TINY_OPENCLIP,
                  "scheduler": ("DDPMScheduler", dict(_BETAS, clip_sample=False)), "pad_token": "!"},
    # SDXS-512-DreamShaper, tiny: the same UNet idea with SD 1.5's CLIP-L text encoder.
    "tiny-sdxs-dreamshaper": {"unet": dict(_TINY_SDXS_UNET, cross_attention_dim=32,
                                           use_linear_projection=False),
                              "vae": "tiny", "vae_class": "tiny", "text": _TINY_TEXT,
                              "scheduler": ("DDPMScheduler", dict(_BETAS, clip_sample=False))},
    # Full-size SD-Turbo (stabilityai/sd-turbo: SD 2.1-base's shapes), SDXS-512-0.9 (its tiny
    # VAE as vae/, the full one as vae_large/) and SDXS-512-DreamShaper (CLIP-L).
    "sd-turbo": {"unet": _SD21_BASE_UNET, "vae": _FULL_VAE, "text": _OPENCLIP_H,
                 "scheduler": _TURBO_SCHEDULER, "pad_token": "!"},
    "sdxs": {"unet": _SDXS_UNET, "vae": "full", "vae_class": "tiny", "vae_large": _FULL_VAE,
             "text": _OPENCLIP_H, "scheduler": _TURBO_SCHEDULER, "pad_token": "!"},
    "sdxs-dreamshaper": {"unet": dict(_SDXS_UNET, cross_attention_dim=768,
                                      attention_head_dim=8, use_linear_projection=False),
                         "vae": "full", "vae_class": "tiny", "vae_large": _FULL_VAE,
                         "text": _CLIP_L, "scheduler": _TURBO_SCHEDULER},
    # Exactly CompVis/stable-diffusion-v1-4: compute and memory match the real model.
    "full": {
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                    block_out_channels=(128, 256, 512, 512), sample_size=512,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4),
        "text": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                     projection_dim=768, hidden_act="quick_gelu"),
    },
}


def build_random_pipeline(folder: Path | str, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight SD pipeline of architecture `size` (ARCHITECTURES: `tiny`, `full`
    v1-4, and the other families' tiny ones) as a diffusers folder."""
    import diffusers
    import torch

    from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    arch = ARCHITECTURES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**arch["unet"])
    if arch.get("vae_class") == "tiny":
        vae = AutoencoderTiny(in_channels=3, out_channels=3, latent_channels=4,
                              **TAESD_ARCHITECTURES[arch["vae"]])
    else:
        vae = AutoencoderKL(**arch["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                                **arch["text"]))
    tokenizer = CLIPTokenizer(vocab=_byte_tokenizer_vocab(), merges=[], model_max_length=77,
                              **({"pad_token": arch["pad_token"]} if "pad_token" in arch else {}))
    class_name, config = arch.get("scheduler", _SD1_SCHEDULER)
    scheduler = getattr(diffusers, class_name)(**config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    # Staged, so a half-written folder is never loaded (another process's finished one wins).
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if "vae_large" in arch:
            AutoencoderKL(**arch["vae_large"]).save_pretrained(tmp / "vae_large",
                                                              safe_serialization=True)
    return folder


TAESD_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                 num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)),
    # madebyollin/taesd's own configuration (about 2.4 M parameters).
    "full": dict(encoder_block_out_channels=(64, 64, 64, 64),
                 decoder_block_out_channels=(64, 64, 64, 64),
                 num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1)),
}


def build_random_taesd(folder: Path | str, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight TAESD (`AutoencoderTiny`) as a diffusers folder."""
    import torch
    from diffusers import AutoencoderTiny

    folder = Path(folder)
    torch.manual_seed(seed)
    taesd = AutoencoderTiny(in_channels=3, out_channels=3, latent_channels=4,
                            **TAESD_ARCHITECTURES[size])
    with staged(folder) as tmp:
        taesd.save_pretrained(tmp, safe_serialization=True)
    return folder
