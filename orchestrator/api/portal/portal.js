// The portal of `orch serve`: the scale sets, their instances and their latest rolling
// upgrade, polled from the API (every second while something runs), and the actions
// update-instances, reimage, start and cancel rolling upgrade.
// Plain JS, no build step. Text from the API goes into the page only as textContent.
"use strict";

const TOKEN_KEY = "orch.token";
const FAST_MS = 1000;   // while an upgrade or an operation of this page runs
const SLOW_MS = 5000;   // otherwise
const KEEP_OPS = 6;     // operations shown per set

const state = {
  token: null,
  timer: null,
  busy: false,         // a refresh is under way
  again: false,        // another refresh was asked for meanwhile
  epoch: 0,            // bumped at logout: answers of an earlier session are dropped
  sets: new Map(),     // name -> view (see setView)
};

const $ = (id) => document.getElementById(id);

// --- the API ---------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {Authorization: "Bearer " + state.token, Accept: "application/json"};
  const init = {method, headers, cache: "no-store"};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "Unreachable", "cannot reach the server (" + err.message + ")");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(response.status, e.code || "HttpError",
                       e.message || response.status + " " + response.statusText);
  }
  return {status: response.status, data};
}

const enc = encodeURIComponent;

// --- the token ---------------------------------------------------------------------------
function tokenFromFragment() {
  // /#token=TOKEN: read it, then take it out of the address bar (and the history entry)
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (location.hash) {
    history.replaceState(null, "", location.pathname + location.search);
  }
  return token;
}

function showLogin(message) {
  stopPolling();
  state.again = false;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  state.epoch += 1;
  state.sets.clear();
  $("sets").replaceChildren();
  $("no-sets").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  const msg = $("login-message");
  msg.textContent = message || "";
  msg.hidden = !message;
  setStatus("");
  $("token-input").value = "";
  $("token-input").focus();
}

function login(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("logout").hidden = false;
  refreshSoon();
}

function refused() {
  showLogin("The server refused the token (401 Unauthorized). Enter the token from the " +
            "token file orch serve printed.");
}

// --- polling -----------------------------------------------------------------------------
function stopPolling() {
  if (state.timer !== null) {
    clearTimeout(state.timer);
    state.timer = null;
  }
}

function refreshSoon() {
  stopPolling();
  if (state.busy) {
    state.again = true;
    return;
  }
  refresh();
}

async function refresh() {
  if (state.token === null) return;
  const epoch = state.epoch;
  state.busy = true;
  let active = false;
  let unauthorized = false;
  try {
    active = await loadAll(epoch);
    if (epoch === state.epoch) setStatus("Updated " + new Date().toLocaleTimeString());
  } catch (err) {
    if (epoch === state.epoch) {
      if (err instanceof ApiError && err.status === 401) unauthorized = true;
      else setStatus(err.message + "; retrying", true);
    }
  } finally {
    state.busy = false;
  }
  if (unauthorized) {
    refused();
    return;
  }
  if (state.token === null) return;
  if (state.again || epoch !== state.epoch) {  // asked for meanwhile, or a new log-in
    state.again = false;
    refresh();
    return;
  }
  state.timer = setTimeout(refresh, active ? FAST_MS : SLOW_MS);
}

function setStatus(text, bad) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("bad", Boolean(bad));
}

// Everything the page shows, read again; whether something runs (poll fast then).
async function loadAll(epoch) {
  const sets = (await api("GET", "/v1/scaleSets")).data;
  const reads = sets.map(async (s) => {
    const base = "/v1/scaleSets/" + enc(s.name);
    try {
      const [instances, upgrade] = await Promise.all([
        api("GET", base + "/virtualMachines?refresh=false").then((r) => r.data),
        api("GET", base + "/rollingUpgrades/latest").then((r) => r.data, (err) => {
          if (err instanceof ApiError && err.status === 404) return null;  // none yet
          throw err;
        }),
      ]);
      return {set: s, instances, upgrade, error: null};
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) throw err;
      return {set: s, instances: null, upgrade: null, error: err};  // the others still show
    }
  });
  const loaded = await Promise.all(reads);
  const opsRunning = await pollOperations();
  if (epoch !== state.epoch) return false;
  render(loaded);
  return opsRunning || loaded.some((l) => l.upgrade && l.upgrade.runningStatus.code === "RollingForward");
}

