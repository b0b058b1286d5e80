/* Conveyor console: the few things htmx does not do.
 *  - dates in the browser's time zone (Intl), relative times kept fresh
 *  - the live connection indicator and the "connection lost" banner
 *  - log lines appended once each, however often the stream reconnects
 *  - the 24 h charts (uPlot), redrawn when the stream sends new numbers
 *  - bulk selection, and uploads with a progress bar (XMLHttpRequest)
 * Every user-visible string comes from the page (translated on the server).
 */
(function () {
  "use strict";

  var lang = document.documentElement.lang || "en";

  // -- dates ------------------------------------------------------------------------
  var fmtDateTime = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "medium" });
  var fmtTime = new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  var fmtDate = new Intl.DateTimeFormat(lang, { dateStyle: "medium" });
  var fmtHour = new Intl.DateTimeFormat(lang, { hour: "numeric" });
  var rtf = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";

  function relative(date) {
    var s = (date.getTime() - Date.now()) / 1000;
    var a = Math.abs(s);
    if (a < 45) return rtf.format(Math.round(s), "second");
    if (a < 2700) return rtf.format(Math.round(s / 60), "minute");
    if (a < 79200) return rtf.format(Math.round(s / 3600), "hour");
    return rtf.format(Math.round(s / 86400), "day");
  }

  function formatTimes(root) {
    root = root || document;
    var nodes = Array.prototype.slice.call(root.querySelectorAll ? root.querySelectorAll("time[datetime]") : []);
    if (root.matches && root.matches("time[datetime]")) nodes.push(root);
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      var kind = el.getAttribute("data-fmt") || "datetime";
      if (kind === "relative") el.textContent = relative(d);
      else if (kind === "time") el.textContent = fmtTime.format(d);
      else if (kind === "date") el.textContent = fmtDate.format(d);
      else el.textContent = fmtDateTime.format(d);
      el.title = fmtDateTime.format(d) + (zone ? " (" + zone + ")" : "");
    }
  }

  // -- live connection ------------------------------------------------------------------
  var lostTimer = null;
  var leaving = false;
  function setConn(state) {
    var conn = document.getElementById("conn");
    if (conn) conn.setAttribute("data-state", state);
    var banner = document.getElementById("offline-banner");
    if (banner) banner.hidden = state !== "lost";
  }
  document.addEventListener("htmx:sseOpen", function () {
    clearTimeout(lostTimer);
    lostTimer = null;
    setConn("live");
  });
  document.addEventListener("htmx:sseError", function () {
    if (leaving || lostTimer) return;
    // a blip shorter than this is not worth a banner
    lostTimer = setTimeout(function () {
      lostTimer = null;
      if (!leaving) setConn("lost");
    }, 1200);
  });
  // close the stream ourselves when leaving, so the browser's abort is not an "error"
  var sources = [];
  if (typeof htmx.createEventSource === "function") {
    var makeSource = htmx.createEventSource;
    htmx.createEventSource = function (url) {
      var source = makeSource(url);
      sources.push(source);
      return source;
    };
  }
  function leave() {
    leaving = true;
    for (var i = 0; i < sources.length; i++) sources[i].close();
  }
  window.addEventListener("pagehide", leave);
  window.addEventListener("beforeunload", function () { leaving = true; });

  // -- log: append each line once -------------------------------------------------------
  function lastSeq(log) {
    var lines = log.querySelectorAll(".ln[data-seq]");
    return lines.length ? parseInt(lines[lines.length - 1].getAttribute("data-seq"), 10) : 0;
  }
  document.addEventListener("htmx:sseBeforeMessage", function (evt) {
    var msg = evt.detail;
    if (!msg || msg.type !== "log") return;
    evt.preventDefault();
    var log = document.getElementById("log");
    if (!log) return;
    var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    var seen = lastSeq(log);
    var tpl = document.createElement("template");
    tpl.innerHTML = msg.data;
    var nodes = Array.prototype.slice.call(tpl.content.querySelectorAll(".ln"));
    var added = 0;
    for (var i = 0; i < nodes.length; i++) {
      var n = nodes[i];
      var seq = n.getAttribute("data-seq");
      var next = nodes[i + 1];
      var keep = seq ? parseInt(seq, 10) > seen
        : !!(next && parseInt(next.getAttribute("data-seq") || "0", 10) > seen);
      if (keep) { log.appendChild(n); added++; }
    }
    if (!added) return;
    formatTimes(log);
    var empty = document.getElementById("log-empty");
    if (empty) empty.hidden = true;
    if (atBottom) log.scrollTop = log.scrollHeight;
  });

  // -- counters tick ----------------------------------------------------------------------
  var before = {};
  document.addEventListener("htmx:beforeSwap", function (evt) {
    before = {};
    var nums = evt.detail.target ? evt.detail.target.querySelectorAll(".num[id], [data-count]") : [];
    for (var i = 0; i < nums.length; i++) before[nums[i].id || nums[i].getAttribute("data-count")] = nums[i].textContent;
  });
  document.addEventListener("htmx:afterSettle", function (evt) {
    var nums = evt.detail.target ? evt.detail.target.querySelectorAll(".num[id], [data-count]") : [];
    for (var i = 0; i < nums.length; i++) {
      var key = nums[i].id || nums[i].getAttribute("data-count");
      if (key in before && before[key] !== nums[i].textContent) {
        nums[i].classList.remove("bump");
        void nums[i].offsetWidth;
        nums[i].classList.add("bump");
      }
    }
  });

  // -- charts ------------------------------------------------------------------------------
  var charts = {};
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function chartData() {
    var el = document.getElementById("chart-data");
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }
  function drawCharts() {
    if (typeof uPlot === "undefined") return;
    var data = chartData();
    if (!data) return;
    var axes = function (unit) {
      return [
        { values: function (u, splits) { return splits.map(function (v) { return fmtHour.format(new Date(v * 1000)); }); },
          stroke: "#5d6b7a", grid: { stroke: "#eef2f6" }, space: 56, incrs: [3600, 7200, 10800, 21600, 43200] },
        { stroke: "#5d6b7a", grid: { stroke: "#eef2f6" }, size: 44,
          values: function (u, splits) { return splits.map(function (v) { return v + unit; }); } }
      ];
    };
    var specs = {
      throughput: {
        series: [{}, { label: "c", stroke: css("--completed"), fill: css("--completed-bg"), width: 2, points: { show: false } },
          { label: "f", stroke: css("--failed"), width: 2, points: { show: false } }],
        data: [data.t, data.completed, data.failed], unit: "", min: 0
      },
      rate: {
        series: [{}, { label: "r", stroke: css("--failed"), fill: css("--failed-bg"), width: 2, spanGaps: false }],
        data: [data.t, data.rate], unit: "%", min: 0
      }
    };
    var els = document.querySelectorAll("[data-chart]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var spec = specs[el.getAttribute("data-chart")];
      if (!spec) continue;
      var width = Math.max(200, el.clientWidth);
      var key = el.id;
      if (charts[key]) { charts[key].setData(spec.data); charts[key].setSize({ width: width, height: 150 }); continue; }
      charts[key] = new uPlot({
        width: width, height: 150, legend: { show: false }, cursor: { show: true, drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: function (u, mn, mx) {
          return [0, spec.unit ? Math.min(100, Math.max(10, Math.ceil(mx * 1.15))) : Math.max(4, Math.ceil(mx * 1.15))];
        } } },
        series: spec.series, axes: axes(spec.unit)
      }, spec.data, el);
    }
  }
  document.addEventListener("htmx:afterSwap", function (evt) {
    if (evt.detail.target && evt.detail.target.id === "chart-data") drawCharts();
  });
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawCharts, 150);
  });

  // -- bulk selection ---------------------------------------------------------------------
  function initBulk() {
    var form = document.getElementById("bulk");
    if (!form) return;
    var counter = document.getElementById("selected-count");
    var all = document.getElementById("select-all");
    function update() {
      var boxes = form.querySelectorAll("input[name=ids]");
      var n = 0;
      for (var i = 0; i < boxes.length; i++) if (boxes[i].checked) n++;
      if (counter) counter.textContent = counter.getAttribute("data-template").replace("{n}", String(n));
      if (all) { all.checked = n > 0 && n === boxes.length; all.indeterminate = n > 0 && n < boxes.length; }
    }
    form.addEventListener("change", function (evt) {
      if (evt.target === all) {
        var boxes = form.querySelectorAll("input[name=ids]");
        for (var i = 0; i < boxes.length; i++) boxes[i].checked = all.checked;
      }
      update();
    });
    update();
  }

  // -- add task: upload with progress, then submit the form ----------------------------
  function initUpload() {
    var form = document.getElementById("new-task");
    if (!form) return;
    var file = document.getElementById("file");
    var key = document.getElementById("key");
    var bucket = document.getElementById("bucket");
    var box = document.getElementById("upload-box");
    var bar = document.getElementById("upload-progress");
    var text = document.getElementById("upload-text");
    var submit = document.getElementById("submit-task");
    var idem = document.getElementById("idempotency-key");
    // a submitter's files live under its own folder: uploads go there (the server refuses
    // any other key for it)
    var prefix = form.getAttribute("data-key-prefix") || "";
    function mine(k) { return prefix && k.indexOf(prefix) !== 0 ? prefix + k : k; }
    function mode() {
      var r = form.querySelector("input[name=source]:checked");
      return r ? r.value : "existing";
    }
    function sync() {
      var kind = form.querySelector("input[name=kind]:checked");
      if (kind) {
        form.setAttribute("data-kind", kind.value);
        // each kind's own fieldset (its processor's form): only the chosen kind's shows
        Array.prototype.forEach.call(form.querySelectorAll("[data-for-kind]"), function (fs) {
          fs.hidden = fs.getAttribute("data-for-kind") !== kind.value;
        });
      }
      form.setAttribute("data-mode", mode());
      file.required = mode() === "upload";
      key.required = mode() === "existing";
    }
    form.addEventListener("change", function (evt) {
      if (evt.target.name === "source" || evt.target.name === "kind") sync();
      if (evt.target === file && file.files[0] && (!key.value || key.getAttribute("data-auto") === "1")) {
        key.value = mine(file.files[0].name);
        key.setAttribute("data-auto", "1");
      }
    });
    key.addEventListener("input", function () { key.removeAttribute("data-auto"); });
    sync();
    function say(msg, failed) {
      box.hidden = false;
      text.textContent = msg;
      text.className = failed ? "flash error" : "";
    }
    form.addEventListener("submit", function (evt) {
      if (mode() !== "upload") return;
      evt.preventDefault();
      var f = file.files[0];
      if (!f) { say(text.getAttribute("data-nofile"), true); return; }
      if (f.size > parseInt(form.getAttribute("data-max-bytes"), 10)) { say(text.getAttribute("data-toolarge"), true); return; }
      var k = mine((key.value || f.name).replace(/^\/+/, ""));
      var url = form.getAttribute("data-upload-base") + encodeURIComponent(bucket.value) + "/" +
        k.split("/").map(encodeURIComponent).join("/");
      var xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      xhr.setRequestHeader("Content-Type", f.type || "application/octet-stream");
      var csrf = document.querySelector('meta[name="csrf-token"]');
      if (csrf) xhr.setRequestHeader("X-CSRF-Token", csrf.getAttribute("content"));
      submit.disabled = true;
      bar.value = 0;
      say(text.getAttribute("data-template").replace("{pct}", "0"));
      xhr.upload.onprogress = function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.floor(100 * e.loaded / e.total);
        bar.value = pct;
        say(text.getAttribute("data-template").replace("{pct}", String(pct)));
      };
      xhr.onload = function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status === 201 && body) {
          bar.value = 100;
          say(text.getAttribute("data-done"));
          idem.value = body.upload_key; // one upload, one task: the upload trigger will not add another
          bucket.value = body.bucket;
          key.value = body.key;
          HTMLFormElement.prototype.submit.call(form);
        } else {
          submit.disabled = false;
          var why = body && body.error ? body.error.message : String(xhr.status);
          say(text.getAttribute("data-failed") + " " + why, true);
        }
      };
      xhr.onerror = function () {
        submit.disabled = false;
        say(text.getAttribute("data-failed") + " " + String(xhr.status || ""), true);
      };
      xhr.send(f);
    });
  }

  // -- start ----------------------------------------------------------------------------------
  htmx.onLoad(function (el) { formatTimes(el); });
  // also at once after every swap (htmx:load only fires once the swap has settled)
  document.addEventListener("htmx:afterSwap", function (evt) { formatTimes(evt.detail.target); });
  document.addEventListener("htmx:oobAfterSwap", function (evt) { formatTimes(evt.detail.target); });
  document.addEventListener("DOMContentLoaded", function () {
    formatTimes(document);
    initBulk();
    initUpload();
    drawCharts();
    var log = document.getElementById("log");
    if (log) log.scrollTop = log.scrollHeight;
    setInterval(function () {
      var rel = document.querySelectorAll("time[data-fmt=relative]");
      for (var i = 0; i < rel.length; i++) rel[i].textContent = relative(new Date(rel[i].getAttribute("datetime")));
    }, 20000);
  });
  window.conveyorConsole = { formatTimes: formatTimes, drawCharts: drawCharts };
})();
