/* agsevnet report viewer: axial, coronal and sagittal slices of one case with the prediction (filled), the
 * ground truth (outlined) and the uncertainty map as overlays. Plain JavaScript, no library, no network: the
 * volumes are embedded in the page (see agsevnet/report/viewer.py for the encoding). Every element with the
 * class "agv" is a viewer; its data is the JSON script element named by its data-source attribute.
 *
 * Volumes are RAS (x to the patient's right, y anterior, z superior), C order: index (x * Y + y) * Z + z.
 * Displayed radiologically: axial and coronal columns run from the patient's right to left, sagittal columns
 * from anterior to posterior, rows from superior (or anterior, axial) to inferior (posterior).
 *
 * For tests the viewer exposes its state: data-ready="true" on the viewer once the first case is drawn,
 * data-slice on each canvas, data-case / data-modality / data-overlays on the viewer.
 */
(function () {
  "use strict";

  // internal label -> fill colour: 1 NCR (tumour core) red, 2 edema (whole tumour) green, 3 ET yellow
  var FILL = [null, [227, 36, 43], [44, 160, 44], [255, 212, 0]];
  var REGIONS = [ // innermost first: an outline pixel takes the colour of the innermost region it bounds
    {name: "ET", labels: [false, false, false, true], colour: [255, 212, 0]},
    {name: "TC", labels: [false, true, false, true], colour: [227, 36, 43]},
    {name: "WT", labels: [false, true, true, true], colour: [44, 160, 44]}
  ];
  var VIEW_NAMES = ["axial", "coronal", "sagittal"];
  var LABEL_NAMES = ["background", "necrotic / non-enhancing core", "edema", "enhancing tumour"];
  var MAX_CSS_PX = 320; // the largest extent of a case, in CSS pixels

  function inflate(b64) {
    var binary = atob(b64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (buffer) { return new Uint8Array(buffer); });
  }

  /* Geometry of a view: its size and the voxel index of display pixel (column c, row r) in slice s. */
  function geometry(view, shape, spacing) {
    var X = shape[0], Y = shape[1], Z = shape[2];
    if (view === "axial") return {w: X, h: Y, n: Z, sw: spacing[0], sh: spacing[1],
      index: function (c, r, s) { return ((X - 1 - c) * Y + (Y - 1 - r)) * Z + s; },
      voxel: function (c, r, s) { return [X - 1 - c, Y - 1 - r, s]; }, axis: 2};
    if (view === "coronal") return {w: X, h: Z, n: Y, sw: spacing[0], sh: spacing[2],
      index: function (c, r, s) { return ((X - 1 - c) * Y + s) * Z + (Z - 1 - r); },
      voxel: function (c, r, s) { return [X - 1 - c, s, Z - 1 - r]; }, axis: 1};
    return {w: Y, h: Z, n: X, sw: spacing[1], sh: spacing[2],
      index: function (c, r, s) { return (s * Y + (Y - 1 - c)) * Z + (Z - 1 - r); },
      voxel: function (c, r, s) { return [s, Y - 1 - c, Z - 1 - r]; }, axis: 0};
  }

  function Viewer(root) {
    this.root = root;
    this.data = JSON.parse(document.getElementById(root.getAttribute("data-source")).textContent);
    this.cache = {};
    this.caseIndex = -1;
    this.volumes = null;
    this.slices = [0, 0, 0]; // current voxel position (x, y, z)
    this.q = function (cls) { return root.querySelector("." + cls); };
    this.status = this.q("agv-status");
    this.views = {};
    var self = this;
    VIEW_NAMES.forEach(function (name) {
      var el = root.querySelector('.agv-view[data-view="' + name + '"]');
      self.views[name] = {el: el, canvas: el.querySelector("canvas"), slider: el.querySelector(".agv-slice"),
        readout: el.querySelector(".agv-readout")};
    });
    this.bind();
  }

  Viewer.prototype.bind = function () {
    var self = this;
    this.q("agv-case").addEventListener("change", function (ev) { self.show(parseInt(ev.target.value, 10)); });
    this.q("agv-modality").addEventListener("change", function () { self.renderAll(); });
    ["agv-pred", "agv-gt", "agv-unc"].forEach(function (cls) {
      self.q(cls).addEventListener("change", function () { self.renderAll(); });
    });
    this.q("agv-opacity").addEventListener("input", function () { self.renderAll(); });
    VIEW_NAMES.forEach(function (name) {
      var view = self.views[name];
      view.slider.addEventListener("input", function () {
        self.slices[view.geo.axis] = parseInt(view.slider.value, 10);
        self.render(name);
      });
      view.canvas.addEventListener("wheel", function (ev) {
        ev.preventDefault();
        self.step(name, ev.deltaY > 0 ? -1 : 1);
      }, {passive: false});
      view.canvas.addEventListener("click", function (ev) {
        var voxel = self.pointed(view, ev);
        if (!voxel) return;
        for (var a = 0; a < 3; a++) if (a !== view.geo.axis) self.slices[a] = voxel[a];
        self.renderAll();
      });
      view.canvas.addEventListener("mousemove", function (ev) { self.probe(self.pointed(view, ev)); });
      view.canvas.addEventListener("mouseleave", function () { self.probe(null); });
    });
  };

  /* The voxel (x, y, z) under the mouse in a view, or null. */
  Viewer.prototype.pointed = function (view, ev) {
    if (!view.geo) return null;
    var rect = view.canvas.getBoundingClientRect();
    var c = Math.floor((ev.clientX - rect.left) / rect.width * view.geo.w);
    var r = Math.floor((ev.clientY - rect.top) / rect.height * view.geo.h);
    if (c < 0 || r < 0 || c >= view.geo.w || r >= view.geo.h) return null;
    return view.geo.voxel(c, r, this.slices[view.geo.axis]);
  };

  /* What the volumes hold at a voxel, shown under the views. */
  Viewer.prototype.probe = function (voxel) {
    var out = this.q("agv-probe");
    if (!voxel || !this.volumes) { out.textContent = ""; return; }
    var shape = this.record.shape, volumes = this.volumes, levels = this.record.levels;
    var i = (voxel[0] * shape[1] + voxel[1]) * shape[2] + voxel[2];
    var parts = ["voxel " + voxel.join(", ") + " (RAS, cropped grid)"];
    var modality = this.q("agv-modality");
    if (volumes[modality.value]) parts.push(modality.options[modality.selectedIndex].text + " level " +
                                            volumes[modality.value][i] + "/" + (levels - 1));
    if (volumes.gt) parts.push("ground truth: " + LABEL_NAMES[volumes.gt[i]]);
    if (volumes.pred) parts.push("prediction: " + LABEL_NAMES[volumes.pred[i]]);
    if (volumes.uncertainty) parts.push("uncertainty " + (volumes.uncertainty[i] / (levels - 1)).toFixed(2));
    out.textContent = parts.join("; ");
  };

  Viewer.prototype.step = function (name, delta) {
    var view = this.views[name];
    var axis = view.geo.axis;
    var next = Math.max(0, Math.min(view.geo.n - 1, this.slices[axis] + delta));
    if (next === this.slices[axis]) return;
    this.slices[axis] = next;
    this.render(name);
  };

  Viewer.prototype.load = function (index) {
    if (this.cache[index]) return Promise.resolve(this.cache[index]);
    var record = this.data.cases[index];
    var keys = [], jobs = [];
    record.images.forEach(function (image) { keys.push("image:" + image.key); jobs.push(inflate(image.data)); });
    ["gt", "pred", "uncertainty"].forEach(function (key) {
      if (record[key]) { keys.push(key); jobs.push(inflate(record[key])); }
    });
    var self = this;
    return Promise.all(jobs).then(function (arrays) {
      var volumes = {};
      var size = record.shape[0] * record.shape[1] * record.shape[2];
      keys.forEach(function (key, i) {
        if (arrays[i].length !== size) throw new Error("case " + record.id + ": " + key + " has " + arrays[i].length +
                                                       " voxels, expected " + size);
        volumes[key] = arrays[i];
      });
      self.cache[index] = volumes;
      return volumes;
    });
  };

  Viewer.prototype.show = function (index) {
    var self = this;
    var record = this.data.cases[index];
    this.status.textContent = "decoding " + record.id + "...";
    return this.load(index).then(function (volumes) {
      self.caseIndex = index;
      self.record = record;
      self.volumes = volumes;
      self.setup();
      self.renderAll();
      self.root.setAttribute("data-ready", "true");
    }).catch(function (err) {
      self.status.textContent = "viewer: " + err.message;
      self.status.className = "agv-status agv-error";
      throw err;
    });
  };

  /* Controls and canvases for the case now shown. */
  Viewer.prototype.setup = function () {
    var record = this.record, volumes = this.volumes, self = this;
    var select = this.q("agv-modality");
    var previous = select.value;
    select.innerHTML = "";
    record.images.forEach(function (image) {
      var option = document.createElement("option");
      option.value = "image:" + image.key;
      option.textContent = image.name;
      select.appendChild(option);
    });
    if (!record.images.length) {
      var none = document.createElement("option");
      none.value = "";
      none.textContent = "no image found";
      select.appendChild(none);
    }
    if (previous && volumes[previous]) select.value = previous;
    select.disabled = !record.images.length;
    [["agv-pred", "pred", "no prediction for this case"], ["agv-gt", "gt", "no ground truth for this case"],
     ["agv-unc", "uncertainty", "no <case>_uncertainty.nii.gz next to the prediction " +
      "(agsevnet predict --save-uncertainty writes one)"]].forEach(function (item) {
      var box = self.q(item[0]);
      box.disabled = !volumes[item[1]];
      box.parentNode.title = box.disabled ? item[2] : "";
      if (box.disabled) box.checked = false;
    });
    this.slices = record.start.slice();
    var shape = record.shape, spacing = record.spacing;
    var extent = Math.max(shape[0] * spacing[0], shape[1] * spacing[1], shape[2] * spacing[2]);
    var pxPerMm = Math.min(3, MAX_CSS_PX / extent);
    VIEW_NAMES.forEach(function (name) {
      var view = self.views[name];
      view.geo = geometry(name, shape, spacing);
      view.canvas.width = view.geo.w;
      view.canvas.height = view.geo.h;
      view.canvas.style.width = Math.round(view.geo.w * view.geo.sw * pxPerMm) + "px";
      view.canvas.style.height = Math.round(view.geo.h * view.geo.sh * pxPerMm) + "px";
      view.slider.max = String(view.geo.n - 1);
    });
    var dice = Object.keys(record.dice || {}).map(function (k) { return k + " " + record.dice[k].toFixed(3); });
    this.status.className = "agv-status";
    this.status.textContent = record.id + ": " + shape.join(" x ") + " voxels of " +
      spacing.map(function (s) { return s.toFixed(2); }).join(" x ") + " mm" +
      (dice.length ? "; Dice " + dice.join(", ") : "") + (record.notes.length ? "; " + record.notes.join("; ") : "");
  };

  Viewer.prototype.renderAll = function () {
    var self = this;
    VIEW_NAMES.forEach(function (name) { self.render(name); });
  };

  Viewer.prototype.render = function (name) {
    if (!this.volumes) return;
    var view = this.views[name], geo = view.geo, volumes = this.volumes;
    var s = this.slices[geo.axis];
    var w = geo.w, h = geo.h, levels = this.record.levels;
    var base = volumes[this.q("agv-modality").value] || null;
    var pred = this.q("agv-pred").checked ? volumes.pred : null;
    var gt = this.q("agv-gt").checked ? volumes.gt : null;
    var unc = this.q("agv-unc").checked ? volumes.uncertainty : null;
    var opacity = parseInt(this.q("agv-opacity").value, 10) / 100;
    var ctx = view.canvas.getContext("2d");
    var image = ctx.createImageData(w, h);
    var px = image.data;
    var gtSlice = null;
    if (gt) {
      gtSlice = new Uint8Array(w * h);
      for (var r0 = 0; r0 < h; r0++) for (var c0 = 0; c0 < w; c0++) gtSlice[r0 * w + c0] = gt[geo.index(c0, r0, s)];
    }
    for (var r = 0; r < h; r++) {
      for (var c = 0; c < w; c++) {
        var i = geo.index(c, r, s);
        var g = base ? Math.round(base[i] * 255 / (levels - 1)) : 0;
        var R = g, G = g, B = g;
        if (unc && unc[i] > 0) {
          var t = unc[i] / (levels - 1), a = opacity * t;
          R += (255 * t - R) * a; G += (255 * (1 - t) - G) * a; B += (255 - B) * a;
        }
        if (pred && pred[i]) {
          var fill = FILL[pred[i]];
          if (fill) { R += (fill[0] - R) * opacity; G += (fill[1] - G) * opacity; B += (fill[2] - B) * opacity; }
        }
        if (gtSlice && gtSlice[r * w + c]) {
          var edge = outline(gtSlice, w, h, c, r);
          if (edge) { R = edge[0]; G = edge[1]; B = edge[2]; }
        }
        var o = (r * w + c) * 4;
        px[o] = R; px[o + 1] = G; px[o + 2] = B; px[o + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
    view.slider.value = String(s);
    view.canvas.setAttribute("data-slice", String(s));
    view.readout.textContent = "slice " + (s + 1) + " / " + geo.n;
    this.root.setAttribute("data-case", this.record.id);
    this.root.setAttribute("data-modality", this.q("agv-modality").value);
    this.root.setAttribute("data-overlays", [pred ? "pred" : "", gt ? "gt" : "", unc ? "uncertainty" : ""]
      .filter(Boolean).join(" "));
  };

  /* The colour of the innermost region whose border passes through pixel (c, r) of a label slice, or null. */
  function outline(slice, w, h, c, r) {
    var label = slice[r * w + c];
    for (var k = 0; k < REGIONS.length; k++) {
      var region = REGIONS[k];
      if (!region.labels[label]) continue;
      if (c === 0 || r === 0 || c === w - 1 || r === h - 1 ||
          !region.labels[slice[r * w + c - 1]] || !region.labels[slice[r * w + c + 1]] ||
          !region.labels[slice[(r - 1) * w + c]] || !region.labels[slice[(r + 1) * w + c]]) return region.colour;
    }
    return null;
  }

  function start() {
    var roots = document.querySelectorAll(".agv");
    for (var i = 0; i < roots.length; i++) {
      var root = roots[i];
      if (typeof DecompressionStream === "undefined") {
        root.querySelector(".agv-status").textContent = "This browser cannot decompress the embedded volumes " +
          "(DecompressionStream: Chrome/Edge 80+, Firefox 113+, Safari 16.4+).";
        continue;
      }
      var viewer = new Viewer(root);
      root.agsevnetViewer = viewer;
      if (viewer.data.cases.length) viewer.show(0);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
