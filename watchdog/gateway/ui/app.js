// The fwatchdog console. Everything shown comes from the gateway's public APIs and is put
// into the page with textContent (never innerHTML): names, headers and bodies stay text.
"use strict";

const REFRESH_MS = 2000;
const STATUSES = ["queued", "running", "retrying", "succeeded", "failed", "cancelled"];
const CANCELLABLE = ["queued", "retrying"];
const METHODS = ["POST", "GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
let timer = null;
let generation = 0;

// -- DOM helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(caption, headings, rows, numeric, id) {
  const head = el("tr", {}, headings.map((h, i) =>
    el("th", { scope: "col", class: numeric && numeric.includes(i) ? "num" : null, text: h })));
  const body = rows.map((cells) => el("tr", {}, cells.map((c, i) =>
    el("td", { class: numeric && numeric.includes(i) ? "num" : null }, c))));
  return el("div", { class: "table-wrap", id },
    el("table", {}, el("caption", { class: "muted", text: caption, hidden: true }),
      el("thead", {}, head), el("tbody", {}, body)));
}

function facts(pairs) {
  return el("dl", { class: "facts" },
    pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v === null || v === undefined ? "–" : v)]));
}

function field(label, control) {
  return el("label", {}, label, control);
}

function statusBadge(status) {
  return el("span", { class: "status status-" + status, text: status });
}

function callLink(id) {
  return el("a", { href: "#/activation/" + encodeURIComponent(id), text: id });
}

function fnLink(key) {
  return el("a", { href: "#/function/" + encodeURIComponent(key), text: key });
}

function ms(value) {
  return value === null || value === undefined ? "–" : value < 10 ? value.toFixed(2) + " ms"
    : value < 10000 ? Math.round(value) + " ms" : (value / 1000).toFixed(1) + " s";
}

function when(text) {
  return text ? new Date(text).toLocaleString() : "–";
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function render(...nodes) {
  document.getElementById("main").replaceChildren(...nodes);
}

// -- API ---------------------------------------------------------------------------------

// An absolute URL on the page's origin: when the console was opened as
// http://user:password@host/ui/, fetch refuses relative URLs (they would carry the credentials);
// the browser still answers the gateway's 401 with the credentials it was given.
function onOrigin(path) {
  return new URL(path, location.origin).href;
}

async function api(path, options) {
  const response = await fetch(onOrigin(path), Object.assign({ credentials: "same-origin" }, options));
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = typeof body === "string" ? body : body.message || JSON.stringify(body);
    throw new Error(response.status + " " + path + ": " + message.trim());
  }
  return body;
}

const stats = () => api("/system/stats");

function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) search.set(k, v);
  const text = search.toString();
  return text ? "?" + text : "";
}

// -- routing -----------------------------------------------------------------------------