// The operations this page started that still run, asked again; whether any still runs.
async function pollOperations() {
  let running = false;
  for (const view of state.sets.values()) {
    for (const op of view.ops) {
      if (op.status !== "Running" || !op.id) continue;
      try {
        const got = (await api("GET", "/v1/operations/" + enc(op.id))).data;
        Object.assign(op, {status: got.status, error: got.error, endedAt: got.endedAt,
                           progress: got.progress});
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) throw err;
        if (err instanceof ApiError && err.status === 404) {
          Object.assign(op, {status: "Unknown", error: {code: err.code, message: err.message}});
        }
      }
      if (op.status === "Running") running = true;
    }
  }
  return running;
}

// --- rendering ---------------------------------------------------------------------------
function render(loaded) {
  const names = new Set(loaded.map((l) => l.set.name));
  for (const [name, view] of state.sets) {
    if (!names.has(name)) {
      view.root.remove();
      state.sets.delete(name);
    }
  }
  const container = $("sets");
  for (const l of loaded) {
    let view = state.sets.get(l.set.name);
    if (!view) {
      view = setView(l.set.name);
      state.sets.set(l.set.name, view);
    }
    container.appendChild(view.root);  // keeps the API's order
    renderSet(view, l);
  }
  $("no-sets").hidden = loaded.length > 0;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function badge(text, tone) {
  return el("span", "badge " + tone, text);
}

function setView(name) {
  const root = $("set-template").content.firstElementChild.cloneNode(true);
  root.dataset.set = name;
  const q = (sel) => root.querySelector(sel);
  const view = {
    name, root, rows: new Map(), selected: new Set(), ops: [], instances: [], upgrade: null,
    cancelRequested: false,
    tbody: q("tbody"), selectAll: q(".select-all"), selection: q(".selection"),
    buttons: {update: q(".act-update"), reimage: q(".act-reimage"),
              rolling: q(".act-rolling"), cancel: q(".act-cancel")},
  };
  q(".set-name").textContent = name;
  q("caption").textContent = "Instances of scale set " + name;
  q(".toolbar").setAttribute("aria-label", "Actions on scale set " + name);
  view.selectAll.setAttribute("aria-label", "Select every instance of " + name);
  view.selectAll.addEventListener("change", () => {
    view.selected = new Set(view.selectAll.checked ? view.instances.map((i) => i.instanceId) : []);
    for (const row of view.rows.values()) row.box.checked = view.selected.has(row.id);
    renderSelection(view);
  });
  view.buttons.update.addEventListener("click", () => instanceAction(view, "manualupgrade"));
  view.buttons.reimage.addEventListener("click", () => instanceAction(view, "reimage"));
  view.buttons.rolling.addEventListener("click", () => startRolling(view));
  view.buttons.cancel.addEventListener("click", () => cancelRolling(view));
  return view;
}

function renderSet(view, {set, instances, upgrade, error}) {
  const q = (sel) => view.root.querySelector(sel);
  const problem = q(".set-error");
  problem.textContent = error ? "Could not read this set: " + error.message : "";
  problem.hidden = !error;
  if (error) {  // keep what was shown last
    instances = view.instances;
    upgrade = view.upgrade;
  }
  view.set = set;
  view.instances = instances;
  view.upgrade = upgrade;
  q(".fact-capacity").textContent = set.capacity;
  q(".fact-generation").textContent = set.generation;
  q(".fact-image").textContent = (set.model && set.model.image) || "–";
  q(".fact-mode").textContent = (set.upgradePolicy && set.upgradePolicy.mode) || "–";
  const latest = q(".fact-latest");
  latest.textContent = set.latestModelInstances + " of " + set.instanceCount + " instances";
  latest.className = "fact-latest " + (set.latestModelInstances === set.instanceCount ? "ok" : "warn");
  renderInstances(view, instances, upgrade);
  renderUpgrade(view, upgrade);
  renderOps(view);
  const running = Boolean(upgrade && upgrade.runningStatus.code === "RollingForward");
  if (!running) view.cancelRequested = false;
  view.buttons.rolling.disabled = running;
  view.buttons.cancel.disabled = !running || view.cancelRequested;
}

const POWER_TONES = {running: "ok", stopped: "idle", deallocated: "idle", paused: "warn",
                     "shutting-down": "warn", creating: "info", reimaging: "info",
                     deleting: "warn", crashed: "bad", missing: "bad", unknown: "bad"};
const HEALTH_TONES = {Healthy: "ok", Initializing: "info", Unhealthy: "bad", Unknown: "idle"};

function renderInstances(view, instances, upgrade) {
  const inFlight = new Set(upgrade && upgrade.runningStatus.code === "RollingForward"
                           ? upgrade.inFlight : []);
  const present = new Set(instances.map((i) => i.instanceId));
  for (const [id, row] of view.rows) {
    if (!present.has(id)) {
      row.tr.remove();
      view.rows.delete(id);
      view.selected.delete(id);
    }
  }
  for (const inst of instances) {
    let row = view.rows.get(inst.instanceId);
    if (!row) {
      row = instanceRow(view, inst);
      view.rows.set(inst.instanceId, row);
    }
    view.tbody.appendChild(row.tr);
    const c = row.cells;
    c.id.textContent = inst.instanceId;
    c.name.textContent = inst.name;
    c.power.replaceChildren(badge(inst.powerState, POWER_TONES[inst.powerState] || "idle"));
    c.health.replaceChildren(badge(inst.healthState, HEALTH_TONES[inst.healthState] || "idle"));
    const latest = inst.latestModelApplied
      ? badge("yes", "ok") : badge("no (gen " + inst.modelGeneration + ")", "warn");
    c.latest.replaceChildren(latest);
    if (inFlight.has(inst.instanceId)) c.latest.appendChild(badge("upgrading", "info"));
    c.image.textContent = inst.image || "–";
    c.ip.textContent = inst.ipAddress || "–";
    c.host.textContent = inst.host || "–";
    c.fd.textContent = inst.faultDomain === null || inst.faultDomain === undefined ? "–" : inst.faultDomain;
    row.tr.classList.toggle("in-flight", inFlight.has(inst.instanceId));
    row.box.checked = view.selected.has(inst.instanceId);
  }
  renderSelection(view);
}

function instanceRow(view, inst) {
  const tr = el("tr");
  tr.dataset.instanceId = inst.instanceId;
  const box = el("input", "select");
  box.type = "checkbox";
  box.setAttribute("aria-label", "Select instance " + inst.instanceId + " (" + inst.name + ")");
  const id = inst.instanceId;
  box.addEventListener("change", () => {
    if (box.checked) view.selected.add(id); else view.selected.delete(id);
    renderSelection(view);
  });
  const first = el("td", "col-select");
  first.appendChild(box);
  tr.appendChild(first);
  const cells = {};
  for (const key of ["id", "name", "power", "health", "latest", "image", "ip", "host", "fd"]) {
    cells[key] = el("td", "col-" + key);
    tr.appendChild(cells[key]);
  }
  return {id, tr, box, cells};
}

function renderSelection(view) {
  const n = view.selected.size;
  const total = view.instances.length;
  view.selection.textContent = n === 0
    ? "No instance selected: update and reimage act on all " + total
    : n + " of " + total + " selected";
  view.selectAll.checked = total > 0 && n === total;
  view.selectAll.indeterminate = n > 0 && n < total;
}

const UPGRADE_TONES = {RollingForward: "info", Completed: "ok", Faulted: "bad", Cancelled: "warn"};

function renderUpgrade(view, upgrade) {
  const q = (sel) => view.root.querySelector(sel);
  const code = q(".upgrade-code");
  const summary = q(".upgrade-summary");
  const bar = q(".upgrade-progress");
  const batches = q(".batches");
  const error = q(".upgrade-error");
  if (!upgrade) {
    code.textContent = "none";
    code.className = "badge idle upgrade-code";
    summary.textContent = "No rolling upgrade yet.";
    bar.hidden = true;
    batches.replaceChildren();
    error.hidden = true;
    return;
  }
  const rs = upgrade.runningStatus;
  const p = upgrade.progress;
  code.textContent = rs.code;
  code.className = "badge " + (UPGRADE_TONES[rs.code] || "idle") + " upgrade-code";
  const total = p.successfulInstanceCount + p.failedInstanceCount +
                p.inProgressInstanceCount + p.pendingInstanceCount;
  const parts = [p.successfulInstanceCount + " succeeded", p.failedInstanceCount + " failed",
                 p.inProgressInstanceCount + " in progress", p.pendingInstanceCount + " pending"];
  let when = "started " + time(rs.startTime);
  if (rs.endTime) when += ", ended " + time(rs.endTime);
  summary.replaceChildren(
    el("span", "upgrade-counts", "To generation " + upgrade.targetGeneration + ": " +
       parts.join(", ")),
    el("span", "upgrade-times", when));
  summary.dataset.succeeded = p.successfulInstanceCount;
  summary.dataset.pending = p.pendingInstanceCount;
  bar.hidden = false;
  bar.max = Math.max(total, 1);
  bar.value = p.successfulInstanceCount + p.failedInstanceCount;
  bar.setAttribute("aria-label", p.successfulInstanceCount + p.failedInstanceCount + " of " +
                   total + " instances done");
  const running = rs.code === "RollingForward";
  const items = upgrade.batches.map((b) => batchItem(b, rs.code));
  if (running && upgrade.inFlight.length > 0) {  // the batch under way is not listed yet
    items.push(batchItem({batch: upgrade.batches.length + 1, instances: upgrade.inFlight,
                          failed: [], endTime: null}, rs.code));
  }
  if (running && p.pendingInstanceCount > 0) {
    const li = el("li", "batch pending");
    li.dataset.status = "pending";
    li.appendChild(el("span", "batch-title", "Pending"));
    li.appendChild(el("span", "batch-detail", p.pendingInstanceCount + " instance" +
                      (p.pendingInstanceCount === 1 ? "" : "s")));
    li.appendChild(el("span", "batch-state", upgrade.inFlight.length > 0
                      ? "after this batch" : "waiting for the next batch"));
    items.push(li);
  }
  batches.replaceChildren(...items);
  const message = (upgrade.error && upgrade.error.message) || upgrade.cancel || "";
  error.textContent = message;
  error.hidden = !message;
  error.classList.toggle("bad", Boolean(upgrade.error));
  error.classList.toggle("warn", !upgrade.error);
}

function batchItem(b, code) {
  let status;
  if (b.failed.length > 0) status = "failed";
  else if (b.endTime) status = "done";
  else status = code === "RollingForward" ? "running" : "stopped";
  const li = el("li", "batch " + status);
  li.dataset.batch = b.batch;
  li.dataset.status = status;
  li.appendChild(el("span", "batch-title", "Batch " + b.batch));
  li.appendChild(el("span", "batch-detail", "instance" + (b.instances.length === 1 ? " " : "s ") +
                    b.instances.join(", ")));
  const words = {done: "done " + time(b.endTime), running: "upgrading…",
                 failed: "failed: " + b.failed.join(", "), stopped: "stopped"};
  li.appendChild(el("span", "batch-state", words[status]));
  return li;
}

function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
}

