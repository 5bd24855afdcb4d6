// Topic page charts: uPlot over the roll-up series, refreshed every 10 s.
(function () {
  const box = document.getElementById("charts");
  if (!box || typeof uPlot === "undefined") return;
  const url = box.dataset.url;
  const width = () => Math.max(360, Math.floor(box.clientWidth / 3) - 24);
  const specs = {
    throughput: { series: [{}, { label: "events/s", stroke: "#1565c0", fill: "rgba(21,101,192,.1)" }],
                  columns: (d) => [d.times, d.events_per_s] },
    latency: { series: [{}, { label: "p50", stroke: "#2e7d32" }, { label: "p99", stroke: "#c62828" }],
               columns: (d) => [d.times, d.p50_ms, d.p99_ms] },
    lost: { series: [{}, { label: "lost", stroke: "#c62828", fill: "rgba(198,40,40,.15)" }],
            columns: (d) => [d.times, d.lost] },
  };
  const plots = {};
  let xrange = [0, 1];
  // From the first window shown to now: one window on its own would otherwise span years.
  function span(data) {
    const now = Date.now() / 1000;
    const first = data.times.length ? data.times[0] : now - data.window_s;
    return [Math.min(first, now - data.window_s), now + data.window_s / 2];
  }
  function draw(data) {
    xrange = span(data);
    for (const [name, spec] of Object.entries(specs)) {
      const columns = spec.columns(data);
      if (plots[name]) { plots[name].setData(columns); continue; }
      plots[name] = new uPlot({ width: width(), height: 200, series: spec.series,
                                scales: { x: { time: true, range: () => xrange } } },
                              columns, document.getElementById("chart-" + name));
    }
  }
  function load() {
    fetch(url, { credentials: "same-origin" }).then((r) => r.json()).then(draw);
  }
  load();
  setInterval(load, 10000);
})();