function route() {
  const hash = location.hash.slice(1) || "/functions";
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "functions";
  for (const link of document.querySelectorAll("nav a")) {
    const current = link.dataset.page === page || (page === "function" && link.dataset.page === "functions")
      || (page === "activation" && link.dataset.page === "activations");
    if (current) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  clearInterval(timer);
  generation += 1;
  showError("");
  const pages = { functions: functionsPage, function: functionPage, invoke: invokePage,
    activations: activationsPage, activation: activationPage, queue: queuePage };
  (pages[page] || functionsPage)(parts[1], params);
}

// Runs refresh now and, while "Live" is ticked, every REFRESH_MS until the page changes.
function live(refresh) {
  const mine = generation;
  const run = () => {
    if (mine !== generation) return;
    refresh().then(() => showError(""), (e) => showError(e.message));
  };
  run();
  timer = setInterval(() => {
    if (document.getElementById("live").checked && !document.hidden) run();
  }, REFRESH_MS);
}

// -- pages -------------------------------------------------------------------------------

function functionsPage() {
  const search = el("input", { type: "search", id: "search", placeholder: "name", "aria-label": "Search functions" });
  const namespace = el("select", { id: "namespace", "aria-label": "Namespace" }, el("option", { value: "", text: "all namespaces" }));
  const holder = el("div", { id: "functions" });
  let latest = null;
  const draw = () => {
    if (!latest) return;
    const wanted = namespace.value;
    for (const ns of latest.namespaces) {
      if (![...namespace.options].some((o) => o.value === ns)) namespace.append(el("option", { value: ns, text: ns }));
    }
    const term = search.value.trim().toLowerCase();
    const rows = latest.functions
      .filter((f) => (!wanted || f.namespace === wanted) && (!term || f.name.toLowerCase().includes(term)))
      .map((f) => {
        const url = location.origin + "/function/" + encodeURIComponent(f.name) + "." + encodeURIComponent(f.namespace);
        const fig = f.figures;
        return [fnLink(f.key), f.namespace,
          el("span", { class: "url" }, el("code", { text: url }), copyButton(url, f.key)),
          String(fig.invocations), fig.errorRate === null ? "–" : (fig.errorRate * 100).toFixed(1) + " %",
          ms(fig.p50Ms), ms(fig.p99Ms), String(fig.inflight)];
      });
    holder.replaceChildren(rows.length ? table("Functions", ["Function", "Namespace", "URL", "Invocations",
      "Errors", "p50", "p99", "In flight"], rows, [3, 4, 5, 6, 7]) : el("p", { class: "muted", text: "No functions match." }));
  };
  search.addEventListener("input", draw);
  namespace.addEventListener("change", draw);
  render(el("h1", { text: "Functions" }),
    el("div", { class: "toolbar" }, field("Search", search), field("Namespace", namespace)), holder);
  live(async () => { latest = await stats(); draw(); });
}

function copyButton(value, name) {
  return el("button", { type: "button", class: "secondary", "aria-label": "Copy URL of " + name,
    onclick: (event) => {
      const done = () => { event.target.textContent = "Copied"; };
      if (navigator.clipboard) navigator.clipboard.writeText(value).then(done, () => showError("copy refused"));
    } }, "Copy");
}

function functionPage(key) {
  const info = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const recent = el("div", {});
  render(el("h1", { text: key }),
    el("p", {}, el("a", { href: "#/invoke?function=" + encodeURIComponent(key), text: "Invoke " + key }), " · ",
      el("a", { href: "#/activations?function=" + encodeURIComponent(key), text: "All activations" })),
    info, el("h2", { text: "Latest activations" }), recent);
  live(async () => {
    const all = await stats();
    const f = all.functions.find((x) => x.key === key);
    if (!f) { info.replaceChildren(el("p", { text: "No function " + key + " is registered." })); return; }
    const fig = f.figures;
    const r = f.retry;
    info.replaceChildren(facts([
      ["Namespace", f.namespace], ["Invocations", String(fig.invocations)],
      ["Errors (5xx)", String(fig.errors)], ["p50 / p99", ms(fig.p50Ms) + " / " + ms(fig.p99Ms)],
      ["In flight", String(fig.inflight)], ["Timeout", f.timeout + " s"],
      ["Max concurrency", f.maxConcurrency ? String(f.maxConcurrency) : "unlimited"],
      ["Retries", r.maxAttempts + " attempts, backoff " + r.initialBackoff + "–" + r.maxBackoff + " s, on "
        + r.retryCodes.join(", ")],
      ["Convert after", f.convertAfter ? f.convertAfter + " s" : "never"],
    ]));
    const page = await api("/system/activations" + query({ function: key, limit: "10" }));
    recent.replaceChildren(activationTable(page.items));
  });
}

function activationTable(items) {
  if (!items.length) return el("p", { class: "muted", text: "No activations." });
  return table("Activations", ["Call", "Function", "Status", "Attempts", "Created", "Duration", "Code"],
    items.map((a) => [callLink(a.callId), fnLink(a.function), statusBadge(a.status), String(a.attempts),
      when(a.createdAt), ms(a.durationMs), a.statusCode === null ? "–" : String(a.statusCode)]), [3, 5, 6]);
}

function invokePage(_, params) {
  const fn = el("select", { id: "inv-function", required: true });
  const method = el("select", { id: "inv-method" }, METHODS.map((m) => el("option", { value: m, text: m })));
  const path = el("input", { id: "inv-path", placeholder: "/sub/path" });
  const qs = el("input", { id: "inv-query", placeholder: "a=1&b=2" });
  const headers = el("textarea", { id: "inv-headers", placeholder: "Name: value (one a line)", rows: 3 });
  const bodyKind = el("select", { id: "inv-kind" }, ["text", "json", "file"].map((k) => el("option", { value: k, text: k })));
  const body = el("textarea", { id: "inv-body", rows: 6 });
  const file = el("input", { id: "inv-file", type: "file", hidden: true, "aria-label": "Body file" });
  const sync = el("input", { type: "radio", name: "mode", id: "inv-sync", value: "sync", checked: true });
  const asyncMode = el("input", { type: "radio", name: "mode", id: "inv-async", value: "async" });
  const callback = el("input", { id: "inv-callback", type: "url", placeholder: "http://…" });
  const delay = el("input", { id: "inv-delay", type: "number", min: 0, max: 3600, step: "any" });
  const key = el("input", { id: "inv-key" });
  const send = el("button", { type: "submit", id: "inv-send" }, "Send");
  const result = el("section", { id: "inv-result", "aria-live": "polite" });
  bodyKind.addEventListener("change", () => {
    file.hidden = bodyKind.value !== "file";
    body.hidden = bodyKind.value === "file";
  });
  const modeChanged = () => {
    const isAsync = asyncMode.checked;
    for (const input of [delay, key]) input.disabled = !isAsync;
    if (isAsync) method.value = "POST";
    method.disabled = isAsync;
  };
  sync.addEventListener("change", modeChanged);
  asyncMode.addEventListener("change", modeChanged);
  const form = el("form", { class: "form", onsubmit: (event) => {
    event.preventDefault();
    invoke({ fn: fn.value, method: method.value, path: path.value, query: qs.value, headers: headers.value,
      kind: bodyKind.value, body: body.value, file: file.files[0], isAsync: asyncMode.checked,
      callback: callback.value.trim(), delay: delay.value.trim(), key: key.value.trim() }, result, send);
  } },
  field("Function", fn), field("Method", method), field("Sub-path", path), field("Query", qs),
  el("fieldset", { class: "wide" }, el("legend", { text: "Mode" }),
    el("label", {}, sync, " synchronous"), el("label", {}, asyncMode, " asynchronous (queued)")),
  field("Callback URL (X-Callback-Url)", callback), field("Delay, seconds (async)", delay),
  field("Idempotency key (async)", key),
  el("label", { class: "wide" }, "Headers", headers), field("Body", bodyKind),
  el("label", { class: "wide" }, "Body content", body, file), el("div", { class: "wide" }, send));
  render(el("h1", { text: "Invoke" }), form, result);
  stats().then((all) => {
    for (const f of all.functions) fn.append(el("option", { value: f.key, text: f.key }));
    if (params.get("function")) fn.value = params.get("function");
  }, (e) => showError(e.message));
  modeChanged();
}

function parseHeaders(text) {
  const headers = new Headers();
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf(":");
    if (at < 1) throw new Error("header line without a name: " + line);
    headers.append(line.slice(0, at).trim(), line.slice(at + 1).trim());
  }
  return headers;
}

