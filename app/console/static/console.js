// kilotask console: one page over the REST API. Every call carries the API key the user signed
// in with (kept in sessionStorage, sent only as a bearer header). Everything that came from a
// user or the API is put in the page as text (textContent, setAttribute), never as HTML.
"use strict";

const KEY = "kilotask.key";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const METHODS = ["said", "did", "lowrank", "full"];

// ---------- DOM helpers ----------

/** An element with attributes (on* keys are listeners) and children (strings become text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fmt = (x, digits = 4) =>
  typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(digits)) : String(x ?? "");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const short = (id) => String(id ?? "");

function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

/** Held-out metrics (eval_*) and the relative generalisation gap (train - eval) / (1 - eval). */
function metricsText(metrics) {
  const m = metrics || {};
  const shown = Object.entries(m).filter(([k, v]) => k.startsWith("eval_") && typeof v === "number");
  const parts = shown.map(([k, v]) => `${k.slice(5)} ${fmt(v)}`);
  if (typeof m.gap === "number") parts.push(`gap ${fmt(m.gap, 3)}`);
  if (m.degenerate) parts.push("DEGENERATE: no better than a constant prediction (train longer, raise d, or try another learning rate)");
  return parts.join(", ");
}

function trainMetricsText(metrics) {
  const shown = Object.entries(metrics || {}).filter(([k, v]) => k.startsWith("train_") && typeof v === "number");
  return shown.map(([k, v]) => `${k.slice(6)} ${fmt(v)}`).join(", ");
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", json, form, raw = false } = {}) {
  const key = sessionStorage.getItem(KEY);
  if (!key) throw new ApiError(401, "signed_out", "sign in with an API key first");
  const headers = { Authorization: `Bearer ${key}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "unreachable", `the server did not answer (${err.message})`);
  }
  if (!response.ok) {
    let error = {};
    try {
      error = (await response.json()).error || {};
    } catch (_) {
      /* not JSON: keep the status text */
    }
    const failure = new ApiError(response.status, error.code || `http_${response.status}`,
      error.message || response.statusText);
    if (response.status === 401) signOut(failure.message);
    throw failure;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

// ---------- pages and routing ----------

let page = { alive: false };

/** Call fn now and every `ms` while the page is shown, until it returns "stop". */
function poll(ctx, ms, fn, status) {
  const tick = async () => {
    if (!ctx.alive) return;
    let result;
    try {
      result = await fn();
      if (status) status.textContent = "";
    } catch (err) {
      if (status) status.textContent = `Could not refresh: ${err.message}`;
    }
    if (ctx.alive && result !== "stop") ctx.timer = setTimeout(tick, ms);
  };
  tick();
}

const ROUTES = [
  [/^#\/jobs\/([^/]+)$/, jobPage],
  [/^#\/jobs$/, jobsPage],
  [/^#\/new$/, newJobPage],
  [/^#\/tasks$/, tasksPage],
  [/^#\/playground(?:\/([^/]*))?$/, playgroundPage],
  [/^#\/d90\/([^/]+)$/, searchPage],
  [/^#\/d90$/, searchesPage],
  [/^#\/serving$/, servingPage],
];

function render() {
  page.alive = false;
  clearTimeout(page.timer);
  const root = document.getElementById("main");
  root.replaceChildren();
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  if (!signedIn) {
    signInPage(root);
    return;
  }
  const hash = location.hash || "#/jobs";
  for (const a of document.querySelectorAll("#nav a")) {
    const current = hash === a.getAttribute("href") || hash.startsWith(`${a.getAttribute("href")}/`);
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  page = { alive: true };
  for (const [pattern, show] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      show(root, page, ...match.slice(1).map((p) => (p ? decodeURIComponent(p) : p)));
      return;
    }
  }
  append(root, [h("h1", {}, "Not found"), h("p", {}, "No console page here. "),
    h("a", { href: "#/jobs" }, "Back to the jobs")]);
}

function signOut(reason) {
  sessionStorage.removeItem(KEY);
  sessionStorage.setItem("kilotask.reason", reason || "");
  render();
}

function signInPage(root) {
  const reason = sessionStorage.getItem("kilotask.reason");
  sessionStorage.removeItem("kilotask.reason");
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false" });
  const status = h("p", { class: "error", role: "alert", id: "sign-in-error" }, reason || "");
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api("/v1/jobs?limit=1");
      if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
      render();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      status.textContent = `Not signed in: ${err.message}`;
      input.focus();
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", {}, "Paste an API key. It stays in this browser tab only and is sent to this server as a bearer header."),
  h("label", { for: "api-key" }, "API key"), input, status,
  h("button", { type: "submit" }, "Sign in"),
  h("p", { class: "hint" }, "No key? Run ", h("code", {}, "kilotask keys create --tenant NAME"),
    "; ", h("code", {}, "kilotask serve"), " writes one to DATA_DIR/api_key."));
  root.append(form);
  input.focus();
}

// ---------- jobs ----------

function jobsPage(root, ctx) {
  const status = h("p", { role: "status", class: "hint" });
  const body = h("tbody");
  const total = h("p", { class: "hint" });
  append(root, [h("h1", {}, "Jobs"), h("p", {}, h("a", { href: "#/new" }, "Start a new job")),
    status, h("table", {}, h("caption", {}, "Training jobs and d90 searches, newest first"),
      h("thead", {}, h("tr", {}, ["Job", "Kind", "Method", "d", "Status", "Progress", "Metrics",
        "Created"].map((c) => h("th", { scope: "col" }, c)))), body), total]);
  poll(ctx, 2000, async () => {
    const jobs = await api("/v1/jobs?limit=50");
    body.replaceChildren(...jobs.data.map((job) => h("tr", { "data-job": job.id },
      h("td", {}, h("a", { href: job.kind === "d90" ? `#/d90/${job.id}` : `#/jobs/${job.id}` }, short(job.id))),
      h("td", {}, job.kind), h("td", {}, job.method), h("td", { class: "num" }, job.kind === "d90" ? "" : job.dim),
      h("td", {}, badge(job.status)), h("td", {}, progressBar(job)),
      h("td", {}, job.kind === "d90" ? (job.metrics?.d90_text ? `d90 ${job.metrics.d90_text}` : "") : metricsText(job.metrics)),
      h("td", {}, when(job.created_at)))));
    if (!jobs.data.length) body.append(h("tr", {}, h("td", { colspan: 8 }, "No jobs yet.")));
    total.textContent = `${jobs.data.length} of ${jobs.total} shown.`;
  }, status);
}

