// ophiura dashboard: polls /api/v1/status and /api/v1/events every second and renders them.
// Everything from the server goes through textContent (never innerHTML): event descriptions
// carry agents' output, which must not become markup.
"use strict";

const REFRESH_MS = 1000;
const MAX_EVENTS = 100;
const TOKEN_KEY = "ophiura.token";

const ui = {
  switchTo: {},       // hierarchy -> node chosen in its "switch to" select (kept across renders)
  events: [],         // newest last, at most MAX_EVENTS
  eventsSince: 0,
  role: null,
  timer: null,
  busy: false,
};

// -- small helpers ----------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const COLOURS = {
  green: ["running", "up", "online", "self", "ok"],
  amber: ["starting", "stopping", "recovering", "leaving", "restarting", "no-quorum"],
  red: ["failed", "stop-failed", "dead", "down", "fenced"],
  blue: ["standby"],
};

function colour(state) {
  for (const [c, names] of Object.entries(COLOURS)) if (names.includes(state)) return c;
  return "";
}

function pill(text, state, title) {
  return h("span", { class: `pill ${colour(state ?? text)}`, title }, text);
}

function ago(seconds) {
  if (seconds === undefined || seconds === null) return "never";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

function clock(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function toast(text, good) {
  const t = $("toast");
  t.textContent = text;
  t.className = `toast ${good ? "good" : "bad"}`;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, good ? 3000 : 8000);
}

// -- the API ----------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const opts = { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
  if (resp.status === 401) throw new Unauthorized(data.error || "unauthorized");
  if (!resp.ok) throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  return data;
}

async function action(label, path, body) {
  if (!confirm(`${label}?`)) return;
  try {
    await api(path, body || {});
    toast(`${label}: done`, true);
  } catch (err) {
    toast(`${label}: ${err.message}`, false);
  }
  refresh();
}

// -- rendering --------------------------------------------------------------------------------

function renderSummary(st) {
  $("cluster").textContent = st.cluster;
  $("asked").textContent = st.node;
  const adm = st.admin;
  const quorum = st.quorum_mode === "quorate"
    ? pill(st.quorate ? "quorate" : "NO QUORUM", st.quorate ? "ok" : "failed")
    : pill(`quorum: ${st.quorum_mode}`, "", "every hierarchy is recovered by its own-able resource");
  $("summary").replaceChildren(...[
    pill(`asked ${st.node}: ${st.state}`, st.state),
    quorum,
    adm.m ? pill("MAINTENANCE: no recovery", "stopping") : pill("maintenance off", "ok"),
    adm.s.length ? pill(`standby: ${adm.s.join(", ")}`, "standby") : null,
    adm.f.length ? h("span", { class: "pill cyan" }, `frozen: ${adm.f.join(", ")}`) : null,
  ].filter(Boolean));
  const m = $("maintenance");
  m.textContent = adm.m ? "Leave maintenance" : "Maintenance mode";
  m.className = adm.m ? "btn warn" : "btn";
  m.title = `admin state version ${adm.v}${adm.o ? ` (last change via ${adm.o})` : ""}`;
  m.disabled = ui.role !== "admin";
  m.onclick = () => action(adm.m ? "Leave maintenance mode" : "Enter maintenance mode (no recovery anywhere)",
    "/api/v1/maintenance", { on: !adm.m });
}

