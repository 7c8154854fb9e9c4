/* SAGE dashboard: a single-page app in plain JavaScript (no build step, no dependencies).
 *
 * Data flow: GET api/state once at start, then the EventSource at events (one JSON state per
 * message, about once a second). Every state re-renders each section of the page; a section
 * that throws shows an error note and logs to the console, the others still render.
 * All strings from the state are escaped before they go into HTML.
 */
(function () {
  "use strict";

  var HISTORY_MAX = 120; // points kept for the host CPU / memory sparkline
  var DASH = "\u2014";
  var RECONNECT_MS = 3000; // retry delay when the EventSource gave up (non-200 answer)

  var app = {
    state: null,
    stateTime: -Infinity,
    selectedJobId: null,
    connected: null, // null: not yet known, true: live, false: reconnecting
    history: [], // [{t, cpu, mem}]
    es: null,
    tasksOpen: false,
  };

  // ---------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------

  var ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function esc(v) {
    if (v === null || v === undefined) return "";
    return String(v).replace(/[&<>"']/g, function (c) { return ESC[c]; });
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function num(v, dflt) { return isNum(v) ? v : (dflt === undefined ? 0 : dflt); }
  function arr(v) { return Array.isArray(v) ? v : []; }
  function obj(v) { return v && typeof v === "object" && !Array.isArray(v) ? v : {}; }
  function str(v) { return v === null || v === undefined ? "" : String(v); }
  function clamp01(v) { return isNum(v) ? Math.max(0, Math.min(1, v)) : 0; }
  function byId(id) { return document.getElementById(id); }

  /** 12, 950, 12.3k, 123k, 4.5M, 1.2B; "—" for a non-number. */
  function fmtCount(v) {
    if (!isNum(v)) return DASH;
    var a = Math.abs(v);
    var units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]];
    for (var i = 0; i < units.length; i++) {
      if (a >= units[i][0]) {
        var x = v / units[i][0];
        return (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1)) + units[i][1];
      }
    }
    if (Number.isInteger(v)) return String(v);
    return a >= 100 ? v.toFixed(0) : v.toFixed(1);
  }

  function fmtExact(v) { return isNum(v) ? v.toLocaleString("en-US") : DASH; }

  /** Exact below 10,000 (queue sizes), compact above. */
  function fmtQueue(v) { return isNum(v) && Math.abs(v) < 10000 ? fmtExact(v) : fmtCount(v); }

  function fmtRate(v) { return isNum(v) ? fmtCount(v) + " rec/s" : DASH; }

  /** Milliseconds with 2-3 significant digits: 0.02, 0.31, 1.84, 12.3, 820, 1,204. */
  function fmtMs(v) {
    if (!isNum(v)) return DASH;
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 100) return Math.round(v).toLocaleString("en-US");
    if (a >= 1) return String(Number(v.toPrecision(3)));
    if (a < 0.001) return String(Number(v.toPrecision(1)));
    return String(Number(v.toPrecision(2)));
  }

  function fmtPct(v, digits) {
    if (!isNum(v)) return DASH;
    return v.toFixed(digits || 0) + "%";
  }

  function fmtFrac(v, digits) { return isNum(v) ? fmtPct(v * 100, digits) : DASH; }

  function fmtMB(mb) {
    if (!isNum(mb)) return DASH;
    if (Math.abs(mb) >= 1024) return (mb / 1024).toFixed(1) + " GB";
    return mb.toFixed(Math.abs(mb) >= 100 ? 0 : 1) + " MB";
  }

  function fmtDuration(s) {
    if (!isNum(s) || s < 0) return DASH;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    var h = Math.floor(m / 60);
    if (h < 48) return h + "h " + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function fmtClock(unix) {
    if (!isNum(unix)) return DASH;
    var d = new Date(unix * 1000);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  function fmtAgo(seconds) {
    if (!isNum(seconds)) return DASH;
    if (seconds < 1.5) return "just now";
    return fmtDuration(seconds) + " ago";
  }

  /** "ok" | "warn" | "hot" for a fill fraction (0..1). */
  function level(frac, warn, hot) {
    if (!isNum(frac)) return "ok";
    if (frac >= (hot === undefined ? 0.8 : hot)) return "hot";
    if (frac >= (warn === undefined ? 0.5 : warn)) return "warn";
    return "ok";
  }

  function bar(frac, lvl, title) {
    var pct = (clamp01(frac) * 100).toFixed(1);
    return '<div class="bar"' + (title ? ' title="' + esc(title) + '"' : "") + '>' +
      '<span class="fill lvl-' + (lvl || level(frac)) + '" style="width:' + pct + '%"></span></div>';
  }

  function truncate(s, n) {
    s = str(s);
    return s.length > n ? s.slice(0, n - 1) + "\u2026" : s;
  }

  var STATUS_CLASSES = {
    running: "st-running", finished: "st-finished", failed: "st-failed",
    cancelled: "st-cancelled", created: "st-created",
  };

  function statusBadge(status) {
    var s = str(status) || "unknown";
    var cls = STATUS_CLASSES[s] || "st-created";
    return '<span class="badge ' + cls + '" data-testid="status-badge">' + esc(s) + "</span>";
  }

  function okBadge(ok, yes, no) {
    return ok ? '<span class="badge st-finished">' + esc(yes || "ok") + "</span>"
      : '<span class="badge st-failed">' + esc(no || "error") + "</span>";
  }

  function td(content, cls, title) {
    return "<td" + (cls ? ' class="' + cls + '"' : "") + (title ? ' title="' + esc(title) + '"' : "") + ">" + content + "</td>";
  }

  function numTd(text, title, extraCls) {
    return td(text, "num" + (extraCls ? " " + extraCls : ""), title);
  }

  function errTd(v) {
    return numTd(isNum(v) ? fmtCount(v) : DASH, isNum(v) ? fmtExact(v) : "", isNum(v) && v > 0 ? "err" : "");
  }

  function thead(cols) {
    return "<thead><tr>" + cols.map(function (c) {
      var label = Array.isArray(c) ? c[0] : c;
      var cls = Array.isArray(c) ? c[1] : "";
      var title = Array.isArray(c) && c[2] ? ' title="' + esc(c[2]) + '"' : "";
      return '<th scope="col"' + (cls ? ' class="' + cls + '"' : "") + title + ">" + esc(label) + "</th>";
    }).join("") + "</tr></thead>";
  }

  // ---------------------------------------------------------------------------------------
  // Header and connection
  // ---------------------------------------------------------------------------------------

  function renderConnection() {
    var el = byId("conn");
    var banner = byId("conn-banner");
    if (app.connected === true) {
      el.className = "conn conn-live";
      el.textContent = "live";
      el.title = "Receiving live updates";
      banner.hidden = true;
    } else if (app.connected === false) {
      el.className = "conn conn-down";
      el.textContent = "disconnected \u2014 reconnecting";
      el.title = "The event stream was interrupted; the browser reconnects by itself";
      banner.hidden = false;
    } else {
      el.className = "conn conn-pending";
      el.textContent = "connecting\u2026";
      banner.hidden = true;
    }
  }

  function renderHeader(s) {
    var host = obj(s.host);
    byId("hdr-host").textContent = str(host.hostname) || DASH;
    byId("hdr-version").textContent = s.version ? "v" + s.version : "";
    byId("hdr-updated").textContent = "updated " + fmtClock(s.time);
    byId("hdr-updated").title = isNum(s.time) ? new Date(s.time * 1000).toString() : "";
    document.title = (host.hostname ? host.hostname + " \u00b7 " : "") + "SAGE dashboard";
  }

  // ---------------------------------------------------------------------------------------
  // Host
  // ---------------------------------------------------------------------------------------

  function pushHistory(s) {
    var host = obj(s.host);
    var mem = obj(host.memory);
    var t = num(s.time, Date.now() / 1000);
    var last = app.history[app.history.length - 1];
    if (last && last.t === t) return;
    app.history.push({
      t: t,
      cpu: isNum(host.cpu_percent) ? host.cpu_percent : null,
      mem: isNum(mem.percent) ? mem.percent : null,
    });
    if (app.history.length > HISTORY_MAX) app.history.splice(0, app.history.length - HISTORY_MAX);
  }

  function sparkline() {
    var W = 240, H = 56;
    var n = app.history.length;
    var step = W / (HISTORY_MAX - 1);
    function points(key) {
      var out = [];
      for (var i = 0; i < n; i++) {
        var v = app.history[i][key];
        if (!isNum(v)) continue;
        var x = (HISTORY_MAX - n + i) * step;
        var y = H - 2 - (Math.max(0, Math.min(100, v)) / 100) * (H - 4);
        out.push(x.toFixed(1) + "," + y.toFixed(1));
      }
      return out.join(" ");
    }
    var cpuPts = points("cpu");
    return '<svg class="spark" data-testid="host-sparkline" viewBox="0 0 ' + W + " " + H +
      '" preserveAspectRatio="none" role="img" aria-label="CPU and memory, last ' + HISTORY_MAX + ' samples">' +
      '<line x1="0" y1="' + (H / 2) + '" x2="' + W + '" y2="' + (H / 2) + '" class="spark-grid"/>' +
      (cpuPts ? '<polygon class="spark-cpu-area" points="' + cpuPts.split(" ")[0].split(",")[0] + "," + H + " " + cpuPts + " " +
        cpuPts.split(" ").pop().split(",")[0] + "," + H + '"/>' : "") +
      '<polyline class="spark-cpu" points="' + cpuPts + '"/>' +
      '<polyline class="spark-mem" points="' + points("mem") + '"/></svg>';
  }

  function renderHost(s) {
    var host = obj(s.host);
    var mem = obj(host.memory);
    var perCpu = arr(host.per_cpu);
    var load = arr(host.load_avg);
    var cpu = host.cpu_percent;

    var cores = perCpu.map(function (v, i) {
      var f = clamp01(num(v) / 100);
      return '<span class="core" title="CPU ' + i + ": " + esc(fmtPct(v)) + '"><span class="core-fill lvl-' +
        level(f, 0.7, 0.9) + '" style="height:' + (f * 100).toFixed(1) + '%"></span></span>';
    }).join("");

    var memFrac = isNum(mem.percent) ? mem.percent / 100
      : (isNum(mem.used_mb) && isNum(mem.total_mb) && mem.total_mb > 0 ? mem.used_mb / mem.total_mb : null);

    var loadLabels = ["1 min", "5 min", "15 min"];
    var loadHtml = load.length ? load.slice(0, 3).map(function (v, i) {
      var hot = isNum(v) && isNum(host.cpu_count) && host.cpu_count > 0 && v / host.cpu_count >= 1;
      return '<span class="load-item"><span class="load-val' + (hot ? " warn-text" : "") + '">' + esc(isNum(v) ? v.toFixed(2) : DASH) +
        '</span><span class="load-lbl">' + loadLabels[i] + "</span></span>";
    }).join("") : DASH;

    var html = '<div class="host-stats">' +
      '<div class="stat">' +
        '<div class="stat-label">CPU' + (isNum(host.cpu_count) ? ' <span class="muted">(' + host.cpu_count + " cores)</span>" : "") + "</div>" +
        '<div class="big" data-testid="host-cpu">' + esc(fmtPct(cpu)) + "</div>" +
        '<div class="cores" data-testid="host-cores" aria-label="Per-core utilisation">' + (cores || '<span class="muted">' + DASH + "</span>") + "</div>" +
      "</div>" +
      '<div class="stat" data-testid="host-memory">' +
        '<div class="stat-label">Memory</div>' +
        '<div class="big">' + esc(fmtFrac(memFrac)) + "</div>" +
        '<div class="stat-sub">' + esc(fmtMB(mem.used_mb)) + " / " + esc(fmtMB(mem.total_mb)) + "</div>" +
        bar(memFrac, level(memFrac, 0.75, 0.9), "available " + fmtMB(mem.available_mb)) +
      "</div>" +
      '<div class="stat">' +
        '<div class="stat-label" title="1, 5 and 15 minute load average">Load average</div>' +
        '<div class="load" data-testid="host-load">' + loadHtml + "</div>" +
      "</div>" +
      '<div class="stat stat-spark">' +
        '<div class="stat-label">History <span class="legend"><i class="sw sw-cpu"></i>CPU <i class="sw sw-mem"></i>mem</span></div>' +
        sparkline() +
      "</div>" +
      "</div>";

    var procs = arr(host.processes);
    if (procs.length) {
      html += '<div class="table-wrap procs"><table class="data" data-testid="processes">' +
        "<caption class=\"sr-only\">Processes</caption>" +
        thead([["Role"], ["PID", "num"], ["Name"], ["RSS", "num"], ["CPU", "num"]]) + "<tbody>" +
        procs.map(function (p) {
          p = obj(p);
          var dead = p.alive === false;
          return '<tr data-testid="process-row" class="' + (dead ? "dead" : "") + '"' + (dead ? ' title="process has exited"' : "") + ">" +
            td(esc(p.role || DASH) + (dead ? ' <span class="tag">exited</span>' : "")) +
            numTd(esc(isNum(p.pid) ? p.pid : DASH)) +
            td(esc(p.name || DASH), "mono") +
            numTd(esc(fmtMB(p.rss_mb))) +
            numTd(esc(fmtPct(p.cpu_percent))) + "</tr>";
        }).join("") + "</tbody></table></div>";
    } else {
      html += '<p class="muted" data-testid="processes">No SAGE processes found.</p>';
    }
    byId("host-body").innerHTML = html;
  }

  // ---------------------------------------------------------------------------------------
  // GPUs
  // ---------------------------------------------------------------------------------------

  function renderGpus(s) {
    var g = obj(s.gpus);
    var devices = arr(g.devices);
    var el = byId("gpus-body");
    if (!g.available || !devices.length) {
      el.innerHTML = '<div class="empty" data-testid="no-gpu"><div class="empty-title">No GPU</div>' +
        '<div class="muted small">' + esc(g.reason || (g.available ? "No devices reported." : "GPU metrics unavailable.")) + "</div></div>";
      return;
    }
    el.innerHTML = '<div class="gpu-list">' + devices.map(function (d) {
      d = obj(d);
      var util = d.utilization_percent;
      var memFrac = isNum(d.memory_used_mb) && isNum(d.memory_total_mb) && d.memory_total_mb > 0
        ? d.memory_used_mb / d.memory_total_mb : null;
      var power = isNum(d.power_w) ? d.power_w.toFixed(0) + " W" : "n/a";
      var limit = isNum(d.power_limit_w) ? d.power_limit_w.toFixed(0) + " W" : "n/a";
      var temp = isNum(d.temperature_c) ? d.temperature_c.toFixed(0) + " \u00b0C" : "n/a";
      return '<div class="gpu" data-testid="gpu" data-gpu-index="' + esc(d.index) + '">' +
        '<div class="gpu-head"><span class="gpu-idx">#' + esc(isNum(d.index) ? d.index : "?") + "</span> " +
          '<span class="gpu-name" title="' + esc(d.name) + '">' + esc(truncate(d.name || "GPU", 32)) + "</span></div>" +
        '<div class="gpu-grid">' +
          '<div><div class="stat-label">Util</div><div class="mid" data-testid="gpu-util">' + (isNum(util) ? esc(fmtPct(util)) : "n/a") + "</div>" +
            bar(isNum(util) ? util / 100 : 0, isNum(util) ? level(util / 100, 0.7, 0.9) : "ok") + "</div>" +
          '<div><div class="stat-label">Memory</div><div class="mid" data-testid="gpu-memory">' + esc(fmtMB(d.memory_used_mb)) +
            ' <span class="muted small">/ ' + esc(fmtMB(d.memory_total_mb)) + "</span></div>" +
            bar(memFrac, level(memFrac, 0.75, 0.9)) + "</div>" +
          '<div><div class="stat-label">Temp</div><div class="mid" data-testid="gpu-temp">' + esc(temp) + "</div></div>" +
          '<div><div class="stat-label">Power</div><div class="mid" data-testid="gpu-power">' + esc(power) +
            ' <span class="muted small">/ ' + esc(limit) + "</span></div></div>" +
        "</div></div>";
    }).join("") + "</div>" +
      (isNum(g.sampled_at) ? '<div class="muted small foot">sampled ' + esc(fmtClock(g.sampled_at)) + "</div>" : "");
  }

  // ---------------------------------------------------------------------------------------
  // Jobs
  // ---------------------------------------------------------------------------------------

  function jobOps(job) { return arr(obj(obj(job).metrics).operators).map(obj); }

  function opRate(job, op) {
    var rates = obj(obj(job).records_per_s);
    var v = rates[String(op.node_id)];
    return isNum(v) ? v : null;
  }

  /** The work an operator did: what a source emitted, what any other operator took in. */
  function opRecords(op) { return op.kind === "source" ? op.records_out : op.records_in; }

  /** Records and current rate of a job: summed over its sinks, or its sources without sinks. */
  function jobTotals(job) {
    var ops = jobOps(job);
    var ends = ops.filter(function (o) { return o.kind === "sink"; });
    var what = "sinks";
    if (!ends.length) { ends = ops.filter(function (o) { return o.kind === "source"; }); what = "sources"; }
    var records = null, rate = null, errors = null;
    ends.forEach(function (o) {
      var r = opRecords(o);
      if (isNum(r)) records = (records || 0) + r;
      var q = opRate(job, o);
      if (isNum(q)) rate = (rate || 0) + q;
    });
    ops.forEach(function (o) { if (isNum(o.errors)) errors = (errors || 0) + o.errors; });
    return { records: records, rate: rate, errors: errors, what: what };
  }

  function chooseSelection(jobs) {
    var ids = jobs.map(function (j) { return str(obj(j).id); });
    if (app.selectedJobId !== null && ids.indexOf(app.selectedJobId) >= 0) return;
    var running = jobs.filter(function (j) { return obj(j).status === "running"; })[0];
    app.selectedJobId = running ? str(running.id) : (jobs.length ? str(obj(jobs[0]).id) : null);
  }

  function renderJobs(s) {
    var jobs = arr(s.jobs).map(obj);
    chooseSelection(jobs);
    byId("jobs-count").textContent = jobs.length ? "(" + jobs.length + ")" : "";
    var el = byId("jobs-body");
    if (!jobs.length) {
      el.innerHTML = '<p class="muted" data-testid="no-jobs">No jobs yet \u2014 run a pipeline or submit one with <code>sage job submit</code>.</p>';
      return;
    }
    var now = s.time;
    el.innerHTML = '<div class="table-wrap"><table class="data jobs-table">' +
      "<caption class=\"sr-only\">Jobs; select a row to see its details</caption>" +
      thead([["Name"], ["ID"], ["Source"], ["Runtime"], ["Status"], ["Elapsed", "num"],
        ["Records", "num", "Records taken in by the sinks (or emitted by the sources)"],
        ["Rate", "num", "Current records per second at the sinks (or sources)"],
        ["Errors", "num"], ["Updated"]]) + "<tbody>" +
      jobs.map(function (j) {
        var id = str(j.id);
        var sel = id === app.selectedJobId;
        var t = jobTotals(j);
        var age = isNum(now) && isNum(j.updated_at) ? Math.max(0, now - j.updated_at) : null;
        return '<tr data-testid="job-row" data-job-id="' + esc(id) + '" class="job-row' + (sel ? " selected" : "") +
          (j.stale ? " stale" : "") + '" tabindex="0" aria-selected="' + (sel ? "true" : "false") + '">' +
          td('<span class="job-name">' + esc(truncate(j.name || DASH, 40)) + "</span>", "", j.name) +
          td(esc(truncate(id, 28)), "mono muted nowrap", id) +
          td(esc(j.source || DASH)) +
          td(esc(j.runtime || DASH)) +
          td(statusBadge(j.status)) +
          numTd(esc(fmtDuration(j.elapsed_s))) +
          numTd(esc(fmtCount(t.records)), "records of the " + t.what + ": " + fmtExact(t.records)) +
          numTd(esc(isNum(t.rate) ? fmtRate(t.rate) : DASH)) +
          errTd(t.errors) +
          td(esc(fmtAgo(age)) + (j.stale ? ' <span class="badge st-stale" data-testid="stale" title="No update from this job for a while">stale</span>' : ""),
            "nowrap", isNum(j.updated_at) ? "last update " + fmtClock(j.updated_at) : "") +
          "</tr>";
      }).join("") + "</tbody></table></div>";
  }

  function selectJob(id) {
    if (!id || id === app.selectedJobId) return;
    app.selectedJobId = id;
    if (app.state) {
      safe("jobs", renderJobs, app.state);
      safe("detail", renderDetail, app.state);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Operator graph
  // ---------------------------------------------------------------------------------------

  var NODE_W = 184, NODE_H = 74, COL_GAP = 64, ROW_GAP = 18, PAD = 14, LANE_H = 10;

  function numericSort(a, b) {
    var na = Number(a), nb = Number(b);
    if (isFinite(na) && isFinite(nb) && na !== nb) return na - nb;
    return a < b ? -1 : a > b ? 1 : 0;
  }

  /**
   * Lays the operator graph out left to right: a node's column is the longest path from a
   * source; within a column nodes are ordered by the mean position of their upstream nodes
   * (then by node id), so the order is the same on every update. An edge that skips columns
   * is routed through a lane (a virtual node) in each column it crosses, never behind a box.
   * Returns {nodes: {id: {x, y}}, routes: [{from, to, lanes: [{x, y}]}], width, height}.
   */
  function layoutGraph(ops, edges) {
    var ids = ops.map(function (o) { return String(o.node_id); });
    var known = {};
    ids.forEach(function (id) { known[id] = true; });
    var seen = {};
    var E = arr(edges).filter(function (e) {
      if (!Array.isArray(e) || e.length < 2) return false;
      var a = String(e[0]), b = String(e[1]), k = a + ">" + b;
      if (!known[a] || !known[b] || a === b || seen[k]) return false;
      seen[k] = true;
      return true;
    }).map(function (e) { return [String(e[0]), String(e[1])]; });

    var children = {}, indeg = {}, depth = {}, done = {};
    ids.forEach(function (id) { children[id] = []; indeg[id] = 0; depth[id] = 0; });
    E.forEach(function (e) { children[e[0]].push(e[1]); indeg[e[1]]++; });

    // Kahn's algorithm for the longest path; a cycle (not expected) is broken at its lowest id.
    var queue = ids.filter(function (id) { return indeg[id] === 0; }).sort(numericSort);
    var left = ids.length;
    while (left > 0) {
      if (!queue.length) {
        queue.push(ids.filter(function (id) { return !done[id]; }).sort(numericSort)[0]);
      }
      var u = queue.shift();
      if (done[u]) continue;
      done[u] = true;
      left--;
      children[u].forEach(function (v) {
        if (done[v]) return; // back edge of a cycle
        depth[v] = Math.max(depth[v], depth[u] + 1);
        if (--indeg[v] === 0) queue.push(v);
      });
    }

    // Items: the operators, plus one lane per column an edge skips over.
    var items = {};
    ids.forEach(function (id) { items[id] = { id: id, col: depth[id], h: NODE_H, lane: false, preds: [] }; });
    var routes = E.map(function (e, k) {
      var chain = [e[0]];
      for (var c = depth[e[0]] + 1; c < depth[e[1]]; c++) {
        var lid = "~" + k + "@" + c;
        items[lid] = { id: lid, col: c, h: LANE_H, lane: true, preds: [chain[chain.length - 1]] };
        chain.push(lid);
      }
      items[e[1]].preds.push(chain[chain.length - 1]);
      chain.push(e[1]);
      return { from: e[0], to: e[1], chain: chain };
    });

    var cols = [];
    Object.keys(items).forEach(function (id) {
      var c = items[id].col;
      (cols[c] = cols[c] || []).push(id);
    });
    cols = cols.filter(Boolean);
    var rank = {};
    cols.forEach(function (col) {
      var bary = {};
      col.forEach(function (id) {
        var ps = items[id].preds.filter(function (p) { return rank[p] !== undefined; });
        bary[id] = ps.length ? ps.reduce(function (a, p) { return a + rank[p]; }, 0) / ps.length : Infinity;
      });
      col.sort(function (a, b) {
        if (bary[a] !== bary[b]) return bary[a] < bary[b] ? -1 : 1;
        if (items[a].lane !== items[b].lane) return items[a].lane ? 1 : -1;
        return numericSort(a, b);
      });
      var n = col.length;
      col.forEach(function (id, i) { rank[id] = n > 1 ? i / (n - 1) : 0.5; });
    });

    function colHeight(col) {
      return col.reduce(function (a, id) { return a + items[id].h; }, 0) + Math.max(0, col.length - 1) * ROW_GAP;
    }
    var inner = cols.reduce(function (m, c) { return Math.max(m, colHeight(c)); }, NODE_H);
    var height = PAD * 2 + inner;
    var width = PAD * 2 + cols.length * NODE_W + Math.max(0, cols.length - 1) * COL_GAP;
    var pos = {};
    cols.forEach(function (col, ci) {
      var y = PAD + (inner - colHeight(col)) / 2;
      col.forEach(function (id) {
        pos[id] = { x: PAD + ci * (NODE_W + COL_GAP), y: y, h: items[id].h };
        y += items[id].h + ROW_GAP;
      });
    });

    var nodes = {};
    ids.forEach(function (id) { nodes[id] = { x: pos[id].x, y: pos[id].y }; });
    return {
      nodes: nodes,
      width: width,
      height: height,
      routes: routes.map(function (r) {
        return {
          from: r.from, to: r.to,
          // the first point after the start and the last before the end, to order the ports
          next: pos[r.chain[1]], prev: pos[r.chain[r.chain.length - 2]],
          lanes: r.chain.slice(1, -1).map(function (id) { return { x: pos[id].x, y: pos[id].y + LANE_H / 2 }; }),
        };
      }),
    };
  }

  var LVL_COLOR = { ok: "#16a34a", warn: "#d97706", hot: "#dc2626" };

  function curve(x1, y1, x2, y2) {
    var dx = Math.max(24, Math.abs(x2 - x1) / 2);
    return " C" + (x1 + dx).toFixed(1) + "," + y1.toFixed(1) + " " + (x2 - dx).toFixed(1) + "," + y2.toFixed(1) + " " +
      x2.toFixed(1) + "," + y2.toFixed(1);
  }

  /** How many characters of a name surely fit in a node next to a "×N" label (12px semi-bold). */
  function nameFits(parLabel) {
    return Math.max(8, Math.floor((NODE_W - 22 - 7 * str(parLabel).length - 10) / 6.6));
  }

  /** Shortens the operator names that still overflow their box, measured once laid out. */
  function fitNodeNames(root) {
    var nodes = root.querySelectorAll('g[data-testid="operator-node"]');
    for (var i = 0; i < nodes.length; i++) {
      var name = nodes[i].querySelector(".op-name"), par = nodes[i].querySelector(".op-par");
      if (!name || !par || typeof name.getComputedTextLength !== "function") continue;
      var room = NODE_W - 12 - 10 - par.getComputedTextLength() - 8;
      var text = name.textContent;
      var guard = 60;
      while (name.getComputedTextLength() > room && text.length > 4 && guard-- > 0) {
        text = text.replace(/\u2026$/, "").slice(0, -1) + "\u2026";
        name.textContent = text;
      }
    }
  }

  function renderGraph(job) {
    var ops = jobOps(job);
    if (!ops.length) return '<p class="muted" data-testid="operator-graph">No operators reported yet.</p>';
    var byNode = {};
    ops.forEach(function (o) { byNode[String(o.node_id)] = o; });
    var L = layoutGraph(ops, obj(job.metrics).edges);

    // Ports: spread a node's incoming / outgoing edges along its side, ordered by the other end.
    var outs = {}, ins = {};
    L.routes.forEach(function (r, k) {
      (outs[r.from] = outs[r.from] || []).push(k);
      (ins[r.to] = ins[r.to] || []).push(k);
    });
    var outY = {}, inY = {};
    function centre(p) { return p.y + p.h / 2; }
    Object.keys(outs).forEach(function (id) {
      var list = outs[id].sort(function (a, b) { return centre(L.routes[a].next) - centre(L.routes[b].next) || a - b; });
      list.forEach(function (k, i) { outY[k] = L.nodes[id].y + NODE_H * (i + 1) / (list.length + 1); });
    });
    Object.keys(ins).forEach(function (id) {
      var list = ins[id].sort(function (a, b) { return centre(L.routes[a].prev) - centre(L.routes[b].prev) || a - b; });
      list.forEach(function (k, i) { inY[k] = L.nodes[id].y + NODE_H * (i + 1) / (list.length + 1); });
    });

    var edgesSvg = L.routes.map(function (r, k) {
      var a = L.nodes[r.from], b = L.nodes[r.to];
      var up = byNode[r.from], down = byNode[r.to];
      var bp = clamp01(down.backpressure);
      var lvl = level(bp, 0.5, 0.8);
      var x = a.x + NODE_W, y = outY[k];
      var d = "M" + x.toFixed(1) + "," + y.toFixed(1);
      r.lanes.forEach(function (p) {
        d += curve(x, y, p.x, p.y) + " L" + (p.x + NODE_W).toFixed(1) + "," + p.y.toFixed(1);
        x = p.x + NODE_W;
        y = p.y;
      });
      d += curve(x, y, b.x - 3, inY[k]);
      var w = (1.5 + bp * 3).toFixed(2);
      var tip = str(up.operator) + " \u2192 " + str(down.operator) + ": input queue " + fmtFrac(bp) + " full";
      return '<path class="edge edge-' + lvl + '" data-testid="operator-edge" data-from="' + esc(r.from) + '" data-to="' +
        esc(r.to) + '" d="' + d + '" stroke="' + LVL_COLOR[lvl] + '" stroke-width="' + w +
        '" marker-end="url(#arrow-' + lvl + ')"><title>' + esc(tip) + "</title></path>";
    }).join("");

    var nodesSvg = Object.keys(L.nodes).sort(numericSort).map(function (id) {
      var o = byNode[id], p = L.nodes[id];
      var bp = clamp01(o.backpressure);
      var lvl = level(bp, 0.5, 0.8);
      var rate = opRate(job, o);
      var name = str(o.operator) || "node " + id;
      var errors = num(o.errors);
      var par = "\u00d7" + (isNum(o.parallelism) ? o.parallelism : "?");
      var tip = name + " (" + (o.kind || "?") + ", parallelism " + (isNum(o.parallelism) ? o.parallelism : "?") + ")\n" +
        "rate " + fmtRate(rate) + ", p50 " + fmtMs(o.p50_ms) + " ms, p95 " + fmtMs(o.p95_ms) + " ms, p99 " + fmtMs(o.p99_ms) +
        " ms\nin " + fmtExact(o.records_in) + ", out " + fmtExact(o.records_out) + ", errors " + fmtExact(o.errors) +
        "\ninput queue " + fmtFrac(bp) + " full";
      var barW = NODE_W - 20;
      return '<g class="op-node kind-' + esc(str(o.kind).replace(/[^a-z0-9_-]/gi, "")) + (errors > 0 ? " has-errors" : "") +
        '" data-testid="operator-node" data-node-id="' + esc(id) + '" transform="translate(' + p.x.toFixed(1) + "," + p.y.toFixed(1) + ')">' +
        "<title>" + esc(tip) + "</title>" +
        '<rect class="op-box" width="' + NODE_W + '" height="' + NODE_H + '" rx="8" ry="8"/>' +
        '<rect class="op-stripe" x="0" y="8" width="3" height="' + (NODE_H - 16) + '" rx="1.5"/>' +
        '<text class="op-name" x="12" y="19">' + esc(truncate(name, nameFits(par))) + "</text>" +
        '<text class="op-par" x="' + (NODE_W - 10) + '" y="19" text-anchor="end">' + esc(par) + "</text>" +
        '<text class="op-rate' + (isNum(rate) ? "" : " op-rate-none") + '" data-testid="op-rate" x="12" y="40">' +
          esc(isNum(rate) ? fmtRate(rate) : DASH + " rec/s") + "</text>" +
        '<text class="op-p95" data-testid="op-p95" x="12" y="57">p95 ' + esc(fmtMs(o.p95_ms)) + " ms</text>" +
        (errors > 0 ? '<text class="op-errors" data-testid="op-errors" x="' + (NODE_W - 10) + '" y="57" text-anchor="end">' +
          esc(fmtCount(errors)) + (errors === 1 ? " error" : " errors") + "</text>" : "") +
        '<rect class="bp-track" x="10" y="' + (NODE_H - 10) + '" width="' + barW + '" height="4" rx="2"/>' +
        '<rect class="bp-fill" data-testid="op-backpressure" x="10" y="' + (NODE_H - 10) + '" width="' + (barW * bp).toFixed(1) +
        '" height="4" rx="2" fill="' + LVL_COLOR[lvl] + '"/>' +
        "</g>";
    }).join("");

    var markers = ["ok", "warn", "hot"].map(function (l) {
      return '<marker id="arrow-' + l + '" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="9" markerHeight="9" ' +
        'markerUnits="userSpaceOnUse" orient="auto-start-reverse" style="overflow:visible">' +
        '<path d="M0,0 L10,5 L0,10 z" fill="' + LVL_COLOR[l] + '"/></marker>';
    }).join("");

    // Scales down to the card's width, but not below 70% (then the frame scrolls sideways).
    var W = L.width, H = Math.round(L.height);
    return '<div class="graph-wrap"><svg class="graph" data-testid="operator-graph" role="img" aria-label="Operator graph of ' +
      esc(job.name) + '" viewBox="0 0 ' + W + " " + H + '" style="width:100%;max-width:' + W + "px;min-width:" +
      Math.round(W * 0.7) + 'px" preserveAspectRatio="xMidYMid meet"><defs>' + markers + "</defs>" + edgesSvg + nodesSvg + "</svg></div>" +
      '<div class="legend graph-legend">Edge colour = input-queue fill of the downstream operator (backpressure): ' +
      '<i class="sw" style="background:' + LVL_COLOR.ok + '"></i>&lt; 50% ' +
      '<i class="sw" style="background:' + LVL_COLOR.warn + '"></i>&lt; 80% ' +
      '<i class="sw" style="background:' + LVL_COLOR.hot + '"></i>\u2265 80%</div>';
  }

  // ---------------------------------------------------------------------------------------
  // Job detail
  // ---------------------------------------------------------------------------------------

  function renderOperatorsTable(job) {
    var ops = jobOps(job).slice().sort(function (a, b) { return num(a.node_id) - num(b.node_id); });
    if (!ops.length) return '<p class="muted" data-testid="operators-table">No operator metrics yet.</p>';
    return '<div class="table-wrap"><table class="data" data-testid="operators-table">' +
      thead([["Operator"], ["Kind"], ["Par.", "num", "Parallelism"], ["In", "num", "Records in"], ["Records", "num", "Records emitted by a source, taken in by any other operator"],
        ["Out", "num", "Records out"], ["Rate", "num", "Current records per second"], ["Mean ms", "num"], ["p50 ms", "num"],
        ["p95 ms", "num"], ["p99 ms", "num"], ["Errors", "num"], ["Backpressure", "num", "Fill of the operator's input queue"]]) + "<tbody>" +
      ops.map(function (o) {
        var bp = o.backpressure;
        var lvl = level(bp, 0.5, 0.8);
        var rec = opRecords(o);
        return '<tr data-testid="operator-row" data-node-id="' + esc(o.node_id) + '">' +
          td(esc(truncate(o.operator || DASH, 48)), "op-cell", o.operator) +
          td(esc(o.kind || DASH), "muted") +
          numTd(esc(isNum(o.parallelism) ? o.parallelism : DASH)) +
          numTd(esc(fmtCount(o.records_in)), fmtExact(o.records_in)) +
          '<td class="num strong" data-testid="op-records" title="' + esc(fmtExact(rec)) + '">' + esc(fmtCount(rec)) + "</td>" +
          numTd(esc(fmtCount(o.records_out)), fmtExact(o.records_out)) +
          numTd(esc(fmtRate(opRate(job, o)))) +
          numTd(esc(fmtMs(o.mean_ms))) +
          numTd(esc(fmtMs(o.p50_ms))) +
          numTd(esc(fmtMs(o.p95_ms))) +
          numTd(esc(fmtMs(o.p99_ms))) +
          errTd(o.errors) +
          '<td class="num bp-cell"><span class="bp-inline">' + bar(bp, lvl) + '</span><span class="lvl-text-' + lvl + '">' +
            esc(fmtFrac(bp)) + "</span></td>" +
          "</tr>";
      }).join("") + "</tbody></table></div>";
  }

  function renderServicesTable(job) {
    var svcs = arr(obj(job.metrics).services).map(obj);
    if (!svcs.length) return '<p class="muted small" data-testid="services">This job uses no services.</p>';
    return '<div class="table-wrap"><table class="data" data-testid="services">' +
      thead([["Service"], ["Replicas", "num"], ["Slots", "num"], ["Calls", "num"], ["In flight", "num"], ["Waiting", "num"],
        ["Errors", "num"], ["Timeouts", "num"], ["Fallbacks", "num"], ["p50 ms", "num"], ["p95 ms", "num"], ["p99 ms", "num"]]) + "<tbody>" +
      svcs.map(function (v) {
        var busy = isNum(v.in_flight) && isNum(v.slots) && v.slots > 0 ? v.in_flight / v.slots : null;
        return '<tr data-testid="service-row">' +
          td(esc(v.service || DASH), "mono", v.service) +
          numTd(esc(isNum(v.replicas) ? v.replicas : DASH)) +
          numTd(esc(isNum(v.slots) ? v.slots : DASH)) +
          numTd(esc(fmtCount(v.calls)), fmtExact(v.calls)) +
          numTd(esc(isNum(v.in_flight) ? v.in_flight : DASH), busy !== null ? fmtFrac(busy) + " of slots busy" : "") +
          numTd(esc(isNum(v.waiting) ? v.waiting : DASH), "", num(v.waiting) > 0 ? "warn-text" : "") +
          errTd(v.errors) + errTd(v.timeouts) +
          numTd(esc(fmtCount(v.fallbacks))) +
          numTd(esc(fmtMs(v.p50_ms))) + numTd(esc(fmtMs(v.p95_ms))) + numTd(esc(fmtMs(v.p99_ms))) +
          "</tr>";
      }).join("") + "</tbody></table></div>";
  }

  function renderTasksTable(job) {
    var tasks = arr(obj(job.metrics).tasks).map(obj);
    var body;
    if (!tasks.length) {
      body = '<p class="muted small">No task metrics reported.</p>';
    } else {
      body = '<div class="table-wrap"><table class="data" data-testid="tasks">' +
        thead([["Task"], ["Operators"], ["Inst.", "num"], ["Status"], ["In", "num"], ["Out", "num"], ["Errors", "num"],
          ["Batches", "num"], ["Busy s", "num"], ["Queue", "num", "depth / capacity (peak)"], ["p50 ms", "num"], ["p95 ms", "num"], ["p99 ms", "num"]]) +
        "<tbody>" + tasks.map(function (t) {
          var opsText = arr(t.operators).map(str).join(" \u2192 ");
          var cap = num(t.queue_capacity);
          var fill = cap > 0 ? num(t.queue_depth) / cap : null;
          var queue = cap > 0
            ? '<span class="bp-inline">' + bar(fill, level(fill, 0.5, 0.8)) + "</span>" + esc(fmtQueue(t.queue_depth)) + " / " + esc(fmtQueue(cap))
            : DASH;
          return '<tr data-testid="task-row">' +
            td(esc(t.task_id || DASH), "mono") +
            td(esc(truncate(opsText, 60)) || DASH, "", opsText) +
            numTd(esc(isNum(t.instance) ? t.instance : DASH)) +
            td(statusBadge(t.status)) +
            numTd(esc(fmtCount(t.records_in)), fmtExact(t.records_in)) +
            numTd(esc(fmtCount(t.records_out)), fmtExact(t.records_out)) +
            errTd(t.errors) +
            numTd(esc(fmtCount(t.batches))) +
            numTd(esc(isNum(t.busy_s) ? t.busy_s.toFixed(1) : DASH)) +
            numTd(queue, cap > 0 ? "peak " + fmtExact(t.queue_peak) : "no input queue", "nowrap") +
            numTd(esc(fmtMs(t.p50_ms))) + numTd(esc(fmtMs(t.p95_ms))) + numTd(esc(fmtMs(t.p99_ms))) +
            "</tr>";
        }).join("") + "</tbody></table></div>";
    }
    return '<details class="tasks" data-testid="tasks-section"' + (app.tasksOpen ? " open" : "") + ">" +
      "<summary><h3 class=\"inline\">Tasks <span class=\"count\">(" + tasks.length + ")</span></h3></summary>" + body + "</details>";
  }

  function renderDetail(s) {
    var el = byId("detail-body");
    var jobs = arr(s.jobs).map(obj);
    var job = jobs.filter(function (j) { return str(j.id) === app.selectedJobId; })[0];
    if (!job) {
      el.innerHTML = '<p class="muted">No job selected.</p>';
      return;
    }
    var m = obj(job.metrics);
    var mem = job.memory && typeof job.memory === "object" ? job.memory : null;
    var kv = [
      ["Source", esc(job.source || DASH)],
      ["Runtime", esc(job.runtime || DASH)],
      ["PID", esc(isNum(job.pid) ? job.pid : DASH)],
      ["Elapsed", esc(fmtDuration(job.elapsed_s))],
      ["Dead letters", isNum(m.dead_letters) ? '<span class="' + (m.dead_letters > 0 ? "err" : "") + '">' + esc(fmtExact(m.dead_letters)) + "</span>" : DASH],
      ["Last update", esc(fmtClock(job.updated_at)) + (job.stale ? ' <span class="badge st-stale">stale</span>' : "")],
    ];
    var html = '<div class="detail-head">' +
      '<h3 class="job-title" data-testid="job-title">' + esc(job.name || DASH) + ' <span class="mono muted small">' + esc(job.id) + "</span></h3>" +
      statusBadge(job.status) +
      '<dl class="kv">' + kv.map(function (p) { return "<div><dt>" + p[0] + "</dt><dd>" + p[1] + "</dd></div>"; }).join("") + "</dl>" +
      "</div>";

    if (job.error) {
      html += '<div class="error-box" data-testid="job-error" role="alert"><strong>Error</strong><pre>' + esc(job.error) + "</pre></div>";
    }
    if (mem) {
      var frac = isNum(mem.rss_mb) && isNum(mem.threshold_mb) && mem.threshold_mb > 0 ? mem.rss_mb / mem.threshold_mb : null;
      html += '<div class="mem-box" data-testid="job-memory"><span class="stat-label">Memory monitor</span>' +
        '<span>RSS <b>' + esc(fmtMB(mem.rss_mb)) + "</b></span>" +
        "<span>peak <b>" + esc(fmtMB(mem.peak_mb)) + "</b></span>" +
        "<span>threshold <b>" + esc(fmtMB(mem.threshold_mb)) + "</b></span>" +
        '<span class="mem-bar">' + bar(frac, level(frac, 0.75, 0.9), fmtFrac(frac) + " of the threshold") + "</span>" +
        '<span class="' + (num(mem.crossings) > 0 ? "err" : "muted") + '">' + esc(fmtExact(mem.crossings)) + " threshold crossing" +
          (mem.crossings === 1 ? "" : "s") + "</span>" +
        (isNum(mem.pid) ? '<span class="muted">pid ' + esc(mem.pid) + "</span>" : "") +
        "</div>";
    }

    html += '<h3>Operator graph</h3>' + renderGraph(job);
    html += '<h3>Operators</h3>' + renderOperatorsTable(job);
    html += '<h3>Services</h3>' + renderServicesTable(job);
    html += renderTasksTable(job);
    el.innerHTML = html;
    try { fitNodeNames(el); } catch (err) { console.warn("dashboard: could not measure operator names", err); }
  }

  // ---------------------------------------------------------------------------------------
  // Gateways and JobManagers
  // ---------------------------------------------------------------------------------------

  function renderGateways(s) {
    var gws = arr(s.gateways).map(obj);
    var el = byId("gw-body");
    if (!gws.length) {
      el.innerHTML = '<p class="muted" data-testid="no-gateway">No gateway found \u2014 start one with <code>sage llm serve</code></p>';
      return;
    }
    el.innerHTML = gws.map(function (g) {
      var inst = arr(g.instances).map(obj);
      var policy = str(g.policy) || DASH;
      if (g.active_policy && g.active_policy !== g.policy) policy += " (active: " + g.active_policy + ")";
      var head = '<div class="gw-head">' +
        '<span class="mono gw-url">' + esc(g.url || DASH) + "</span>" +
        okBadge(g.ok, "ok", "unreachable") +
        '<span><span class="muted">policy</span> ' + esc(policy) + "</span>" +
        '<span><span class="muted">queued</span> ' + esc(isNum(g.queued) ? fmtCount(g.queued) : DASH) + "</span>" +
        '<span><span class="muted">requests</span> ' + esc(fmtCount(g.total_requests)) + "</span>" +
        '<span><span class="muted">instances</span> ' + inst.length + "</span>" +
        "</div>";
      var err = !g.ok || g.error ? '<div class="error-box small" data-testid="gateway-error">' + esc(g.error || "Gateway not reachable.") + "</div>" : "";
      var table = inst.length ? '<div class="table-wrap"><table class="data" data-testid="instances">' +
        thead([["Instance"], ["Model"], ["Type"], ["Health"], ["In flight", "num", "in flight / max concurrent requests"], ["Queued", "num"],
          ["Requests", "num"], ["Errors", "num"], ["p95 ms", "num"], ["TTFT p95 ms", "num", "Time to first token, 95th percentile"],
          ["SLO", "num", "Share of requests that met their latency objective"]]) + "<tbody>" +
        inst.map(function (i) {
          var maxc = i.max_concurrent_requests;
          var frac = isNum(i.in_flight) && isNum(maxc) && maxc > 0 ? i.in_flight / maxc : null;
          var slo = i.slo_attainment;
          var sloLvl = !isNum(slo) ? "" : slo >= 0.95 ? "ok" : slo >= 0.8 ? "warn" : "hot";
          return '<tr data-testid="instance-row" data-instance-id="' + esc(i.instance_id) + '">' +
            td(esc(i.instance_id || DASH) + (i.last_error ? '<div class="small err-text" title="' + esc(i.last_error) + '">' +
              esc(truncate(i.last_error, 60)) + "</div>" : ""), "mono") +
            td(esc(truncate(i.model_name || DASH, 40)), "nowrap", i.model_name) +
            td(esc(i.instance_type || DASH), "muted") +
            td(i.healthy === true ? '<span class="badge st-finished">healthy</span>'
              : i.healthy === false ? '<span class="badge st-failed">unhealthy</span>' : DASH) +
            numTd('<span class="bp-inline">' + bar(frac, level(frac, 0.75, 0.95)) + "</span>" +
              esc(isNum(i.in_flight) ? i.in_flight : DASH) + " / " + esc(isNum(maxc) ? maxc : DASH), "", "nowrap") +
            numTd(esc(isNum(i.queued) ? fmtCount(i.queued) : DASH), "", num(i.queued) > 0 ? "warn-text" : "") +
            numTd(esc(fmtCount(i.requests)), fmtExact(i.requests)) +
            errTd(i.errors) +
            numTd(esc(fmtMs(i.p95_ms))) +
            numTd(esc(fmtMs(i.ttft_p95_ms))) +
            numTd(isNum(slo) ? '<span class="lvl-text-' + sloLvl + '">' + esc(fmtFrac(slo, 1)) + "</span>" : DASH) +
            "</tr>";
        }).join("") + "</tbody></table></div>"
        : '<p class="muted small">No instances registered.</p>';
      return '<div class="gateway" data-testid="gateway" data-url="' + esc(g.url) + '">' + head + err + table +
        renderTenants(arr(g.tenants).map(obj)) + "</div>";
    }).join("");
  }

  /** A gateway's tenants: limits, traffic, 429s, waiting, latency and fair share's counter. */
  function renderTenants(tenants) {
    if (!tenants.length) return "";
    var limit = function (v, unit) { return isNum(v) ? fmtCount(v) + " " + unit : "none"; };
    return '<h3>Tenants</h3><div class="table-wrap"><table class="data" data-testid="tenants">' +
      thead([["Tenant"], ["Weight", "num", "Share under fair share, relative to the other tenants"],
        ["Limits", "", "Requests and tokens per minute"], ["Requests", "num"],
        ["429", "num", "Requests refused over the tenant's rate limits"], ["Tokens", "num", "Charged at admission: prompt estimate + max_tokens"],
        ["Queued", "num"], ["p95 ms", "num"],
        ["Virtual tokens", "num", "Fair share: tokens served per model over the tenant's weight"]]) + "<tbody>" +
      tenants.map(function (t) {
        var virt = obj(t.virtual_tokens);
        var lanes = Object.keys(virt).map(function (k) { return fmtCount(virt[k]); }).join(" / ");
        return '<tr data-testid="tenant-row" data-tenant="' + esc(t.name) + '">' +
          td(esc(truncate(t.name, 40)), "mono", t.name) +
          numTd(esc(isNum(t.weight) ? String(t.weight) : DASH)) +
          td(esc(limit(t.rpm, "rpm") + ", " + limit(t.tpm, "tpm")), "nowrap muted") +
          numTd(esc(fmtCount(t.requests)), fmtExact(t.requests)) +
          errTd(t.rate_limited) +
          numTd(esc(fmtCount(t.tokens)), fmtExact(t.tokens)) +
          numTd(esc(isNum(t.queued) ? fmtQueue(t.queued) : DASH), "", num(t.queued) > 0 ? "warn-text" : "") +
          numTd(esc(fmtMs(t.p95_ms))) +
          numTd(esc(lanes || DASH), Object.keys(virt).join(", ")) +
          "</tr>";
      }).join("") + "</tbody></table></div>";
  }

  function renderJobManagers(s) {
    var jms = arr(s.jobmanagers).map(obj);
    var el = byId("jm-body");
    if (!jms.length) {
      el.innerHTML = '<p class="muted small" data-testid="no-jobmanager">No JobManager found.</p>';
      return;
    }
    el.innerHTML = '<ul class="jm-list">' + jms.map(function (j) {
      return '<li data-testid="jobmanager"><span class="dot ' + (j.ok ? "dot-ok" : "dot-bad") + '" aria-hidden="true"></span>' +
        '<span class="mono">' + esc(j.address || DASH) + "</span>" +
        (j.ok ? '<span class="muted">' + esc(isNum(j.jobs) ? j.jobs + (j.jobs === 1 ? " job" : " jobs") : "ok") + "</span>"
          : '<span class="err-text" title="' + esc(j.error) + '">' + esc(truncate(j.error || "unreachable", 60)) + "</span>") +
        "</li>";
    }).join("") + "</ul>";
  }

  // ---------------------------------------------------------------------------------------
  // Render loop and data sources
  // ---------------------------------------------------------------------------------------

  var SECTION_BODIES = {
    header: null, host: "host-body", gpus: "gpus-body", jobs: "jobs-body", detail: "detail-body",
    gateways: "gw-body", jobmanagers: "jm-body",
  };

  function safe(name, fn, s) {
    try {
      fn(s);
    } catch (err) {
      console.error("dashboard: rendering the " + name + " section failed", err);
      var id = SECTION_BODIES[name];
      var el = id && byId(id);
      if (el) el.innerHTML = '<p class="section-error">Could not render this section (see the browser console).</p>';
    }
  }

  function render(s) {
    safe("header", renderHeader, s);
    safe("host", renderHost, s);
    safe("gpus", renderGpus, s);
    safe("jobmanagers", renderJobManagers, s);
    safe("jobs", renderJobs, s);
    safe("detail", renderDetail, s);
    safe("gateways", renderGateways, s);
  }

  function accept(s) {
    if (!s || typeof s !== "object") return;
    var t = isNum(s.time) ? s.time : Date.now() / 1000;
    if (t < app.stateTime) return; // an older state (the initial fetch answered after an event)
    app.stateTime = t;
    app.state = s;
    try { pushHistory(s); } catch (err) { console.error("dashboard: history", err); }
    render(s);
  }

  function setConnected(v) {
    if (app.connected === v) return;
    app.connected = v;
    renderConnection();
  }

  function connect() {
    if (typeof EventSource === "undefined") {
      console.warn("dashboard: EventSource not supported; live updates are off");
      return;
    }
    var es = new EventSource("events");
    app.es = es;
    es.onopen = function () { setConnected(true); };
    es.onmessage = function (ev) {
      setConnected(true);
      var s;
      try {
        s = JSON.parse(ev.data);
      } catch (err) {
        console.warn("dashboard: ignoring an event that is not JSON", err);
        return;
      }
      accept(s);
    };
    es.onerror = function () {
      setConnected(false);
      if (es.readyState === EventSource.CLOSED) {
        // The server answered with something other than an event stream: the browser will not
        // retry by itself, so do it here.
        es.close();
        if (app.es === es) setTimeout(connect, RECONNECT_MS);
      }
    };
  }

  function start() {
    renderConnection();
    byId("jobs-body").addEventListener("click", function (ev) {
      var row = ev.target.closest && ev.target.closest('tr[data-testid="job-row"]');
      if (row) selectJob(row.getAttribute("data-job-id"));
    });
    byId("jobs-body").addEventListener("keydown", function (ev) {
      if (ev.key !== "Enter" && ev.key !== " ") return;
      var row = ev.target.closest && ev.target.closest('tr[data-testid="job-row"]');
      if (row) {
        ev.preventDefault();
        selectJob(row.getAttribute("data-job-id"));
        var again = byId("jobs-body").querySelector('tr[data-job-id="' + CSS.escape(row.getAttribute("data-job-id")) + '"]');
        if (again) again.focus();
      }
    });
    byId("detail-body").addEventListener("toggle", function (ev) {
      if (ev.target && ev.target.classList && ev.target.classList.contains("tasks")) app.tasksOpen = ev.target.open;
    }, true);

    fetch("api/state", { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("GET api/state: HTTP " + r.status);
        return r.json();
      })
      .then(accept)
      .catch(function (err) { console.warn("dashboard: could not load the initial state", err); })
      .then(connect);
  }

  // Exposed for tests and debugging in the console.
  window.sageDashboard = {
    app: app,
    format: { count: fmtCount, ms: fmtMs, pct: fmtPct, duration: fmtDuration, mb: fmtMB, rate: fmtRate },
    layoutGraph: layoutGraph,
    render: accept,
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
