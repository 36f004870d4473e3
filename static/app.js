// The web page: submit a generation job, follow its progress and preview, show the result
// and the history. Plain ES modules, no build step, no network access beyond this server.
// The input image, the sign-in panel and the reading of /health live in their own modules.

import { CredentialPanel, PAGE_HEADER, authorization } from "./auth.js";
import { readEvents } from "./events.js";
import { HEALTH_SOON_MS, readHealth } from "./health.js";
import { Estimate } from "./estimate.js";
import { HiresFix, hiresSummary } from "./hires.js";
import { History } from "./history.js";
import { InputImage } from "./input-image.js";
import { LiveMode } from "./live.js";
import { Recipes } from "./recipes.js";

const POLL_MS = 1000;            // job progress and preview refresh, where streams fail
const RECONNECT_MS = 1000;       // a dropped event stream is opened again after this
const STREAM_ATTEMPTS = 3;       // streams dropped in a row (no event between) before polling
const HISTORY_LIMIT = 24;
const ACTIVE_JOB_STORAGE = "sd.activeJob";

const $ = (id) => document.getElementById(id);
const limits = JSON.parse(document.body.dataset.limits);
// URLs come from Flask's url_for, so the page also works under a path prefix.
const JOBS_URL = document.body.dataset.jobsUrl;
const HEALTH_URL = document.body.dataset.healthUrl;

const credentials = new CredentialPanel(limits, () => {
  showFormError("");
  loadHistory();
});
const inputImage = new InputImage(limits, showFormError);
const hires = new HiresFix(limits);
const live = new LiveMode($("live-offer"), $("live-mode"), $("live-hint"), generateLive);
const estimate = new Estimate($("estimate"), apiJson, document.body.dataset.estimateUrl,
                              (seconds) => live.offer(seconds));
const gallery = new History(document.querySelector(".gallery"), {
  api,
  fillForm: reuseSettings,
  useAsInput,
  onDeleted: () => loadRecent(),  // a deleted image's job leaves the recent list too
});

const state = {
  ready: false,
  submitting: false,    // POST /jobs in flight: no double submit
  activeJob: null,      // id of the job this page is following
  lastSeed: null,
  shownJob: null,       // the job whose result is on screen (for "reuse these settings")
  imageUrls: new Map(), // job id -> object URL of its finished PNG (fetched once)
  imageBlobs: new Map(), // job id -> that PNG, for "use as input image"
  previewUrl: null,
  previewStep: -1,
  previewLoading: false, // a preview fetch is in flight
  previewNext: null,     // the newest preview asked for meanwhile
  stream: null,          // AbortController of the open event stream
};

// ------------------------------------------------------------------ talking to the server

class ServerError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The page's own headers, with the credential when one is set. */
function requestHeaders(extra = {}) {
  const headers = new Headers(extra);
  headers.set(...PAGE_HEADER);
  const credential = authorization();
  if (credential) headers.set("Authorization", credential);
  return headers;
}

/** fetch() with the credential; a non-2xx answer throws ServerError carrying the server's message. */
async function api(path, options = {}) {
  const headers = requestHeaders(options.headers || {});
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ServerError(0, "network", "Cannot reach the server. Is it still running?");
  }
  if (response.ok) return response;
  let code = `http_${response.status}`;
  let message = `The server answered ${response.status} ${response.statusText}.`;
  try {
    const body = await response.json();
    code = body.error || code;
    message = body.message || message;
  } catch (_) { /* not JSON: keep the generic text */ }
  if (response.status === 401) message = credentials.needed(response.headers.get("WWW-Authenticate"));
  throw new ServerError(response.status, code, message);
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

/** An object URL for a PNG; images go through fetch because <img src> cannot send the key. */
async function blobUrl(path) {
  const blob = await (await api(path)).blob();
  return URL.createObjectURL(blob);
}

async function finishedImageUrl(job) {
  if (!state.imageUrls.has(job.id)) {
    const blob = await (await api(job.image_url)).blob();
    state.imageBlobs.set(job.id, blob);
    state.imageUrls.set(job.id, URL.createObjectURL(blob));
  }
  return state.imageUrls.get(job.id);
}

// ------------------------------------------------------------------ server health

function setServerStatus(kind, text) {
  const el = $("server-status");
  el.dataset.state = kind;
  el.textContent = text;
}

let healthTimer = null;
let healthChecking = false;