async function invoke(spec, result, send) {
  let headers;
  let body = null;
  try {
    headers = parseHeaders(spec.headers);
    if (spec.kind === "json" && spec.body.trim()) {
      body = JSON.stringify(JSON.parse(spec.body));
      if (!headers.has("Content-Type")) headers.set("Content-Type", "application/json");
    } else if (spec.kind === "file") body = spec.file || null;
    else if (spec.body) body = spec.body;
  } catch (e) {
    result.replaceChildren(el("p", { role: "alert", text: "Not sent: " + e.message }));
    return;
  }
  if (spec.callback) headers.set("X-Callback-Url", spec.callback);
  if (spec.isAsync && spec.delay) headers.set("X-Async-Delay", spec.delay);
  if (spec.isAsync && spec.key) headers.set("Idempotency-Key", spec.key);
  let sub = spec.path.trim();
  if (sub && !sub.startsWith("/")) sub = "/" + sub;
  const q = spec.query.trim().replace(/^\?/, "");
  const url = (spec.isAsync ? "/async-function/" : "/function/") + spec.fn + sub + (q ? "?" + q : "");
  const method = spec.isAsync ? "POST" : spec.method;
  send.disabled = true;
  result.replaceChildren(el("p", { class: "muted", text: "Waiting for " + method + " " + url + "…" }));
  const started = performance.now();
  try {
    const response = await fetch(onOrigin(url), { method, headers, credentials: "same-origin",
      body: ["GET", "HEAD"].includes(method) ? null : body });
    const bytes = new Uint8Array(await response.arrayBuffer());
    showAnswer(result, method, url, response, bytes, performance.now() - started);
  } catch (e) {
    result.replaceChildren(el("p", { role: "alert", text: "Request failed: " + e.message }));
  } finally {
    send.disabled = false;
  }
}

