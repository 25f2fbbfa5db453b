// The interactive evaluation page: plain JS, no build step, no library. Every call goes to this
// app's /interactive API with the bearer key (asked for on a 401, kept in sessionStorage only).
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const COLORS = { A: "#2563eb", B: "#ea580c" };
const state = { key: sessionStorage.getItem("aloe-key"), options: null, personas: [], view: null, busy: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function status(text, error = false) {
  const s = $("#status");
  s.textContent = text || "";
  s.className = error ? "error" : "";
}

function askKey() {
  $("#keyform").hidden = false;
  $("#apikey").focus();
}

async function api(path, opts = {}) {
  const headers = { "content-type": "application/json", ...(opts.headers || {}) };
  if (state.key) headers.authorization = "Bearer " + state.key;
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401) {
    askKey();
    throw new Error("this server needs an API key: enter it above");
  }
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(`${r.status}: ${msg}`);
  }
  return r;
}

const getJSON = async (path) => (await api(path)).json();
const postJSON = async (path, body) => (await api(path, { method: "POST", body: JSON.stringify(body ?? {}) })).json();

async function guarded(fn) {
  if (state.busy) return;
  state.busy = true;
  document.body.classList.add("busy");
  try { await fn(); } catch (e) { status(e.message, true); } finally {
    state.busy = false;
    document.body.classList.remove("busy");
  }
}

// ---- setup ------------------------------------------------------------------------------------

async function loadOptions() {
  state.options = await getJSON("/interactive/options");
  state.personas = (await getJSON("/interactive/personas")).personas;
  $("#keyform").hidden = !state.key;
  for (const sel of ["#modelA", "#modelB"]) {
    for (const m of state.options.models) $(sel).append(el("option", { value: m }, m));
  }
  const persona = $("#persona");
  state.personas.forEach((p, i) => persona.insertBefore(
    el("option", { value: p.persona_id }, `#${i + 1} ${p.persona_id}: ${p.profile.slice(0, 60)}…`), persona.lastChild));
  persona.value = state.personas.length ? state.personas[0].persona_id : "__custom";
  $("#turns").max = state.options.max_turns;
  $("#maxTokens").max = state.options.max_tokens_limit;
  $("#maxTokens").placeholder = `default ${state.options.default_max_tokens}`;
  showPersona();
  status(`simulator ${state.options.roles.simulator}, judge ${state.options.roles.judge} (${state.options.judge.scoring} scoring)`);
}

function showPersona() {
  const custom = $("#persona").value === "__custom";
  document.querySelectorAll(".custom").forEach((n) => { n.hidden = !custom; });
  const p = state.personas.find((x) => x.persona_id === $("#persona").value);
  $("#persona-text").textContent = p ? `Profile: ${p.profile}  Personality: ${p.personality}` : "";
}

async function startSession() {
  const body = { models: [$("#modelA").value], mode: $("#mode").value, turns: Number($("#turns").value) };
  if ($("#modelB").value) body.models.push($("#modelB").value);
  if ($("#maxTokens").value) body.max_tokens = Number($("#maxTokens").value);
  if ($("#seed").value) body.seed = Number($("#seed").value);
  if ($("#persona").value === "__custom") body.persona = { profile: $("#profile").value, personality: $("#personality").value };
  else body.persona_id = $("#persona").value;
  state.view = await postJSON("/interactive/sessions", body);
  $("#setup").hidden = true;
  $("#session").hidden = false;
  $("#reveal").hidden = true;
  render();
  status(`session ${state.view.session_id} started`);
}

// ---- a session --------------------------------------------------------------------------------

function addTurn(view) {
  const { levels, turns_left, ...turn } = view;
  state.view.turns.push(turn);
  state.view.levels = levels;
  render();
}

async function playTurn(message) {
  const view = await postJSON(`/interactive/sessions/${state.view.session_id}/turns`, message === undefined ? {} : { message });
  addTurn(view);
  status(`turn ${view.turn} judged`);
}