/** Ask /health, show what it says, and ask again: soon while not ready, rarely once ready. */
async function pollHealth() {
  if (healthChecking) return;  // an answer is already on its way: as fresh as a new one
  healthChecking = true;
  clearTimeout(healthTimer);
  let delay = HEALTH_SOON_MS;
  try {
    const response = await fetch(HEALTH_URL, { cache: "no-store",
                                               headers: [PAGE_HEADER] });
    const body = await response.json();
    showServerHint(body.hint);
    const health = readHealth(body);
    if (recipes.noteServed(body) && $("model").value === "") applyModelRecipe();
    setServerStatus(health.state, health.status);
    setReady(health.ready, health.why);
    delay = health.delay;
  } catch (_) {
    setServerStatus("error", "The server is not answering.");
    setReady(false, "Cannot reach the server; retrying…");
  }
  healthChecking = false;
  healthTimer = setTimeout(pollHealth, delay);
}

function showServerHint(text) {
  const el = $("server-hint");
  el.hidden = !text;
  el.textContent = text ? `Tip: ${text}.` : "";
}

// ------------------------------------------------------------------ speed presets

const PRESETS = JSON.parse(document.body.dataset.presets || "{}");
const recipes = new Recipes(limits, PRESETS, JSON.parse(document.body.dataset.models || "{}"),
                            JSON.parse(document.body.dataset.loraRecipes || "{}"));
const PRESET_WORDS = {
  cfg_cutoff: (v) => `guidance stops after ${Math.round(v * 100)} % of the steps`,
  deep_cache: (v) => `DeepCache every ${v} steps`,
  vae_decoder: (v) => (v === "tiny" ? "fast TAESD decode (softer detail)" : "full decode"),
};

/** Show what a preset changes and put its steps and sampler into the form (the model's
 * recipe, when it has one, wins: a one-step model stays at one step). */
function applyPreset(fill) {
  const name = $("speed_preset").value;
  const preset = PRESETS[name] || {};
  if (fill) {
    const values = recipes.values($("model").value, name);
    $("steps").value = values.steps;
    setSelect("scheduler", values.scheduler);
  }
  const parts = Object.entries(preset)
    .filter(([key]) => key in PRESET_WORDS)
    .map(([key, value]) => PRESET_WORDS[key](value));
  $("preset-hint").textContent = parts.length ?
    `${preset.steps} steps, ${preset.scheduler}; ${parts.join(", ")}. Changes the picture.` :
    "The model's full quality; the slowest.";
}

/** Put the chosen model's recipe (steps, sampler, guidance, size) into the form and say
 * whether its negative prompt does anything. */
function applyModelRecipe() {
  const choice = $("model").value;
  const values = recipes.values(choice, $("speed_preset").value);
  $("steps").value = values.steps;
  setSelect("scheduler", values.scheduler);
  $("guidance_scale").value = values.guidance_scale;
  if (!inputImage.size().width) {  // an input image decides the size itself
    setSelect("width", values.width);
    setSelect("height", values.height);
  }
  showNegativeHint(values.negativeUsed);
  $("model-recipe").textContent = recipes.describe(choice);
}

function showNegativeHint(used) {
  const hint = $("negative-hint");
  hint.hidden = used;
  hint.textContent = used ? "" : "This model runs without classifier-free guidance " +
    "(guidance 1 or less), so a negative prompt changes nothing.";
}

function setReady(ready, why) {
  const becameReady = ready && !state.ready;
  state.ready = ready;
  updateGenerateButton(why);
  if (becameReady) refreshEstimate();
}

/** Ask for the expected time of the form's current settings (once the server is ready). */
function refreshEstimate() {
  if (state.ready) estimate.update(requestFromForm());
}

function updateGenerateButton(why) {
  const button = $("generate");
  const busy = state.activeJob !== null || state.submitting;
  button.disabled = !state.ready || busy;
  button.textContent = busy ? "Generating…" : "Generate";
  const hint = $("generate-hint");
  if (!state.ready) {
    if (why) showText(hint, why);  // no reason given: keep the last one
  } else {
    hint.textContent = busy ? "Wait for this image or cancel it." : "Ctrl+Enter also generates.";
  }
}

// ------------------------------------------------------------------ the form

function updateCounter() {
  const length = $("prompt").value.length;
  const counter = $("prompt-count");
  counter.textContent = `${length} / ${limits.max_prompt_length}`;
  counter.classList.toggle("over", length > limits.max_prompt_length);
}

