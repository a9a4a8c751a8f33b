// Hivemind dashboard: polls the coordinator's /v1 API once a second and renders the overview (cluster
// summary, throughput chart, queue, workers, tasks) or one task's page (#/tasks/ID). Everything shown comes
// from the API; text from tasks and guests is only ever inserted as text, never as HTML.
"use strict";

const TOKEN_KEY = "hivemind-token";
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
let subtaskOffset = 0;
const SUBTASK_PAGE = 100;
let timer = null;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const reply = await fetch(path, Object.assign({}, options, { headers }));
  if (reply.status === 401 || reply.status === 403) {
    $("token-form").hidden = false;
    const body = await reply.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || "a token is needed");
  }
  if (!reply.ok) {
    const body = await reply.json().catch(() => ({}));
    throw new Error((body.error && `${body.error.code}: ${body.error.message}`) || `HTTP ${reply.status}`);
  }
  return options.raw ? reply : reply.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "data") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows) { tbody.replaceChildren(...rows); }

function size(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function number(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }

function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${s.toFixed(1)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return new Date(ms).toLocaleString();
}

function micros(us) { return us === null || us === undefined ? "–" : us < 1000 ? `${us} µs` : `${(us / 1000).toFixed(1)} ms`; }

function stateBadge(state) { return el("span", { class: `state ${state}` }, state); }

function progress(counts, big) {
  const total = counts.queued + counts.leased + counts.succeeded + counts.failed + counts.cancelled;
  const bar = el("div", { class: big ? "progress big" : "progress", title: `${counts.succeeded} succeeded, ${counts.failed} failed of ${total}` });
  const ok = el("div", {}), bad = el("div", { class: "failed" });
  ok.style.width = total ? `${(100 * counts.succeeded) / total}%` : "0%";
  bad.style.width = total ? `${(100 * counts.failed) / total}%` : "0%";
  bar.append(ok, bad);
  return bar;
}

function drawChart(points) {
  const svg = $("chart");
  const w = 600, h = 120;
  const data = points.slice(-600);
  const max = Math.max(1, ...data.map((p) => p.succeeded_per_s + p.failed_per_s));
  const x = (i) => (data.length <= 1 ? w : (i * w) / (data.length - 1));
  const y = (v) => h - 4 - ((h - 14) * v) / max;
  const line = (f) => data.map((p, i) => `${x(i).toFixed(1)},${y(f(p)).toFixed(1)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const shape = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  $("chart-max").textContent = `peak ${number(Math.round(max))}/s`;
  svg.replaceChildren(
    shape("polyline", { points: line((p) => p.succeeded_per_s + p.failed_per_s), fill: "none", stroke: "#2a6fd6", "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" }),
    shape("polyline", { points: line((p) => p.failed_per_s), fill: "none", stroke: "#c0392b", "stroke-width": 1, "vector-effect": "non-scaling-stroke" }),
  );
}

async function renderOverview() {
  const [cluster, workers, tasks] = await Promise.all([
    api("/v1/cluster"), api("/v1/workers"), api("/v1/tasks?limit=50"),
  ]);
  $("c-workers").textContent = `${cluster.workers_alive} / ${cluster.workers_total}`;
  $("c-slots").textContent = `${cluster.slots_in_use} / ${cluster.slots}`;
  $("c-queued").textContent = number(cluster.queued_total);
  const last = cluster.throughput[cluster.throughput.length - 1];
  $("c-rate").textContent = last ? number(Math.round(last.succeeded_per_s + last.failed_per_s)) : "0";
  $("c-done").textContent = `${number(cluster.subtasks_succeeded)} · ${number(cluster.subtasks_failed)}`;
  drawChart(cluster.throughput);
  fill($("queue").tBodies[0], cluster.queue_by_priority.length
    ? cluster.queue_by_priority.map((q) => el("tr", {}, el("td", {}, q.priority), el("td", {}, number(q.queued))))
    : [el("tr", {}, el("td", { colspan: 2, class: "muted" }, "empty"))]);
  fill($("workers").tBodies[0], workers.workers.map((w) => el("tr", { data: { worker: w.worker_id } },
    el("td", { title: w.worker_id }, w.name),
    el("td", {}, stateBadge(w.state)),
    el("td", {}, `${w.running} / ${w.slots}`),
    el("td", {}, size(w.memory_bytes)),
    el("td", {}, w.resources.cores || w.cores),
    el("td", {}, `${Math.round((w.resources.cpu_load || 0) * 100)} % (load ${(w.resources.load_average || 0).toFixed(2)})`),
    el("td", {}, `${size(w.resources.available_memory_bytes)} of ${size(w.resources.total_memory_bytes)}`),
    el("td", {}, ago(w.last_heartbeat_ms)),
    el("td", {}, number(w.completed)),
    el("td", {}, number(w.failed)),
    el("td", {}, Object.entries(w.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ")),
  )));
  fill($("tasks").tBodies[0], tasks.tasks.map((t) => {
    const c = t.subtasks;
    const total = c.queued + c.leased + c.succeeded + c.failed + c.cancelled;
    return el("tr", { data: { task: t.task_id, state: t.state } },
      el("td", {}, el("a", { href: `#/tasks/${t.task_id}` }, t.task_id)),
      el("td", {}, stateBadge(t.state)),
      el("td", {}, progress(c, false)),
      el("td", {}, `${number(c.succeeded + c.failed + c.cancelled)} / ${number(total)}`),
      el("td", {}, number(c.failed)),
      el("td", {}, t.priority),
      el("td", { title: t.module_id }, t.module_id.slice(0, 19) + "…"),
      el("td", {}, ago(t.created_at_ms)),
    );
  }));
}