function renderOps(view) {
  const list = view.root.querySelector(".ops");
  view.root.querySelector(".ops-empty").hidden = view.ops.length > 0;
  list.replaceChildren(...view.ops.map((op) => {
    const li = el("li", "op");
    li.dataset.status = op.status;
    li.appendChild(el("span", "op-when", time(op.startedAt)));
    li.appendChild(el("span", "op-what", op.label));
    const tone = {Running: "info", Succeeded: "ok", Failed: "bad"}[op.status] || "idle";
    li.appendChild(badge(op.status, tone + " op-status"));
    if (op.error) {
      li.appendChild(el("span", "op-error", (op.error.code ? op.error.code + ": " : "") +
                        (op.error.message || "")));
    } else if (op.note) {
      li.appendChild(el("span", "op-note", op.note));
    } else if (op.status === "Running" && op.progress && op.progress.length) {
      li.appendChild(el("span", "op-note", op.progress[op.progress.length - 1]));
    }
    return li;
  }));
}

// --- actions -----------------------------------------------------------------------------
function addOp(view, op) {
  view.ops.unshift(op);
  view.ops.length = Math.min(view.ops.length, KEEP_OPS);
  renderOps(view);
  return op;
}

async function act(view, label, method, path, body) {
  const op = addOp(view, {id: null, label, status: "Running",
                          startedAt: new Date().toISOString(), error: null});
  try {
    const {status, data} = await api(method, path, body);
    if (status === 202 && data && data.id) {
      Object.assign(op, {id: data.id, status: data.status, error: data.error,
                         startedAt: data.startedAt || op.startedAt});
    } else {
      op.status = "Succeeded";
      if (data && data.runningStatus) {
        view.cancelRequested = data.runningStatus.code === "RollingForward";
        op.note = view.cancelRequested
          ? "the upgrade stops after its in-flight batch"
          : "rolling upgrade " + data.runningStatus.code + (data.cancel ? ": " + data.cancel : "");
      }
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      refused();
      return;
    }
    Object.assign(op, {status: "Failed", error: {code: err.code, message: err.message}});
  }
  renderOps(view);
  refreshSoon();
}