function syncSeedInput() {
  const random = $("seed-random").checked;
  $("seed").disabled = random;
  if (random) $("seed").value = "";
}

/** The JSON body for POST /jobs from the form's current values. */
function requestFromForm() {
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    steps: Number($("steps").value),
    guidance_scale: Number($("guidance_scale").value),
    ...inputImage.size(),
    scheduler: $("scheduler").value,
    speed_preset: $("speed_preset").value,
    seed: null,
  };
  if (!$("seed-random").checked && $("seed").value !== "") body.seed = Number($("seed").value);
  if ($("model").value) body.model = $("model").value;
  const withImage = { ...body, ...inputImage.fields() };
  return { ...withImage, ...hires.fields(withImage) };
}

/** Put a request's settings (and optionally its seed) back into the form. */
function fillForm(request, seed) {
  $("prompt").value = request.prompt || "";
  $("negative_prompt").value = request.negative_prompt || "";
  $("steps").value = request.steps;
  $("guidance_scale").value = request.guidance_scale;
  setSelect("width", request.width);
  setSelect("height", request.height);
  setSelect("scheduler", request.scheduler);
  inputImage.fill(request);
  hires.fill(request);
  if (request.speed_preset) {
    $("speed_preset").value = request.speed_preset;
    applyPreset(false);
  }
  if (seed !== null && seed !== undefined) {
    $("seed-random").checked = false;
    syncSeedInput();
    $("seed").value = seed;
  }
  updateCounter();
}

function setSelect(id, value) {
  const select = $(id);
  const text = String(value);
  // A size from another server's limits may not be listed; add it rather than drop it.
  if (![...select.options].some((o) => o.value === text)) {
    select.add(new Option(id === "scheduler" ? text : `${text} px`, text));
  }
  select.value = text;
}

function showFormError(message) {
  showText($("form-error"), message || "");
}

/** Show a server's text, its `backticked` commands as <code>; never parsed as HTML. */
function showText(el, text) {
  el.replaceChildren(...text.split("`").map((part, i) => {
    if (i % 2 === 0) return part;
    const code = document.createElement("code");
    code.textContent = part;
    return code;
  }));
}

async function submitForm(event) {
  event?.preventDefault();
  if ($("generate").disabled) return;
  await submit(requestFromForm());
}

/** Live mode: submit the form's settings now (with live mode's seed unless one is set),
 * cancelling the job this page follows first, so superseded images never wait in line. */
async function generateLive(seed) {
  if (!state.ready || !$("prompt").value.trim()) return;
  if (state.submitting) {  // the previous submit is in flight: try again after a pause
    live.changed();
    return;
  }
  const superseded = state.activeJob;
  if (superseded) {
    stopFollowing();
    try {
      await apiJson(`${JOBS_URL}/${superseded}/cancel`, { method: "POST" });
    } catch (_) { /* it finished meanwhile: nothing to cancel */ }
  }
  const body = requestFromForm();
  if (body.seed === null) body.seed = seed;
  await submit(body);
}

