/* Conveyor console: the task page's stream player.
 *  - plays a streaming group's master playlist (HLS) with hls.js, vendored and loaded
 *    only when a page shows a stream; its transmuxer worker is the vendored
 *    hls.worker.js, loaded by URL (the page's CSP allows workers from 'self' only)
 *  - every file is read through the API's download path, on this origin, so the
 *    session cookie goes along and the file scoping of /api/files applies
 *  - a rendition picker: auto (naming the rung playing) and every rung by height and
 *    bitrate; a browser without MediaSource but with native HLS (Safari) plays natively
 *  - segments load only once the viewer presses play; the manifest (for the picker)
 *    at once
 * Every user-visible string comes from the page (translated on the server).
 */
(function () {
  "use strict";

  var lang = document.documentElement.lang || "en";
  var num = new Intl.NumberFormat(lang, { maximumFractionDigits: 1 });
  var loading = null;
  var players = [];

  function fill(template, values) {
    return String(template || "").replace(/\{(\w+)\}/g, function (m, k) {
      return Object.prototype.hasOwnProperty.call(values, k) ? values[k] : m;
    });
  }

  function loadHls(src) {
    if (window.Hls) return Promise.resolve(window.Hls);
    if (!loading) {
      loading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = src;
        s.onload = function () {
          if (window.Hls) resolve(window.Hls);
          else reject(new Error("hls.js"));
        };
        s.onerror = function () {
          loading = null;
          reject(new Error("hls.js"));
        };
        document.head.appendChild(s);
      });
    }
    return loading;
  }

  function Player(fig) {
    this.fig = fig;
    this.video = fig.querySelector("video");
    this.picker = fig.querySelector("#rendition");
    this.status = fig.querySelector("#player-status");
    this.group = fig.querySelector("#stream-group");
    this.hls = null;
    this.gone = false;
    var self = this;
    this.picker.addEventListener("change", function () {
      if (self.hls) self.hls.currentLevel = parseInt(self.picker.value, 10);
    });
    if (this.group) {
      this.group.addEventListener("change", function () { self.start(self.group.value); });
    }
  }

  Player.prototype.state = function (state, message) {
    this.fig.setAttribute("data-state", state);
    this.status.textContent = message || "";
  };

  Player.prototype.rate = function (bps) {
    if (!bps) return "";
    var d = this.fig.dataset;
    return bps >= 1e6 ? fill(d.mbps, { n: num.format(bps / 1e6) })
      : fill(d.kbps, { n: num.format(Math.round(bps / 1e3)) });
  };

  Player.prototype.rung = function (level) {
    if (!level.height) return level.name || this.rate(level.bitrate);
    return fill(this.fig.dataset.rung, { height: String(level.height), rate: this.rate(level.bitrate) });
  };

  Player.prototype.stop = function () {
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
    this.picker.disabled = true;
  };

  Player.prototype.destroy = function () {
    this.gone = true;
    this.stop();
  };

  Player.prototype.start = function (src) {
    var self = this;
    this.stop();
    this.fig.setAttribute("data-src", src);
    this.state("loading");
    loadHls(this.fig.dataset.hls).then(function (Hls) {
      if (self.gone) return;
      if (Hls.isSupported()) self.play(Hls, src);
      else self.native(src);
    }, function () {
      if (!self.gone) self.native(src);
    });
  };

  Player.prototype.native = function (src) {
    if (this.video.canPlayType("application/vnd.apple.mpegurl")) {
      this.video.src = src;  // the browser picks rungs itself: no picker
      this.state("ready");
    } else {
      this.state("unsupported", this.fig.dataset.unsupported);
    }
  };

  Player.prototype.play = function (Hls, src) {
    var self = this;
    var hls = new Hls({ workerPath: this.fig.dataset.worker, autoStartLoad: false });
    var recovered = false;
    this.hls = hls;
    hls.on(Hls.Events.MANIFEST_PARSED, function () {
      self.levels(hls);
      self.state("ready");
      if (!self.video.paused) hls.startLoad(-1);
    });
    hls.on(Hls.Events.LEVEL_SWITCHED, function (evt, data) {
      var level = hls.levels[data.level];
      self.fig.setAttribute("data-level", level && level.height ? String(level.height) : "");
      self.autoLabel(hls);
    });
    hls.on(Hls.Events.ERROR, function (evt, data) {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && !recovered) {
        recovered = true;
        hls.recoverMediaError();
        return;
      }
      var code = data.response && data.response.code ? " (" + data.response.code + ")" : "";
      self.stop();
      self.state("error", fill(self.fig.dataset.failed, { why: data.details + code }));
    });
    var started = false;
    this.video.addEventListener("play", function () {
      if (!started && self.hls === hls) {
        started = true;
        hls.startLoad(-1);
      }
    });
    hls.attachMedia(this.video);
    hls.loadSource(src);
  };

  // auto first, then the rungs from the largest down
  Player.prototype.levels = function (hls) {
    var picker = this.picker;
    while (picker.options.length > 1) picker.remove(1);
    var order = hls.levels.map(function (level, i) { return i; });
    order.sort(function (a, b) {
      return (hls.levels[b].height - hls.levels[a].height) || (hls.levels[b].bitrate - hls.levels[a].bitrate);
    });
    for (var k = 0; k < order.length; k++) {
      var level = hls.levels[order[k]];
      var opt = document.createElement("option");
      opt.value = String(order[k]);
      opt.textContent = this.rung(level);
      opt.setAttribute("data-height", String(level.height || ""));
      opt.setAttribute("data-bitrate", String(level.bitrate || ""));
      picker.appendChild(opt);
    }
    picker.value = "-1";
    picker.disabled = order.length < 2;
    this.autoLabel(hls);
  };

  Player.prototype.autoLabel = function (hls) {
    var auto = this.picker.options[0];
    var level = hls.autoLevelEnabled ? hls.levels[hls.currentLevel] : null;
    auto.textContent = level && level.height
      ? fill(this.fig.dataset.autoNow, { rung: level.height + "p" })
      : this.fig.dataset.auto;
  };

  function init(root) {
    var fig = root && root.id === "stream-player" ? root
      : root && root.querySelector ? root.querySelector("#stream-player") : null;
    if (!fig || fig.conveyorPlayer) return;
    var player = new Player(fig);
    fig.conveyorPlayer = player;
    players.push(player);
    player.start(fig.getAttribute("data-src"));
  }

  // the outputs fragment is replaced by the live stream when it changes: end the old
  // player before its video goes (htmx cleans up every element it removes)
  document.addEventListener("htmx:beforeCleanupElement", function (evt) {
    var player = evt.target && evt.target.conveyorPlayer;
    if (!player) return;
    player.destroy();
    players = players.filter(function (p) { return p !== player; });
  });
  window.addEventListener("pagehide", function () {
    for (var i = 0; i < players.length; i++) players[i].destroy();
    players = [];
  });
  htmx.onLoad(init);  // the page, and the fragment that brings a player when a task completes
  document.addEventListener("DOMContentLoaded", function () { init(document.body); });
})();