async function runAll() {
  const r = await api(`/interactive/sessions/${state.view.session_id}/run`, { method: "POST", body: "{}" });
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      const event = JSON.parse(line);
      if (event.event === "turn") { addTurn(event); status(`turn ${event.turn} judged (streaming)`); }
      else if (event.event === "error") throw new Error(`${event.status}: ${event.error.message}`);
      else if (event.event === "done") { state.view = event.session; render(); status("all turns played"); }
    }
  }
}

async function prefer(turn, label) {
  const out = await postJSON(`/interactive/sessions/${state.view.session_id}/preferences`, { turn, preferred: label });
  state.view.preferences = out.preferences;
  for (const t of state.view.turns) t.preferred = out.preferences[String(t.turn)] || null;
  render();
  status(`turn ${turn}: you preferred ${label}`);
}

async function finish() {
  state.view = await postJSON(`/interactive/sessions/${state.view.session_id}/finish`);
  render();
  status("session finished and written");
}

async function download() {
  const view = await getJSON(`/interactive/sessions/${state.view.session_id}`);
  const blob = new Blob([JSON.stringify(view, null, 2)], { type: "application/json" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `${view.session_id}.json` });
  document.body.append(a);
  a.click();
  a.remove();
}

function scoreText(score) {
  return score === null || score === undefined ? "score missing" : `score ${score.toFixed(2)}`;
}

function render() {
  const v = state.view;
  $("#session-id").textContent = v.session_id;
  const p = v.persona;
  $("#session-meta").textContent = `${v.mode} · ${v.turns.length}/${v.planned_turns} turns · ` +
    (v.side_by_side ? "side by side, blind (A/B)" : `model ${v.models ? v.models.A : ""}`) +
    ` · persona ${p.persona_id}: ${p.profile} ${p.personality}`;
  const list = $("#transcript");
  list.replaceChildren(...v.turns.map((t) => el("div", { class: "turn", "data-turn": t.turn },
    el("div", { class: "bubble user" }, el("b", {}, `Turn ${t.turn} · user`), el("p", {}, t.user_message)),
    el("div", { class: "replies" }, Object.entries(t.replies).map(([label, r]) => el("div", {
      class: "bubble reply" + (t.preferred === label ? " preferred" : ""), "data-label": label,
    },
    el("b", { style: `color:${COLORS[label]}` }, v.side_by_side ? `Reply ${label}` : "Reply"),
    el("span", { class: "score", title: r.score_probs ? `P(1..5) = ${r.score_probs.map((x) => x.toFixed(2)).join(", ")}` : r.judge_raw || "" }, scoreText(r.score)),
    r.finish_reason === "length" ? el("span", { class: "flag" }, "cut at max_tokens") : null,
    t.continued === label && v.side_by_side ? el("span", { class: "flag" }, "continued") : null,
    el("p", {}, r.reply),
    v.side_by_side && !v.ended ? el("button", { class: "prefer", "data-label": label,
      onclick: () => guarded(() => prefer(t.turn, label)) }, t.preferred === label ? `Preferred ${label}` : `Prefer ${label}`) : null,
    ))))));
  list.lastElementChild?.scrollIntoView({ block: "nearest" });
  const live = !v.ended && v.turns.length < v.planned_turns;
  $("#human-controls").hidden = !(live && v.mode === "human");
  $("#sim-controls").hidden = !(live && v.mode === "simulated");
  $("#finish").hidden = Boolean(v.ended);
  if (v.ended) {
    const models = Object.entries(v.models || {}).map(([l, m]) => `${l} = ${m}`).join(", ");
    const written = v.written ? ` Written to ${Object.values(v.written.evals || {}).join(", ")}` +
      (v.written.dpo ? `; preferences: ${v.written.dpo}` : "") : "";
    $("#reveal").textContent = `Session ${v.ended}. Models: ${models}.${written}`;
    $("#reveal").hidden = false;
  }
  drawChart();
}

