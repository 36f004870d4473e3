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


ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    # Small enough that a 64x64 image takes well under a second on one core; attention
    # only at the lower resolution, so a 512x512 image stays cheap too.
    "tiny": {
        "unet": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                     block_out_channels=(32, 64), norm_num_groups=8,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                     cross_attention_dim=32, attention_head_dim=4),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                    block_out_channels=(16, 16, 16, 16), norm_num_groups=8, sample_size=64,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4),
        "text": dict(vocab_size=1000, hidden_size=32, intermediate_size=37,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                     projection_dim=32, hidden_act="quick_gelu"),
    },
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
    """Save a random-weight SD pipeline (`tiny` or `full` v1-4 architecture) as a diffusers folder."""
    import torch

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    arch = ARCHITECTURES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**arch["unet"])
    vae = AutoencoderKL(**arch["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                                **arch["text"]))
    tokenizer = CLIPTokenizer(vocab=_byte_tokenizer_vocab(), merges=[], model_max_length=77)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, num_train_timesteps=1000)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    # Staged, so a half-written folder is never loaded (another process's finished one wins).
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
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
