// Tollgate dashboard: polls the control plane's JSON API every 2 s and draws
// tables and SVG charts. No dependencies. With --admin-token, open the page
// as /dashboard/#token=... (the fragment never leaves the browser).
"use strict";

(function () {
  var REFRESH_MS = 2000;
  var token = null;
  var match = /(?:^|[#&])token=([^&]+)/.exec(window.location.hash || "");
  if (match) {
    token = decodeURIComponent(match[1]);
    try { window.sessionStorage.setItem("tollgate-token", token); } catch (e) { /* storage off */ }
    history.replaceState(null, "", window.location.pathname);
  } else {
    try { token = window.sessionStorage.getItem("tollgate-token"); } catch (e) { token = null; }
  }

  function $(id) { return document.getElementById(id); }

  function getJson(path) {
    var headers = {};
    if (token) { headers.Authorization = "Bearer " + token; }
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (response) {
      if (!response.ok) {
        return response.text().then(function (text) { throw new Error(path + ": " + response.status + " " + text.trim()); });
      }
      return response.json();
    });
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) { return "-"; }
    return Number(value).toFixed(digits);
  }

  function cell(row, text, numeric, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) { td.className = "num"; }
    if (cls) { td.className = (td.className ? td.className + " " : "") + cls; }
    row.appendChild(td);
    return td;
  }

  function fillTable(id, rows, build) {
    var body = $(id).querySelector("tbody");
    body.textContent = "";
    rows.forEach(function (item) {
      var tr = document.createElement("tr");
      build(tr, item);
      body.appendChild(tr);
    });
    if (rows.length === 0) {
      var tr = document.createElement("tr");
      var td = cell(tr, "no data in this window", false, "muted");
      td.colSpan = $(id).querySelectorAll("thead th").length;
      body.appendChild(tr);
    }
  }

  function ago(ms) {
    if (!ms) { return "never"; }
    var seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return seconds + " s ago";
  }

  function refusalTotal(refusals) {
    var total = 0;
    Object.keys(refusals || {}).forEach(function (k) { total += refusals[k]; });
    return total;
  }

  function drawChart(svg, points, value) {
    var NS = "http://www.w3.org/2000/svg";
    var width = 400, height = 140, left = 36, bottom = 16, top = 8;
    svg.textContent = "";
    var values = points.map(value);
    var max = 0;
    values.forEach(function (v) { if (v !== null && v > max) { max = v; } });
    if (max <= 0) { max = 1; }
    var axis = document.createElementNS(NS, "line");
    axis.setAttribute("class", "axis");
    axis.setAttribute("x1", left); axis.setAttribute("x2", width);
    axis.setAttribute("y1", height - bottom); axis.setAttribute("y2", height - bottom);
    svg.appendChild(axis);
    var label = document.createElementNS(NS, "text");
    label.setAttribute("x", 2); label.setAttribute("y", top + 8);
    label.textContent = fmt(max, max < 10 ? 2 : 0);
    svg.appendChild(label);
    var zero = document.createElementNS(NS, "text");
    zero.setAttribute("x", 2); zero.setAttribute("y", height - bottom);
    zero.textContent = "0";
    svg.appendChild(zero);
    var n = points.length;
    var step = n > 1 ? (width - left) / (n - 1) : 0;
    var path = [];
    var drawn = 0;
    values.forEach(function (v, i) {
      if (v === null) { return; }
      var x = left + i * step;
      var y = height - bottom - (v / max) * (height - bottom - top);
      path.push((path.length ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1));
      if (v > 0) {
        var dot = document.createElementNS(NS, "circle");
        dot.setAttribute("class", "dot");
        dot.setAttribute("cx", x.toFixed(1)); dot.setAttribute("cy", y.toFixed(1));
        dot.setAttribute("r", 2);
        var title = document.createElementNS(NS, "title");
        title.textContent = new Date(points[i].t_ms).toLocaleTimeString() + ": " + fmt(v, 2);
        dot.appendChild(title);
        svg.appendChild(dot);
        drawn += 1;
      }
    });
    var line = document.createElementNS(NS, "path");
    line.setAttribute("class", "line");
    line.setAttribute("d", path.join(" "));
    svg.insertBefore(line, svg.firstChild);
    svg.setAttribute("data-points", String(drawn));
  }

  function routeOptions(rows) {
    var select = $("route");
    var known = {};
    Array.prototype.forEach.call(select.options, function (o) { known[o.value] = true; });
    rows.forEach(function (row) {
      if (!known[row.key]) {
        var option = document.createElement("option");
        option.value = row.key;
        option.textContent = row.key;
        select.appendChild(option);
      }
    });
  }

  function render(fleet, routes, consumers, series) {
    $("version").textContent = fleet.config_version
      ? "config version " + fleet.config_version.revision : "no config yet";
    var t = routes.totals;
    $("total-requests").textContent = String(t.requests);
    $("total-rps").textContent = fmt(t.rps, 2);
    $("total-errors").textContent = t.errors_5xx + " (" + fmt(t.error_ratio * 100, 2) + "%)";
    $("total-latency").textContent = fmt(t.p50_ms, 1) + " / " + fmt(t.p95_ms, 1) + " / " + fmt(t.p99_ms, 1);
    $("total-limited").textContent = String((t.refusals || {}).rate_limited || 0);
    $("relerr").textContent = fmt(routes.latency_relative_error * 100, 1);

    fillTable("fleet", fleet.dataplanes, function (tr, p) {
      tr.setAttribute("data-node", p.node_id);
      cell(tr, p.node_id);
      cell(tr, p.hostname);
      cell(tr, p.build_version);
      cell(tr, p.connected ? "connected" : "disconnected", false, p.connected ? "up" : "down");
      cell(tr, p.applied_revision === null ? "-" : String(p.applied_revision), true);
      cell(tr, ago(p.last_report_ms));
      cell(tr, p.last_rejection ? "r" + p.rejected_revision + ": " + p.last_rejection : "-");
    });
    fillTable("routes", routes.rows, function (tr, r) {
      tr.setAttribute("data-route", r.key);
      cell(tr, r.key);
      cell(tr, String(r.requests), true, "requests");
      cell(tr, fmt(r.rps, 2), true);
      cell(tr, String(r.errors_4xx), true);
      cell(tr, fmt(r.error_ratio * 100, 2), true);
      cell(tr, fmt(r.p50_ms, 1), true);
      cell(tr, fmt(r.p95_ms, 1), true);
      cell(tr, fmt(r.p99_ms, 1), true, "p99");
      cell(tr, String(refusalTotal(r.refusals)), true);
    });
    routeOptions(routes.rows);
    fillTable("consumers", consumers.rows, function (tr, r) {
      tr.setAttribute("data-consumer", r.key);
      cell(tr, r.key);
      cell(tr, String(r.requests), true, "requests");
      cell(tr, String(r.errors_4xx), true);
      cell(tr, String(r.errors_5xx), true);
    });
    var refusals = [];
    routes.rows.forEach(function (r) {
      Object.keys(r.refusals || {}).forEach(function (kind) {
        refusals.push({ route: r.key, kind: kind, count: r.refusals[kind] });
      });
    });
    refusals.sort(function (a, b) { return b.count - a.count; });
    fillTable("refusals", refusals, function (tr, r) {
      cell(tr, r.route);
      cell(tr, r.kind);
      cell(tr, String(r.count), true);
    });
    drawChart($("chart-rps"), series.points, function (p) { return p.rps; });
    drawChart($("chart-errors"), series.points, function (p) { return p.errors_5xx / p.seconds; });
    drawChart($("chart-p99"), series.points, function (p) { return p.p99_ms; });
  }

  var busy = false;
  function refresh() {
    if (busy) { return; }
    busy = true;
    var since = encodeURIComponent($("since").value);
    var route = $("route").value;
    var routeParam = route ? "&route=" + encodeURIComponent(route) : "";
    Promise.all([
      getJson("/api/fleet"),
      getJson("/api/stats?by=route&since=" + since),
      getJson("/api/stats?by=consumer&top=10&since=" + since),
      getJson("/api/series?since=" + since + routeParam)
    ]).then(function (answers) {
      render(answers[0], answers[1], answers[2], answers[3]);
      $("error").hidden = true;
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.setAttribute("data-loaded", "true");
    }).catch(function (err) {
      $("error").hidden = false;
      $("error").textContent = String(err.message || err);
    }).then(function () { busy = false; });
  }

  $("since").addEventListener("change", refresh);
  $("route").addEventListener("change", refresh);
  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();
