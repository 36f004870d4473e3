"""The job API: submit, poll, preview, fetch, cancel and list generations."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from api import ApiError, json_body, may_see, services, submit
from api.core import parse_or_400
from api.openapi import doc
from params import IMAGE_FIELDS

bp = Blueprint("jobs", __name__)

JOB_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "state": {"type": "string", "enum": [
        "queued", "running", "succeeded", "failed", "cancelled"]},
    "step": {"type": "integer"}, "total_steps": {"type": "integer"},
    "progress": {"type": "number"}, "eta_seconds": {"type": "number", "nullable": True},
    "queue_position": {"type": "integer", "nullable": True}, "seed": {"type": "integer"},
    "created_at": {"type": "string"}, "started_at": {"type": "string", "nullable": True},
    "finished_at": {"type": "string", "nullable": True},
    "error": {"type": "string", "nullable": True}}}


def job_or_404(job_id: str):
    """The job, or 404 JSON if unknown or no longer retained."""
    job = services().queue.get(job_id)
    if job is None or not may_see(job):  # another user's job: as if it did not exist
        raise ApiError(404, "not_found", f"no job {job_id!r}: it never existed or was "
                       "forgotten after JOB_RETENTION_SECONDS / JOB_RETENTION_COUNT")
    return job


def job_json(job) -> dict:
    """A job's state plus the links a client follows."""
    body = services().queue.snapshot(job)
    body["status_url"] = url_for("jobs.get_job", job_id=job.id)
    body["image_url"] = url_for("jobs.job_image", job_id=job.id)
    body["preview_url"] = url_for("jobs.job_preview", job_id=job.id)
    return body


@bp.post("/jobs")
@doc("Queue a generation and return at once (202) with its status URL.",
     request="generation", responses={202: JOB_SCHEMA},
     errors=(400, 401, 413, 415, 429, 503), tags=("jobs",))
def create_job():
    """Queue a job; answer 202 with its id, state, queue position and status URL."""
    job = submit(parse_or_400(json_body(IMAGE_FIELDS)))
    body = job_json(job)
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = body["status_url"]
    return response


@bp.get("/jobs")
@doc("Recent jobs, newest first (finished ones are kept for a bounded time and count).",
     responses={200: {"type": "object", "properties": {"jobs": {
         "type": "array", "items": JOB_SCHEMA}}}}, errors=(401,), tags=("jobs",))
def list_jobs():
    """List retained jobs, newest first."""
    raw = request.args.get("limit")
    try:
        limit = None if raw is None else int(raw)
    except ValueError:
        limit = 0
    if limit is not None and limit < 1:
        raise ApiError(400, "invalid_field", f"'limit' must be a positive integer (got {raw!r})")
    jobs = [j for j in services().queue.recent() if j.kind == "generate" and may_see(j)]
    return jsonify({"jobs": [job_json(j) for j in jobs[:limit]]})  # switches make no image


@bp.get("/jobs/<job_id>")
@doc("A job's state, progress and ETA.", responses={200: JOB_SCHEMA}, errors=(401, 404),
     tags=("jobs",))
def get_job(job_id: str):
    """Poll one job."""
    return jsonify(job_json(job_or_404(job_id)))


@bp.get("/jobs/<job_id>/image")
@doc("The finished PNG (409 until the job has succeeded).", responses={200: "image/png"},
     errors=(401, 404, 409), tags=("jobs",))
def job_image(job_id: str):
    """The job's PNG, or 409 while it is not finished / did not succeed."""
    job = job_or_404(job_id)
    if job.png is None:
        state = job.state.value
        detail = f": {job.error}" if job.error else "; poll its status_url until 'succeeded'"
        raise ApiError(409, "not_ready" if not job.state.finished else state,
                       f"job {job_id} is {state}{detail}")
    services().queue.mark_delivered(job)
    download = request.args.get("download")
    response = Response(job.png, mimetype="image/png")
    name = f"{job.seed}-{job.id}.png"
    response.headers["Content-Disposition"] = (f'{"attachment" if download else "inline"}; '
                                               f'filename="{name}"')
    response.headers["X-Seed"] = str(job.seed)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get("/jobs/<job_id>/preview")
@doc("A small PNG of the current latents (cheap linear latent-to-RGB map), updated every step.",
     responses={200: "image/png"}, errors=(401, 404, 409), tags=("jobs",))
def job_preview(job_id: str):
    """The live preview, or the final image once done; 409 before the first step."""
    job = job_or_404(job_id)
    queue = services().queue
    png = queue.preview(job)  # the final image once the job has succeeded
    if png is None:
        raise ApiError(409, "no_preview", f"job {job_id} has no preview yet (state "
                       f"{job.state.value}); one appears after the first step")
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Step"] = str(job.step)
    return response


@bp.post("/jobs/<job_id>/cancel")
@doc("Cancel: a queued job leaves the queue, a running one stops within one step.",
     responses={200: JOB_SCHEMA}, errors=(401, 404), tags=("jobs",))
def cancel_job(job_id: str):
    """Cancel a job (finished jobs are returned unchanged)."""
    job_or_404(job_id)
    job = services().queue.cancel(job_id)
    return jsonify(job_json(job))


@bp.delete("/jobs/<job_id>")
@doc("Same as POST /jobs/{job_id}/cancel.", responses={200: JOB_SCHEMA}, errors=(401, 404),
     tags=("jobs",))
def delete_job(job_id: str):
    """Cancel a job (alias)."""
    return cancel_job(job_id)
