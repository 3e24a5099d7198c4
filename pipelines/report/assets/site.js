/* citylake governance report: draws the charts (vendored Chart.js) and filters the catalog table.
   No network access: the data is in the page (data-chart attributes, table rows). */
(function () {
  "use strict";
  var FONT = '"Microsoft YaHei", "PingFang SC", "Noto Sans CJK SC", "Source Han Sans SC", sans-serif';
  var COLORS = { "总体": "#123a6b", "规范性": "#1d4ed8", "完整性": "#0f766e", "准确性": "#b45309",
                 "一致性": "#7c3aed", "时效性": "#be123c", "可访问性": "#4d7c0f" };

  function drawCharts() {
    var canvases = document.querySelectorAll("canvas.chart");
    if (!canvases.length) { return; }
    if (typeof Chart === "undefined") { return; }
    Chart.defaults.font.family = FONT;
    Chart.defaults.animation = false;
    canvases.forEach(function (canvas) {
      var spec = JSON.parse(canvas.getAttribute("data-chart"));
      var datasets = Object.keys(spec.series).map(function (name) {
        return { label: name, data: spec.series[name], borderColor: COLORS[name] || "#475569",
                 backgroundColor: COLORS[name] || "#475569", borderWidth: name === "总体" ? 3 : 1.5,
                 pointRadius: 2, spanGaps: false, tension: 0.2 };  // a day without results stays blank, as the page says
      });
      new Chart(canvas, {
        type: "line",
        data: { labels: spec.labels, datasets: datasets },
        options: {
          responsive: true, maintainAspectRatio: false,
          scales: { y: { suggestedMin: 80, max: 100, title: { display: true, text: "得分 (%)" } },
                    x: { title: { display: true, text: "日期 (北京时间)" } } },
          plugins: { legend: { position: "bottom" },
                     tooltip: { callbacks: { label: function (c) {
                       return c.dataset.label + ": " + (c.parsed.y === null ? "—" : c.parsed.y.toFixed(2) + "%");
                     } } } }
        }
      });
      canvas.setAttribute("data-drawn", "1");
    });
  }

  function filterCatalog() {
    var table = document.getElementById("catalog-table");
    if (!table) { return; }
    var search = document.getElementById("catalog-search");
    var selects = document.querySelectorAll("select[data-filter]");
    var counter = document.getElementById("catalog-count");
    function apply() {
      var words = (search ? search.value : "").trim().toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var text = (row.getAttribute("data-search") || row.textContent).toLowerCase();
        var ok = words.every(function (w) { return text.indexOf(w) !== -1; });
        selects.forEach(function (s) {
          if (s.value && row.getAttribute("data-" + s.getAttribute("data-filter")) !== s.value) { ok = false; }
        });
        row.hidden = !ok;
        if (ok) { shown += 1; }
      });
      if (counter) { counter.textContent = String(shown); }
    }
    if (search) { search.addEventListener("input", apply); }
    selects.forEach(function (s) { s.addEventListener("change", apply); });
    apply();
  }

  function start() { drawCharts(); filterCatalog(); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
