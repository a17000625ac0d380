"use strict";
// The labelling page. Everything it shows comes from the service's /api/ (nothing from elsewhere):
// the state is polled, faster while a round trains; labels and undos are sent one at a time.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TOKEN = takeToken();

let summary = null; // /api/state
let round = null; // /api/proposals
let current = null; // the pool index of the sample shown
let busy = false; // a label or undo is on its way: keys wait for its answer
let shown = { round: -1, labelled: -1 }; // what the proposals, history and charts were loaded for
let autoStarted = -1; // the round whose labelling last started a round by itself
let poll = null;

// The token comes once in the URL (?token=...); it is kept for the tab and taken out of the address bar.
function takeToken() {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  if (given !== null) {
    sessionStorage.setItem("jal-token", given);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
  return sessionStorage.getItem("jal-token");
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (TOKEN) headers.Authorization = "Bearer " + TOKEN;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "the server does not answer; is jal serve running?");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail;
    } catch {}
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

const json = async (method, path, body) => (await api(method, path, body)).json();

// Images need the token too, so they are fetched, not linked; each once per page.
const images = new Map();
function imageUrl(path) {
  if (!images.has(path)) {
    const url = api("GET", path).then((r) => r.blob()).then((blob) => URL.createObjectURL(blob));
    url.catch(() => images.delete(path));
    images.set(path, url);
  }
  return images.get(path);
}

function showImage(img, path) {
  img.dataset.path = path;
  imageUrl(path).then((url) => {
    if (img.dataset.path === path) img.src = url; // not a sample the page has moved on from
  }, () => {});
}

function el(tag, attributes = {}, parent = null, text = null) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

let toastTimer = null;
function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), 5000);
}

const training = () => Boolean(summary && summary.job && !summary.job.error);
const pending = () => (round ? round.samples.filter((s) => s.label === null).map((s) => s.index) : []);
const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : x.toFixed(digits));

// ---- the state ---------------------------------------------------------------------------------------------

async function refresh() {
  try {
    summary = await json("GET", "/api/state");
    const newRound = summary.round !== shown.round;
    if (newRound || summary.labelled !== shown.labelled) {
      await loadRound();
      shown = { round: summary.round, labelled: summary.labelled };
      loadHistory();
      if (newRound) {
        loadCurve();
        loadScores();
      }
    }
    render();
    startIfDone();
  } catch (error) {
    setStatus(error.message, true);
  }
  schedule(training() ? 600 : 2500);
}

function schedule(ms) {
  clearTimeout(poll);
  poll = setTimeout(refresh, ms);
}

async function loadRound() {
  round = await json("GET", "/api/proposals");
  const open = pending();
  if (!open.includes(current)) current = open.length ? open[0] : null;
  renderSample();
  renderQueue();
}

