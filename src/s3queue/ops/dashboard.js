"use strict";
const $ = (id) => document.getElementById(id);
let chosen = null;
let refresh = 5;

function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "–" : value;
  if (cls) td.className = cls;
  return td;
}

function count(row, n, deadly) {
  cell(row, n.toLocaleString(), n === 0 ? "zero" : (deadly ? "dead" : ""));
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "–";
}

async function getJSON(path) {
  const answer = await fetch(path);
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error + (body.fix ? " (" + body.fix + ")" : ""));
  return body;
}

async function loadOverview() {
  const data = await getJSON("api/queues");
  refresh = data.refresh;
  $("url").textContent = data.url;
  $("stamp").textContent = "read " + new Date(data.fetched_at * 1000).toLocaleTimeString()
    + " · " + data.storage_requests.total.toLocaleString() + " storage requests since start";
  const body = $("queues");
  body.replaceChildren();
  if (data.queues.length === 0) {
    cell(body.insertRow(), "no queues under this URL yet").colSpan = 10;
  }
  for (const q of data.queues) {
    const row = body.insertRow();
    row.className = "pick" + (q.name === chosen ? " chosen" : "");
    row.onclick = () => choose(q.name);
    cell(row, q.name);
    for (const key of ["pending", "delayed", "processing", "completed"]) count(row, q[key]);
    cell(row, q.completed_per_s === null ? null : q.completed_per_s.toFixed(1));
    count(row, q.dead, true);
    count(row, q.cancelled);
    count(row, q.retried);
    count(row, q.recovered);
    if (q.name === chosen) showShards(q);
  }
  showProblems(data.queues);
}

function showProblems(queues) {
  const body = $("problems");
  body.replaceChildren();
  let found = 0;
  for (const q of queues) {
    for (const p of q.problems || []) {
      const row = body.insertRow();
      cell(row, q.name);
      cell(row, p.key, "text");
      cell(row, p.what, "text dead");
      found += 1;
    }
  }
  $("problems-box").hidden = found === 0;
}

function showShards(q) {
  const body = $("shards");
  body.replaceChildren();
  for (const s of q.shards) {
    const row = body.insertRow();
    cell(row, s.shard);
    for (const key of ["pending", "delayed", "processing", "completed"]) count(row, s[key]);
    count(row, s.dead, true);
    count(row, s.cancelled);
    cell(row, s.window_segments);
    cell(row, s.cursor_bytes.toLocaleString());
  }
}

async function loadDead() {
  const data = await getJSON("api/queues/" + encodeURIComponent(chosen) + "/dead?limit=50");
  const body = $("dead");
  body.replaceChildren();
  if (data.dead.length === 0) cell(body.insertRow(), "none").colSpan = 4;
  for (const m of data.dead) {
    const row = body.insertRow();
    const link = cell(row, m.id, "pick");
    link.onclick = () => { $("message-id").value = m.id; showMessage(m.id); };
    cell(row, m.attempts + " / " + m.max_attempts);
    const last = m.errors[m.errors.length - 1];
    cell(row, last ? last.type + ": " + last.message : "", "text");
    cell(row, when(m.finished_at));
  }
}

async function loadWorkers() {
  const data = await getJSON("api/queues/" + encodeURIComponent(chosen) + "/workers");
  const lead = data.coordinator;
  const leading = lead && lead.lease_left_seconds > 0;
  $("coordinator").textContent = leading
    ? "(coordinator " + lead.id + ", epoch " + lead.epoch + ")"
    : "(no coordinator now: one takes the lease within a heartbeat interval)";
  const body = $("workers");
  body.replaceChildren();
  if (data.workers.length === 0) cell(body.insertRow(), "no heartbeats: no worker serves this queue").colSpan = 7;
  for (const w of data.workers) {
    const row = body.insertRow();
    cell(row, w.id, "text");
    let state = w.problem ? "unreadable" : {true: "alive", false: "dead"}[w.alive] || "unknown";
    if (leading && w.id === lead.id) state += ", coordinator";
    cell(row, state, w.alive === false || w.problem ? "dead" : "");
    cell(row, w.seen_seconds_ago === null ? "?" : Math.round(w.seen_seconds_ago) + " s ago");
    cell(row, w.host || "", "text");
    cell(row, w.pid || "");
    cell(row, w.running === null ? "" : w.running + " / " + w.concurrency);
    cell(row, w.version || "");
  }
}

async function showMessage(id) {
  const out = $("message");
  out.hidden = false;
  try {
    const info = await getJSON("api/queues/" + encodeURIComponent(chosen) + "/messages/" + encodeURIComponent(id));
    out.textContent = JSON.stringify(info, null, 2);
  } catch (error) {
    out.textContent = error.message;
  }
}

async function choose(name) {
  chosen = name;
  $("detail").hidden = false;
  $("chosen").textContent = name;
  $("redrive-name").textContent = name;
  $("message").hidden = true;
  await tick();
}

async function tick() {
  try {
    await loadOverview();
    if (chosen) await Promise.all([loadDead(), loadWorkers()]);
    $("error").textContent = "";
  } catch (error) {
    $("error").textContent = "could not read: " + error.message;
  }
}

$("lookup").onsubmit = (event) => { event.preventDefault(); showMessage($("message-id").value.trim()); };

// Poll only while the page is visible: every read costs storage requests.
async function loop() {
  if (document.visibilityState === "visible") await tick();
  setTimeout(loop, refresh * 1000);
}
document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") tick(); });
loop();
