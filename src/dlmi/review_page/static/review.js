/* dlmi review page: sorting, filters, confusion matrix, detail view, flags (local storage + CSV export).
   No network: everything it shows is in the page's data block or in the pictures folder beside it. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("dlmi-data").textContent);
  var rows = data.rows;
  var classes = data.classes || [];
  var hasTruth = rows.some(function (r) { return r.dice !== null && r.dice !== undefined; });
  var hasTrueClass = rows.some(function (r) { return r.true_class; });
  var storeKey = "dlmi-review-flags:" + data.page_id;
  var state = { sort: null, desc: false, cls: "", gate: "", flag: "", cell: null, page: 0, size: 100,
                view: [], cursor: -1, detail: false };

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); }); }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function fixed(v, places) { return isNum(v) ? v.toFixed(places) : null; }
  function dash() { return el("span", { "class": "dash" }, "\u2014"); }

  // --- flags: the page's own (from --flags), then local storage over them --------------------------------
  rows.forEach(function (r, i) { r.index = i + 1; r.flag = !!r.flag; r.note = r.note || ""; });
  try {
    var stored = JSON.parse(window.localStorage.getItem(storeKey) || "{}");
    var byKey = {};
    rows.forEach(function (r) { byKey[r.key] = r; });
    Object.keys(stored).forEach(function (k) {
      if (byKey[k]) { byKey[k].flag = !!stored[k].flag; byKey[k].note = stored[k].note || ""; }
    });
  } catch (e) { /* no local storage (private mode): flags last as long as the page */ }
  function saveFlags() {
    var out = {};
    rows.forEach(function (r) { if (r.flag || r.note) { out[r.key] = { flag: r.flag, note: r.note }; } });
    try { window.localStorage.setItem(storeKey, JSON.stringify(out)); } catch (e) { /* see above */ }
  }
  function csvField(v) {
    v = String(v === null || v === undefined ? "" : v);
    return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  }
  function flagsCsv() {
    var lines = ["file,flag,note"];
    rows.forEach(function (r) {
      if (r.flag || r.note) { lines.push([r.key, r.flag ? "yes" : "no", r.note].map(csvField).join(",")); }
    });
    return lines.join("\r\n") + "\r\n";
  }
  function exportFlags() {
    var text = flagsCsv();
    $("flags-csv").value = text;
    $("export-count").textContent = String(text.split("\r\n").length - 2);
    $("export-box").hidden = false;
    var link = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: "flags.csv" });
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  // --- columns ---------------------------------------------------------------------------------------------
  function probCell(v) {
    if (!isNum(v)) { return dash(); }
    var span = el("span", { "class": "prob", style: "--p:" + (100 * v).toFixed(1) + "%" }, v.toFixed(3));
    return span;
  }
  function gateCell(r) {
    if (r.gated === null || r.gated === undefined) { return dash(); }
    return el("span", { "class": "chip " + (r.gated ? "gated" : "open") }, r.gated ? "gated" : "not gated");
  }
  function marginCell(r) {
    if (!isNum(r.margin)) { return dash(); }
    var s = el("span", Math.abs(r.margin) < 0.1 ? { "class": "near", title: "within 0.1 of the gate's switch" } : null,
               (r.margin > 0 ? "+" : "") + r.margin.toFixed(3));
    return s;
  }
  function numCell(places) { return function (v) { var t = fixed(v, places); return t === null ? dash() : document.createTextNode(t); }; }
  function areaCell(r) {
    if (!isNum(r.area)) { return dash(); }
    return document.createTextNode((100 * r.area).toFixed(r.area < 0.01 && r.area > 0 ? 2 : 1) + " %");
  }
  var columns = [
    { id: "index", label: "#", num: true, get: function (r) { return r.index; }, cell: function (r) { return document.createTextNode(r.index); } },
    { id: "thumb", label: "overlay", sortable: false, cell: function (r) {
        if (!r.thumb) { return r.problem ? el("span", { "class": "problem", title: r.problem }, "unreadable") : dash(); }
        return el("img", { "class": "thumb", src: r.thumb, loading: "lazy", alt: "overlay of " + r.file, "data-open": "1" });
      } },
    { id: "file", label: "file", cls: "file", get: function (r) { return r.file; }, cell: function (r) { return document.createTextNode(r.file); } },
    { id: "class", label: "predicted", get: function (r) { return r.class; }, cell: function (r) { return r.class ? document.createTextNode(r.class) : dash(); } }
  ];
  classes.forEach(function (c, i) {
    columns.push({ id: "p" + i, label: "P(" + c + ")", num: true, get: function (r) { return r.probs ? r.probs[i] : null; },
                   cell: function (r) { return probCell(r.probs ? r.probs[i] : null); } });
  });
  columns.push(
    { id: "gated", label: "gate", get: function (r) { return r.gated === null || r.gated === undefined ? null : (r.gated ? 1 : 0); }, cell: gateCell },
    { id: "margin", label: "gate margin", num: true, title: "P(normal) minus the gate's switch point; positive = gated",
      get: function (r) { return r.margin; }, cell: marginCell },
    { id: "area", label: "lesion area", num: true, get: function (r) { return r.area; }, cell: areaCell },
    { id: "uncertainty", label: "uncertainty", num: true, get: function (r) { return r.uncertainty; }, cell: function (r) { return numCell(3)(r.uncertainty); } },
    { id: "mask_disagreement", label: "mask disagreement", num: true, get: function (r) { return r.mask_disagreement; },
      cell: function (r) { return numCell(3)(r.mask_disagreement); } }
  );
  if (hasTruth || hasTrueClass) {
    columns.push(
      { id: "true_class", label: "true class", get: function (r) { return r.true_class; }, cell: function (r) { return r.true_class ? document.createTextNode(r.true_class) : dash(); } },
      { id: "dice", label: "Dice", num: true, get: function (r) { return r.dice; }, cell: function (r) { return numCell(3)(r.dice); } },
      { id: "iou", label: "IoU", num: true, get: function (r) { return r.iou; }, cell: function (r) { return numCell(3)(r.iou); } }
    );
  }
  columns.push({ id: "flag", label: "flag", get: function (r) { return r.flag ? 1 : 0; }, cls: "flagcell",
                 cell: function (r) { return document.createTextNode(r.flag ? "\u2691 flagged" : ""); } });
  var byId = {};
  columns.forEach(function (c) { byId[c.id] = c; });

  // --- view: filter, sort, page ------------------------------------------------------------------------
  function compare(get, desc) {
    return function (a, b) {
      var x = get(a), y = get(b);
      var xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn || yn) { return xn === yn ? a.index - b.index : (xn ? 1 : -1); }  // empty values last
      var d = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
      if (d === 0) { return a.index - b.index; }
      return desc ? -d : d;
    };
  }
  function computeView() {
    var list = rows.filter(function (r) {
      if (state.cls && r.class !== state.cls) { return false; }
      if (state.gate === "gated" && r.gated !== true) { return false; }
      if (state.gate === "open" && r.gated !== false) { return false; }
      if (state.flag === "flagged" && !r.flag) { return false; }
      if (state.flag === "unflagged" && r.flag) { return false; }
      if (state.cell && (r.true_class !== state.cell[0] || r.class !== state.cell[1])) { return false; }
      return true;
    });
    if (state.sort) { list.sort(compare(byId[state.sort].get, state.desc)); }
    state.view = list;
  }
  function pages() { return Math.max(1, Math.ceil(state.view.length / state.size)); }

  function renderHead() {
    var head = $("head");
    head.textContent = "";
    columns.forEach(function (c) {
      var th = el("th", { "data-col": c.id }, c.label);
      if (c.title) { th.title = c.title; }
      if (c.sortable !== false) {
        th.className = "sortable";
        th.setAttribute("aria-sort", state.sort === c.id ? (state.desc ? "descending" : "ascending") : "none");
        th.addEventListener("click", function () {
          if (state.sort === c.id) { state.desc = !state.desc; } else { state.sort = c.id; state.desc = false; }
          refresh(true);
        });
      }
      head.appendChild(th);
    });
  }
  function renderBody() {
    var body = $("body");
    var start = state.page * state.size;
    var part = state.view.slice(start, start + state.size);
    var frag = document.createDocumentFragment();
    part.forEach(function (r, j) {
      var tr = el("tr", { "data-key": r.key, "data-pos": String(start + j) });
      if (r.flag) { tr.className = "flagged"; }
      if (start + j === state.cursor) { tr.className += " current"; }
      columns.forEach(function (c) {
        var td = el("td", { "data-col": c.id });
        td.className = (c.num ? "num " : "") + (c.cls || "");
        td.appendChild(c.cell(r));
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(frag);
    $("count").textContent = state.view.length + " of " + rows.length + " images" +
      (rows.some(function (r) { return r.flag; }) ? ", " + rows.filter(function (r) { return r.flag; }).length + " flagged" : "");
    $("page-info").textContent = "page " + (state.page + 1) + " of " + pages();
  }
  function refresh(resetPage) {
    var key = state.cursor >= 0 && state.view[state.cursor] ? state.view[state.cursor].key : null;
    computeView();
    if (resetPage) { state.page = 0; }
    state.cursor = key === null ? -1 : state.view.findIndex(function (r) { return r.key === key; });
    if (state.page >= pages()) { state.page = pages() - 1; }
    renderHead();
    renderBody();
    renderMatrix();
  }

  // --- confusion matrix ----------------------------------------------------------------------------------
  function renderMatrix() {
    if (!hasTrueClass || !classes.length) { return; }
    $("matrix-box").hidden = false;
    var table = $("matrix");
    table.textContent = "";
    var head = el("tr");
    head.appendChild(el("th", null, "true \\ predicted"));
    classes.forEach(function (c) { head.appendChild(el("th", null, c)); });
    table.appendChild(head);
    classes.forEach(function (t) {
      var tr = el("tr");
      tr.appendChild(el("th", null, t));
      classes.forEach(function (p) {
        var n = rows.filter(function (r) { return r.true_class === t && r.class === p; }).length;
        var td = el("td", { "data-true": t, "data-pred": p });
        td.className = (t === p ? "diag" : (n ? "off" : "")) +
          (state.cell && state.cell[0] === t && state.cell[1] === p ? " active" : "");
        var button = el("button", { type: "button", title: "show the images of true " + t + " predicted " + p }, String(n));
        button.addEventListener("click", function () {
          state.cell = state.cell && state.cell[0] === t && state.cell[1] === p ? null : [t, p];
          refresh(true);
        });
        td.appendChild(button);
        tr.appendChild(td);
      });
      table.appendChild(tr);
    });
  }

  // --- cursor, flags, detail view --------------------------------------------------------------------------
  function current() { return state.cursor >= 0 ? state.view[state.cursor] : null; }
  function moveTo(pos) {
    if (!state.view.length) { return; }
    state.cursor = Math.max(0, Math.min(state.view.length - 1, pos));
    var page = Math.floor(state.cursor / state.size);
    if (page !== state.page) { state.page = page; }
    renderBody();
    var tr = document.querySelector('#body tr[data-pos="' + state.cursor + '"]');
    if (tr && !state.detail) { tr.scrollIntoView({ block: "nearest" }); }
    if (state.detail) { renderDetail(); }
  }
  function toggleFlag() {
    var r = current();
    if (!r) { return; }
    r.flag = !r.flag;
    saveFlags();
    renderBody();
    if (state.detail) { renderDetail(); }
  }
  function openDetail(pos) {
    if (pos !== undefined) { state.cursor = pos; }
    if (!current()) { moveTo(0); }
    if (!current()) { return; }
    state.detail = true;
    $("detail").hidden = false;
    renderDetail();
  }
  function closeDetail() {
    state.detail = false;
    $("detail").hidden = true;
    moveTo(state.cursor);
  }
  function renderDetail() {
    var r = current();
    if (!r) { return; }
    var withTruth = r.panels === 4;
    $("detail-pos").textContent = (state.cursor + 1) + " / " + state.view.length;
    $("detail-file").textContent = r.file;
    var flag = $("detail-flag");
    flag.textContent = r.flag ? "\u2691 flagged (f)" : "flag (f)";
    flag.className = r.flag ? "on" : "";
    var captions = $("detail-captions");
    captions.textContent = "";
    (withTruth ? ["image", "truth", "prediction", "errors"] : ["image", "prediction"]).forEach(function (t) {
      captions.appendChild(el("span", null, t));
    });
    var image = $("detail-image");
    if (r.detail) { image.src = r.detail; image.hidden = false; } else { image.removeAttribute("src"); image.hidden = true; }
    image.alt = "image, truth, prediction and errors of " + r.file;
    $("detail-problem").hidden = !r.problem;
    $("detail-problem").textContent = r.problem || "";
    var legend = $("detail-legend");
    legend.textContent = "";
    var keys = withTruth ? [["var(--truth)", "true lesion"], ["rgb(255,40,40)", "predicted lesion"],
                            ["var(--fp)", "false positive (predicted, not true)"], ["var(--fn)", "false negative (true, missed)"],
                            ["#f5f5f5", "true positive"]]
                         : [["rgb(255,40,40)", "predicted lesion"]];
    keys.forEach(function (k) {
      legend.appendChild(el("span", { "class": "sw", style: "background:" + k[0] + ";border:1px solid #888" }));
      legend.appendChild(document.createTextNode(k[1]));
    });
    var stats = $("detail-stats");
    stats.textContent = "";
    function stat(label, value) {
      var div = el("div");
      div.appendChild(el("dt", null, label));
      var dd = el("dd");
      dd.appendChild(typeof value === "string" ? document.createTextNode(value) : value);
      div.appendChild(dd);
      stats.appendChild(div);
    }
    stat("predicted class", r.class || "\u2014");
    classes.forEach(function (c, i) { stat("P(" + c + ")", fixed(r.probs ? r.probs[i] : null, 4) || "\u2014"); });
    stat("gate", gateCell(r));
    stat("gate margin", marginCell(r));
    stat("lesion area", areaCell(r));
    stat("lesion pixels", isNum(r.pixels) ? String(r.pixels) : "\u2014");
    stat("uncertainty", fixed(r.uncertainty, 4) || "\u2014");
    stat("mask disagreement", fixed(r.mask_disagreement, 4) || "\u2014");
    if (hasTruth || hasTrueClass) {
      stat("true class", r.true_class || "\u2014");
      stat("Dice", fixed(r.dice, 4) || "\u2014");
      stat("IoU", fixed(r.iou, 4) || "\u2014");
    }
    var note = $("detail-note");
    if (document.activeElement !== note) { note.value = r.note; }
  }

  // --- wiring ----------------------------------------------------------------------------------------------
  function fillHeader() {
    document.title = data.title;
    $("title").textContent = data.title;
    var dl = $("provenance");
    data.provenance.forEach(function (p) { dl.appendChild(el("dt", null, p[0])); dl.appendChild(el("dd", null, p[1])); });
    data.links.forEach(function (l) { $("links").appendChild(el("a", { href: l[1] }, l[0])); });
    data.definitions.forEach(function (d) { $("definitions").appendChild(el("li", null, d)); });
    if (data.skipped.length) {
      $("skipped-title").textContent = data.skipped.length + " skipped file(s)";
      data.skipped.forEach(function (s) { $("skipped").appendChild(el("li", null, s)); });
    } else { $("skipped-box").hidden = true; }
    var select = $("filter-class");
    classes.forEach(function (c) { select.appendChild(el("option", { value: c }, c)); });
  }
  function wire() {
    $("filter-class").addEventListener("change", function (e) { state.cls = e.target.value; refresh(true); });
    $("filter-gate").addEventListener("change", function (e) { state.gate = e.target.value; refresh(true); });
    $("filter-flag").addEventListener("change", function (e) { state.flag = e.target.value; refresh(true); });
    $("page-size").addEventListener("change", function (e) { state.size = parseInt(e.target.value, 10); refresh(true); });
    $("clear-filters").addEventListener("click", function () {
      state.cls = state.gate = state.flag = ""; state.cell = null;
      $("filter-class").value = $("filter-gate").value = $("filter-flag").value = "";
      refresh(true);
    });
    $("prev-page").addEventListener("click", function () { if (state.page > 0) { state.page -= 1; renderBody(); } });
    $("next-page").addEventListener("click", function () { if (state.page < pages() - 1) { state.page += 1; renderBody(); } });
    $("export-flags").addEventListener("click", exportFlags);
    $("detail-close").addEventListener("click", closeDetail);
    $("detail-flag").addEventListener("click", toggleFlag);
    $("detail").addEventListener("click", function (e) { if (e.target === $("detail")) { closeDetail(); } });
    $("detail-note").addEventListener("input", function (e) {
      var r = current();
      if (r) { r.note = e.target.value; saveFlags(); }
    });
    $("body").addEventListener("click", function (e) {
      var tr = e.target.closest("tr");
      if (!tr) { return; }
      var pos = parseInt(tr.getAttribute("data-pos"), 10);
      if (e.target.getAttribute("data-open")) { openDetail(pos); } else { moveTo(pos); }
    });
    $("body").addEventListener("dblclick", function (e) {
      var tr = e.target.closest("tr");
      if (tr) { openDetail(parseInt(tr.getAttribute("data-pos"), 10)); }
    });
    document.addEventListener("keydown", function (e) {
      var tag = (e.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "textarea" || tag === "select") {
        if (e.key === "Escape") { e.target.blur(); }
        return;
      }
      if (e.ctrlKey || e.metaKey || e.altKey) { return; }
      if (e.key === "j") { moveTo(state.cursor < 0 ? 0 : state.cursor + 1); e.preventDefault(); }
      else if (e.key === "k") { moveTo(state.cursor < 0 ? 0 : state.cursor - 1); e.preventDefault(); }
      else if (e.key === "f") { if (state.cursor < 0) { moveTo(0); } toggleFlag(); e.preventDefault(); }
      else if (e.key === "Enter" || e.key === "o") { openDetail(); e.preventDefault(); }
      else if (e.key === "Escape" && state.detail) { closeDetail(); e.preventDefault(); }
    });
  }

  fillHeader();
  wire();
  refresh(true);
  window.dlmiReview = { state: state, rows: rows, flagsCsv: flagsCsv };
  window.dlmiReady = performance.now();
  document.body.setAttribute("data-ready", "1");
})();