function render() {
  $("project").textContent = summary.project;
  document.title = `jal · ${summary.project}`;
  $("labelled").textContent = summary.labelled;
  $("round").textContent = summary.round;
  $("setting").textContent = `${summary.acquisition}, ${summary.acquire} per round, pool of ${summary.pool_size}`;
  renderClasses();
  const job = summary.job;
  $("progress").hidden = !training();
  if (training()) {
    const fill = $("progress-fill");
    fill.classList.toggle("unknown", job.fraction === null);
    fill.style.width = job.fraction === null ? "" : `${Math.round(job.fraction * 100)}%`;
    const last = job.expected === null ? "the first round also compiles" : `the last took ${job.expected.toFixed(0)} s`;
    $("progress-text").textContent = `${job.elapsed.toFixed(0)} s (${last})`;
    setStatus(`Round ${job.round}: training on ${summary.labelled} labels, scoring the pool…`);
  } else if (job && job.error) {
    setStatus(job.error, true);
  } else if (summary.pending > 0) {
    setStatus(`${summary.pending} of round ${summary.round}'s samples to label`);
  } else if (summary.labelled === summary.pool_size) {
    setStatus("Every pool sample is labelled.");
  } else {
    setStatus("All labelled: train & propose for more.");
  }
  $("next").disabled = training() || summary.labelled === 0 || summary.labelled === summary.pool_size;
  $("undo").disabled = !summary.can_undo || busy;
  renderSample();
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function renderClasses() {
  const box = $("classes");
  if (box.childElementCount === summary.num_classes) return;
  box.replaceChildren();
  for (let c = 0; c < summary.num_classes; c++) {
    const button = el("button", { type: "button", "data-class": c, title: c < 10 ? `class ${c} (key ${c})` : `class ${c}` }, box, String(c));
    button.addEventListener("click", (event) => {
      event.currentTarget.blur(); // else Space or Enter would click it again, for the next sample
      give(c);
    });
  }
}

function renderSample() {
  const img = $("sample");
  const sample = round && round.samples.find((s) => s.index === current);
  for (const button of $("classes").children) button.disabled = !sample || busy;
  if (!sample) {
    img.hidden = true;
    delete img.dataset.path;
    $("done").hidden = false;
    $("done").textContent = training()
      ? "This round's samples are labelled. The next round is training on them; its samples appear here."
      : "Nothing to label: train & propose (N) for the next samples.";
    $("sample-title").textContent = `Round ${round ? round.round : ""}`;
    $("sample-score").textContent = "";
    return;
  }
  $("done").hidden = true;
  img.hidden = false;
  showImage(img, sample.image);
  $("sample-title").textContent = `Sample ${sample.index}`;
  $("sample-score").textContent = sample.score === null ? "picked at random" : `score ${fmt(sample.score)}`;
}

// Small images (up to 96 pixels wide) are scaled up, pixels kept square; plots are shown as they are.
$("sample").addEventListener("load", (event) => event.target.classList.toggle("pixels", event.target.naturalWidth <= 96));

function renderQueue() {
  const list = $("queue");
  list.replaceChildren();
  for (const sample of round.samples) {
    const item = el("li", { title: `sample ${sample.index}`, "data-index": sample.index }, list);
    item.classList.toggle("current", sample.index === current);
    item.classList.toggle("given", sample.label !== null);
    showImage(el("img", { alt: `sample ${sample.index}` }, item), sample.image);
    if (sample.label !== null) el("span", { class: "badge" }, item, String(sample.label));
    item.addEventListener("click", () => {
      if (sample.label === null) select(sample.index);
    });
  }
}

function select(index) {
  current = index;
  renderSample();
  renderQueue();
}

// ---- labelling ---------------------------------------------------------------------------------------------

async function give(label) {
  if (busy || current === null || !summary || label >= summary.num_classes) return;
  const index = current;
  busy = true;
  renderSample();
  try {
    summary = await json("POST", "/api/labels", { index, label });
    shown.labelled = summary.labelled;
    round.samples.find((s) => s.index === index).label = label;
    const order = round.samples.map((s) => s.index);
    const open = pending();
    current = open.find((i) => order.indexOf(i) > order.indexOf(index)) ?? open[0] ?? null; // the next one on
    renderQueue();
    loadHistory();
  } catch (error) {
    toast(error.message);
    if (error.status === 409) await loadRound().catch(() => {});
  } finally {
    busy = false;
    if (summary) render();
  }
  startIfDone();
}

async function undo() {
  if (busy) return;
  busy = true;
  try {
    const answer = await json("DELETE", "/api/labels/last");
    summary = answer.state;
    shown.labelled = summary.labelled;
    await loadRound();
    select(answer.undone.index);
    loadHistory();
    toast(`Sample ${answer.undone.index}: label ${answer.undone.label} taken back`);
  } catch (error) {
    toast(error.message);
  } finally {
    busy = false;
    if (summary) render();
  }
}

async function startRound(byItself = false) {
  try {
    summary = await json("POST", "/api/rounds");
    render();
    schedule(600);
  } catch (error) {
    if (!(byItself && error.status === 409)) toast(error.message); // another tab may have started it first
  }
}

// Once a round's samples are all labelled, the next round starts by itself (unless unticked), once per round.
function startIfDone() {
  if (!$("auto").checked || !summary || training() || busy || summary.pending > 0) return;
  if (summary.labelled === 0 || summary.labelled === summary.pool_size || autoStarted === summary.round) return;
  autoStarted = summary.round;
  startRound(true);
}

for (const [id, action] of [["undo", undo], ["next", () => startRound()]]) {
  $(id).addEventListener("click", (event) => {
    event.currentTarget.blur();
    action();
  });
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.altKey || event.ctrlKey || event.metaKey) return;
  if (/^[0-9]$/.test(event.key)) {
    give(Number(event.key));
  } else if (event.key === "Backspace" || event.key === "u" || event.key === "U") {
    event.preventDefault();
    undo();
  } else if (event.key === "n" || event.key === "N") {
    if (!$("next").disabled) startRound();
  } else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
    const open = pending();
    if (!open.length) return;
    const step = event.key === "ArrowRight" ? 1 : -1;
    select(open[(open.indexOf(current) + step + open.length) % open.length]);
    event.preventDefault();
  }
});

// ---- history and charts ------------------------------------------------------------------------------------

async function loadHistory() {
  const history = await json("GET", "/api/history?limit=200").catch(() => null);
  if (!history) return;
  $("history-total").textContent = `(${history.total})`;
  const list = $("history");
  list.replaceChildren();
  for (const entry of history.labels) {
    const item = el("li", { "data-index": entry.index }, list);
    showImage(el("img", { alt: `sample ${entry.index}` }, item), entry.image);
    el("span", { class: "class" }, item, String(entry.label));
    el("span", {}, item, `sample ${entry.index}`);
    const score = entry.score === null ? "random" : `score ${fmt(entry.score)}`;
    el("span", { class: "meta" }, item, `round ${entry.round} · ${score}`);
  }
}

const CHART = { left: 40, right: 12, top: 22, bottom: 30 };

