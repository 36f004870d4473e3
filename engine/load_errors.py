"""Turn a model-loading failure into one line that says what went wrong and what to do."""
from __future__ import annotations

from config import Settings
from errors import ModelLoadError



def _exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and every cause/context behind it (the Hub's errors hide in there)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def explain_load_error(settings: Settings, exc: Exception) -> str:
    """Turn a loading exception into one line that says what went wrong and what to do."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    model = settings.model_id
    chain = _exception_chain(exc)
    names = {type(e).__name__ for e in chain}
    lowered = " ".join(str(e) for e in chain).lower()
    if isinstance(exc, ModelLoadError):
        return str(exc)
    if "GatedRepoError" in names or "gated" in lowered:
        return (f"model {model!r} is gated: accept its licence on the Hub, then set HF_TOKEN "
                f"to a token of that account. ({text[:300]})")
    if "Invalid credentials" in " ".join(str(e) for e in chain) or (
            "invalid username or password" in lowered):
        return (f"the Hub refused HF_TOKEN (invalid or expired) while fetching {model!r}: "
                "create a new token at https://huggingface.co/settings/tokens and set HF_TOKEN, "
                f"or unset it for a public model. ({text[:300]})")
    if "RepositoryNotFoundError" in names:
        return (f"model {model!r} does not exist on the Hub, or is private (then set "
                f"HF_TOKEN): check MODEL_ID. ({text[:300]})")
    offline = {"LocalEntryNotFoundError", "ConnectError", "ConnectionError", "ConnectTimeout",
               "gaierror", "OfflineModeIsEnabled"}
    if names & offline or any(k in lowered for k in (
            "not fully cached", "cached locally", "outgoing traffic", "offline", "connect",
            "not a valid model identifier", "cannot find the requested files",
            "does not appear to have", "not a valid local path")):
        return (f"model {model!r} is not in the local Hugging Face cache and the Hub could not "
                "be reached: download it once with network access (e.g. `hf download "
                f"{model}`), or set MODEL_ID to a local diffusers folder, or MODEL_ID=tiny-random "
                f"to try the server. ({text[:300]})")
    if "safetensors" in lowered:
        return (f"model {model!r} has no .safetensors weights; convert it or pick a revision "
                f"that has them. ({text[:300]})")
    if isinstance(exc, MemoryError):
        return "out of memory while loading the model: close other programs or use DTYPE=bfloat16"
    return f"could not load model {model!r}: {text[:500]}"