function chosen(view) {
  return view.selected.size > 0
    ? [...view.selected].sort((a, b) => a - b)
    : view.instances.map((i) => i.instanceId);
}

function instanceAction(view, action) {
  const ids = chosen(view);
  const word = action === "manualupgrade" ? "Update" : "Reimage";
  if (ids.length === 0) return;
  if (view.selected.size === 0 &&
      !confirm(word + " all " + ids.length + " instances of " + view.name + "?")) {
    return;
  }
  const label = (action === "manualupgrade" ? "update-instances " : "reimage ") +
                (ids.length === 1 ? "instance " : "instances ") + ids.join(", ");
  act(view, label, "POST", "/v1/scaleSets/" + enc(view.name) + "/" + action,
      {instanceIds: ids});
}

function startRolling(view) {
  act(view, "start rolling upgrade", "POST",
      "/v1/scaleSets/" + enc(view.name) + "/osRollingUpgrade");
}

function cancelRolling(view) {
  act(view, "cancel rolling upgrade", "POST",
      "/v1/scaleSets/" + enc(view.name) + "/rollingUpgrades/cancel");
}

// --- start -------------------------------------------------------------------------------
function start() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (token) login(token);
  });
  $("logout").addEventListener("click", () => showLogin("Logged out."));
  // the portal link opened in a tab that shows the page already: no reload, a new fragment
  window.addEventListener("hashchange", () => {
    const token = tokenFromFragment();
    if (token) {
      showLogin("");
      login(token);
    }
  });
  const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  if (token) login(token); else showLogin("");
}

start();
