"""Textual-inversion embeddings loaded into the pipeline's tokenizer and text encoder (the
files are catalog.embeddings').

An embedding is loaded with diffusers' `load_textual_inversion` under its own token,
`<name>` (lowercase, in brackets), never under the bare name: CLIP's tokenizer matches an
added token inside longer words too, so a loaded bare `neg` would change a later prompt's
`negative`. A job's prompt is rewritten so that each embedding it writes as a word (any
case, as A1111 reads it) becomes that token; diffusers then expands a multi-vector one into
`<name> <name>_1 ...`. Nothing is copied per job: a small bounded set stays loaded between
jobs (`TextualInversions`, as engine.loras' adapters), and a prompt that does not write the
name never contains the token, so other jobs are unaffected. Worker thread only.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from catalog.embeddings import EmbeddingEntry, embedding_problem, embedding_tensor_key
from catalog.families import ModelFamily
from catalog.hashes import file_sha256

log = logging.getLogger(__name__)

# Embeddings kept loaded between jobs (each adds its vectors to the token embedding matrix).
EMBEDDING_CACHE_SIZE = 16


def read_vectors(entry: EmbeddingEntry):
    """The embedding's vectors as a [vectors, width] tensor, read safely: safetensors, or
    torch.load with weights_only (tensors and dicts only, never arbitrary pickles)."""
    import torch

    if entry.path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(entry.path), device="cpu")
    else:
        data = torch.load(entry.path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError("not a dict of tensors")
    _layout, tensor = embedding_tensor_key(data)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError("its embedding is not a tensor")
    tensor = tensor.detach()
    return tensor if tensor.dim() == 2 else tensor.reshape(1, -1)


def token_of(entry: EmbeddingEntry) -> str:
    """The tokenizer's token for this embedding (see the module docstring)."""
    return f"<{entry.name.lower()}>"


class TextualInversions:
    """The embeddings loaded into one pipeline: at most `capacity` stay loaded between jobs
    (least recently used ones are unloaded first). Worker thread only."""

    def __init__(self, capacity: int = EMBEDDING_CACHE_SIZE):
        self.capacity = capacity
        self.loaded: OrderedDict[str, tuple[EmbeddingEntry, list[str]]] = OrderedDict()
        self._hashes: dict[tuple, str] = {}

    def sha256(self, entry: EmbeddingEntry) -> str:
        """The file's sha256, computed once per version of the file (for `TI hashes`)."""
        key = (str(entry.path), entry.size, entry.mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(entry.path)
        return self._hashes[key]

    def activate(self, pipe, entries: list[EmbeddingEntry],
                 family: ModelFamily | None) -> dict[str, str]:
        """Load the embeddings a job uses that are missing; return {name: why skipped} for
        those that cannot be used with this model (the word then stays plain text)."""
        skipped: dict[str, str] = {}
        width = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
        for entry in entries:
            problem = embedding_problem(entry, family, width)
            if not problem:
                problem = self._ensure(pipe, entry)
            if problem:
                skipped[entry.name] = problem
                log.warning("embedding %s skipped: %s", entry.name, problem)
        self._evict(pipe, keep={e.name for e in entries})
        return skipped

    def rewrite(self, text: str | None, entries: list[EmbeddingEntry]) -> str | None:
        """The text with each loaded embedding's name (as a word) replaced by its token."""
        if not text:
            return text
        for entry in entries:
            if entry.name in self.loaded:
                text = entry.pattern.sub(token_of(entry), text)
        return text

    def clear(self, pipe) -> None:
        """Unload every embedding (before the pipeline is replaced by another model)."""
        for name in list(self.loaded):
            self._unload(pipe, name)

    def _ensure(self, pipe, entry: EmbeddingEntry) -> str:
        """Load the entry (again, when its file changed); "" or why it cannot be loaded."""
        held = self.loaded.get(entry.name)
        if held is not None and (held[0].size, held[0].mtime_ns, held[0].path) == (
                entry.size, entry.mtime_ns, entry.path):
            self.loaded.move_to_end(entry.name)
            return ""
        if held is not None:
            self._unload(pipe, entry.name)
        token = token_of(entry)
        try:
            vectors = read_vectors(entry)
            dtype = pipe.text_encoder.get_input_embeddings().weight.dtype
            pipe.load_textual_inversion(vectors.to(dtype), token=token,
                                        tokenizer=pipe.tokenizer,
                                        text_encoder=pipe.text_encoder)
        except Exception as exc:  # a pickle refused by weights_only, a vocabulary clash...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            return f"cannot be loaded: {reason[:300]}"
        tokens = [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]
        self.loaded[entry.name] = (entry, tokens)
        log.info("embedding %s loaded (%d vectors of %d)", entry.name, len(tokens),
                 vectors.shape[-1])
        return ""

    def _evict(self, pipe, keep: set[str]) -> None:
        while len(self.loaded) > self.capacity:
            victim = next((n for n in self.loaded if n not in keep), None)
            if victim is None:
                return
            self._unload(pipe, victim)

    def _unload(self, pipe, name: str) -> None:
        _entry, tokens = self.loaded.pop(name)
        pipe.unload_textual_inversion(tokens, tokenizer=pipe.tokenizer,
                                      text_encoder=pipe.text_encoder)
