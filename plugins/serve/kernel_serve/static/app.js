// The kernel serve page: a form over POST /api/generate, progress from /api/jobs/{id}/events, history
// from /api/jobs. No build step and no outside files: it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["prompt", "negative_prompt", "sampler", "model", "steps", "guidance", "seed", "batch", "width", "height"];
const NUMBERS = new Set(["steps", "guidance", "seed", "batch", "width", "height"]);
const FINISHED = new Set(["done", "failed", "cancelled"]);
const HISTORY_PAGE = 24;
let token = localStorage.getItem("kernel-serve-token") || "";
let current = null; // the job the page is following
let historyShown = HISTORY_PAGE;

// ---------------------------------------------------------------- requests
function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs a token");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const error = new Error(body?.detail || `${response.status} ${response.statusText}`);
    error.field = body?.field;
    throw error;
  }
  return body;
}

// Pictures need the token too when there is one, so they are fetched and shown from blobs.
const blobs = new Map();
async function pictureUrl(url) {
  if (!token) return url;
  if (!blobs.has(url)) {
    const response = await fetch(url, { headers: headers() });
    blobs.set(url, URL.createObjectURL(await response.blob()));
  }
  return blobs.get(url);
}

function picture(url, alt) {
  const img = document.createElement("img");
  img.alt = alt;
  pictureUrl(url).then((src) => { img.src = src; });
  return img;
}

// ---------------------------------------------------------------- the form
function readForm() {
  const body = {};
  for (const name of FIELDS) {
    const value = $(name).value.trim();
    if (value === "") continue;
    body[name] = NUMBERS.has(name) ? Number(value) : value;
  }
  if (body.negative_prompt === undefined) body.negative_prompt = "";
  return body;
}

function fillForm(params, index = 0) {
  for (const name of FIELDS) {
    let value = params[name];
    if (name === "seed") value = params.seed + index; // picture k of a batch has seed + k
    if (name === "batch") value = 1;
    if (value === undefined || value === null) continue;
    if ($(name).tagName === "SELECT" && ![...$(name).options].some((o) => o.value === String(value))) {
      $(name).add(new Option(value, value));
    }
    $(name).value = value;
  }
  $("prompt").focus();
}

function showError(error) {
  document.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
  $("error").hidden = !error;
  if (!error) return;
  $("error").textContent = error.message;
  if (error.field && $(error.field)) $(error.field).classList.add("invalid");
}

async function generate(event) {
  event.preventDefault();
  showError(null);
  $("generate").disabled = true;
  try {
    const job = await api("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(readForm()),
    });
    follow(job);
    loadHistory();
  } catch (error) {
    showError(error);
  } finally {
    $("generate").disabled = false;
  }
}

// ---------------------------------------------------------------- following a job
function showJob(job) {
  const running = !FINISHED.has(job.status);
  $("status").textContent = job.status === "queued" && job.position ? `queued (${job.position} ahead)` :
    job.status + (job.error ? `: ${job.error}` : "");
  $("status").dataset.status = job.status;
  $("percent").textContent = `${Math.round(job.progress * 100)}%`;
  $("progress").value = job.progress;
  $("cancel").disabled = !running;
  const result = $("result");
  if (result.dataset.job !== job.id || result.children.length !== job.images.length) {
    result.replaceChildren(...job.images.map((url, k) => picture(url, `${job.params.prompt} (${k + 1})`)));
    result.dataset.job = job.id;
  }
  $("result-params").textContent = job.parameters.length ? job.parameters.join("\n\n") :
    `${job.params.prompt}\nSteps: ${job.params.steps}, Sampler: ${job.params.sampler}, CFG scale: ${job.params.guidance}, ` +
    `Seed: ${job.params.seed}, Size: ${job.params.width}x${job.params.height}, Model: ${job.params.model}`;
}