async function renderTask(id) {
  const state = $("s-state").value;
  const query = new URLSearchParams({ offset: subtaskOffset, limit: SUBTASK_PAGE });
  if (state) query.set("state", state);
  const [task, list] = await Promise.all([
    api(`/v1/tasks/${encodeURIComponent(id)}`),
    api(`/v1/tasks/${encodeURIComponent(id)}/subtasks?${query}`),
  ]);
  $("t-id").textContent = task.task_id;
  $("t-state").className = `state ${task.state}`;
  $("t-state").textContent = task.state;
  $("t-progress").replaceChildren(progress(task.subtasks, true));
  const c = task.subtasks;
  const facts = [
    ["module", task.module_id], ["phase", task.phase], ["priority", task.priority],
    ["subtasks", `${c.queued} queued, ${c.leased} running, ${c.succeeded} succeeded, ${c.failed} failed, ${c.cancelled} cancelled`],
    ["fuel consumed", number(task.usage.fuel_consumed)], ["peak memory", size(task.usage.peak_memory_bytes)],
    ["wall time (sum)", micros(task.usage.wall_time_us)],
    ["created", new Date(task.created_at_ms).toLocaleString()],
    ["finished", task.finished_at_ms ? new Date(task.finished_at_ms).toLocaleString() : "–"],
  ];
  if (Object.keys(task.requires || {}).length) facts.push(["requires", Object.entries(task.requires).map(([k, v]) => `${k}=${v}`).join(" ")]);
  $("t-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("t-error").hidden = !task.error;
  $("t-error").textContent = task.error || "";
  const finished = ["succeeded", "failed", "cancelled"].includes(task.state);
  $("t-download").disabled = !(task.state === "succeeded" || task.state === "cancelled");
  $("t-cancel").disabled = finished;
  $("s-range").textContent = `(${subtaskOffset + 1}–${subtaskOffset + list.subtasks.length})`;
  $("s-prev").disabled = subtaskOffset === 0;
  $("s-next").disabled = list.subtasks.length < SUBTASK_PAGE;
  fill($("subtasks").tBodies[0], list.subtasks.map((s) => el("tr", { data: { subtask: s.subtask_id, state: s.state } },
    el("td", {}, s.phase), el("td", {}, s.index), el("td", {}, stateBadge(s.state)), el("td", {}, s.attempt),
    el("td", {}, s.worker_id || "–"),
    el("td", {}, s.usage ? number(s.usage.fuel_consumed) : "–"),
    el("td", {}, s.usage ? size(s.usage.peak_memory_bytes) : "–"),
    el("td", {}, s.usage ? micros(s.usage.wall_time_us) : "–"),
    el("td", { class: "wrap" }, s.error_kind ? `${s.error_kind}: ${s.error || ""}` : ""),
    el("td", { class: "wrap" }, s.attempts.map((a) => `#${a.attempt} on ${a.worker_id || "?"}: ${a.error_kind} ${a.error}`).join("; ")),
  )));
}

function route() {
  const match = location.hash.match(/^#\/tasks\/([A-Za-z0-9-]+)/);
  $("overview").hidden = !!match;
  $("task-page").hidden = !match;
  return match ? match[1] : null;
}

async function refresh() {
  clearTimeout(timer);
  const taskId = route();
  try {
    if (taskId) await renderTask(taskId);
    else await renderOverview();
    $("error").hidden = true;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("error").hidden = false;
    $("error").textContent = String(e.message || e);
  }
  timer = setTimeout(refresh, POLL_MS);
}

async function downloadResult() {
  const id = route();
  const reply = await api(`/v1/tasks/${encodeURIComponent(id)}/result`, { raw: true });
  const blob = new Blob([await reply.text()], { type: "application/json" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `${id}-result.json` });
  document.body.append(link);
  link.click();
  link.remove();
}

function init() {
  $("where").textContent = location.host;
  $("token-form").hidden = true;
  $("token-button").addEventListener("click", () => { $("token-form").hidden = !$("token-form").hidden; });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token-form").hidden = true;
    refresh();
  });
  $("token-clear").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); refresh(); });
  $("t-download").addEventListener("click", () => downloadResult().catch((e) => alert(e.message)));
  $("t-cancel").addEventListener("click", () => api(`/v1/tasks/${encodeURIComponent(route())}/cancel`, { method: "POST" }).then(refresh, (e) => alert(e.message)));
  $("s-state").addEventListener("change", () => { subtaskOffset = 0; refresh(); });
  $("s-prev").addEventListener("click", () => { subtaskOffset = Math.max(0, subtaskOffset - SUBTASK_PAGE); refresh(); });
  $("s-next").addEventListener("click", () => { subtaskOffset += SUBTASK_PAGE; refresh(); });
  window.addEventListener("hashchange", () => { subtaskOffset = 0; refresh(); });
  refresh();
}

init();