/** POST one job body and follow the job, or say why the server refused it. */
async function submit(body) {
  showFormError("");
  state.submitting = true;
  updateGenerateButton();
  try {
    const job = await apiJson(JOBS_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    state.submitting = false;
    follow(job);
  } catch (err) {
    state.submitting = false;
    showFormError(err.message);
    updateGenerateButton();
    // 503: the workers or Redis went away since the last look; show it now, not in 15 s.
    if (err.status === 503) pollHealth();
  }
}

// ------------------------------------------------------------------ following a job

function follow(job) {
  state.activeJob = job.id;
  state.previewStep = -1;
  state.previewNext = null;
  localStorage.setItem(ACTIVE_JOB_STORAGE, job.id);
  $("progress-panel").hidden = false;
  $("preview").hidden = true;
  $("cancel").disabled = false;
  $("cancel").textContent = "Cancel";
  updateGenerateButton();
  showProgress(job);
  // On a phone the panel is below the form; bring it on screen (no-op when already visible).
  $("progress-panel").scrollIntoView({ block: "nearest" });
  watchJob(job.id);
}

/** Follow a job by its event stream (pushed, no polling); a dropped stream is opened again,
 * and where streams fail (refused: too many open, or a proxy that breaks them) the page polls. */
async function watchJob(id) {
  let dropped = 0;
  while (state.activeJob === id) {
    const controller = new AbortController();
    state.stream = controller;
    const result = await readEvents(`${JOBS_URL}/${id}/events`, requestHeaders(),
                                    (name, data) => onJobEvent(id, name, data),
                                    controller.signal);
    if (state.stream === controller) state.stream = null;
    if (result.outcome === "finished" || result.outcome === "closed") return;
    if (result.outcome === "refused") break;  // polling then says why, or just works
    dropped = result.events > 0 ? 1 : dropped + 1;
    if (dropped >= STREAM_ATTEMPTS) break;
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
  if (state.activeJob === id) poll(id);
}

function onJobEvent(id, name, data) {
  if (state.activeJob !== id) return;
  if (name === "queued" || name === "progress") showProgress(data);
  else if (name === "preview") refreshPreview(data);
  else if (name === "finished") finishFollowing(data);
}

async function poll(id) {
  if (state.activeJob !== id) return;
  let job;
  try {
    job = await apiJson(`${JOBS_URL}/${id}`);
  } catch (err) {
    if (err.status === 404) {  // forgotten by the server (restart or retention)
      stopFollowing();
      showFormError(err.message);
      return;
    }
    $("progress-text").textContent = err.message;
    setTimeout(() => poll(id), POLL_MS * 2);
    return;
  }
  showProgress(job);
  if (job.state === "running" && job.step > 0 && job.step !== state.previewStep) {
    await refreshPreview(job);
  }
  if (["succeeded", "failed", "cancelled"].includes(job.state)) {
    await finishFollowing(job);
    return;
  }
  setTimeout(() => poll(id), POLL_MS);
}

async function finishFollowing(job) {
  stopFollowing();
  await showResult(job);
  $("result-panel").scrollIntoView({ block: "nearest" });
  loadHistory();
  refreshEstimate();  // that image measured its kind's pace
}

function stopFollowing() {
  state.stream?.abort();
  state.stream = null;
  state.activeJob = null;
  localStorage.removeItem(ACTIVE_JOB_STORAGE);
  $("progress-panel").hidden = true;
  updateGenerateButton();
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

function showProgress(job) {
  const bar = $("progress");
  const text = $("progress-text");
  if (job.state === "queued") {
    bar.removeAttribute("value");  // indeterminate while waiting
    const ahead = job.queue_position ? `position ${job.queue_position} in the queue` : "queued";
    const eta = job.eta_seconds ? ` · about ${formatSeconds(job.eta_seconds)} until done` : "";
    text.textContent = `Waiting: ${ahead}${eta}`;
    return;
  }
  bar.value = job.progress || 0;
  if (job.state === "running") {
    if (job.step === 0) {
      text.textContent = `Starting (${job.total_steps} steps)…`;
    } else {
      const eta = job.eta_seconds !== null ? ` · about ${formatSeconds(job.eta_seconds)} left` : "";
      // A job whose worker or server died goes on from its checkpoint: say so.
      const resumed = job.resumed_at_step ? ` · resumed at step ${job.resumed_at_step}` : "";
      text.textContent = `Step ${job.step} of ${job.total_steps}${resumed}${eta}`;
    }
  }
}

/** Show the preview of `job.step`; one fetch at a time, the newest step asked for next. */
async function refreshPreview(job) {
  if (state.previewLoading) {
    state.previewNext = job;
    return;
  }
  state.previewLoading = true;
  try {
    const url = await blobUrl(job.preview_url);
    const img = $("preview");
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = url;
    state.previewStep = job.step;
    img.src = url;
    img.hidden = false;
  } catch (_) { /* 409 before the first step, or the job just ended: the next step tries again */ }
  state.previewLoading = false;
  const next = state.previewNext;
  state.previewNext = null;
  if (next && state.activeJob && next.step > state.previewStep) refreshPreview(next);
}

async function cancelActive() {
  const id = state.activeJob;
  if (!id) return;
  const button = $("cancel");
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    showProgress(await apiJson(`${JOBS_URL}/${id}/cancel`, { method: "POST" }));
  } catch (err) {
    button.disabled = false;
    button.textContent = "Cancel";
    $("progress-text").textContent = err.message;
  }
}

// ------------------------------------------------------------------ results and history

/** A file name a person recognises: the prompt's first words plus the seed. */
function downloadName(job) {
  const slug = (job.request?.prompt || "image")
    .toLowerCase()
    .normalize("NFKD")
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 48)
    .replace(/-+$/, "");
  return `${slug || "image"}-${job.seed}.png`;
}

function paramRows(job) {
  const r = job.request || {};
  const rows = [
    ["Seed", job.seed],
    ["Steps", r.steps],
    ["Size", `${r.width}×${r.height}`],
    ["Sampler", r.scheduler === "default" ? "model default" : r.scheduler],
    ["Guidance", r.guidance_scale],
  ];
  if (r.init_image) {
    const what = r.mask_image ? "inpainting" : "image to image";
    rows.push(["Input", `${r.init_image.width}×${r.init_image.height} image, ${what}, ` +
                        `strength ${r.strength}`]);
  }
  if (r.hires) rows.push(["Hires fix", hiresSummary(r.hires)]);
  const speed = [];
  if (r.cfg_cutoff !== undefined && r.cfg_cutoff < 1) speed.push(`CFG cutoff ${r.cfg_cutoff}`);
  if (r.deep_cache > 1) speed.push(`DeepCache ${r.deep_cache}`);
  if (r.vae_decoder === "tiny") speed.push("TAESD decode");
  if (speed.length) rows.push(["Speed", `${r.speed_preset}: ${speed.join(", ")}`]);
  if (job.seconds !== null && job.seconds !== undefined) rows.push(["Time", `${job.seconds} s`]);
  return rows;
}

async function showResult(job) {
  state.shownJob = job;
  if (job.seed !== null && job.seed !== undefined) {
    state.lastSeed = job.seed;
    $("reuse-seed").disabled = false;
  }
  const panel = $("result-panel");
  panel.hidden = false;
  panel.dataset.state = job.state;
  const message = $("result-message");
  const figure = $("result-figure");
  const download = $("download");
  const params = $("result-params");
  params.replaceChildren();
  for (const [name, value] of paramRows(job)) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    params.append(dt, dd);
  }
  if (job.state !== "succeeded") {
    message.textContent = job.state === "cancelled"
      ? `Cancelled${job.error ? `: ${job.error}` : "."}`
      : `Failed: ${job.error || "the generation failed."}`;
    message.className = job.state === "failed" ? "notice error" : "notice";
    figure.hidden = false;
    $("result-image").hidden = true;
    download.hidden = true;
    $("use-as-input").hidden = true;
    return;
  }
  message.textContent = job.nsfw ? "The safety checker blanked this image." : "";
  message.className = "notice";
  try {
    const url = await finishedImageUrl(job);
    const img = $("result-image");
    img.src = url;
    img.alt = `Generated image: ${job.request?.prompt || ""}`;
    img.hidden = false;
    figure.hidden = false;
    download.href = url;
    download.download = downloadName(job);
    download.hidden = false;
    $("use-as-input").hidden = false;
  } catch (err) {
    message.textContent = err.message;
    message.className = "notice error";
  }
}