function progressBar(job) {
  const { step, total } = job.progress || {};
  const label = total ? `${step} / ${total}` : `${step || 0}`;
  return h("span", { class: "progress" },
    h("progress", { max: total || 1, value: total ? step : 0, "aria-label": `Progress of ${job.id}` }),
    " ", label);
}

function jobPage(root, ctx, jobId) {
  const status = h("p", { role: "status", class: "hint" });
  const head = h("div");
  const lossChart = h("figure", { class: "chart", id: "loss-chart" });
  const evalChart = h("figure", { class: "chart", id: "eval-chart" });
  const eventsList = h("tbody");
  append(root, [h("h1", {}, "Job ", h("span", { class: "mono" }, jobId)), status, head,
    h("div", { class: "charts" }, lossChart, evalChart),
    h("h2", {}, "Events"),
    h("table", {}, h("caption", {}, "The job's events, newest first (at most 100 shown)"),
      h("thead", {}, h("tr", {}, ["#", "Type", "Time", "Data"].map((c) => h("th", { scope: "col" }, c)))),
      eventsList)]);
  const losses = [];
  const evals = {};
  const events = [];
  let after = 0;
  let ended = false;
  poll(ctx, 1000, async () => {
    const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    for (;;) {
      const page_ = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events?after=${after}&limit=1000`);
      for (const event of page_.data) {
        after = Math.max(after, event.id);
        events.push(event);
        const d = event.data || {};
        if (event.type === "progress" && typeof d.loss === "number") losses.push([d.step, d.loss]);
        if (event.type === "metrics") {
          for (const [k, v] of Object.entries(d)) {
            if (typeof v !== "number") continue;
            if (k.startsWith("eval_")) (evals[k.slice(5)] ||= []).push([d.step, v]);
            if (k.startsWith("train_")) (evals[`train ${k.slice(6)}`] ||= []).push([d.step, v]);
          }
        }
      }
      if (page_.data.length < 1000) break;
    }
    head.replaceChildren(jobSummary(job, ctx));
    lossChart.replaceChildren(lineChart({ title: "Training loss", x: "step", y: "loss",
      series: [{ name: "loss", points: losses }] }));
    evalChart.replaceChildren(lineChart({ title: "Evaluation metrics (held out, and on a train sample)", x: "step", y: "metric",
      series: Object.entries(evals).map(([name, points]) => ({ name, points })), dots: true }));
    eventsList.replaceChildren(...events.slice(-100).reverse().map((e) => h("tr", {},
      h("td", { class: "num" }, e.id), h("td", {}, e.type), h("td", {}, when(e.created_at)),
      h("td", { class: "mono" }, JSON.stringify(e.data)))));
    if (ended) return "stop"; // one more round after the end picked up the last events
    ended = TERMINAL.has(job.status);
  }, status);
}

function jobSummary(job, ctx) {
  const actions = h("p", { class: "actions" });
  const message = h("p", { role: "status" });
  if (!TERMINAL.has(job.status)) {
    actions.append(h("button", { type: "button", id: "cancel-job", onclick: async (event) => {
      event.target.disabled = true;
      try {
        const after = await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
        message.textContent = `Cancel asked for; the job is ${after.status}.`;
      } catch (err) {
        message.textContent = `Could not cancel: ${err.message}`;
        event.target.disabled = false;
      }
    } }, "Cancel job"));
  }
  if (job.task_id) {
    actions.append("Task ", h("span", { class: "mono", id: "job-task" }, job.task_id), " · ",
      h("a", { href: `#/playground/${encodeURIComponent(job.task_id)}`, id: "try-task" }, "Try it in the playground"),
      " · ", h("a", { href: "#/tasks" }, "All tasks"));
  }
  if (job.kind === "d90") actions.append(h("a", { href: `#/d90/${job.id}` }, "See the d90 curve"));
  const rows = [["Status", badge(job.status)], ["Progress", progressBar(job)], ["Method", job.method],
    ["Model", job.model], ["d", job.kind === "d90" ? "" : job.dim], ["Seed", job.seed],
    ["Attempts", job.attempts], ["Metrics", metricsText(job.metrics)],
    ["On a train sample", trainMetricsText(job.metrics)],
    ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)]];
  if (job.error) rows.push(["Error", `${job.error.code}: ${job.error.message}`]);
  void ctx;
  return h("div", {}, h("dl", { class: "facts", id: "job-facts", "data-status": job.status },
    rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])), actions, message);
}

