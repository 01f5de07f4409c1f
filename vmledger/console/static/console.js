// The console's only script: live regions fed by the event stream, the fleet filter, and the timeline charts.
// Every page reads well without it.
(function () {
  "use strict";
  var body = document.body;

  // Timeline charts (uPlot, shipped in the package).
  var COLOURS = {persistent: "#1f3a5f", live: "#2f8f4e", applied: "#2f8f4e", partial: "#c48a00",
                 refused: "#b3261e", failed: "#6b1111", in_flight: "#5f6368", observed: "#7b3fb5"};
  function drawCharts(root) {
    if (typeof uPlot === "undefined") return;
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      var chart = JSON.parse(el.getAttribute("data-chart"));
      var names = Object.keys(chart.series);
      var series = [{}];
      var data = [chart.x];
      names.forEach(function (name) {
        var line = name === "persistent" || name === "live";
        if (!line && chart.series[name].every(function (v) { return v === null; })) return;
        series.push({
          label: line ? name : (name === "observed" ? "observed out of band" : "request " + name),
          stroke: COLOURS[name], width: line ? 2 : 0,
          paths: line ? uPlot.paths.stepped({align: 1}) : function () { return null; },
          points: line ? {show: false} : {show: true, size: 10, fill: COLOURS[name], stroke: COLOURS[name]},
          spanGaps: line
        });
        data.push(chart.series[name]);
      });
      el.textContent = "";
      new uPlot({width: Math.min(960, el.clientWidth || 960), height: 320, series: series,
                 axes: [{}, {label: chart.unit}]}, data, el);
    });
  }
  drawCharts(document);

  // The fleet's filter box filters as one types too (the server filters on submit).
  function filterRows() {
    document.querySelectorAll("[data-filter]").forEach(function (input) {
      var words = input.value.trim().toLowerCase();
      var table = document.getElementById(input.getAttribute("data-filter"));
      for (var i = 0; table && i < table.rows.length; i++) {
        table.rows[i].hidden = words !== "" && table.rows[i].textContent.toLowerCase().indexOf(words) < 0;
      }
    });
  }
  document.querySelectorAll("[data-filter]").forEach(function (input) {
    input.addEventListener("input", filterRows);
  });

  var streamUrl = body.getAttribute("data-stream");
  if (!streamUrl) return;

  // A region is refreshed from its own URL (`?part=`), one fetch at a time, again if an event came meanwhile.
  // A fleet row's URL is its table's `data-row` and its `data-domain`: a thousand rows need not each carry one.
  function partUrl(el) {
    if (el.hasAttribute("data-live")) return el.getAttribute("data-live");
    return el.parentElement.getAttribute("data-row") + el.getAttribute("data-domain");
  }
  var busy = {};
  function refresh(id) {
    var el = document.getElementById(id);
    if (!el) return;
    if (busy[id]) { busy[id] = "again"; return; }
    busy[id] = true;
    fetch(partUrl(el), {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (html) {
        var current = document.getElementById(id);
        var t = document.createElement("template");
        t.innerHTML = html.trim();
        var fresh = t.content.firstElementChild;
        if (current && fresh) {
          current.replaceWith(fresh);
          fresh.classList.add("updated");
          drawCharts(fresh);
          filterRows();
        }
      })
      .catch(function () { showLost(true); })
      .then(function () {
        var again = busy[id] === "again";
        busy[id] = false;
        if (again) refresh(id);
      });
  }

  var follow = document.querySelector("[data-follow]");
  function append(e) {
    var tr = document.createElement("tr");
    var by = (e.metadata && e.metadata.principal) || "-";
    var cells = [e.position, e.recorded_at.replace("+00:00", "Z").replace(/\.\d+Z$/, "Z"), e.type, e.stream, by];
    cells.forEach(function (text, i) {
      var cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.setAttribute("scope", "row");
      cell.textContent = String(text);
      tr.appendChild(cell);
    });
    tr.classList.add("updated");
    follow.insertBefore(tr, follow.firstChild);
    while (follow.rows.length > Number(follow.getAttribute("data-follow"))) follow.deleteRow(-1);
  }

  function onEvent(message) {
    var e = JSON.parse(message.data);
    if (follow) append(e);
    var regions = document.querySelectorAll("[data-live], [data-domain][data-stream]");
    var matched = false;
    regions.forEach(function (el) {
      var stream = el.getAttribute("data-stream");
      if (stream === e.stream) matched = true;
      if (stream === e.stream || stream === "*") refresh(el.id);
    });
    // A domain defined or undefined elsewhere may join or leave this page of the fleet; others' changes do not show.
    if (!matched && (e.type === "DomainDefined" || e.type === "DomainUndefined")) {
      regions.forEach(function (el) { if (el.getAttribute("data-stream") === "other") refresh(el.id); });
    }
  }

  var lost = document.getElementById("stream-lost");
  function showLost(yes) { if (lost) lost.hidden = !yes; }

  // EventSource resumes by itself after a dropped connection, sending Last-Event-ID; when the server
  // answered an error instead, it gives up, so a new one starts after the last position seen.
  var last = body.getAttribute("data-position");
  var types = body.getAttribute("data-event-types").split(" ");
  var source = null;
  function connect() {
    source = new EventSource(streamUrl + "?from=" + encodeURIComponent(last));
    types.forEach(function (type) {
      source.addEventListener(type, function (m) {
        if (m.lastEventId) last = m.lastEventId;
        onEvent(m);
      });
    });
    source.onopen = function () { showLost(false); };
    source.onerror = function () {
      showLost(true);
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
  }
  connect();
  // A browser opens few connections to one server: a page left (or kept in the back-forward cache) lets its go.
  window.addEventListener("pagehide", function () { source.close(); });
  window.addEventListener("pageshow", function (e) { if (e.persisted) connect(); });
})();
