// The system log page: its rows redrawn every 2 seconds from `/admin/api/logs` (newest
// first), until paused; a hidden tab asks less often.

const { localTime, t } = window.kv;

const tbody = document.querySelector("[data-log-rows]");
const empty = document.querySelector("[data-log-empty]");
const pause = document.querySelector("[data-log-pause]");
const badge = document.querySelector("[data-live-badge]");
const POLL_MS = 2000;
const BADGES = { error: "text-bg-danger", warn: "text-bg-warning" };
let paused = false;

function cell(tr, className, child) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.append(child);
  tr.append(td);
}

function code(text) {
  const c = document.createElement("code");
  c.textContent = text;
  return c;
}

function row(r) {
  const tr = document.createElement("tr");
  tr.dataset.testid = "log-row";
  tr.dataset.level = r.level;
  const time = document.createElement("time");
  time.dateTime = r.ts;
  time.title = r.ts;
  time.textContent = localTime(r.ts, true);
  cell(tr, "kv-nowrap small", time);
  const level = document.createElement("span");
  level.className = `badge ${BADGES[r.level] ?? "text-bg-secondary"}`;
  level.textContent = r.level;
  cell(tr, "", level);
  cell(tr, "small", code(r.target));
  cell(tr, "", document.createTextNode(r.message));
  cell(tr, "kv-wrap small", code(r.fields));
  return tr;
}

async function refresh() {
  try {
    const res = await fetch(tbody.dataset.src, { credentials: "same-origin",
      headers: { Accept: "application/json" } });
    if (res.status === 401) {
      window.location.reload();
      return;
    }
    if (!res.ok) throw new Error(String(res.status));
    const data = await res.json();
    tbody.replaceChildren(...data.items.map(row));
    empty.hidden = data.items.length > 0;
    tbody.dataset.updated = new Date().toISOString();
    badge?.classList.replace("text-bg-warning", "text-bg-success");
  } catch {
    badge?.classList.replace("text-bg-success", "text-bg-warning");
    if (badge) badge.title = t("offline");
  }
}

async function loop() {
  if (!paused) await refresh();
  setTimeout(loop, document.hidden ? POLL_MS * 5 : POLL_MS);
}

if (tbody) {
  pause.hidden = false;
  if (badge) badge.hidden = false;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? t("resume") : t("pause");
    badge?.classList.toggle("text-bg-success", !paused);
    badge?.classList.toggle("text-bg-secondary", paused);
  });
  setTimeout(loop, POLL_MS);
}