// ---------- charts (SVG drawn here: no library, nothing fetched) ----------

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

function ticks(lo, hi, n = 5) {
  if (hi <= lo) return [lo];
  const step = 10 ** Math.floor(Math.log10((hi - lo) / n));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= n) || step * 10;
  const out = [];
  for (let t = Math.ceil(lo / nice) * nice; t <= hi + 1e-12; t += nice) out.push(Number(t.toPrecision(12)));
  return out;
}

function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const t = m * 10 ** e;
      if (t >= lo && t <= hi) out.push(t);
    }
  }
  return out.length >= 2 ? out : [lo, hi];
}

/** A line chart: series of [x, y] points, optional horizontal lines and a shaded x band. */
function lineChart({ title, x, y, series, logX = false, lines = [], band = null, dots = false, marks = null }) {
  const W = 560, H = 300, L = 56, R = 16, T = 28, B = 44;
  const all = series.flatMap((s) => s.points);
  const count = all.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${count} points`,
    "data-count": count, class: "plot" }, svg("title", {}, title));
  if (!count) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No points yet"));
    return h("div", {}, h("figcaption", {}, title), root);
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]).concat(lines.map((l) => l.y));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (logX) [x0, x1] = [x0 / 1.3, x1 * 1.3];
  else if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
  [y0, y1] = [y0 - pad, y1 + pad];
  const fx = logX ? (v) => L + ((Math.log(v) - Math.log(x0)) / (Math.log(x1) - Math.log(x0))) * (W - L - R)
    : (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
  const fy = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  if (band) {
    root.append(svg("rect", { x: fx(band[0]), y: T, width: Math.max(fx(band[1]) - fx(band[0]), 2),
      height: H - T - B, class: "band" }, svg("title", {}, `bracket ${band[0]} – ${band[1]}`)));
  }
  for (const t of logX ? logTicks(x0, x1) : ticks(x0, x1)) {
    root.append(svg("line", { x1: fx(t), x2: fx(t), y1: H - B, y2: H - B + 4, class: "axis" }),
      svg("text", { x: fx(t), y: H - B + 16, "text-anchor": "middle", class: "tick" }, fmt(t, 0)));
  }
  for (const t of ticks(y0, y1)) {
    root.append(svg("line", { x1: L, x2: W - R, y1: fy(t), y2: fy(t), class: "grid" }),
      svg("text", { x: L - 6, y: fy(t) + 4, "text-anchor": "end", class: "tick" }, fmt(t, 3)));
  }
  root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }),
    svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }),
    svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", class: "label" }, x),
    svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", class: "label",
      transform: `rotate(-90 14 ${(T + H - B) / 2})` }, y));
  for (const line of lines) {
    root.append(svg("line", { x1: L, x2: W - R, y1: fy(line.y), y2: fy(line.y), class: `hline ${line.cls || ""}` }),
      svg("text", { x: W - R - 4, y: fy(line.y) - 4, "text-anchor": "end", class: `hlabel ${line.cls || ""}` },
        `${line.label} ${fmt(line.y)}`));
  }
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    if (pts.length > 1) {
      root.append(svg("polyline", { points: pts.map((p) => `${fx(p[0])},${fy(p[1])}`).join(" "),
        fill: "none", stroke: color, "stroke-width": 1.8, class: "series" }));
    }
    if (dots || pts.length === 1 || marks) {
      for (const p of pts) {
        const mark = marks ? marks(p) : {};
        root.append(svg("circle", { cx: fx(p[0]), cy: fy(p[1]), r: 4, fill: mark.fill ?? color, stroke: color,
          "stroke-width": 1.5, class: "point" }, svg("title", {}, mark.title || `${x} ${p[0]}: ${fmt(p[1])}`)));
      }
    }
  });
  const legend = series.length > 1 || series[0].name !== y
    ? h("p", { class: "legend" }, series.map((s, i) => h("span", { class: "key" },
      h("span", { class: "swatch", "data-color": i % COLORS.length }), s.name)))
    : null;
  return h("div", {}, h("figcaption", {}, title), root, legend);
}

// ---------- new job ----------

/** Column names from the first line of a CSV/TSV (or the first object of JSONL). */
async function headerColumns(file) {
  const first = (await file.slice(0, 65536).text()).split(/\r?\n/)[0] || "";
  if (/\.jsonl$/i.test(file.name)) {
    try {
      return Object.keys(JSON.parse(first));
    } catch (_) {
      return [];
    }
  }
  const sep = /\.tsv$/i.test(file.name) || first.includes("\t") ? "\t" : ",";
  return first.split(sep).map((c) => c.trim().replace(/^"(.*)"$/, "$1")).filter(Boolean);
}

function field(id, label, control, hint) {
  control.id = id;
  control.setAttribute("aria-describedby", `${id}-error${hint ? ` ${id}-hint` : ""}`);
  return h("div", { class: "field" }, h("label", { for: id }, label), control,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null,
    h("p", { class: "field-error", id: `${id}-error`, role: "alert" }));
}

function select(options, value) {
  return h("select", {}, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
}

const JOB_FIELDS = ["model", "task", "method", "dim", "seed", "said_groups", "max_steps", "learning_rate",
  "batch_size", "max_length", "eval_every"];

/** Which field an API error is about: the path of a validation error, else its code. */
function fieldOf(err, stage) {
  const path = err.message.match(/^([\w.]+): /);
  if (path) {
    const name = path[1].split(".").pop();
    if (JOB_FIELDS.includes(name)) return name;
    if (["text_column", "text_pair_column", "label_column"].includes(name)) return name;
  }
  const byCode = { invalid_dim: "dim", invalid_max_length: "max_length", model_not_found: "model",
    invalid_options: "method" };
  if (byCode[err.code]) return byCode[err.code];
  if (stage !== "job") {
    const m = err.message.toLowerCase();
    if (m.includes("pair column") || m.includes("text_pair")) return "text_pair_column";
    if (m.includes("label column") || m.includes("label_column")) return "label_column";
    if (m.includes("text column") || m.includes("text_column")) return "text_column";
    return stage;
  }
  if (/task type|regression/i.test(err.message)) return "task";
  if (/\bmodel\b/i.test(err.message)) return "model";
  return "form";
}

function newJobPage(root, ctx) {
  const train = h("input", { type: "file", accept: ".csv,.tsv,.jsonl,.txt", required: true });
  const evalFile = h("input", { type: "file", accept: ".csv,.tsv,.jsonl,.txt" });
  const columnSelects = {
    text_column: select([["", "auto-detect"]], ""),
    text_pair_column: select([["", "auto-detect (none if absent)"]], ""),
    label_column: select([["", "auto-detect"]], ""),
  };
  const models = h("datalist", { id: "model-ids" });
  const model = h("input", { type: "text", list: "model-ids", placeholder: "server default", spellcheck: "false" });
  const method = select(METHODS.map((m) => [m, m]), "said");
  const task = select([["", "classification (default)"], ["regression", "regression"]], "");
  const groups = select([["", "default (one λ per layer)"], ["layer", "layer"], ["tensor", "tensor"]], "");
  const inputs = {
    dim: h("input", { type: "number", min: 1, value: 1000, required: true }),
    seed: h("input", { type: "number", min: 0, value: 0 }),
    max_steps: h("input", { type: "number", min: 1, value: 200 }),
    learning_rate: h("input", { type: "number", step: "any", min: 0, placeholder: "method default" }),
    batch_size: h("input", { type: "number", min: 1, value: 16 }),
    max_length: h("input", { type: "number", min: 8, value: 128 }),
    eval_every: h("input", { type: "number", min: 1, placeholder: "at the end" }),
  };
  const datasetInfo = h("div", { id: "dataset-info" });
  const formError = h("p", { class: "field-error", id: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", id: "start-job" }, "Start job");
  const form = h("form", { class: "card", novalidate: true, onsubmit: (e) => { e.preventDefault(); start(); } },
    h("fieldset", {}, h("legend", {}, "Data"),
      field("train_file", "Training data (CSV, TSV or JSONL with a header)", train),
      field("eval_file", "Evaluation data (optional, same columns)", evalFile),
      field("text_column", "Text column", columnSelects.text_column),
      field("text_pair_column", "Second text column (sentence pairs)", columnSelects.text_pair_column),
      field("label_column", "Label column", columnSelects.label_column), datasetInfo),
    h("fieldset", {}, h("legend", {}, "Training"),
      field("model", "Base model", model, "a model id from the list, or a path the workers can read"), models,
      field("task", "Task type", task, "regression: a numeric label (one output, MSE, Pearson and Spearman)"),
      field("method", "Method", method, "said and did: the paper's subspaces; lowrank: mixable in serving; full: every weight"),
      field("dim", "Subspace dimension d", inputs.dim, "the task's size in numbers (ignored by full)"),
      field("said_groups", "SAID scale groups", groups),
      field("seed", "Seed", inputs.seed),
      field("max_steps", "Training steps", inputs.max_steps),
      field("learning_rate", "Learning rate", inputs.learning_rate),
      field("batch_size", "Batch size", inputs.batch_size),
      field("max_length", "Max length (tokens)", inputs.max_length),
      field("eval_every", "Evaluate every (steps)", inputs.eval_every)),
    formError, submit);
  append(root, [h("h1", {}, "New job"), form]);

  api("/v1/models").then((list) => {
    for (const m of list.data) models.append(h("option", { value: m.id }, `${(m.num_parameters / 1e6).toFixed(1)} M parameters`));
  }).catch((err) => { formError.textContent = `Could not list models: ${err.message}`; });

  train.addEventListener("change", async () => {
    const file = train.files[0];
    const columns = file ? await headerColumns(file) : [];
    for (const [name, sel] of Object.entries(columnSelects)) {
      sel.replaceChildren(sel.options[0], ...columns.map((c) => h("option", { value: c }, c)));
    }
    datasetInfo.replaceChildren(columns.length ? h("p", { class: "hint" }, `Columns found: ${columns.join(", ")}`) : "");
  });
  const syncMethod = () => {
    inputs.dim.disabled = method.value === "full";
    groups.disabled = method.value !== "said";
  };
  method.addEventListener("change", syncMethod);
  syncMethod();

  function clearErrors() {
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }
  function showError(name, message) {
    const target = document.getElementById(`${name}-error`) || formError;
    target.textContent = message;
    const control = document.getElementById(name);
    if (control && target !== formError) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  }
  async function upload(file, stage) {
    const body = new FormData();
    body.append("file", file, file.name);
    for (const [name, sel] of Object.entries(columnSelects)) if (sel.value) body.append(name, sel.value);
    try {
      return await api("/v1/datasets", { method: "POST", form: body });
    } catch (err) {
      showError(fieldOf(err, stage), err.message);
      throw err;
    }
  }
  async function start() {
    clearErrors();
    if (!train.files[0]) {
      showError("train_file", "Choose a training file.");
      return;
    }
    submit.disabled = true;
    try {
      const trainSet = await upload(train.files[0], "train_file");
      datasetInfo.replaceChildren(datasetSummary(trainSet));
      const evalSet = evalFile.files[0] ? await upload(evalFile.files[0], "eval_file") : null;
      const hp = {};
      for (const name of ["max_steps", "learning_rate", "batch_size", "max_length", "eval_every"]) {
        if (inputs[name].value !== "") hp[name] = Number(inputs[name].value);
      }
      const body = { train_dataset: trainSet.id, method: method.value, seed: Number(inputs.seed.value || 0),
        hyperparameters: hp };
      if (evalSet) body.eval_dataset = evalSet.id;
      if (model.value.trim()) body.model = model.value.trim();
      if (method.value !== "full") body.dim = Number(inputs.dim.value);
      if (method.value === "said" && groups.value) body.said_groups = groups.value;
      if (task.value) body.task = task.value;
      let job;
      try {
        job = await api("/v1/jobs", { method: "POST", json: body });
      } catch (err) {
        showError(fieldOf(err, "job"), err.message);
        return;
      }
      location.hash = `#/jobs/${job.id}`;
    } catch (_) {
      /* shown next to its field */
    } finally {
      submit.disabled = false;
    }
  }
  void ctx;
}