/** Both lists: the jobs the server holds, and every kept image (history.js). */
function loadHistory() {
  gallery.load();
  return loadRecent();
}

async function loadRecent() {
  let jobs;
  try {
    ({ jobs } = await apiJson(`${JOBS_URL}?limit=${HISTORY_LIMIT}`));
  } catch (err) {
    $("history-empty").textContent = err.status === 401
      ? `Enter the ${credentials.mode === "basic" ? "user name and password" : "API key"} to see recent images.`
      : `Could not load recent images: ${err.message}`;
    $("history-empty").hidden = false;
    return [];
  }
  forgetImagesExcept(new Set(jobs.map((j) => j.id)));
  // After a reload "Use last seed" means the newest finished image's seed.
  const newest = jobs.find((j) => j.state === "succeeded");
  if (state.lastSeed === null && newest) {
    state.lastSeed = newest.seed;
    $("reuse-seed").disabled = false;
  }
  const list = $("history");
  const items = await Promise.all(jobs.filter((j) => j.state !== "queued" && j.state !== "running")
    .map(historyItem));
  list.replaceChildren(...items);
  $("history-empty").hidden = items.length > 0;
  $("history-empty").textContent = "Nothing yet.";
  return jobs;
}

/** Release the object URLs of images the server no longer lists (long sessions). */
function forgetImagesExcept(keep) {
  for (const [id, url] of state.imageUrls) {
    if (!keep.has(id) && id !== state.shownJob?.id) {
      URL.revokeObjectURL(url);
      state.imageUrls.delete(id);
      state.imageBlobs.delete(id);
    }
  }
}

