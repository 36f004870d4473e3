"""The one batch builder: requests queued together become Jobs that know their batch, each
with its seed and the request as the engine will really run it."""
from __future__ import annotations

from jobs.job import Job, random_seed
from params import GenerationRequest


def build_batch(requests: list[GenerationRequest], client: str, created_at: float,
                tiny_decoder: bool, kind: str = "generate") -> list[Job]:
    """One Job per request, in order, sharing the first job's id as their batch id (A1111's
    /progress counts a batch); a request without a seed gets a fresh random one.

    `tiny_decoder` is whether the engine has TAESD: without it a 'tiny' decode runs the full
    VAE, and the job says so from the start (the page and the job JSON never claim an
    option that did not run)."""
    jobs: list[Job] = []
    for index, request in enumerate(requests):
        request = request.as_run(tiny_decoder)
        seed = request.seed if request.seed is not None else random_seed()
        job = Job(request=request, seed=seed, client=client, created_at=created_at,
                  batch_index=index, batch_size=len(requests), kind=kind)
        job.batch_id = jobs[0].id if jobs else job.id
        jobs.append(job)
    return jobs