function datasetSummary(ds) {
  const counts = Object.entries(ds.label_counts || {});
  return h("div", { class: "dataset" },
    h("p", {}, "Uploaded ", h("span", { class: "mono" }, ds.filename), `: ${ds.rows} rows; text `,
      h("span", { class: "mono" }, ds.text_column),
      ds.text_pair_column ? [", pair ", h("span", { class: "mono" }, ds.text_pair_column)] : "",
      ds.label_column ? [", labels ", h("span", { class: "mono" }, ds.label_column)] : ""),
    counts.length > 20 ? h("p", { class: "hint" }, `${counts.length} distinct label values (a regression target?)`)
      : h("ul", { class: "labels", "aria-label": "Label counts" },
        counts.map(([label, n]) => h("li", {}, h("span", { class: "label-name" }, label), `: ${n}`))));
}

// ---------- tasks ----------

function tasksPage(root, ctx) {
  const status = h("p", { role: "status", class: "hint" });
  const body = h("tbody");
  append(root, [h("h1", {}, "Tasks"), status,
    h("table", {}, h("caption", {}, "Stored tasks: each is a base model id, a seed and d numbers"),
      h("thead", {}, h("tr", {}, ["Task", "Method", "d", "Bytes", "Model", "Outputs", "Metrics", "Created", "Actions"]
        .map((c) => h("th", { scope: "col" }, c)))), body)]);
  const refresh = async () => {
    const [tasks, serving] = await Promise.all([api("/v1/tasks?limit=100"),
      api("/v1/serving").catch(() => null)]);
    const pinned = new Set();
    for (const t of serving?.cache?.resident_tasks || []) if (t.pinned) pinned.add(t.digest);
    body.replaceChildren(...tasks.data.map((task) => taskRow(task, pinned.has(task.digest), refresh, status)));
    if (!tasks.data.length) body.append(h("tr", {}, h("td", { colspan: 9 }, "No tasks yet: train one on the New job page.")));
  };
  poll(ctx, 5000, refresh, status);
}