function renderNodes(st) {
  const standby = new Set(st.admin.s);
  const linkNames = [...new Set(Object.values(st.nodes).flatMap((n) => Object.keys(n.links || {})))];
  const rows = [h("tr", {}, h("th", {}, "node"), h("th", {}, "liveness · state"),
    h("th", {}, "heartbeat links"), h("th", { title: "time since the last heartbeat on any link" }, "heard"), h("th", {}, ""))];
  for (const [name, n] of Object.entries(st.nodes)) {
    const isSelf = n.state === "self";
    const links = isSelf
      ? h("span", { class: "muted small" }, "answering")
      : h("div", { class: "links" }, linkNames.map((l) => pill(
        n.links[l] === "up" ? l : `${l} ${n.links[l]}`, n.links[l],
        `${l}: ${n.links[l]}, last heard ${ago(n.last_heard?.[l])} ago`)));
    const heard = Object.values(n.last_heard || {});
    const last = isSelf ? "" : ago(heard.length ? Math.min(...heard) : null);
    const sb = standby.has(name);
    rows.push(h("tr", {},
      h("td", {}, h("strong", {}, name)),
      h("td", { class: "states" }, pill(isSelf ? "self" : n.state, isSelf ? "up" : n.state,
        isSelf ? "the node answering this page" : "liveness: heard on some link within the deadline"),
      pill(n.node_state || "?", n.node_state, "node state"),
      n.fenced ? pill("fenced", "fenced") : null),
      h("td", {}, links),
      h("td", { class: "muted mono" }, last),
      h("td", {}, h("button", {
        class: "btn", disabled: ui.role !== "admin",
        onclick: () => action(sb ? `Put ${name} back online` : `Standby ${name} (move everything off it)`,
          `/api/v1/nodes/${encodeURIComponent(name)}/${sb ? "online" : "standby"}`),
      }, sb ? "Online" : "Standby")),
    ));
  }
  $("nodes").replaceChildren(...rows);
}

function renderHierarchy(name, hi, nodeNames) {
  const cols = nodeNames.filter((n) => n in hi.states || n in hi.resources);
  const head = h("tr", {}, h("th", {}, "resource"), cols.map((n) => h("th", {}, n)));
  const hierRow = h("tr", {}, h("td", {}, h("em", { class: "muted" }, "hierarchy")),
    cols.map((n) => h("td", {}, pill(hi.states[n] || "?", hi.states[n]))));
  const resRows = Object.keys(hi.local.resources).map((r) => h("tr", {},
    h("td", { class: "mono", title: hi.local.last[r] ? `last here: ${hi.local.last[r]}` : null }, r),
    cols.map((n) => h("td", {}, pill(hi.resources[n]?.[r] ?? "?", hi.resources[n]?.[r])))));
  const counts = Object.entries(hi.fail_counts || {}).map(([n, c]) =>
    `${n}: ${Object.entries(c).map(([r, k]) => `${r}×${k}`).join(" ")}`);
  const failRow = h("tr", {}, h("td", {}, h("em", { class: "muted" }, "fail counts")),
    cols.map((n) => {
      const c = hi.fail_counts?.[n];
      const total = c ? Object.values(c).reduce((a, b) => a + b, 0) : 0;
      return h("td", {}, total ? pill(String(total), "failed", JSON.stringify(c)) : h("span", { class: "muted" }, "0"));
    }));

  const targets = cols.filter((n) => n !== hi.owner);
  if (!targets.includes(ui.switchTo[name])) ui.switchTo[name] = targets[0];
  const admin = ui.role === "admin";
  const select = h("select", { disabled: !admin || !targets.length, onchange: (e) => { ui.switchTo[name] = e.target.value; } },
    targets.map((n) => h("option", { value: n, selected: n === ui.switchTo[name] }, n)));
  const actions = h("div", { class: "hier-actions" },
    select,
    h("button", {
      class: "btn primary", disabled: !admin || !targets.length || hi.frozen,
      title: hi.frozen ? "unfreeze it first" : null,
      onclick: () => action(`Switch ${name} over to ${ui.switchTo[name]}`,
        `/api/v1/hierarchies/${encodeURIComponent(name)}/switchover`, { to: ui.switchTo[name] }),
    }, "Switch over"),
    h("button", {
      class: "btn", disabled: !admin,
      onclick: () => action(`${hi.frozen ? "Unfreeze" : "Freeze"} ${name}`,
        `/api/v1/hierarchies/${encodeURIComponent(name)}/${hi.frozen ? "unfreeze" : "freeze"}`),
    }, hi.frozen ? "Unfreeze" : "Freeze"),
    h("button", {
      class: "btn", disabled: !admin,
      onclick: () => action(`Clean up ${name} (clear its fail counts everywhere)`,
        `/api/v1/hierarchies/${encodeURIComponent(name)}/cleanup`),
    }, "Cleanup"),
  );
  return h("div", { class: "hier" },
    h("div", { class: "hier-head" },
      h("span", { class: "hier-name" }, name),
      hi.owner ? pill(`owner ${hi.owner}`, "running") : pill("not running", "down"),
      h("span", { class: "pill plain muted", title: "ownership generation" }, `gen ${hi.gen}`),
      hi.frozen ? h("span", { class: "pill cyan" }, "frozen") : null,
      hi.switchover ? pill(`switchover → ${hi.switchover}`, "starting") : null,
      actions,
    ),
    h("table", { class: "grid" }, head, hierRow, resRows, failRow),
    hi.blocked ? h("p", { class: "note" }, `blocked: ${hi.blocked}`) : null,
  );
}