function axes(svg, width, height, xTicks, yTicks, xLabel, yLabel) {
  const { left, right, top, bottom } = CHART;
  el("svg:line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }, svg);
  el("svg:line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }, svg);
  for (const [x, text] of xTicks) el("svg:text", { x, y: height - bottom + 12, "text-anchor": "middle" }, svg, text);
  for (const [y, text] of yTicks) el("svg:text", { x: left - 4, y: y + 3, "text-anchor": "end" }, svg, text);
  el("svg:text", { x: (left + width - right) / 2, y: height - 2, "text-anchor": "middle" }, svg, xLabel);
  el("svg:text", { x: 2, y: 10, "text-anchor": "start" }, svg, yLabel);
}

function niceTicks(low, high, count) {
  const step = Math.max(1, Math.ceil((high - low) / count));
  const ticks = [];
  for (let v = Math.ceil(low / step) * step; v <= high; v += step) ticks.push(v);
  return ticks;
}

async function loadCurve() {
  const curve = await json("GET", "/api/curve").catch(() => null);
  if (!curve) return;
  const svg = $("curve");
  svg.replaceChildren();
  const points = curve.points;
  $("curve-note").textContent = !summary.has_test_labels
    ? "The data have no test labels, so there is no learning curve."
    : points.length
      ? `Last: ${(points[points.length - 1].test_accuracy * 100).toFixed(1)}% test accuracy on ${points[points.length - 1].labels} labels`
      : "A point per round, once a model has trained.";
  if (!points.length) return;
  const [width, height] = [340, 190];
  const { left, right, top, bottom } = CHART;
  const maxLabels = Math.max(...points.map((p) => p.labels), 1);
  const low = Math.max(0, Math.floor((Math.min(...points.map((p) => p.test_accuracy)) - 0.02) * 10) / 10);
  const x = (v) => left + (v / maxLabels) * (width - left - right);
  const y = (v) => height - bottom - ((v - low) / (1 - low)) * (height - top - bottom);
  const step = 1 - low > 0.5 ? 0.2 : 0.1;
  const yTicks = [];
  for (let v = 1; v >= low - 1e-9; v -= step) yTicks.push([y(v), `${Math.round(v * 100)}%`]);
  axes(svg, width, height, niceTicks(0, maxLabels, 5).map((v) => [x(v), String(v)]), yTicks, "labels", "test accuracy");
  el("svg:polyline", { class: "line", points: points.map((p) => `${x(p.labels)},${y(p.test_accuracy)}`).join(" ") }, svg);
  for (const p of points) {
    const dot = el("svg:circle", { class: "point", cx: x(p.labels), cy: y(p.test_accuracy), r: 3.5 }, svg);
    el("svg:title", {}, dot, `round ${p.round}: ${(p.test_accuracy * 100).toFixed(1)}% on ${p.labels} labels`);
  }
}

async function loadScores() {
  const h = await json("GET", "/api/scores").catch(() => null);
  if (!h) return;
  const svg = $("scores");
  svg.replaceChildren();
  $("scores-round").textContent = h.round === null ? "(after the first model)" : `(round ${h.round})`;
  if (h.round === null) return;
  const [width, height] = [340, 170];
  const { left, right, top, bottom } = CHART;
  const base = height - bottom - 8; // room below the bars for the proposals' marks
  const edges = h.edges;
  const [lo, hi] = [edges[0], edges[edges.length - 1]];
  const span = hi - lo || 1;
  const x = (v) => left + ((v - lo) / span) * (width - left - right);
  const totals = h.unlabelled.map((n, i) => n + h.labelled[i]);
  const scale = Math.sqrt(Math.max(...totals, 1));
  const y = (n) => base - (Math.sqrt(n) / scale) * (base - top); // square root: the few high scores stay visible
  for (let i = 0; i < totals.length; i++) {
    const [x0, x1] = [x(edges[i]) + 0.5, Math.max(x(edges[i + 1]) - 0.5, x(edges[i]) + 1)];
    for (const [kind, from, to] of [["unlabelled", 0, h.unlabelled[i]], ["labelled", h.unlabelled[i], totals[i]]]) {
      if (to <= from) continue;
      const bar = el("svg:rect", { class: kind, x: x0, width: x1 - x0, y: y(to), height: y(from) - y(to) }, svg);
      el("svg:title", {}, bar, `${to - from} ${kind}, scores ${fmt(edges[i])} to ${fmt(edges[i + 1])}`);
    }
  }
  for (const p of h.proposed) {
    const mark = el("svg:path", { class: "proposed", d: `M${x(p.score)},${base + 1} l-4,7 h8 z` }, svg);
    el("svg:title", {}, mark, `proposed: sample ${p.index}, score ${fmt(p.score)}`);
  }
  const max = Math.max(...totals);
  axes(svg, width, height, [lo, (lo + hi) / 2, hi].map((v) => [x(v), fmt(v, 2)]), [[y(max), String(max)], [y(0), "0"]], "score", "samples");
}

refresh();