function taskRow(task, pinned, refresh, status) {
  const act = (label, fn, attrs = {}) => h("button", { type: "button", ...attrs, onclick: async (event) => {
    try {
      await fn(event);
    } catch (err) {
      status.textContent = `${label} ${task.id}: ${err.message}`;
    }
  } }, label);
  const download = act("Download", async () => {
    const response = await api(`/v1/tasks/${encodeURIComponent(task.id)}/vector`, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const a = h("a", { href: url, download: `${task.id}.safetensors` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }, { "aria-label": `Download ${task.id}` });
  const pin = act(pinned ? "Unpin" : "Pin", async () => {
    await api(`/v1/tasks/${encodeURIComponent(task.id)}/pin`, { method: pinned ? "DELETE" : "POST" });
    status.textContent = `${task.id} ${pinned ? "unpinned" : "pinned in serving memory"}.`;
    await refresh();
  }, { "aria-label": `${pinned ? "Unpin" : "Pin"} ${task.id}` });
  let armed = false;
  const remove = act("Delete", async (event) => {
    if (!armed) { // two presses, no modal dialog: keyboard friendly and nothing pops up
      armed = true;
      event.target.textContent = "Press again to delete";
      setTimeout(() => { armed = false; event.target.textContent = "Delete"; }, 5000);
      return;
    }
    await api(`/v1/tasks/${encodeURIComponent(task.id)}`, { method: "DELETE" });
    status.textContent = `${task.id} deleted.`;
    await refresh();
  }, { "aria-label": `Delete ${task.id}` });
  return h("tr", { "data-task": task.id },
    h("td", { class: "mono" }, task.id), h("td", {}, task.method, task.said_groups ? ` (${task.said_groups})` : ""),
    h("td", { class: "num" }, task.dim), h("td", { class: "num" }, task.bytes), h("td", {}, task.model),
    h("td", {}, outputsText(task)), h("td", {}, metricsText(task.metrics)), h("td", {}, when(task.created_at)),
    h("td", { class: "actions" }, h("a", { href: `#/playground/${encodeURIComponent(task.id)}`, "aria-label": `Try ${task.id}` }, "Try"),
      " ", download, " ", pin, " ", remove));
}

// ---------- playground ----------

function playgroundPage(root, ctx, chosen) {
  const picked = new Set((chosen || "").split(",").filter(Boolean));
  const list = h("div", { class: "task-list" });
  const text = h("textarea", { rows: 3, required: true });
  const pair = h("textarea", { rows: 2 });
  const results = h("div", { class: "results", id: "results", "aria-live": "polite" });
  const formError = h("p", { class: "field-error", id: "playground-error", role: "alert" });
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    formError.textContent = "";
    const tasks = [...list.querySelectorAll("input:checked")].map((box) => box.value);
    if (!tasks.length) {
      formError.textContent = "Tick at least one task.";
      return;
    }
    const inputs = tasks.map((task) => ({ task, text: text.value, ...(pair.value ? { text_pair: pair.value } : {}) }));
    try {
      const answer = await api("/v1/infer", { method: "POST", json: { inputs } });
      results.replaceChildren(...answer.outputs.map(outputCard));
    } catch (err) {
      formError.textContent = err.message;
    }
  } },
  h("fieldset", {}, h("legend", {}, "Tasks to run (side by side)"), list),
  field("text", "Text", text), field("text_pair", "Second text (optional, for sentence-pair tasks)", pair),
  formError, h("button", { type: "submit", id: "run" }, "Run"));
  append(root, [h("h1", {}, "Playground"), form, results]);
  api("/v1/tasks?limit=100").then((tasks) => {
    list.replaceChildren(...tasks.data.map((task, i) => h("div", { class: "check" },
      h("input", { type: "checkbox", id: `task-${i}`, value: task.id, checked: picked.has(task.id) }),
      h("label", { for: `task-${i}` }, h("span", { class: "mono" }, task.id),
        ` · ${task.method} d=${task.dim} · ${outputsText(task)}`))));
    if (!tasks.data.length) list.append(h("p", {}, "No tasks yet."));
  }).catch((err) => { formError.textContent = `Could not list tasks: ${err.message}`; });
  void ctx;
}

