// What every dashboard page shares: the colour-mode switch, the language switch, times in
// the browser's time zone, copy buttons, and `kv.send` for changes made by script (the
// session's CSRF token in `X-CSRF-Token`, JSON both ways).

const body = document.body;
const messages = JSON.parse(document.getElementById("kv-messages")?.textContent || "{}");

/** The message `key` of the page's language (the `js.` part of the catalogue). */
function t(key) {
  return messages[key] ?? key;
}

const lang = body.dataset.lang || "en";
const numbers = new Intl.NumberFormat(lang);

/** A whole number grouped as the page's language writes it. */
function num(n) {
  return numbers.format(n);
}

/** A fraction as a percentage with one decimal; a dash without one. */
function percent(rate) {
  return rate == null ? "–" : `${(rate * 100).toFixed(1)}%`;
}

/** Milliseconds to three significant figures at most, as the server writes them. */
function ms(v) {
  if (v == null) return "–";
  if (v >= 100) return `${v.toFixed(0)} ms`;
  if (v >= 10) return `${v.toFixed(1)} ms`;
  return `${v.toFixed(2)} ms`;
}

/** A time in the browser's time zone. */
function localTime(iso, withSeconds = false) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(lang, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: withSeconds ? "2-digit" : undefined,
  });
}

/**
 * A change by script: `method` on `path` (under the mount prefix) with a JSON body.
 * Resolves to `{ ok, status, data }`; never throws for an HTTP error.
 */
async function send(method, path, payload) {
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/json",
      "X-CSRF-Token": body.dataset.csrf,
    },
    body: payload === undefined ? undefined : JSON.stringify(payload),
  });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  return { ok: res.ok, status: res.status, data };
}

/** A short notice at the bottom of the page, read out by screen readers. */
function notify(text, kind = "secondary") {
  let box = document.getElementById("kv-notice");
  if (!box) {
    box = document.createElement("div");
    box.id = "kv-notice";
    box.className = "position-fixed bottom-0 end-0 p-3";
    box.setAttribute("aria-live", "polite");
    body.append(box);
  }
  const note = document.createElement("div");
  note.className = `alert alert-${kind} py-2 px-3 mb-2 shadow-sm`;
  note.textContent = text;
  box.append(note);
  setTimeout(() => note.remove(), 4000);
}

function setTheme(choice) {
  if (choice === "auto") localStorage.removeItem("kv-theme");
  else localStorage.setItem("kv-theme", choice);
  const dark = window.matchMedia("(prefers-color-scheme: dark)").matches;
  const theme = choice === "auto" ? (dark ? "dark" : "light") : choice;
  document.documentElement.setAttribute("data-bs-theme", theme);
  for (const b of document.querySelectorAll("[data-theme-value]")) {
    b.setAttribute("aria-pressed", String(b.dataset.themeValue === choice));
    b.classList.toggle("active", b.dataset.themeValue === choice);
  }
  document.dispatchEvent(new CustomEvent("kv:theme"));
}

function initTheme() {
  const stored = localStorage.getItem("kv-theme") || "auto";
  for (const b of document.querySelectorAll("[data-theme-value]")) {
    b.addEventListener("click", () => setTheme(b.dataset.themeValue));
  }
  setTheme(stored);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (!localStorage.getItem("kv-theme")) setTheme("auto");
  });
}

function initAutosubmit() {
  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    for (const el of form.querySelectorAll("select")) {
      el.addEventListener("change", () => form.requestSubmit());
    }
  }
}

/** Every `<time datetime>` shows its instant in the browser's time zone. */
function localiseTimes(root = document) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    if (el.dataset.keep !== undefined) continue;
    el.title = el.getAttribute("datetime");
    el.textContent = localTime(el.getAttribute("datetime"), el.dataset.seconds !== undefined);
  }
}

/** A custom range's inputs hold local times; the form sends the browser's offset. */
function initLocalRange() {
  const pad = (n) => String(n).padStart(2, "0");
  for (const form of document.querySelectorAll("form[data-local-range], form[data-local-form]")) {
    for (const input of form.querySelectorAll("input[data-utc]")) {
      const d = new Date(input.dataset.utc);
      if (!Number.isNaN(d.getTime())) {
        input.value = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
      }
    }
    const tz = form.querySelector("input[name=tz]");
    if (tz) tz.value = String(new Date().getTimezoneOffset());
  }
}

function initCopy() {
  for (const btn of document.querySelectorAll("[data-copy]")) {
    btn.addEventListener("click", async () => {
      const source = document.getElementById(btn.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        notify(t("copied"), "success");
      } catch {
        const range = document.createRange();
        range.selectNodeContents(source);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        notify(t("copy_failed"), "warning");
      }
    });
  }
}

/** Buttons that ask before their form is sent (`data-confirm="message"`). */
function initConfirm() {
  for (const el of document.querySelectorAll("form[data-confirm]")) {
    el.addEventListener("submit", (ev) => {
      if (!window.confirm(el.dataset.confirm)) ev.preventDefault();
    });
  }
}

/** Progress bars take their width from `aria-valuenow` (no inline style under the CSP). */
function initProgress() {
  for (const bar of document.querySelectorAll(".progress[aria-valuenow]")) {
    const inner = bar.querySelector(".progress-bar");
    if (inner) inner.style.width = `${Number(bar.getAttribute("aria-valuenow")) || 0}%`;
  }
}

// The page scripts (classic deferred modules after this one) use these through `window.kv`:
// an `import` would name this file without its content hash.
window.kv = { t, lang, num, percent, ms, localTime, send, notify, localiseTimes };

initTheme();
initProgress();
initAutosubmit();
initLocalRange();
localiseTimes();
initCopy();
initConfirm();
