"""Random-weight LoRAs for a saved pipeline, in the two file formats users bring: diffusers/peft
(`save_lora_weights`) and kohya/A1111 (`lora_unet_..._to_q.lora_down.weight` + `.alpha`).
Tests use them on the tiny model; benchmarks make one of LCM-LoRA-SD1.5's shape (rank 64 on
the UNet's attention and conv layers) for the full-size architecture."""
from __future__ import annotations

from pathlib import Path

# The UNet layers LoRAs usually train (the attention projections).
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# latent-consistency/lcm-lora-sdv1-5 also adapts the convolutions and projections.
LCM_TARGETS = (*ATTENTION_TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv",
               "time_emb_proj")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def build_random_lora(model_folder: Path | str, path: Path | str, fmt: str = "peft",
                      rank: int = 4, targets: tuple[str, ...] = ATTENTION_TARGETS,
                      text_encoder: bool = True, seed: int = 0, scale: float = 1.0,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write a random LoRA for the pipeline saved in `model_folder` to `path` (.safetensors).

    `fmt` is "peft" (diffusers' own layout) or "kohya" (A1111's). `scale` multiplies the
    random up-weights, so a test can make an effect large enough to see in a few steps.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    model_folder, path = Path(model_folder), Path(path)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    parts = [("unet", UNet2DConditionModel, targets)] if targets else []
    if text_encoder:
        parts.append(("text_encoder", CLIPTextModel, TEXT_TARGETS))
    for prefix, cls, wanted in parts:
        module = cls.from_pretrained(model_folder / prefix)
        present = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
        modules = [t for t in wanted if t.split(".")[-1] in present or "." in t]
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(modules),
                            init_lora_weights=False)
        # peft directly, not transformers' add_adapter (which wants a newer peft than PyPI has).
        module = inject_adapter_in_model(config, module)
        state = get_peft_model_state_dict(module)
        if prefix == "text_encoder":  # as real files name it (transformers 4's layout)
            state = {k if k.startswith("text_model.") else f"text_model.{k}": v
                     for k, v in state.items()}
        layers[prefix] = {k: (v * scale if "lora_B" in k else v).contiguous()
                          for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "peft":
        tensors = {f"{prefix}.{k}": v for prefix, state in layers.items() for k, v in state.items()}
    elif fmt == "kohya":
        tensors = _kohya(layers, rank)
    else:
        raise ValueError(f"unknown LoRA format {fmt!r}: use 'peft' or 'kohya'")
    save_file(tensors, str(path), metadata=metadata or {})
    return path


def _kohya(layers: dict[str, dict], rank: int) -> dict:
    """peft state dicts renamed as kohya's sd-scripts writes SD 1.x LoRAs."""
    import torch

    out = {}
    for prefix, state in layers.items():
        head = "lora_unet_" if prefix == "unet" else "lora_te_"
        for key, value in state.items():
            module, kind = key.rsplit(".lora_", 1)  # "down_blocks.0...to_q", "A.weight"
            name = head + module.replace(".", "_")
            out[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


# The layers a random LyCORIS file adapts: attention projections, a ResNet convolution (so
# the conv path is used) and a text-encoder projection.
LYCORIS_LAYERS = (("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
                  ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
                  ("unet", "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
                  ("unet", "down_blocks.0.resnets.0.conv1"),
                  ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"))


def build_random_lycoris(model_folder: Path | str, path: Path | str, fmt: str, rank: int = 4,
                         seed: int = 0, scale: float = 1.0, tucker: bool = False) -> Path:
    """Write a random LyCORIS LoHa (`fmt` "loha": hada_w1_a/b, hada_w2_a/b, alpha) or LoKr
    ("lokr": lokr_w1 whole, lokr_w2_a/b, alpha) for the pipeline in `model_folder`, in
    kohya's layer names, as LyCORIS writes them (a conv layer's b factor holds in x k x k
    columns). `tucker` adds LoHa's Tucker core `hada_t1`, which the server cannot apply."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    generator = torch.Generator().manual_seed(seed)
    model_folder, path = Path(model_folder), Path(path)
    models = {"unet": UNet2DConditionModel.from_pretrained(model_folder / "unet"),
              "text_encoder": CLIPTextModel.from_pretrained(model_folder / "text_encoder")}
    out: dict[str, torch.Tensor] = {}

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * scale

    for component, name in LYCORIS_LAYERS:
        module = name if component == "unet" else name.removeprefix("text_model.")
        weight = models[component].get_submodule(module).weight  # transformers 5's names
        layer = ("lora_unet_" if component == "unet" else "lora_te_") + name.replace(".", "_")
        rows, columns = weight.shape[0], weight[0].numel()
        if fmt == "loha":
            out.update({f"{layer}.hada_w1_a": rand(rows, rank),
                        f"{layer}.hada_w1_b": rand(rank, columns),
                        f"{layer}.hada_w2_a": rand(rows, rank),
                        f"{layer}.hada_w2_b": rand(rank, columns)})
            if tucker:
                out[f"{layer}.hada_t1"] = rand(rank, rank, 3, 3)
        elif fmt == "lokr":
            inputs = weight.shape[1]
            out.update({f"{layer}.lokr_w1": rand(2, 2),
                        f"{layer}.lokr_w2_a": rand(rows // 2, rank),
                        f"{layer}.lokr_w2_b": rand(rank, inputs // 2 * weight[0, 0].numel())})
        else:
            raise ValueError(f"unknown LyCORIS format {fmt!r}: use 'loha' or 'lokr'")
        out[f"{layer}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path