/** A task's outputs: its labels, or "regression" for a task that predicts a number. */
function outputsText(task) {
  if (task.task_type === "regression") return "regression (a score)";
  return `labels ${(task.label_names || []).join(", ")}`;
}

function outputCard(out) {
  if (typeof out.score === "number") {
    return h("section", { class: "card result", "data-task": out.task, "aria-label": `Result of ${out.task}` },
      h("h2", { class: "mono" }, out.task),
      h("p", {}, "Score: ", h("strong", { class: "num score", "data-score": String(out.score) }, fmt(out.score))));
  }
  const scores = Object.entries(out.scores || {}).sort((a, b) => b[1] - a[1]);
  return h("section", { class: "card result", "data-task": out.task, "aria-label": `Result of ${out.task}` },
    h("h2", { class: "mono" }, out.task),
    h("p", {}, "Label: ", h("strong", { class: "label-name", "data-label": out.label }, out.label)),
    h("table", {}, h("caption", {}, "Scores"), h("tbody", {}, scores.map(([label, score]) => h("tr", {},
      h("th", { scope: "row", class: "label-name" }, label),
      h("td", {}, h("meter", { min: 0, max: 1, value: score, "aria-label": `score of ${label}` })),
      h("td", { class: "num score", "data-label": label, "data-score": String(score) }, fmt(score)))))));
}