function renderHierarchies(st) {
  const nodeNames = Object.keys(st.nodes).sort();
  const list = Object.entries(st.hierarchies).map(([n, hi]) => renderHierarchy(n, hi, nodeNames));
  $("hierarchies").replaceChildren(...(list.length ? list : [h("p", { class: "muted" }, "no hierarchies configured")]));
}

const SUBJECT = ["hierarchy", "resource", "peer", "link"];

function renderEvents(node) {
  $("events-node").textContent = node;
  const rows = [h("tr", {}, ["time", "node", "kind", "task", "subject", "details"].map((c) => h("th", {}, c)))];
  for (const e of [...ui.events].reverse().slice(0, 40)) {
    const subject = SUBJECT.filter((k) => e[k] !== undefined && e[k] !== null && e[k] !== "")
      .map((k) => `${k}=${e[k]}`).join(" ");
    const desc = [e.state ? `state=${e.state}` : "", e.rc !== undefined && e.rc !== "" ? `rc=${e.rc}` : "", e.desc || ""]
      .filter(Boolean).join(" · ");
    const bad = /fail|dead|down|refused|fence/.test(`${e.task}`);
    rows.push(h("tr", {},
      h("td", { class: "time mono" }, clock(e.time)),
      h("td", {}, e.node),
      h("td", {}, pill(e.kind, bad ? "failed" : e.kind === "admin" ? "standby" : "")),
      h("td", { class: "mono" }, e.task || ""),
      h("td", { class: "mono" }, subject),
      h("td", { class: "desc", title: e.output || desc }, desc),
    ));
  }
  $("events").replaceChildren(...rows);
}

// -- the loop ---------------------------------------------------------------------------------

async function refresh() {
  if (ui.busy) return;
  ui.busy = true;
  clearTimeout(ui.timer);
  try {
    if (ui.role === null) {
      const me = await api("/api/v1/whoami");
      ui.role = me.role;
      $("who").textContent = `${me.name} (${me.role})`;
    }
    const [st, ev] = await Promise.all([
      api("/api/v1/status"),
      api(`/api/v1/events?since=${ui.eventsSince}&limit=${MAX_EVENTS}`),
    ]);
    for (const e of ev.events) ui.events.push(e);
    ui.events = ui.events.slice(-MAX_EVENTS);
    if (ui.events.length) ui.eventsSince = ui.events[ui.events.length - 1].time;
    showMain(true);
    renderSummary(st);
    renderNodes(st);
    renderHierarchies(st);
    renderEvents(st.node);
    $("banner").hidden = true;
    $("pulse").className = "pulse ok";
  } catch (err) {
    $("pulse").className = "pulse bad";
    if (err instanceof Unauthorized) {
      signOut(err.message);
      return;
    }
    const b = $("banner");
    b.textContent = `this node is not answering (${err.message}); retrying every second. ` +
      "Every node serves this dashboard: open another node's address if this one is down.";
    b.hidden = false;
  } finally {
    ui.busy = false;
  }
  ui.timer = setTimeout(refresh, REFRESH_MS);
}

function showMain(on) {
  $("main").hidden = !on;
  $("login").hidden = on;
  $("signout").hidden = !on;
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(ui.timer);
  ui.role = null;
  $("who").textContent = "";
  $("login-error").textContent = why || "";
  showMain(false);
  $("token").focus();
}

function start() {
  // A token in the fragment (#token=...) is taken once, then removed from the address bar;
  // fragments are never sent to the server.
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("login-error").textContent = "";
    refresh();
  });
  $("signout").addEventListener("click", () => signOut(""));
  if (sessionStorage.getItem(TOKEN_KEY)) refresh();
  else signOut("");
}

document.addEventListener("DOMContentLoaded", start);
