// Diplo dashboard: the live parts. The server renders every page and fragment; this file
// keeps them current from /ws, sends the session's CSRF token with every htmx request,
// filters the overview, draws sparklines and charts, and streams logs.
"use strict";
(() => {
  const body = document.body;
  const page = body.dataset.page || "";
  const appName = body.dataset.app || "";
  const csrf = body.dataset.csrf || "";

  // --- htmx: CSRF header on every request; error answers are shown, not dropped --------
  document.addEventListener("htmx:configRequest", (e) => {
    if (csrf) e.detail.headers["X-CSRF-Token"] = csrf;
  });
  function configureHtmx() {
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "[45]..", swap: true, error: true },
    ];
  }
  document.addEventListener("htmx:beforeSwap", (e) => {
    if (e.detail.xhr.status === 401 && e.detail.xhr.getResponseHeader("HX-Redirect")) {
      e.detail.shouldSwap = false;
    }
  });
  document.addEventListener("click", (e) => {
    const dismiss = e.target.closest("[data-dismiss]");
    if (dismiss) document.getElementById(dismiss.dataset.dismiss).replaceChildren();
  });
  document.addEventListener("htmx:afterRequest", (e) => {
    // a rollback answered: the confirmation has done its job
    if (e.detail.requestConfig && /\/rollback$/.test(e.detail.requestConfig.path || "")) {
      const box = document.getElementById("confirm");
      if (box) box.replaceChildren();
    }
  });

  const fire = (name) => { if (window.htmx) htmx.trigger(body, name); };
  const debounced = {};
  const soon = (key, fn, ms = 80) => {
    clearTimeout(debounced[key]);
    debounced[key] = setTimeout(fn, ms);
  };
  // No server to answer (serve restarting, the network gone), or one gone in the middle
  // of the body, is an answer that is not ok, not an error: the page keeps what it shows,
  // and the socket's return refreshes it all. The body is read here, as text or JSON.
  const get = (url, as = "text") => fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
    .then(async (res) => ({ ok: res.ok, status: res.status, body: res.ok ? await res[as]() : null }))
    .catch(() => ({ ok: false, status: 0, body: null }));

  function toast(text, tone) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const p = document.createElement("p");
    p.className = `note ${tone}`;
    p.textContent = text;
    box.append(p);
    setTimeout(() => p.remove(), 6000);
    while (box.children.length > 4) box.firstChild.remove();
  }

  // --- overview: rows, filters, sparklines --------------------------------------------
  const rowsBody = document.getElementById("app-rows");
  const filters = {
    name: document.getElementById("f-name"),
    project: document.getElementById("f-project"),
    health: document.getElementById("f-health"),
  };
  function applyFilters() {
    if (!rowsBody) return;
    const q = (filters.name.value || "").trim().toLowerCase();
    const project = filters.project.value;
    const health = filters.health.value;
    let shown = 0;
    for (const tr of rowsBody.rows) {
      const ok = (!q || tr.dataset.app.toLowerCase().includes(q))
        && (!project || tr.dataset.project === project)
        && (!health || tr.dataset.health === health);
      tr.hidden = !ok;
      if (ok) shown += 1;
    }
    const count = document.getElementById("shown-count");
    // while the rows past the first screen are on their way, the count the server wrote stays
    if (count && !rowsBody.dataset.more) count.textContent = shown === rowsBody.rows.length ? `${shown}` : `${shown} of ${rowsBody.rows.length}`;
  }
  if (rowsBody) {
    for (const el of Object.values(filters)) el.addEventListener("input", applyFilters);
    document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
    const params = new URLSearchParams(location.search);
    for (const key of ["name", "project", "health"]) {
      const v = params.get(key === "name" ? "q" : key);
      if (v) filters[key].value = v;
    }
    applyFilters();
  }

  async function refreshRow(name) {
    const res = await get(`/ui/rows/${encodeURIComponent(name)}`);
    const old = document.getElementById(`row-${name}`);
    if (res.status === 404) { if (old) old.remove(); applyFilters(); return; }
    if (!res.ok) return;
    const tpl = document.createElement("template");
    tpl.innerHTML = res.body.trim();
    const fresh = tpl.content.firstElementChild;
    if (!fresh) return;
    if (old) old.replaceWith(fresh); else { await refreshRows(); return; }
    drawSpark(fresh.querySelector("[data-spark]"));
    applyFilters();
  }
  async function refreshRows() {
    const res = await get("/ui/rows");
    if (!res.ok || !rowsBody) return;
    rowsBody.innerHTML = res.body;
    delete rowsBody.dataset.more;
    rowsBody.removeAttribute("aria-busy");
    rowsBody.querySelectorAll("[data-spark]").forEach(drawSpark);
    applyFilters();
  }

  let sparks = {};
  let sparksAt = 0;
  async function loadSparks(force) {
    if (!rowsBody) return;
    if (!force && Date.now() - sparksAt < 5000) return;
    sparksAt = Date.now();
    const res = await get("/ui/sparks", "json");
    if (!res.ok) return;
    sparks = res.body.apps || {};
    rowsBody.querySelectorAll("[data-spark]").forEach(drawSpark);
  }
  const SVG = "http://www.w3.org/2000/svg";
  function line(values, cls, w, h) {
    const nums = values.map((v) => (v == null ? null : Number(v)));
    const max = Math.max(1e-9, ...nums.filter((v) => v != null));
    const step = nums.length > 1 ? w / (nums.length - 1) : w;
    const pts = [];
    nums.forEach((v, i) => { if (v != null) pts.push(`${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`); });
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("points", pts.join(" "));
    pl.setAttribute("fill", "none");
    pl.setAttribute("stroke-width", "1.5");
    pl.setAttribute("class", cls);
    return pl;
  }
  const last = (xs) => { for (let i = xs.length - 1; i >= 0; i--) if (xs[i] != null) return xs[i]; return null; };
  function mib(b) { return b == null ? "–" : b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(1)} GiB` : `${(b / (1 << 20)).toFixed(1)} MiB`; }
  function drawSpark(cell) {
    if (!cell) return;
    const data = sparks[cell.dataset.spark];
    if (!data || !data.cpu || !data.cpu.length) return;
    const w = 120, h = 28;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("aria-hidden", "true");
    svg.append(line(data.mem, "mem", w, h), line(data.cpu, "cpu", w, h));
    const label = document.createElement("small");
    const cpu = last(data.cpu);
    label.textContent = `${cpu == null ? "–" : cpu.toFixed(1)}% CPU · ${mib(last(data.mem))}`;
    cell.replaceChildren(svg, label);
  }

  // --- app page: activity, charts, logs ------------------------------------------------
  function activity(ev) {
    const list = document.getElementById("activity");
    if (!list) return;
    const li = document.createElement("li");
    const at = new Date(ev.at * 1000).toLocaleTimeString();
    const d = ev.data || {};
    const what = d.step ? `${d.step}${d.detail ? `: ${d.detail}` : ""}` : (d.message || d.error || d.reason || d.health || "");
    li.textContent = `${at} ${ev.kind}${what ? ` — ${what}` : ""}`;
    if (/failed|error/.test(ev.kind)) li.className = "error";
    const first = list.querySelector(".muted");
    if (first) first.remove();
    list.prepend(li);
    while (list.children.length > 100) list.lastChild.remove();
  }

  let charts = [];
  let chartsAt = 0;
  async function loadCharts(force) {
    const cpuBox = document.getElementById("chart-cpu");
    if (!cpuBox || !window.uPlot) return;
    if (!force && Date.now() - chartsAt < 10000) return;
    chartsAt = Date.now();
    const range = document.getElementById("range").value;
    const res = await get(`/ui/apps/${encodeURIComponent(appName)}/metrics?since=${range}`, "json");
    if (!res.ok) return;
    const s = res.body;
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue("--muted").trim();
    const grid = css.getPropertyValue("--line").trim();
    const axis = { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } };
    const make = (box, title, key, color, fmt) => {
      const width = Math.max(280, box.clientWidth - 4);
      const end = Date.now() / 1000;
      return new uPlot({
        title, width, height: 200,
        scales: { x: { time: true, range: () => [end - s.since, end] } },
        series: [{}, { label: title, stroke: color, width: 1.5, value: (u, v) => (v == null ? "–" : fmt(v)) }],
        axes: [axis, { ...axis, values: (u, vals) => vals.map(fmt), size: 70 }],
      }, [s.timestamps, s.metrics[key]], box);
    };
    charts.forEach((c) => c.destroy());
    cpuBox.replaceChildren();
    const memBox = document.getElementById("chart-mem");
    memBox.replaceChildren();
    charts = [
      make(cpuBox, "CPU % of one core", "cpu_percent", css.getPropertyValue("--spark-cpu").trim(), (v) => `${v.toFixed(1)}%`),
      make(memBox, "Memory", "memory_bytes", css.getPropertyValue("--spark-mem").trim(), mib),
    ];
  }

  const logs = { el: document.getElementById("logs"), lines: [], paused: false, held: 0, reader: null, n: 0 };
  function renderLogs() {
    const el = logs.el;
    const term = (document.getElementById("log-search").value || "").toLowerCase();
    const shown = term ? logs.lines.filter((l) => l.toLowerCase().includes(term)) : logs.lines;
    el.textContent = shown.join("\n");
    if (document.getElementById("log-follow").checked) el.scrollTop = el.scrollHeight;
    const state = document.getElementById("log-state");
    state.textContent = logs.paused ? `paused: ${logs.held} new lines held` : term ? `${shown.length} of ${logs.lines.length} lines match` : "";
  }
  async function streamLogs(tail) {
    if (!logs.el) return;
    const src = logs.el.dataset.src.replace(/tail=\d+/, `tail=${tail}`);
    try {
      const res = await fetch(src, { credentials: "same-origin" });
      if (!res.ok || !res.body) throw new Error(`status ${res.status}`);
      logs.reader = res.body.getReader();
      const dec = new TextDecoder();
      let rest = "";
      for (;;) {
        const { value, done } = await logs.reader.read();
        if (done) break;
        rest += dec.decode(value, { stream: true });
        const parts = rest.split("\n");
        rest = parts.pop();
        if (!parts.length) continue;
        logs.lines.push(...parts);
        if (logs.lines.length > 5000) logs.lines.splice(0, logs.lines.length - 5000);
        if (logs.paused) { logs.held += parts.length; document.getElementById("log-state").textContent = `paused: ${logs.held} new lines held`; }
        else renderLogs();
      }
    } catch (err) { /* the stream broke: try again below */ }
    setTimeout(() => streamLogs(0), 2000);
  }
  if (logs.el) {
    document.getElementById("log-search").addEventListener("input", renderLogs);
    document.getElementById("log-follow").addEventListener("change", renderLogs);
    const pause = document.getElementById("log-pause");
    pause.addEventListener("click", () => {
      logs.paused = !logs.paused;
      pause.setAttribute("aria-pressed", String(logs.paused));
      pause.textContent = logs.paused ? "Resume" : "Pause";
      if (!logs.paused) { logs.held = 0; renderLogs(); }
    });
    streamLogs(200);
  }
  const range = document.getElementById("range");
  if (range) range.addEventListener("change", () => loadCharts(true));

  // --- the socket ------------------------------------------------------------------------
  const live = document.getElementById("live");
  let opened = false;
  let backoff = 500;
  function setLive(state, text) { live.dataset.state = state; live.textContent = text; }
  function onMessage(msg) {
    if (msg.type === "apps") {
      if (rowsBody) { msg.changed.forEach((n) => soon(`row-${n}`, () => refreshRow(n))); msg.removed.forEach((n) => soon(`row-${n}`, () => refreshRow(n))); }
      if (appName && (msg.changed.includes(appName) || msg.removed.includes(appName))) soon("app", () => fire("dash:app"));
    } else if (msg.type === "event") {
      if (appName && msg.app === appName) {
        activity(msg);
        if (/^(deploy|rollback|app)\./.test(msg.kind)) soon("app", () => fire("dash:app"));
      }
      // a deploy starting or ending shows on its row (the "deploying" badge)
      if (rowsBody && msg.app && /^(deploy|rollback)\./.test(msg.kind)) soon(`row-${msg.app}`, () => refreshRow(msg.app), 150);
      if (msg.kind === "deploy.succeeded" || msg.kind === "deploy.failed" || msg.kind === "rollback.failed") {
        toast(`${msg.app}: ${msg.kind.replace(".", " ")}${msg.data.message ? ` — ${msg.data.message}` : ""}`, msg.kind === "deploy.succeeded" ? "good" : "bad");
      }
      if (/^(manifest|source)\./.test(msg.kind)) soon("sources", () => fire("dash:sources"));
    } else if (msg.type === "sources") {
      soon("sources", () => fire("dash:sources"));
    } else if (msg.type === "metrics") {
      soon("metrics", () => { fire("dash:metrics"); loadSparks(false); loadCharts(false); }, 200);
    } else if (msg.type === "alerts") {
      soon("alerts", () => fire("dash:alerts"));
    }
  }
  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.onopen = () => {
      setLive("live", "live");
      backoff = 500;
      if (opened) { // missed events while away: look at everything again
        if (rowsBody) { refreshRows(); loadSparks(true); }
        fire("dash:app"); fire("dash:sources"); fire("dash:metrics"); fire("dash:alerts");
      }
      opened = true;
    };
    ws.onmessage = (e) => { try { onMessage(JSON.parse(e.data)); } catch (err) { /* not ours */ } };
    ws.onclose = () => {
      setLive("down", "reconnecting…");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 5000);
    };
  }
  // What showing the page does not need waits until it is shown (a frame, then a task):
  // htmx (52 kB to compile in a fresh tab), the live socket once htmx is there (so that
  // "live" means the page can act), the sparklines, and the rows past the first screen.
  const afterFirstPaint = (fn) => requestAnimationFrame(() => setTimeout(fn, 0));
  window.addEventListener("DOMContentLoaded", () => afterFirstPaint(() => {
    const lib = document.createElement("script");
    lib.src = "/ui/static/vendor/htmx.min.js";
    lib.onload = () => { configureHtmx(); connect(); };
    lib.onerror = () => connect();
    document.head.append(lib);
    if (rowsBody && rowsBody.dataset.more) refreshRows();
    loadSparks(true);
    loadCharts(true);
  }));
})();
