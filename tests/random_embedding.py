"""Random textual-inversion embeddings in the file formats users bring: A1111's
(`string_to_param` in a .pt, `emb_params` in a .safetensors) and diffusers' ({token: tensor}
in a .bin or .safetensors)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

# (file name, layout) of each format; the names are lowercase so that diffusers' own loader,
# which takes the token from the file, reads prompts the way A1111 does.
FORMATS = (("ti-a1111-pt.pt", "a1111"), ("ti-a1111-st.safetensors", "a1111"),
           ("ti-diffusers-bin.bin", "diffusers"), ("ti-diffusers-st.safetensors", "diffusers"))


def build_random_embedding(path: Path, layout: str, vectors: int = 2, width: int = 32,
                           seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """Write a random embedding of `vectors` x `width` to `path` in `layout` ("a1111" or
    "diffusers"; .pt/.bin via torch.save, .safetensors via safetensors) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = torch.randn(vectors, width, generator=torch.Generator().manual_seed(seed)) * scale
    name = path.stem
    if path.suffix == ".safetensors":
        data = {"emb_params": tensor} if layout == "a1111" else {name: tensor}
        save_file(data, str(path), metadata={"step": "1500"} if layout == "a1111" else None)
    elif layout == "a1111":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": tensor},
                    "name": name, "step": 1500, "sd_checkpoint": "7460a6fa",
                    "sd_checkpoint_name": "v1-5-pruned-emaonly"}, path)
    else:
        torch.save({name: tensor}, path)
    return tensor