async function follow(job) {
  current = job.id;
  showJob(job);
  try {
    await streamEvents(job.id);
  } catch (error) {
    await poll(job.id); // no streaming (a proxy that buffers): ask every half second
  }
  if (current === job.id) loadHistory();
}

// Server-sent events read through fetch, so the Authorization header goes with them.
async function streamEvents(id) {
  const response = await fetch(`/api/jobs/${id}/events`, { headers: headers() });
  if (!response.ok || !response.body) throw new Error("no event stream");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = message.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (data && current === id) showJob(JSON.parse(data));
    }
  }
}

async function poll(id) {
  for (;;) {
    const job = await api(`/api/jobs/${id}`);
    if (current === id) showJob(job);
    if (FINISHED.has(job.status)) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function cancel(id) {
  try {
    const job = await api(`/api/jobs/${id}`, { method: "DELETE" });
    if (current === id) showJob(job);
  } catch (error) {
    showError(error);
  }
  loadHistory();
}

// ---------------------------------------------------------------- history
function card(job) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.job = job.id;
  div.dataset.status = job.status;
  const pictures = job.images.length ? job.images : [null];
  pictures.forEach((url, k) => {
    if (url) {
      const img = picture(url, job.params.prompt);
      img.title = job.parameters[k] || "";
      img.addEventListener("click", () => { current = job.id; showJob(job); });
      div.append(img);
    }
  });
  const prompt = document.createElement("div");
  prompt.className = "prompt";
  prompt.textContent = job.params.prompt;
  const meta = document.createElement("div");
  meta.className = "meta";
  const badge = document.createElement("span");
  badge.className = `badge ${job.status}`;
  badge.textContent = job.status;
  meta.append(badge, ` ${job.params.steps} steps · seed ${job.params.seed} · ${job.params.width}x${job.params.height}`);
  const buttons = document.createElement("div");
  buttons.className = "buttons";
  (job.images.length ? job.images : [null]).forEach((_, k) => {
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "reuse";
    reuse.textContent = job.images.length > 1 ? `Reuse #${k + 1}` : "Reuse";
    reuse.title = "put these parameters in the form";
    reuse.addEventListener("click", () => fillForm(job.params, k));
    buttons.append(reuse);
  });
  if (!FINISHED.has(job.status)) {
    const stop = document.createElement("button");
    stop.type = "button";
    stop.className = "cancel";
    stop.textContent = "Cancel";
    stop.addEventListener("click", () => cancel(job.id));
    buttons.append(stop);
  }
  div.append(prompt, meta, buttons);
  return div;
}

async function loadHistory() {
  try {
    const page = await api(`/api/jobs?limit=${historyShown}`);
    $("history").replaceChildren(...page.jobs.map(card));
    $("more").hidden = page.total <= page.jobs.length;
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------- start
async function start() {
  try {
    const [config, samplers, models] = await Promise.all([api("/api/config"), api("/api/samplers"), api("/api/models")]);
    $("token-box").hidden = true;
    $("steps").max = config.limits.max_steps;
    $("batch").max = config.limits.max_batch;
    $("width").max = $("height").max = config.limits.max_size;
    $("steps").value = config.defaults.steps;
    $("guidance").value = config.defaults.guidance;
    $("server-info").textContent = `${config.devices.join(", ")} · model ${config.defaults.model}`;
    $("sampler").replaceChildren(new Option("model default", ""), ...samplers.samplers.map((s) => new Option(s, s)));
    $("model").replaceChildren(...models.models.map((m) => new Option(m.name, m.name, m.default, m.default)));
    await loadHistory();
  } catch (error) {
    showError(error);
  }
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", () => current && cancel(current));
$("refresh").addEventListener("click", loadHistory);
$("more").addEventListener("click", () => { historyShown += HISTORY_PAGE; loadHistory(); });
$("token-save").addEventListener("click", () => {
  token = $("token").value.trim();
  localStorage.setItem("kernel-serve-token", token);
  start();
});
start();