async function historyItem(job) {
  const li = document.createElement("li");
  li.className = "history-item";
  li.dataset.state = job.state;
  li.dataset.jobId = job.id;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "history-button";
  const prompt = job.request?.prompt || "";
  button.setAttribute("aria-label", `Show ${job.state} image: ${prompt} (seed ${job.seed})`);
  if (job.state === "succeeded") {
    const img = document.createElement("img");
    img.alt = "";
    img.loading = "lazy";
    try {
      img.src = await finishedImageUrl(job);
    } catch (_) { /* forgotten meanwhile: keep the text */ }
    button.append(img);
  } else {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = job.state;
    button.append(badge);
  }
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = prompt;
  button.append(caption);
  button.addEventListener("click", async () => {
    await showResult(job);
    $("result-panel").scrollIntoView({ block: "nearest" });
    $("result-title").focus();
  });
  li.append(button);
  return li;
}

// ------------------------------------------------------------------ start

async function resumeActiveJob() {
  const id = localStorage.getItem(ACTIVE_JOB_STORAGE);
  if (!id) return;
  try {
    const job = await apiJson(`${JOBS_URL}/${id}`);
    if (job.state === "queued" || job.state === "running") follow(job);
    else localStorage.removeItem(ACTIVE_JOB_STORAGE);
  } catch (_) {
    localStorage.removeItem(ACTIVE_JOB_STORAGE);
  }
}

/** The shown result becomes the input image of the next request. */
async function useResultAsInput() {
  const job = state.shownJob;
  const blob = job && state.imageBlobs.get(job.id);
  if (blob) await useAsInput(blob, downloadName(job));
}

/** A finished image's settings into the form, the advanced ones shown; the focus goes to
 * the prompt. */
function reuseSettings(request, seed) {
  fillForm(request, seed);
  $("advanced").open = true;
  $("prompt").focus();
}

/** A PNG this page holds becomes the input image; the focus goes to it. */
async function useAsInput(blob, name) {
  await inputImage.useBlob(blob, name);
  $("init-image-group").scrollIntoView({ block: "nearest" });
  $("init-image-zone").focus();
}

/** Append the chosen LoRA to the prompt as A1111's <lora:name:weight> tag; a few-step
 * LoRA's recipe (steps, sampler, guidance) goes into the form too. */
function addLoraToPrompt() {
  const prompt = $("prompt");
  const name = $("lora").value;
  const tag = `<lora:${name}:1>`;
  if (!prompt.value.includes(`<lora:${name}:`)) {
    prompt.value = `${prompt.value.trimEnd()} ${tag}`.trimStart();
    updateCounter();
  }
  const recipe = recipes.lora(name);
  if (recipe.steps !== undefined) $("steps").value = recipe.steps;
  if (recipe.scheduler) setSelect("scheduler", recipe.scheduler);
  if (recipe.guidance_scale !== undefined) {
    $("guidance_scale").value = recipe.guidance_scale;
    showNegativeHint(recipe.guidance_scale > 1);
  }
  prompt.focus();
}

function init() {
  $("result-title").tabIndex = -1;  // focus target after picking a history item
  $("form").addEventListener("submit", submitForm);
  $("speed_preset").addEventListener("change", () => applyPreset(true));
  $("model").addEventListener("change", applyModelRecipe);
  // After the listeners above (they fill the form from a preset or a model's recipe).
  $("form").addEventListener("change", refreshEstimate);
  $("form").addEventListener("input", refreshEstimate);
  $("form").addEventListener("input", () => live.changed());
  applyPreset(limits.default_preset !== "quality");
  $("prompt").addEventListener("input", updateCounter);
  $("seed-random").addEventListener("change", () => {
    syncSeedInput();
    if (!$("seed-random").checked) $("seed").focus();
  });
  $("reuse-seed").addEventListener("click", () => {
    if (state.lastSeed === null) return;
    $("seed-random").checked = false;
    syncSeedInput();
    $("seed").value = state.lastSeed;
  });
  $("cancel").addEventListener("click", cancelActive);
  $("reuse").addEventListener("click", () => {
    const job = state.shownJob;
    if (job) reuseSettings(job.request, job.seed);
  });
  $("use-as-input").addEventListener("click", useResultAsInput);
  $("lora-add")?.addEventListener("click", addLoraToPrompt);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("form").requestSubmit();
    }
  });
  updateCounter();
  syncSeedInput();
  pollHealth();
  loadHistory();
  resumeActiveJob();
}

init();
