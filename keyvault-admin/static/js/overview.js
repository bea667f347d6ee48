// The overview's charts and live figures: everything from `/admin/api/overview` (the same
// statistics as `/v1/stats/overview`), redrawn every 2 seconds while the range is a preset.

const { lang, ms, num, percent, t } = window.kv;

const root = document.querySelector("[data-overview]");
const POLL_MS = 2000;
const charts = {};

function colours() {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  return {
    text: v("--bs-body-color"),
    grid: v("--bs-border-color-translucent") || v("--bs-border-color"),
    primary: v("--bs-primary"),
    danger: v("--bs-danger"),
    palette: [v("--bs-primary"), v("--bs-success"), v("--bs-warning"), v("--bs-info"),
      v("--bs-danger"), v("--bs-secondary"), "#6f42c1", "#fd7e14", "#20c997", "#d63384"],
  };
}

function axisLabel(iso, spanHours) {
  const d = new Date(iso);
  const opts = spanHours > 48
    ? { month: "2-digit", day: "2-digit", hour: "2-digit" }
    : { hour: "2-digit", minute: "2-digit" };
  return d.toLocaleString(lang, opts);
}

function baseOptions(c) {
  return {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    plugins: { legend: { labels: { color: c.text } } },
    scales: {
      x: { ticks: { color: c.text, maxRotation: 0, autoSkip: true }, grid: { color: c.grid } },
      y: { beginAtZero: true, ticks: { color: c.text, precision: 0 }, grid: { color: c.grid } },
    },
  };
}

function draw(data) {
  const c = colours();
  const span = (new Date(data.to ?? Date.now()) - new Date(data.from ?? 0)) / 3.6e6;
  const series = data.timeseries ?? [];
  const sets = {
    calls: {
      type: "line",
      data: {
        labels: series.map((p) => axisLabel(p.ts, series.length > 1 ? span : 1)),
        datasets: [
          { label: t("calls"), data: series.map((p) => p.calls), borderColor: c.primary,
            backgroundColor: c.primary, pointRadius: 0, tension: 0.2 },
          { label: t("errors"), data: series.map((p) => p.errors), borderColor: c.danger,
            backgroundColor: c.danger, pointRadius: 0, tension: 0.2 },
        ],
      },
      options: baseOptions(c),
    },
    providers: {
      type: "doughnut",
      data: {
        labels: (data.by_provider ?? []).map((p) => p.provider),
        datasets: [{ data: (data.by_provider ?? []).map((p) => p.calls),
          backgroundColor: c.palette, borderWidth: 0 }],
      },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { legend: { position: "bottom", labels: { color: c.text } } } },
    },
    latency: {
      type: "bar",
      data: {
        labels: ["p50", "p95", "p99"],
        datasets: [{ label: "ms", data: ["p50", "p95", "p99"].map((k) => data.latency_ms?.[k] ?? 0),
          backgroundColor: [c.palette[1], c.palette[2], c.palette[4]] }],
      },
      options: { ...baseOptions(c), plugins: { legend: { display: false } } },
    },
  };
  for (const canvas of root.parentElement.querySelectorAll("canvas[data-chart]")) {
    const name = canvas.dataset.chart;
    const spec = sets[name];
    if (!spec) continue;
    const chart = charts[name];
    if (chart && chart.config.type === spec.type) {
      chart.data = spec.data;
      chart.options = spec.options;
      chart.update("none");
    } else {
      chart?.destroy();
      charts[name] = new window.Chart(canvas, spec);
    }
    canvas.dataset.points = JSON.stringify(spec.data.datasets.map((d) => d.data));
    canvas.dataset.drawn = "true";
    // When it was first drawn, from the start of the navigation (the sign-in's submission
    // when it led here): what the browser test reports as the page's speed.
    if (!canvas.dataset.drawnMs) canvas.dataset.drawnMs = String(Math.round(performance.now()));
  }
}

function kpis(data) {
  const set = (name, text) => {
    const el = root.querySelector(`[data-kpi="${name}"]`);
    if (el && text != null) el.textContent = text;
  };
  set("calls", num(data.calls));
  set("success_rate", percent(data.success_rate));
  set("p50", ms(data.latency_ms?.p50));
  set("p95", ms(data.latency_ms?.p95));
  set("p99", ms(data.latency_ms?.p99));
}

let last = null;
async function refresh() {
  try {
    const res = await fetch(root.dataset.src, { credentials: "same-origin",
      headers: { Accept: "application/json" } });
    if (res.status === 401) {
      window.location.reload();
      return;
    }
    if (!res.ok) throw new Error(String(res.status));
    const data = await res.json();
    last = data;
    kpis(data);
    draw(data);
    root.dataset.updated = new Date().toISOString();
    document.querySelector("[data-live-badge]")?.classList.replace("text-bg-warning", "text-bg-success");
  } catch {
    const badge = document.querySelector("[data-live-badge]");
    if (badge) {
      badge.classList.replace("text-bg-success", "text-bg-warning");
      badge.title = t("offline");
    }
  }
}

async function loop() {
  await refresh();
  if (root.dataset.live === "true") setTimeout(loop, document.hidden ? POLL_MS * 5 : POLL_MS);
}

function start() {
  if (!window.Chart) {
    setTimeout(start, 20);
    return;
  }
  loop();
  document.addEventListener("kv:theme", () => last && draw(last));
}

if (root) start();
