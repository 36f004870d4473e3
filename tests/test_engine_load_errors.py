"""engine.load_errors: every kind of loading failure becomes one line of advice."""
import pytest

from config import Settings
from engine.load_errors import explain_load_error
from errors import ModelLoadError


class GatedRepoError(Exception):
    """Stand-in named like huggingface_hub's: the Hub cannot be reached from here."""


class RepositoryNotFoundError(Exception):
    """Stand-in named like huggingface_hub's."""


@pytest.fixture
def settings():
    return Settings.from_env({"MODEL_ID": "someone/some-model"})


def _raised_from(outer: Exception, inner: Exception) -> Exception:
    """`outer` with `inner` as its cause, as diffusers wraps the Hub's errors."""
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def test_model_load_error_is_passed_through(settings):
    assert explain_load_error(settings, ModelLoadError("set X")) == "set X"


def test_gated_model_says_accept_the_licence_and_set_hf_token(settings):
    exc = _raised_from(OSError("could not load"), GatedRepoError("401 access restricted"))
    text = explain_load_error(settings, exc)
    assert "gated" in text and "HF_TOKEN" in text and "someone/some-model" in text


def test_unknown_repository_says_check_model_id(settings):
    exc = _raised_from(OSError("could not load"), RepositoryNotFoundError("404"))
    text = explain_load_error(settings, exc)
    assert "does not exist on the Hub" in text and "MODEL_ID" in text


def test_missing_safetensors_says_convert(settings):
    exc = OSError("no file named diffusion_pytorch_model.safetensors found")
    assert "has no .safetensors weights" in explain_load_error(settings, exc)


def test_memory_error_says_out_of_memory(settings):
    assert explain_load_error(settings, MemoryError()).startswith("out of memory")


def test_anything_else_names_the_model_and_the_error(settings):
    text = explain_load_error(settings, ValueError("bad\nthing"))
    assert text == "could not load model 'someone/some-model': ValueError: bad thing"
