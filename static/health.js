// What GET /health says, in the user's words: the status line, why Generate is off, and when
// to ask again. Pure functions of the /health body; app.js fetches it and updates the page.
// Under QUEUE_BACKEND=redis the web process has no model: "no_workers" and "unhealthy"
// (Redis unreachable) are states a person fixes by starting something, so the page keeps
// asking and turns Generate on by itself once they are fixed.

// While not ready (loading, no worker, no Redis): notice "ready" within a couple of seconds.
export const HEALTH_SOON_MS = 1500;
// Once ready, or after a failed model load that only a restart fixes: notice a change.
export const HEALTH_LATER_MS = 15000;

/** The page's reading of a /health body: { state, status, why, ready, delay }, where state
 * is the status line's colour (ready, loading, error) and why explains a disabled Generate. */
export function readHealth(body) {
  const soon = { ready: false, delay: HEALTH_SOON_MS };
  const withAdvice = (what) => `${what}${body.advice ? `: ${body.advice}` : ""}.`;
  switch (body.status) {
    case "healthy": {
      const q = body.queue || {};
      return { state: "ready", ready: true, delay: HEALTH_LATER_MS, why: "",
               status: body.switching ? `Switching to ${body.switching.to}…` :
                 `Ready · ${modelLabel(body)} · ${body.dtype || ""} · ${q.waiting || 0} waiting` };
    }
    case "loading":
      return { ...soon, state: "loading", status: loadingText(body),
               why: "The model is still loading; Generate turns on when it is ready." };
    case "no_workers":
      return { ...soon, ...noWorkerText(body.workers || [], withAdvice) };
    case "unhealthy":
      if (body.backend === "redis") {  // the only redis "unhealthy": Redis does not answer
        const where = body.redis ? ` at ${body.redis}` : "";
        return { ...soon, state: "error", status: "Redis cannot be reached",
                 why: withAdvice(`Redis cannot be reached${where}`) };
      }
      if ((body.queue || {}).worker_error) {  // the model may be fine: the worker is gone
        return { state: "error", status: "The generation worker stopped.", ready: false,
                 why: body.error || "The generation worker stopped; restart the server.",
                 delay: HEALTH_LATER_MS };
      }
      return { state: "error", status: "The model failed to load.", ready: false,
               why: body.error || "The model failed to load; see the server log.",
               delay: HEALTH_LATER_MS };
    case "shutting_down":
      return { ...soon, state: "error", status: "The server is shutting down.",
               why: body.message || "The server is shutting down." };
    default:  // a newer server's state: say what it says rather than guess
      return { ...soon, state: "error", status: "The server is not ready.",
               why: body.error || body.message || `The server reports "${body.status}".` };
  }
}

/** The served model as A1111 shows it: its name, and its short hash when it is one file. */
function modelLabel(body) {
  return body.model_hash ? `${body.model} [${body.model_hash}]` : body.model;
}

/** No worker has a loaded model: none started, some still loading, or all failed. */
function noWorkerText(workers, withAdvice) {
  const loading = workers.find((w) => w.state === "loading");
  if (loading) {
    const phase = loading.phase ? ` (${loading.phase})` : "";
    return { state: "loading", status: `A worker is loading the model${phase}…`,
             why: "No worker is ready yet; Generate turns on when one has loaded the model." };
  }
  if (workers.length) {
    return { state: "error", status: "No worker could load the model",
             why: withAdvice("No worker has a loaded model (see the workers' logs)") };
  }
  return { state: "error", status: "No worker is running",
           why: withAdvice("No worker is running") };
}

/** What the model load is doing, with figures when a long phase reports them. */
function loadingText(body) {
  const p = body.progress;
  const phase = body.phase || "loading";
  if (p && p.bytes_total) {
    const gb = (n) => (n / 1e9).toFixed(1);
    const eta = p.eta_seconds ? `, about ${formatDuration(p.eta_seconds)} left` : "";
    const what = phase === "downloading" ? "Downloading the model" :
      phase.startsWith("converting") ? "Writing the bfloat16 weights (first start only)" : phase;
    const files = p.files_total ? ` (${p.files_done} of ${p.files_total} files)` : "";
    return `${what}: ${gb(p.bytes_done)} of ${gb(p.bytes_total)} GB${eta}${files}`;
  }
  if (phase === "probing precision") return "The model is loading (measuring this CPU first)…";
  if (phase === "downloading") return "Downloading the model…";
  return "Loading the model into memory…";
}

function formatDuration(seconds) {
  return seconds >= 90 ? `${Math.round(seconds / 60)} min` : `${Math.round(seconds)} s`;
}
