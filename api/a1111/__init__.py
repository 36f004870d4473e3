"""The AUTOMATIC1111 dialect (`/sdapi/v1/...`), for clients such as `webuiapi`.

A txt2img or img2img body is translated into the native fields and validated by
`params.parse_generation_request` (api/a1111/generation.py), so limits and messages match
the native API; txt2img's hires fix (`enable_hr`, hr_*) becomes the native `hires` object
(api/a1111/hires.py). Fields A1111 has but this server does not (face restoration,
scripts, override_settings...) are accepted, ignored and logged. batch_size x n_iter images
are made one after another with consecutive seeds, as A1111 does. An interrupt stops the
running image and the rest of its batch; the request then answers 200 with the images
finished before it (maybe none) and `"interrupted": true` in its info, as A1111 does. A skip
stops only the running image: the rest of its batch still runs.
"""
from api.a1111 import extras, hires, img2img, lists, options, routes  # noqa: F401  (routes)
from api.a1111.blueprint import bp, render_error

__all__ = ["bp", "render_error"]