// ---------- d90 searches ----------

function searchesPage(root, ctx) {
  const status = h("p", { role: "status", class: "hint" });
  const body = h("tbody");
  append(root, [h("h1", {}, "d90 searches"),
    h("p", { class: "hint" }, "Start one with POST /v1/intrinsic-dimension or kilotask d90; it shows here as it runs."),
    status, h("table", {}, h("caption", {}, "Intrinsic-dimension searches, newest first"),
      h("thead", {}, h("tr", {}, ["Search", "Method", "Model", "Status", "d90", "Points", "Created"]
        .map((c) => h("th", { scope: "col" }, c)))), body)]);
  poll(ctx, 3000, async () => {
    const jobs = await api("/v1/jobs?limit=200");
    const searches = jobs.data.filter((j) => j.kind === "d90");
    body.replaceChildren(...searches.map((s) => h("tr", {},
      h("td", {}, h("a", { href: `#/d90/${s.id}` }, s.id)), h("td", {}, s.method), h("td", {}, s.model),
      h("td", {}, badge(s.status)), h("td", {}, s.metrics?.d90_text || ""),
      h("td", { class: "num" }, (s.metrics?.points || []).length), h("td", {}, when(s.created_at)))));
    if (!searches.length) body.append(h("tr", {}, h("td", { colspan: 7 }, "No searches among the latest 200 jobs.")));
  }, status);
}

