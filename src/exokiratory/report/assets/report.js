/* exokiratory report: thumbnails from the inline store, and interactive embedding maps.
   No network, no libraries: everything this page needs is inside it. */
(function () {
  "use strict";
  var thumbs = JSON.parse(document.getElementById("exo-thumbs").textContent);
  var mapsBlock = document.getElementById("exo-maps");  // absent without a maps section
  var maps = mapsBlock ? JSON.parse(mapsBlock.textContent) : [];
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"];
  var NONE = "#c8ccd4";

  function src(id) {
    var b = thumbs[id];
    return b ? (b.startsWith("iVBOR") ? "data:image/png;base64," : "data:image/jpeg;base64,") + b : null;
  }

  // gallery thumbnails
  var imgs = document.querySelectorAll("img[data-thumb]");
  for (var i = 0; i < imgs.length; i++) {
    var s = src(imgs[i].getAttribute("data-thumb"));
    if (s) { imgs[i].src = s; }
  }

  var tip = document.getElementById("tooltip");
  function showTip(ev, html) {
    tip.innerHTML = html;
    tip.style.display = "block";
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth) { x = ev.clientX - w - 14; }
    if (y + h > window.innerHeight) { y = ev.clientY - h - 14; }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.style.display = "none"; }
  function esc(t) {
    return String(t).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"}[c];
    });
  }

  function ExoMap(box, m) {
    this.box = box;
    this.m = m;
    this.canvas = box.querySelector("canvas");
    this.select = box.querySelector("select");
    this.legend = box.querySelector(".legend");
    this.field = 0;
    this.pad = 12;
    this.hover = -1;
    var self = this;
    this.select.addEventListener("change", function () {
      self.field = parseInt(self.select.value, 10);
      self.draw();
    });
    this.canvas.addEventListener("mousemove", function (ev) { self.move(ev); });
    this.canvas.addEventListener("mouseleave", function () { self.hover = -1; hideTip(); });
    this.draw();
  }
  ExoMap.prototype.size = function () {
    var r = this.canvas.getBoundingClientRect();
    return {w: r.width, h: r.height};
  };
  ExoMap.prototype.screenPoint = function (j) {
    var s = this.size(), p = this.pad;
    return {x: p + this.m.x[j] * (s.w - 2 * p), y: p + (1 - this.m.y[j]) * (s.h - 2 * p)};
  };
  ExoMap.prototype.colour = function (j) {
    var f = this.m.colours[this.field];
    if (!f) { return PALETTE[0]; }
    var code = f.codes[j];
    if (f.labels[code] === "(none)") { return NONE; }
    return PALETTE[code % PALETTE.length];
  };
  ExoMap.prototype.draw = function () {
    var s = this.size(), dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(s.w * dpr);
    this.canvas.height = Math.round(s.h * dpr);
    var ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, s.w, s.h);
    var n = this.m.ids.length, drawn = 0;
    // the commonest colours first, so rare categories stay visible on top
    var order = [];
    for (var j = 0; j < n; j++) { order.push(j); }
    var f = this.m.colours[this.field];
    if (f) { order.sort(function (a, b) { return f.codes[a] - f.codes[b]; }); }
    ctx.globalAlpha = 0.85;
    for (var k = 0; k < n; k++) {
      var i = order[k], p = this.screenPoint(i);
      ctx.fillStyle = this.colour(i);
      ctx.beginPath();
      ctx.arc(p.x, p.y, 3.2, 0, 2 * Math.PI);
      ctx.fill();
      drawn++;
    }
    ctx.globalAlpha = 1;
    this.canvas.setAttribute("data-drawn", String(drawn));
    this.drawLegend();
  };
  ExoMap.prototype.drawLegend = function () {
    var f = this.m.colours[this.field];
    if (!f) { this.legend.innerHTML = ""; return; }
    var html = [], shown = Math.min(f.labels.length, 20);
    for (var c = 0; c < shown; c++) {
      var col = f.labels[c] === "(none)" ? NONE : PALETTE[c % PALETTE.length];
      html.push("<span class=\"sw\" style=\"background:" + col + "\"></span>" +
        esc(f.labels[c]) + " (" + f.counts[c] + ")");
    }
    if (f.labels.length > shown) {
      html.push(" &hellip; " + (f.labels.length - shown) + " more (colours repeat)");
    }
    this.legend.innerHTML = html.join(" ");
  };
  ExoMap.prototype.nearest = function (x, y) {
    var best = -1, bd = 100;  // within 10 px
    for (var j = 0; j < this.m.ids.length; j++) {
      var p = this.screenPoint(j), dx = p.x - x, dy = p.y - y, d = dx * dx + dy * dy;
      if (d < bd) { bd = d; best = j; }
    }
    return best;
  };
  ExoMap.prototype.move = function (ev) {
    var r = this.canvas.getBoundingClientRect();
    var j = this.nearest(ev.clientX - r.left, ev.clientY - r.top);
    this.hover = j;
    if (j < 0) { hideTip(); return; }
    var id = this.m.ids[j], s = src(id), f = this.m.colours[this.field];
    var html = (s ? "<img src=\"" + s + "\" alt=\"\">" : "<div class=\"err\">no thumbnail</div>") +
      "<div><code>" + esc(id.slice(0, 12)) + "</code></div>" +
      "<div>" + esc(this.m.paths[j]) + "</div>" +
      (f ? "<div>" + esc(f.name) + ": <b>" + esc(f.labels[f.codes[j]]) + "</b></div>" : "");
    showTip(ev, html);
  };

  var boxes = document.querySelectorAll(".mapbox");
  window.exoMaps = [];
  for (var b = 0; b < boxes.length; b++) {
    var idx = parseInt(boxes[b].getAttribute("data-map"), 10);
    window.exoMaps.push(new ExoMap(boxes[b], maps[idx]));
  }
})();
