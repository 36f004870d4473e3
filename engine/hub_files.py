"""Which files of a Hub repository `from_pretrained` reads, decided with diffusers' own helpers
(so the catalogue's downloader fetches exactly those, and nothing else)."""
from __future__ import annotations

import os


def download_patterns(model_index: dict, filenames: set[str],
                      safety_checker_off: bool) -> tuple[list[str], list[str]]:
    """The allow and ignore patterns `StableDiffusionPipeline.from_pretrained(repo,
    use_safetensors=True[, safety_checker=None])` gives snapshot_download, computed with
    diffusers' own helpers as `DiffusionPipeline.download` does (no variant, no custom code)."""
    from diffusers.pipelines.pipeline_loading_utils import (CUSTOM_PIPELINE_FILE_NAME,
                                                            _get_ignore_patterns,
                                                            filter_model_files,
                                                            variant_compatible_siblings)
    from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME
    from diffusers.utils.constants import CONFIG_NAME, TRANSFORMERS_COMPONENT_AUX_FILES

    filenames = set(filenames) - set(model_index.get("_ignore_files", []))
    folder_names = [k for k, v in model_index.items()
                    if isinstance(v, list) and k != "_class_name"]
    passed = ["safety_checker"] if safety_checker_off else []
    model_folders = {os.path.split(f)[0] for f in filter_model_files(filenames)
                     if os.path.split(f)[0] in folder_names}
    ignore = _get_ignore_patterns(passed, model_folders, filenames, True, False, False, False,
                                  False, None)
    model_files, _ = variant_compatible_siblings(filenames, variant=None, ignore_patterns=ignore)
    allow = list(model_files) + [f"{k}/*" for k in folder_names if k not in model_folders]
    allow += [os.path.join(k, "config.json") for k in model_folders]
    allow += [SCHEDULER_CONFIG_NAME, CONFIG_NAME, "model_index.json", CUSTOM_PIPELINE_FILE_NAME]
    allow = [p for p in allow if not (len(p.split("/")) == 2 and p.split("/")[0] in passed)]
    allow += TRANSFORMERS_COMPONENT_AUX_FILES
    ignore = ignore + [f"{i}.index.*json" for i in ignore]
    return allow, ignore