function showAnswer(result, method, url, response, bytes, elapsed) {
  const callId = response.headers.get("X-Call-Id");
  const gatewaySeconds = response.headers.get("X-Duration-Seconds");
  const rows = [];
  response.headers.forEach((value, name) => rows.push([name, value]));
  result.replaceChildren(
    el("h2", { text: "Answer" }),
    facts([
      ["Request", method + " " + url],
      ["Status", el("span", { id: "ans-status", text: response.status + " " + response.statusText })],
      ["Duration", ms(elapsed) + (gatewaySeconds ? " (gateway: " + ms(parseFloat(gatewaySeconds) * 1000) + ")" : "")],
      // Only an accepted (202) call has a record to link to; a synchronous answer's id is for logs.
      ["Call id", callId ? el("span", { id: "ans-call" }, response.status === 202 ? callLink(callId)
        : [callId, el("span", { class: "muted", text: " (answered synchronously: no record)" })]) : "–"],
    ]),
    el("h2", { text: "Headers" }), table("Response headers", ["Name", "Value"], rows),
    el("h2", { text: "Body" }), bodyView(bytes, response.headers.get("Content-Type") || "", "ans-body"));
}

// A body as text (JSON pretty-printed), or a download link when it is not UTF-8 text.
function bodyView(bytes, type, id) {
  let textBody;
  try {
    textBody = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (_) {
    const blob = new Blob([bytes], { type: type || "application/octet-stream" });
    return el("p", { id }, bytes.length + " bytes of binary data: ",
      el("a", { href: URL.createObjectURL(blob), download: "body.bin", text: "download" }));
  }
  if (!textBody) return el("p", { id, class: "muted", text: "(empty)" });
  if (type.includes("json")) {
    try { textBody = JSON.stringify(JSON.parse(textBody), null, 2); } catch (_) { /* shown as sent */ }
  }
  return el("pre", { id, text: textBody });
}

function activationsPage(_, params) {
  const fn = el("select", { id: "act-function", "aria-label": "Function" }, el("option", { value: "", text: "all functions" }));
  const status = el("select", { id: "act-status", "aria-label": "Status" }, el("option", { value: "", text: "any status" }),
    STATUSES.map((s) => el("option", { value: s, text: s })));
  const period = el("select", { id: "act-since", "aria-label": "Period" },
    [["", "any time"], ["300", "last 5 minutes"], ["3600", "last hour"], ["86400", "last 24 hours"], ["604800", "last 7 days"]]
      .map(([v, t]) => el("option", { value: v, text: t })));
  const holder = el("div", { id: "activations" });
  const older = el("button", { type: "button", class: "secondary", id: "act-older" }, "Older");
  const newest = el("button", { type: "button", class: "secondary", id: "act-newest" }, "Newest");
  const cursors = [];
  let next = null;
  const load = async () => {
    const since = period.value ? String(Date.now() / 1000 - Number(period.value)) : "";
    const page = await api("/system/activations" + query({ function: fn.value, status: status.value, since,
      limit: "20", cursor: cursors[cursors.length - 1] }));
    next = page.nextCursor;
    older.disabled = !next;
    newest.disabled = !cursors.length;
    holder.replaceChildren(activationTable(page.items));
  };
  const reload = () => { cursors.length = 0; load().catch((e) => showError(e.message)); };
  for (const control of [fn, status, period]) control.addEventListener("change", reload);
  older.addEventListener("click", () => { if (next) { cursors.push(next); load().catch((e) => showError(e.message)); } });
  newest.addEventListener("click", reload);
  render(el("h1", { text: "Activations" }),
    el("div", { class: "toolbar" }, field("Function", fn), field("Status", status), field("Period", period)),
    holder, el("div", { class: "pager" }, newest, older));
  stats().then((all) => {
    for (const f of all.functions) fn.append(el("option", { value: f.key, text: f.key }));
    if (params.get("function")) { fn.value = params.get("function"); reload(); }
  }, (e) => showError(e.message));
  // Live only on the newest page: older pages stay put while they are read.
  live(() => (cursors.length ? Promise.resolve() : load()));
}

function activationPage(id) {
  const holder = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const cancel = el("button", { type: "button", class: "danger", id: "cancel", hidden: true }, "Cancel call");
  render(el("h1", { text: "Activation " + id }), el("p", {}, cancel), holder);
  const path = "/system/activations/" + encodeURIComponent(id);
  const load = async () => {
    const a = await api(path);
    cancel.hidden = !CANCELLABLE.includes(a.status);
    holder.replaceChildren(...recordView(a));
  };
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try { await api(path, { method: "DELETE" }); await load(); } catch (e) { showError(e.message); }
    cancel.disabled = false;
  });
  live(load);
}