function drawChart() {
  const v = state.view;
  const svg = $("#chart");
  const W = 360, H = 200, L = 34, R = 10, T = 10, B = 26;
  const n = Math.max(v.planned_turns, 2);
  const x = (k) => L + (k - 1) * (W - L - R) / (n - 1);
  const y = (s) => T + (5 - s) * (H - T - B) / 4;
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, val] of Object.entries(attrs)) e.setAttribute(k, val);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  svg.replaceChildren();
  for (let s = 1; s <= 5; s++) {
    svg.append(node("line", { x1: L, x2: W - R, y1: y(s), y2: y(s), class: "gridline" }));
    svg.append(node("text", { x: L - 8, y: y(s) + 4, "text-anchor": "end", class: "tick" }, s));
  }
  for (let k = 1; k <= v.planned_turns; k++) svg.append(node("text", { x: x(k), y: H - 8, "text-anchor": "middle", class: "tick" }, k));
  const legend = [];
  for (const [label, m] of Object.entries(v.levels || {})) {
    const pts = m.AL.map((s, i) => [i + 1, s]).filter(([, s]) => s !== null);
    if (pts.length) {
      svg.append(node("polyline", { points: pts.map(([k, s]) => `${x(k)},${y(s)}`).join(" "), fill: "none",
        stroke: COLORS[label], "stroke-width": 2, class: `al-line al-${label}` }));
      for (const [k, s] of pts) svg.append(node("circle", { cx: x(k), cy: y(s), r: 3.5, fill: COLORS[label], class: "al-point" }));
    }
    const ir = m.IR === null ? "–" : m.IR.toFixed(2);
    legend.push(`${v.side_by_side ? label : "AL(k)"}: ${m.AL.map((s) => (s === null ? "–" : s.toFixed(2))).join(" ")} (IR ${ir})`);
  }
  $("#chart-legend").textContent = legend.length ? legend.join(" · ") : "AL(k): judge score per turn";
}

// ---- trees ------------------------------------------------------------------------------------

const SHOWN = new Set(["text", "role", "turn", "label", "personalized", "continued", "candidate_index",
  "induced_profile", "induced_personality", "induced_ok", "induced_raw", "judge_choice", "judge_probs", "judge_order"]);

function cutFlags(n) {  // the run's quality flags on a node: a request cut at max_tokens
  return [["finish_reason", "cut at max_tokens"], ["induced_finish_reason", "inducer cut"], ["judge_finish_reason", "judge cut"]]
    .filter(([c]) => n[c] === "length").map(([, text]) => el("span", { class: "flag" }, text));
}

async function loadTrees() {
  const out = await getJSON("/interactive/trees");
  $("#trees-root").textContent = out.root;
  $("#trees-table tbody").replaceChildren(...out.trees.map((t) => el("tr", {
    class: "tree-row", "data-tree": t.tree_id, onclick: () => guarded(() => openTree(t.tree_id)),
  }, el("td", {}, el("code", {}, t.tree_id)), el("td", { class: `st-${t.status}` }, t.status + (t.failure_reason ? `: ${t.failure_reason}` : "")),
  el("td", {}, t.turns), el("td", {}, t.num_nodes), el("td", {}, `${t.persona_id}: ${(t.profile || "").slice(0, 80)}…`))));
  status(`${out.trees.length} trees`);
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (Array.isArray(v)) return "[" + v.map(fmt).join(", ") + "]";
  if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(3);
  return String(v);
}

function columns(n, extra) {
  const flags = extra.filter((c) => n[c] !== null && n[c] !== undefined)
    .map((c) => el("span", { class: "flag extra", "data-column": c }, `${c}: ${fmt(n[c])}`));
  const rest = Object.keys(n).filter((c) => !SHOWN.has(c));
  return [flags.length ? el("div", { class: "extras" }, flags) : null,
    el("details", {}, el("summary", {}, "all columns"), el("table", { class: "cols" },
      rest.map((c) => el("tr", {}, el("th", {}, c), el("td", {}, fmt(n[c])))))),
  ];
}

