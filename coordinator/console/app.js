// twopc web console: polls the coordinator's /api every POLL_MS (one
// cycle at a time; slower while the tab is hidden) and renders it. Data is
// only ever put into the page as text (textContent), never as HTML.
"use strict";
(function () {
  const POLL_MS = 1500;
  const HIDDEN_POLL_MS = 10000;
  const TOKEN_KEY = "twopc-admin-token";
  // Longest wait for one answer (the slowest API, the in-doubt fan-out,
  // takes about 1 s at worst). Without a limit a hung coordinator (which
  // keeps its sockets open) left the poll waiting for ever and the page
  // showing stale data as "updated".
  const REQUEST_MS = 5000;
  const $ = (id) => document.getElementById(id);

  let status = null;           // last /api/status
  let lastSample = 0;          // t of the newest history sample held
  const samples = [];          // history samples, oldest first
  let keepSecs = 600;
  let kinds = [];              // abort kinds plotted (series order)
  const charts = {};

  // ---- token and fetch -------------------------------------------------
  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  async function api(path, body) {
    const headers = { "Accept": "application/json" };
    const t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    const opts = { headers, cache: "no-store" };
    if (body !== undefined) {
      opts.method = "POST";
      headers["Content-Type"] = "application/json";
      headers["X-Twopc-Console"] = "1";
      opts.body = JSON.stringify(body);
    }
    // Never throws: a request that fails or gets no answer in time is an
    // answer with status 0 and the reason.
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), REQUEST_MS);
    opts.signal = ctl.signal;
    try {
      const resp = await fetch(path, opts);
      let data = null;
      try { data = await resp.json(); } catch (e) {
        if (ctl.signal.aborted) throw e;
        data = { error: "not JSON (HTTP " + resp.status + ")" };
      }
      if (resp.status === 401) showTokenForm(true);
      return { ok: resp.ok, status: resp.status, data };
    } catch (e) {
      const why = ctl.signal.aborted
        ? "the coordinator did not answer within " + REQUEST_MS / 1000 + " s (hung or overloaded?)"
        : "cannot reach the coordinator's console (" + e + ")";
      return { ok: false, status: 0, data: { error: why + (lastOk ? "; last update " + lastOk : "") } };
    } finally {
      clearTimeout(timer);
    }
  }
  let lastOk = "";             // time of the last complete poll, shown while failing

  function showTokenForm(on) { $("token-form").hidden = !on; }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    showTokenForm(false);
    pollNow();
  });
  $("token-clear").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); pollNow(); });

  function setStatus(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  // ---- formatting ------------------------------------------------------
  function dur(ms) {
    if (ms === null || ms === undefined) return "";
    const neg = ms < 0; ms = Math.abs(ms);
    let s;
    if (ms < 1000) s = ms + " ms";
    else if (ms < 60000) s = (ms / 1000).toFixed(1) + " s";
    else if (ms < 3600000) s = Math.floor(ms / 60000) + " min " + Math.floor((ms % 60000) / 1000) + " s";
    else s = (ms / 3600000).toFixed(1) + " h";
    return neg ? "-" + s : s;
  }
  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function replaceRows(table, rows) {
    const tbody = $(table).tBodies[0];
    tbody.replaceChildren(...rows);
  }

  // ---- charts ----------------------------------------------------------
  const PALETTE = ["#c0392b", "#e67e22", "#8e44ad", "#2c3e50", "#d35400", "#7f8c8d", "#16a085", "#f39c12", "#9b59b6", "#34495e", "#e74c3c", "#95a5a6", "#bdc3c7"];

  function chartWidth(id) { return Math.max(280, $(id).clientWidth || 400); }

  function makeChart(id, series, data) {
    if (charts[id]) charts[id].destroy();
    const opts = {
      width: chartWidth(id), height: 180,
      series: [{}].concat(series),
      axes: [{}, { size: 50 }],
      scales: { x: { time: true } },
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    };
    charts[id] = new uPlot(opts, data, $(id));
  }

  function updateCharts() {
    const xs = samples.map((s) => s.t / 1000);
    const seen = new Set();
    samples.forEach((s) => s.aborted.forEach(([k]) => seen.add(k)));
    const newKinds = Array.from(seen).sort();
    const committed = samples.map((s) => s.committed);
    const thr = [xs, committed].concat(newKinds.map((k) => samples.map((s) => {
      const hit = s.aborted.find(([kk]) => kk === k);
      return hit ? hit[1] : 0;
    })));
    if (!charts["chart-throughput"] || newKinds.join() !== kinds.join()) {
      kinds = newKinds;
      makeChart("chart-throughput",
        [{ label: "committed", stroke: "#27ae60", width: 2 }].concat(kinds.map((k, i) => ({ label: "aborted: " + k, stroke: PALETTE[i % PALETTE.length] }))),
        thr);
    } else charts["chart-throughput"].setData(thr);
    const lat = [xs, samples.map((s) => s.p50_ms), samples.map((s) => s.p99_ms)];
    if (!charts["chart-latency"]) makeChart("chart-latency", [{ label: "p50", stroke: "#2980b9", width: 2, spanGaps: false }, { label: "p99", stroke: "#c0392b", spanGaps: false }], lat);
    else charts["chart-latency"].setData(lat);
    const rt = [xs, samples.map((s) => s.retries)];
    if (!charts["chart-retries"]) makeChart("chart-retries", [{ label: "retries", stroke: "#e67e22", width: 2 }], rt);
    else charts["chart-retries"].setData(rt);
    for (const id of ["chart-throughput", "chart-latency", "chart-retries"]) $(id).dataset.points = String(samples.length);
    $("chart-throughput").dataset.committedTotal = String(committed.reduce((a, b) => a + b, 0));
  }

  window.addEventListener("resize", () => {
    for (const id in charts) charts[id].setSize({ width: chartWidth(id), height: 180 });
  });

  // ---- views -----------------------------------------------------------
  function renderStatus(s) {
    status = s;
    document.body.dataset.role = s.role;
    $("role").textContent = s.role;
    $("leader").textContent = s.leader || "unknown";
    $("coordinator-addr").textContent = s.coordinator;
    $("open-count").textContent = s.open_transactions === null ? "?" : String(s.open_transactions);
    keepSecs = s.keep_secs || keepSecs;
    $("window-min").textContent = String(Math.round(keepSecs / 60));
    $("actions-note").textContent = s.token_required
      ? "(need the admin token; each is confirmed)"
      : "(no --admin-token on this coordinator: open to anyone who reaches this address; each is confirmed)";
    // Failpoint targets and names.
    const target = $("fp-target");
    if (target.options.length !== s.partitions + 1) {
      const opts = [new Option("coordinator", "coordinator")];
      for (let p = 0; p < s.partitions; p++) opts.push(new Option("partition " + p, String(p)));
      target.replaceChildren(...opts);
      fillFailpointNames();
    }
    $("fp-arm").disabled = $("fp-disarm").disabled = !s.failpoints.enabled;
  }

  function fillFailpointNames() {
    if (!status) return;
    const names = $("fp-target").value === "coordinator" ? status.failpoints.coordinator : status.failpoints.participant;
    $("fp-name").replaceChildren(...names.map((n) => new Option(n, n)));
  }
  $("fp-target").addEventListener("change", fillFailpointNames);

  function renderHistory(h) {
    keepSecs = h.keep_secs || keepSecs;
    for (const s of h.samples) {
      if (s.t > lastSample) { samples.push(s); lastSample = s.t; }
    }
    while (samples.length > keepSecs) samples.shift();
    updateCharts();
  }

  function renderLive(l) {
    $("live-count").textContent = String(l.total);
    const rows = l.transactions.map((t) => {
      const tr = document.createElement("tr");
      tr.dataset.tid = t.tid;
      tr.dataset.state = t.state;
      cell(tr, t.tid, "tid");
      cell(tr, t.state, "state-" + t.state);
      cell(tr, dur(t.age_ms));
      cell(tr, dur(t.remaining_ms), t.remaining_ms < 0 ? "late" : "");
      cell(tr, t.participants.map((p) => "p" + p.partition + " " + p.state + (p.retries ? " (" + p.retries + " retries)" : "")).join(", "));
      const td = cell(tr, "");
      if (t.state === "active" || t.state === "preparing") {
        const b = document.createElement("button");
        b.type = "button"; b.textContent = "Abort…";
        b.dataset.action = "abort"; b.dataset.tid = t.tid;
        td.appendChild(b);
      }
      return tr;
    });
    replaceRows("live-txns", rows);
    const more = $("live-more");
    more.hidden = l.total <= l.transactions.length;
    more.textContent = "showing the " + l.transactions.length + " oldest of " + l.total;
  }

  function renderInDoubt(d) {
    const rows = [];
    for (const p of d.partitions) {
      if (!p.reachable) {
        const tr = document.createElement("tr");
        tr.className = "error"; tr.dataset.partition = String(p.partition);
        cell(tr, String(p.partition)); const td = cell(tr, "cannot ask: " + p.error); td.colSpan = 3;
        rows.push(tr);
        continue;
      }
      for (const t of p.tids) {
        const tr = document.createElement("tr");
        tr.dataset.tid = t.tid; tr.dataset.partition = String(p.partition);
        cell(tr, String(p.partition)); cell(tr, t.tid, "tid"); cell(tr, dur(t.prepared_for_ms)); cell(tr, String(t.asked) + "×");
        rows.push(tr);
      }
      if (p.omitted_tids) {
        const tr = document.createElement("tr");
        cell(tr, String(p.partition)); const td = cell(tr, "… and " + p.omitted_tids + " more"); td.colSpan = 3;
        rows.push(tr);
      }
    }
    if (!rows.length) {
      const tr = document.createElement("tr"); tr.className = "empty";
      const td = cell(tr, "none"); td.colSpan = 4; rows.push(tr);
    }
    replaceRows("in-doubt", rows);
  }

  function renderTopology(t) {
    replaceRows("topology", t.members.map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.partition = String(m.partition);
      tr.dataset.reachable = String(!!m.reachable);
      cell(tr, String(m.partition));
      cell(tr, m.address || "(not registered)");
      cell(tr, m.reachable ? "yes" : "no: " + (m.error || "?"), m.reachable ? "ok" : "late");
      return tr;
    }));
  }

  // ---- polling ---------------------------------------------------------
  let timer = null;
  let polls = 0;

  async function poll() {
    timer = null;
    try {
      const st = await api("/api/status");
      if (!st.ok) {
        setStatus(st.status === 401 ? "auth" : "error", (st.status === 401 ? "admin token needed: " : "") + st.data.error);
        return;
      }
      renderStatus(st.data);
      const [h, l, d, t] = await Promise.all([
        api("/api/history?since=" + lastSample),
        api("/api/transactions"),
        api("/api/in-doubt"),
        api("/api/topology"),
      ]);
      if (h.ok) renderHistory(h.data);
      const errs = [l, d, t].filter((r) => !r.ok).map((r) => r.data.error);
      if (l.ok) renderLive(l.data);
      if (d.ok) renderInDoubt(d.data);
      if (t.ok) renderTopology(t.data);
      if (st.data.role === "standby") setStatus("ok", "this coordinator is a standby; the leader is " + (st.data.leader || "not known yet") + " (open its console for live data)");
      else if (errs.length) setStatus("error", errs[0]);
      else { lastOk = new Date().toLocaleTimeString(); setStatus("ok", "updated " + lastOk); }
    } catch (e) {
      setStatus("error", "cannot reach the coordinator's console: " + e);
    } finally {
      polls += 1;
      document.body.dataset.polls = String(polls);
      schedule();
    }
  }
  function schedule() {
    if (timer === null) timer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
  function pollNow() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    poll();
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollNow(); });

  // ---- lookup and actions ---------------------------------------------
  $("tid-lookup").addEventListener("submit", async (e) => {
    e.preventDefault();
    const tid = $("tid-lookup-input").value.trim();
    const out = $("tid-lookup-result");
    if (!tid) return;
    const r = await api("/api/decision/" + encodeURIComponent(tid));
    if (!r.ok) { out.dataset.decision = "error"; out.textContent = r.data.error; return; }
    const d = r.data;
    out.dataset.decision = d.decision;
    let text = d.tid + ": " + d.decision;
    if (d.decision === "ABORTED") text += " (" + (d.abort_kind || "?") + ": " + d.reason + ")" + (d.presumed ? " — presumed: not remembered here" : "");
    if (d.decision === "FORGOTTEN") text += " — " + d.reason;
    if (d.decision === "PENDING") text += " (" + d.phase + ")";
    out.textContent = text;
  });

  function actionResult(r, okText) {
    const el = $("action-result");
    el.dataset.state = r.ok ? "ok" : "error";
    el.textContent = r.ok ? okText : "refused (HTTP " + r.status + (r.data.code ? " " + r.data.code : "") + "): " + r.data.error;
    pollNow();
  }

  async function abortTid(tid) {
    if (!tid) return;
    if (!window.confirm("Abort transaction " + tid + "?\nIt is refused if the tid is already decided.")) return;
    const r = await api("/api/abort", { tid });
    actionResult(r, "aborted " + tid);
  }
  $("abort-form").addEventListener("submit", (e) => { e.preventDefault(); abortTid($("abort-tid").value.trim()); });
  $("live-txns").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-action=abort]");
    if (b) abortTid(b.dataset.tid);
  });

  async function setFailpoint(arm) {
    const target = $("fp-target").value;
    const name = $("fp-name").value;
    const actions = arm ? $("fp-actions").value.trim() : "";
    if (!name) return;
    if (arm && !actions) { actionResult({ ok: false, status: 0, data: { error: "type the actions (e.g. return, which kills the process at that step)" } }); return; }
    const where = target === "coordinator" ? "the coordinator" : "partition " + target;
    const q = arm ? "Arm failpoint " + name + " with \"" + actions + "\" at " + where + "?\n(return kills that process when the step is reached.)" : "Disarm failpoint " + name + " at " + where + "?";
    if (!window.confirm(q)) return;
    const r = await api("/api/failpoint", { target, name, actions });
    actionResult(r, (arm ? "armed " : "disarmed ") + name + " at " + where);
  }
  $("fp-form").addEventListener("submit", (e) => { e.preventDefault(); setFailpoint(true); });
  $("fp-disarm").addEventListener("click", () => setFailpoint(false));

  poll();
})();