function recordView(a) {
  const req = a.request;
  const nodes = [facts([
    ["Status", el("span", { id: "rec-status" }, statusBadge(a.status))], ["Function", fnLink(a.function)],
    ["Request", req.method + " " + req.path + (req.query ? "?" + req.query : "")],
    ["Created", when(a.createdAt)], ["Due", when(a.dueAt)], ["Started", when(a.startedAt)],
    ["Ended", when(a.endedAt)], ["Duration", ms(a.durationMs)], ["Attempts", String(a.attempts)],
    ["Idempotency key", a.idempotencyKey], ["Error", a.error ? a.error.kind + ": " + a.error.message : null],
  ])];
  nodes.push(el("h2", { text: "Attempts" }), a.attemptLog.length ? table("Attempts",
    ["#", "Started", "Duration", "Code", "Error", "Retry at"],
    a.attemptLog.map((t) => [String(t.attempt), when(t.startedAt), ms(t.durationMs),
      t.statusCode === null ? "–" : String(t.statusCode), t.error ? t.error.kind + ": " + t.error.message : "–",
      when(t.retryAt)]), [0, 2, 3], "rec-attempts") : el("p", { class: "muted", id: "no-attempts", text: "No attempt yet." }));
  if (a.callback) {
    nodes.push(el("h2", { text: "Callback" }), facts([["URL", a.callback.url], ["Status", a.callback.status],
      ["Deliveries", String(a.callback.attempts)]]));
    if (a.callback.log.length) nodes.push(table("Callback deliveries", ["#", "Started", "Duration", "Code", "Error"],
      a.callback.log.map((c) => [String(c.attempt), when(c.startedAt), ms(c.durationMs),
        c.statusCode === null ? "–" : String(c.statusCode), c.error || "–"]), [0, 2, 3], "rec-callbacks"));
  }
  if (a.response) {
    const r = a.response;
    const headerRows = Object.entries(r.headers);
    nodes.push(el("h2", { text: "Result" }), facts([["Status code", String(r.statusCode)],
      ["Truncated", r.truncated ? "yes" : "no"]]),
    el("h2", { text: "Result headers" }), table("Result headers", ["Name", "Value"], headerRows));
    if (r.body !== undefined) {
      const bytes = r.bodyEncoding === "base64" ? Uint8Array.from(atob(r.body), (c) => c.charCodeAt(0))
        : new TextEncoder().encode(r.body);
      nodes.push(el("h2", { text: "Result body" }), bodyView(bytes, r.headers["Content-Type"] || "", "rec-body"));
    }
  }
  return nodes;
}

function queuePage() {
  const holder = el("div", { class: "cards", id: "queue" });
  render(el("h1", { text: "Queue" }), holder);
  live(async () => {
    const q = (await stats()).queue;
    const capped = (n) => (n >= q.countCap ? q.countCap + "+" : String(n));
    holder.replaceChildren(...[["Unfinished calls (depth)", String(q.depth)], ["Running here", String(q.running)],
      ["Retrying", capped(q.retrying)], ["Delayed", capped(q.delayed)], ["Worker concurrency", String(q.concurrency)]]
      .map(([label, value]) => el("div", { class: "card" }, el("div", { class: "value", text: value }),
        el("div", { class: "label", text: label }))));
  });
}

window.addEventListener("hashchange", route);
route();