function userNode(n, kids, extra) {
  const probs = n.judge_probs || [];
  const cands = (kids.get(n.node_id) || []).sort((a, b) => a.candidate_index - b.candidate_index);
  const induced = n.induced_ok ? `profile: ${fmt(n.induced_profile)} · personality: ${fmt(n.induced_personality)}`
    : `inducer reply not parsed: ${fmt(n.induced_raw)}`;
  return el("li", { class: "tnode user", "data-node": n.node_id },
    el("div", { class: "bubble user" }, el("b", {}, `Turn ${n.turn} · user`), el("p", {}, n.text),
      el("p", { class: "meta" }, `induced persona: ${induced}`),
      el("p", { class: "meta" }, `judge chose ${fmt(n.judge_choice)}, probabilities ${fmt(n.judge_probs)}`),
      n.judge_order ? el("p", { class: "meta judge-order" }, `judge saw candidates in the order ${fmt(n.judge_order)}`) : null,
      n.text_raw && n.text_raw !== n.text ? el("p", { class: "meta" }, `simulator's raw reply: ${n.text_raw}`) : null,
      cutFlags(n), columns(n, extra)),
    el("ul", {}, cands.map((c) => el("li", { class: "tnode assistant" },
      el("div", { class: `bubble reply ${c.label || ""}`, "data-label": c.label || "" },
        el("b", {}, `Candidate ${c.candidate_index} · ${c.personalized ? "personalized" : "plain"}`),
        el("span", { class: `badge ${c.label}` }, c.label || "unlabelled"),
        c.continued ? el("span", { class: "flag" }, "continued") : null, cutFlags(c),
        probs[c.candidate_index] !== undefined ? el("span", { class: "score" }, `judge p ${fmt(probs[c.candidate_index])}`) : null,
        el("p", {}, c.text), columns(c, extra)),
      el("ul", {}, (kids.get(c.node_id) || []).map((u) => userNode(u, kids, extra)))))));
}

async function openTree(treeId) {
  const out = await getJSON(`/interactive/trees/${encodeURIComponent(treeId)}`);
  const kids = new Map();
  let root = null;
  for (const n of out.nodes) {
    if (n.parent_id === null) { if (n.role === "user") root = n; continue; }
    if (!kids.has(n.parent_id)) kids.set(n.parent_id, []);
    kids.get(n.parent_id).push(n);
  }
  $("#tree-id").textContent = treeId;
  $("#tree-persona").textContent = `${out.tree.persona_id} · ${out.tree.status} · Profile: ${out.tree.profile}  Personality: ${out.tree.personality}`;
  $("#tree-body").replaceChildren(el("ul", { class: "tree" }, root ? userNode(root, kids, out.extra_columns) : el("li", {}, "no nodes")));
  $("#tree-detail").hidden = false;
  status(`tree ${treeId}: ${out.nodes.length} nodes` + (out.extra_columns.length ? `; extra columns: ${out.extra_columns.join(", ")}` : ""));
}

// ---- wiring -----------------------------------------------------------------------------------

function showView(name) {
  for (const v of ["chat", "trees"]) {
    $(`#view-${v}`).hidden = v !== name;
    $(`#tab-${v}`).classList.toggle("active", v === name);
  }
  if (name === "trees") guarded(loadTrees);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => showView(b.dataset.view)));
  $("#keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("#apikey").value.trim() || null;
    if (state.key) sessionStorage.setItem("aloe-key", state.key); else sessionStorage.removeItem("aloe-key");
    status("key set");
    if (!state.options) guarded(loadOptions);
  });
  $("#persona").addEventListener("change", showPersona);
  $("#start").addEventListener("click", () => guarded(startSession));
  $("#next").addEventListener("click", () => guarded(() => playTurn()));
  $("#runAll").addEventListener("click", () => guarded(runAll));
  $("#send").addEventListener("click", () => guarded(async () => {
    await playTurn($("#message").value);
    $("#message").value = "";
  }));
  $("#finish").addEventListener("click", () => guarded(finish));
  $("#download").addEventListener("click", () => guarded(download));
  $("#newSession").addEventListener("click", () => { $("#session").hidden = true; $("#setup").hidden = false; state.view = null; });
  guarded(loadOptions);
});
