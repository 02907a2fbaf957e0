// tuk verifier dashboard: reads the verifier's JSON API (same origin) and renders it with DOM
// calls only (never parsed as HTML: instance ids, URLs and reasons are data, not markup). Polls every
// second; the pages are never reloaded. docs/verifier.md, "Dashboard".
"use strict";

(function () {
  const POLL_MS = 1000;
  const TOKEN_KEY = "tuk-verifier-token";
  const ICONS = { affirming: "\u2713", warning: "!", contraindicated: "\u2717", pending: "\u2026", unavailable: "?" };
  let readAnonymous = false;
  let timer = null;
  let busy = false;
  let view = { page: "fleet", id: null };
  const fleetRows = new Map();

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function badge(status) {
    const s = status || "none";
    return el("span", { class: "badge status s-" + s },
      el("span", { class: "icon", "aria-hidden": "true" }, ICONS[s] || "\u2022"),
      el("span", { class: "status-text" }, s));
  }

  function age(ms) {
    if (ms === null || ms === undefined) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function time(ms) {
    return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "";
  }

  function short(hex) {
    return typeof hex === "string" && hex.length > 16 ? hex.slice(0, 12) + "\u2026" : String(hex ?? "");
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const r = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    if (!r.ok) throw new HttpError(r.status, (body && body.error) || ("HTTP " + r.status));
    return body;
  }

  function setConn(text, isError) {
    const c = $("conn");
    if (c.textContent !== text) c.textContent = text;
    c.classList.toggle("error", !!isError);
  }

  function show(section) {
    for (const id of ["login", "fleet", "instance", "webhooks"]) $(id).hidden = id !== section;
  }

  function needLogin(message) {
    show("login");
    $("signout").hidden = true;
    $("login-error").textContent = message || "";
    setConn("Not signed in", false);
  }

  // ---- the fleet ----
  function claimsOf(doc) { return (doc && doc.latest && doc.latest.claims) || null; }

  function versions(claims) {
    const out = { kernel: "", components: [], violations: 0 };
    if (!claims || !claims.submods) return out;
    for (const [name, sm] of Object.entries(claims.submods)) {
      const facts = sm.ear_verifier_claims || {};
      const rep = sm.ear_attester_claims || {};
      if (typeof rep.violations === "number") out.violations += rep.violations;
      if (name === "kernel") {
        out.kernel = (facts.version ? facts.version + " " : "") + (facts.kernel_sha256 ? "sha256:" + short(facts.kernel_sha256) : "");
      } else if (name.startsWith("component:")) {
        out.components.push(name.slice(10) + (facts.version ? " " + facts.version : ""));
      }
    }
    return out;
  }

  function setCell(td, content) {
    const key = content instanceof Node ? content.textContent + "|" + content.className : String(content);
    if (td.dataset.key === key) return;
    td.dataset.key = key;
    td.replaceChildren(content);
  }

  async function renderFleet() {
    const list = await api("/v1/instances");
    const instances = (list.instances || []).slice().sort((a, b) => a.id.localeCompare(b.id));
    const details = await Promise.all(instances.map((i) =>
      api("/v1/instances/" + encodeURIComponent(i.id)).catch(() => null)));
    const tbody = $("fleet-table").tBodies[0];
    const seen = new Set();
    const counts = {};
    instances.forEach((inst, n) => {
      const doc = details[n] || inst;
      seen.add(inst.id);
      counts[doc.status] = (counts[doc.status] || 0) + 1;
      let tr = fleetRows.get(inst.id);
      if (!tr) {
        tr = el("tr", { "data-id": inst.id });
        const th = el("th", { scope: "row" }, el("a", { href: "#/instance/" + encodeURIComponent(inst.id) }, inst.id));
        tr.append(th, el("td"), el("td"), el("td", { class: "mono" }), el("td"), el("td", { class: "num" }));
        fleetRows.set(inst.id, tr);
      }
      const v = versions(claimsOf(doc));
      const cells = tr.cells;
      setCell(cells[1], badge(doc.status));
      setCell(cells[2], doc.at ? age(doc.at) : "never");
      setCell(cells[3], v.kernel || "\u2014");
      setCell(cells[4], v.components.length ? v.components.join(", ") : "\u2014");
      setCell(cells[5], String(v.violations));
      if (tr.parentNode !== tbody || tbody.rows[n] !== tr) tbody.insertBefore(tr, tbody.rows[n] || null);
    });
    for (const [id, tr] of fleetRows) {
      if (!seen.has(id)) { tr.remove(); fleetRows.delete(id); }
    }
    const parts = Object.entries(counts).map(([s, c]) => c + " " + s);
    const summary = instances.length ? instances.length + " instances: " + parts.join(", ") : "No instance is registered.";
    if ($("fleet-summary").textContent !== summary) $("fleet-summary").textContent = summary;
  }

  // ---- one instance ----
  function kv(dl, pairs) {
    dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", null, k), el("dd", null, v)]));
  }

  function valueText(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function submodCard(name, sm) {
    const facts = Object.assign({}, sm.ear_verifier_claims || {});
    const reasons = Array.isArray(facts.reasons) ? facts.reasons : [];
    delete facts.reasons;
    const card = el("section", { class: "submod", "aria-label": "Submodule " + name });
    card.append(el("h4", null, el("span", { class: "mono" }, name), badge(sm.ear_status)));
    card.append(reasons.length
      ? el("ul", { class: "reasons" }, ...reasons.map((r) => el("li", null, r)))
      : el("p", null, "No reason given: every claim is as expected."));
    const vec = sm.ear_trustworthiness_vector || {};
    const vt = el("table", null,
      el("caption", null, "Trustworthiness claims of " + name),
      el("thead", null, el("tr", null, el("th", { scope: "col" }, "Claim"), el("th", { scope: "col" }, "Value"))),
      el("tbody", null, ...Object.entries(vec).map(([k, v]) =>
        el("tr", null, el("th", { scope: "row" }, k), el("td", { class: "num" }, String(v))))));
    const ft = el("table", null,
      el("caption", null, "What the verifier established about " + name + " (from the quoted event log)"),
      el("thead", null, el("tr", null, el("th", { scope: "col" }, "Fact"), el("th", { scope: "col" }, "Value"))),
      el("tbody", null, ...Object.entries(facts).map(([k, v]) =>
        el("tr", null, el("th", { scope: "row" }, k), el("td", { class: "mono" }, valueText(v))))));
    card.append(el("div", { class: "scroll" }, vt), el("div", { class: "scroll" }, ft));
    return card;
  }

  let lastInstanceKey = "";

  async function renderInstance(id) {
    const base = "/v1/instances/" + encodeURIComponent(id);
    const [doc, hist] = await Promise.all([api(base), api(base + "/results?limit=50")]);
    $("instance-h").textContent = "Instance " + id;
    const latest = doc.latest || {};
    const claims = latest.claims || {};
    kv($("instance-summary"), [
      ["Status", badge(doc.status)],
      ["Last attestation", doc.at ? age(doc.at) + " (" + time(doc.at) + ")" : "never"],
      ["Latest result", latest.seq !== undefined ? "seq " + latest.seq : "none"],
      ["Attestation URL", doc.url || ""],
      ["Service URL", doc.service_url || "\u2014"],
      ["Monitor URL", doc.monitor_url || "\u2014"],
      ["AK name", el("span", { class: "mono" }, doc.ak_name || "")],
      ["Registered", time(doc.registered_at)],
      ["Refusal", claims.tuk_refusal || latest.error || "\u2014"],
      ["Identity", doc.identity_error || "verified"],
    ]);
    // The rest changes only with a new result: keep the DOM (and the reader's place) otherwise.
    const results = hist.results || [];
    const key = id + "|" + (results[0] ? results[0].seq : "") + "|" + (latest.seq ?? "");
    if (key === lastInstanceKey) return;
    lastInstanceKey = key;
    $("timeline-strip").replaceChildren(...results.slice().reverse().map((r) =>
      el("li", { class: "s-" + r.status, title: "seq " + r.seq + ": " + r.status })));
    $("timeline-table").tBodies[0].replaceChildren(...results.slice(0, 20).map((r) =>
      el("tr", null, el("th", { scope: "row", class: "num" }, String(r.seq)), el("td", null, time(r.at)),
        el("td", null, badge(r.status)), el("td", null, r.error || ""))));
    const submods = Object.entries(claims.submods || {});
    $("runtime-table").tBodies[0].replaceChildren(...submods.map(([name, sm]) => {
      const a = sm.ear_attester_claims || {};
      return el("tr", null, el("th", { scope: "row", class: "mono" }, name), el("td", null, valueText(a.state)),
        el("td", { class: "num" }, valueText(a.checks)), el("td", { class: "num" }, valueText(a.violations)),
        el("td", { class: "num" }, valueText(a.reinstantiations)),
        el("td", { class: "num" }, a.last_check_ms !== undefined ? valueText(a.last_check_ms) + " ms" : ""));
    }));
    $("submods").replaceChildren(...(submods.length
      ? submods.map(([name, sm]) => submodCard(name, sm))
      : [el("p", null, "No appraisal yet.")]));
    await renderEventlog(base);
  }

  function eventWhat(content) {
    if (content === null || typeof content !== "object") return valueText(content);
    const name = content.name || content.component || content.path || content.kind;
    return name !== undefined ? String(name) : JSON.stringify(content).slice(0, 120);
  }

  async function renderEventlog(base) {
    const log = await api(base + "/eventlog");
    if (log.seq === null || log.seq === undefined) {
      $("eventlog-note").textContent = "No event log yet (kept from the first attestation with evidence).";
      $("pcrs-table").tBodies[0].replaceChildren();
      $("eventlog-table").tBodies[0].replaceChildren();
      return;
    }
    $("eventlog-note").textContent = "From result seq " + log.seq + " (" + time(log.at) + "), " +
      (log.records || []).length + " records" + (log.replay_error ? "; replay failed: " + log.replay_error : "") + ".";
    $("pcrs-table").tBodies[0].replaceChildren(...Object.entries(log.pcrs || {}).map(([pcr, v]) =>
      el("tr", { "data-pcr": pcr }, el("th", { scope: "row", class: "num" }, pcr), el("td", { class: "mono" }, v))));
    $("eventlog-table").tBodies[0].replaceChildren(...(log.records || []).map((r) =>
      el("tr", { "data-pcr": String(r.pcr) }, el("th", { scope: "row", class: "num" }, String(r.recnum)),
        el("td", { class: "num" }, String(r.pcr)), el("td", { class: "mono" }, r.content_type),
        el("td", null, eventWhat(r.content)), el("td", { class: "mono", title: r.digest || "" }, short(r.digest || "")),
        el("td", { class: "mono", title: r.pcr_after || "" }, short(r.pcr_after || "")))));
  }

  // ---- webhooks ----
  async function renderWebhooks() {
    let hooks;
    try {
      hooks = (await api("/v1/webhooks")).webhooks || [];
    } catch (e) {
      if (e.status === 403) {
        $("webhooks-note").textContent = "Listing webhooks needs an admin token (hook URLs often carry secrets): sign out and sign in with one.";
        $("webhooks-table").tBodies[0].replaceChildren();
        return;
      }
      throw e;
    }
    $("webhooks-note").textContent = hooks.length + " webhook(s).";
    $("webhooks-table").tBodies[0].replaceChildren(...hooks.map((h) =>
      el("tr", null, el("th", { scope: "row", class: "mono" }, h.id), el("td", { class: "mono" }, h.url))));
  }

  // ---- the loop ----
  function route() {
    const h = location.hash;
    if (h === "" || h === "#/" || h === "#") view = { page: "fleet", id: null };
    else if (h === "#/webhooks") view = { page: "webhooks", id: null };
    else if (h.startsWith("#/instance/")) view = { page: "instance", id: decodeURIComponent(h.slice(11)) };
    else return false;
    lastInstanceKey = "";
    return true;
  }

  async function tick() {
    if (busy) return;
    busy = true;
    try {
      if (!token() && !readAnonymous) { needLogin(""); return; }
      if (view.page === "fleet") await renderFleet();
      else if (view.page === "instance") await renderInstance(view.id);
      else await renderWebhooks();
      show(view.page);
      $("signout").hidden = !token();
      setConn("Updated " + new Date().toLocaleTimeString(), false);
    } catch (e) {
      if (e.status === 401) {
        const had = !!token();
        sessionStorage.removeItem(TOKEN_KEY);
        needLogin(had ? "The verifier refused the token: " + e.message : e.message);
      } else if (e.status === 404 && view.page === "instance") {
        setConn("No instance " + view.id + " (deleted?)", true);
      } else {
        setConn("Cannot reach the verifier: " + e.message + " (retrying every second)", true);
      }
    } finally {
      busy = false;
    }
  }

  function start() {
    if (timer === null) timer = setInterval(tick, POLL_MS);
    tick();
  }

  document.addEventListener("DOMContentLoaded", async () => {
    try {
      const r = await fetch("/ui/access.json", { cache: "no-store", credentials: "omit" });
      readAnonymous = !!(await r.json()).read_anonymous;
    } catch (_) { readAnonymous = false; }
    route();
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("token").value = "";
      $("login-error").textContent = "";
      tick().then(() => $("main").focus());
    });
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      fleetRows.clear();
      $("fleet-table").tBodies[0].replaceChildren();
      needLogin("Signed out.");
    });
    $("skip").addEventListener("click", (ev) => { ev.preventDefault(); $("main").focus(); });
    window.addEventListener("hashchange", () => {
      if (route()) tick().then(() => $("main").focus());
    });
    start();
  });
})();