function searchPage(root, ctx, id) {
  const status = h("p", { role: "status", class: "hint" });
  const head = h("div");
  const chart = h("figure", { class: "chart wide", id: "d90-chart" });
  const table = h("tbody");
  append(root, [h("h1", {}, "d90 search ", h("span", { class: "mono" }, id)), status, head, chart,
    h("table", {}, h("caption", {}, "Every d trained, in the order it was evaluated"),
      h("thead", {}, h("tr", {}, ["d", "metric", "best lr", "seeds", "passed"].map((c) => h("th", { scope: "col" }, c)))),
      table)]);
  let ended = false;
  poll(ctx, 2000, async () => {
    const search = await api(`/v1/intrinsic-dimension/${encodeURIComponent(id)}`);
    const r = search.results || {};
    const points = r.points || [];
    const facts = [["Status", badge(search.status)], ["Method", search.method], ["Model", search.model],
      ["d90", r.d90_text || (r.finished ? "none" : "searching")], ["Bracket", r.bracket ? `${r.bracket[0]} – ${r.bracket[1]}` : ""],
      ["Censored", r.censored || (r.finished ? "no" : "")], ["Monotone", r.monotone === false ? "no" : r.finished ? "yes" : ""],
      ["Full fine-tuning", r.full_metric !== undefined ? fmt(r.full_metric) : "training"],
      ["Bar (90 %)", r.bar !== undefined ? fmt(r.bar) : ""], ["Majority class", r.floor !== undefined && r.floor !== null ? fmt(r.floor) : ""]];
    if (search.error) facts.push(["Error", `${search.error.code}: ${search.error.message}`]);
    head.replaceChildren(h("dl", { class: "facts", id: "d90-facts", "data-status": search.status },
      facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    (r.notes || []).length ? h("ul", { class: "notes" }, r.notes.map((n) => h("li", {}, n))) : "");
    const lines = [];
    if (typeof r.bar === "number") lines.push({ y: r.bar, label: "90 % bar", cls: "bar" });
    if (typeof r.full_metric === "number") lines.push({ y: r.full_metric, label: "full", cls: "full" });
    const constant = ["pearson", "spearman"].includes(search.hyperparameters?.metric) ? "constant" : "majority";
    if (typeof r.floor === "number") lines.push({ y: r.floor, label: constant, cls: "floor" });
    const byD = new Map(points.map((p) => [p.d, p]));
    chart.replaceChildren(lineChart({ title: "Metric against d (log scale), with the 90 % line", x: "d", y: "metric",
      logX: true, lines, band: r.bracket || null,
      series: [{ name: "metric", points: points.map((p) => [p.d, p.metric]) }],
      marks: (p) => {
        const point = byD.get(p[0]);
        return { fill: point?.passed ? undefined : "white",
          title: `d ${p[0]}: ${fmt(p[1])} at lr ${point?.lr} (${point?.passed ? "passes" : "fails"})` };
      } }));
    table.replaceChildren(...points.map((p) => h("tr", {}, h("td", { class: "num" }, p.d), h("td", { class: "num" }, fmt(p.metric)),
      h("td", { class: "num" }, p.lr), h("td", {}, (p.seeds || []).length > 1 ? `${p.seeds.map((s) => fmt(s, 3)).join(", ")} (sd ${fmt(p.sd, 3)})` : ""),
      h("td", {}, p.passed ? "yes" : "no"))));
    if (ended) return "stop";
    ended = TERMINAL.has(search.status);
  }, status);
}

// ---------- serving ----------

function servingPage(root, ctx) {
  const status = h("p", { role: "status", class: "hint" });
  const facts = h("div", { class: "cards" });
  const resident = h("tbody");
  append(root, [h("h1", {}, "Serving"), status, facts,
    h("table", {}, h("caption", {}, "Tasks resident in the dense cache (SAID, DID, full)"),
      h("thead", {}, h("tr", {}, ["Task", "Digest", "MiB", "Pinned"].map((c) => h("th", { scope: "col" }, c)))), resident)]);
  const names = new Map(); // digest -> task id, for the tasks this tenant can see
  let looked = 0;
  const card = (title, rows) => h("section", { class: "card" }, h("h2", {}, title),
    h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "number" ? fmt(v, 1) : v)])));
  poll(ctx, 2000, async () => {
    const s = await api("/v1/serving");
    const unknown = (s.cache?.resident_tasks || []).some((t) => !names.has(t.digest));
    if (unknown && Date.now() - looked > 30000) { // new digests: look their ids up, not every tick
      looked = Date.now();
      for (const t of (await api("/v1/tasks?limit=100")).data) names.set(t.digest, t.id);
    }
    const c = s.cache || {};
    const l = s.lowrank || {};
    facts.replaceChildren(
      card("Batches", [["Batches run", s.batches], ["Mean batch size", s.mean_batch_size], ["Largest batch", s.largest_batch],
        ["Max batch", s.max_batch], ["Max wait (ms)", s.max_wait_ms], ["Workers", s.workers], ["Device", s.device]]),
      card("Dense cache", [["Resident tasks", (c.resident_tasks || []).length], ["Resident MiB", c.resident_mb],
        ["Budget MiB", c.budget_mb], ["Hits", c.hits], ["Misses", c.misses], ["Evictions", c.evictions],
        ["Mean rebuild (ms)", c.mean_rebuild_ms]]),
      card("Low-rank pool (mixed in one pass)", [["Resident tasks", l.resident_tasks], ["Resident MiB", l.resident_mb],
        ["Budget MiB", l.budget_mb], ["Hits", l.hits], ["Misses", l.misses], ["Evictions", l.evictions]]));
    resident.replaceChildren(...(c.resident_tasks || []).map((t) => h("tr", {},
      h("td", { class: "mono" }, names.get(t.digest) || "(another tenant's)"), h("td", { class: "mono" }, t.digest),
      h("td", { class: "num" }, fmt(t.mb, 1)), h("td", {}, t.pinned ? "yes" : "no"))));
    if (!(c.resident_tasks || []).length) resident.append(h("tr", {}, h("td", { colspan: 4 }, "No task resident yet.")));
  }, status);
}

// ---------- start ----------

document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", render);
render();
