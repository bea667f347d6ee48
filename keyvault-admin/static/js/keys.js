// The key list: toggles and batch actions without a reload (the forms work without this
// script too), and the selection count.

const { notify, send, t } = window.kv;

function setStatus(row, r) {
  const badge = row?.querySelector("[data-testid=key-status]");
  if (!badge || !r.status) return;
  badge.className = `badge ${r.badge}`;
  badge.dataset.status = r.status;
  badge.textContent = r.status_label;
}

function initToggles() {
  for (const form of document.querySelectorAll("form[data-toggle]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const button = form.querySelector("button");
      const field = form.querySelector("input[name=enabled]");
      button.disabled = true;
      const { ok, data } = await send("POST", form.getAttribute("action"), { enabled: field.value === "true" });
      button.disabled = false;
      if (!ok) {
        notify(data?.detail || t("toggle_failed"), "danger");
        return;
      }
      setStatus(form.closest("tr"), data);
      field.value = data.enabled ? "false" : "true";
      button.textContent = data.action_label;
      button.classList.toggle("btn-outline-danger", data.enabled);
      button.classList.toggle("btn-outline-success", !data.enabled);
      notify(`${data.status_label}`, "success");
    });
  }
}

function selected() {
  return [...document.querySelectorAll("[data-testid=key-select]:checked")];
}

function initSelection() {
  const count = document.querySelector("[data-selected-count]");
  const update = () => {
    if (count) count.textContent = selected().length ? `${selected().length} ✓` : "";
  };
  document.querySelector("[data-select-all]")?.addEventListener("change", (ev) => {
    for (const box of document.querySelectorAll("[data-testid=key-select]")) box.checked = ev.target.checked;
    update();
  });
  for (const box of document.querySelectorAll("[data-testid=key-select]")) box.addEventListener("change", update);
}

function showResults(results) {
  const box = document.querySelector("[data-batch-results-live]");
  box.replaceChildren();
  const card = document.createElement("div");
  card.className = "card mb-3";
  card.dataset.testid = "batch-results";
  const body = document.createElement("div");
  body.className = "card-body";
  const list = document.createElement("ul");
  list.className = "list-unstyled mb-0";
  for (const r of results) {
    const li = document.createElement("li");
    li.dataset.testid = "batch-result";
    li.dataset.keyId = r.id;
    li.dataset.ok = String(r.ok);
    const badge = document.createElement("span");
    badge.className = `badge ${r.ok ? "text-bg-success" : "text-bg-danger"} me-1`;
    badge.textContent = r.ok ? "✓" : "✗";
    li.append(badge, `${r.name || r.id} — ${r.message}`);
    list.append(li);
  }
  body.append(list);
  card.append(body);
  box.append(card);
}

function initBatch() {
  const form = document.querySelector("form[data-batch]");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const ids = selected().map((b) => b.value);
    if (!ids.length) {
      notify(t("select_keys"), "warning");
      return;
    }
    const action = form.querySelector("[name=action]").value;
    if (action === "delete" && !window.confirm(form.dataset.confirmDelete)) return;
    // `form.action` would be the select named "action", not the URL.
    const { ok, data } = await send("POST", form.getAttribute("action"), { action, ids });
    if (!ok) {
      notify(data?.detail || t("toggle_failed"), "danger");
      return;
    }
    showResults(data.results);
    for (const r of data.results) {
      const row = document.querySelector(`tr[data-key-id="${CSS.escape(r.id)}"]`);
      if (!row || !r.ok) continue;
      if (action === "delete") {
        row.remove();
        continue;
      }
      setStatus(row, r);
      const toggle = row.querySelector("form[data-toggle]");
      if (toggle) {
        const enabled = action === "enable";
        toggle.querySelector("input[name=enabled]").value = enabled ? "false" : "true";
        const button = toggle.querySelector("button");
        button.textContent = t(enabled ? "disable" : "enable");
        button.classList.toggle("btn-outline-danger", enabled);
        button.classList.toggle("btn-outline-success", !enabled);
      }
      row.querySelector("[data-testid=key-select]").checked = false;
    }
  });
}

initToggles();
initSelection();
initBatch();
