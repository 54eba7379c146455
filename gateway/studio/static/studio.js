// smsguard policy studio: one page, no dependencies. Every answer comes from the studio's API, which runs the
// same code as `gateway policy validate|matrix|check|explain|diff|test`; this script only shows it.
"use strict";
(() => {
  const TOKEN = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const state = {
    files: [],          // [{id, name}]
    texts: {},          // id -> text in the editor
    disk: {},           // id -> text on disk when opened (or last saved)
    versions: {},       // id -> version on disk the edits start from
    active: null,
    diagnostics: [],
    errors: 0,
    matrix: null,
    selectedCell: null,
    reviewed: null,     // JSON of the texts the last review saw
    seq: 0,
  };

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  async function api(path, body) {
    const init = { headers: { "X-Studio-Token": TOKEN }, cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = {};
    try { data = await response.json(); } catch (e) { data = { message: response.statusText }; }
    return { status: response.status, ok: response.ok, data };
  }

  // --- files and the editor --------------------------------------------------------------------------------

  const editor = $("editor");

  function renderFiles() {
    const nav = $("files");
    nav.replaceChildren(...state.files.map((f) => h("button", {
      type: "button",
      class: (f.id === state.active ? "active" : "") + (state.texts[f.id] !== state.disk[f.id] ? " dirty" : ""),
      dataset: { file: f.id },
      onclick: () => openFile(f.id),
    }, f.name)));
  }

  function openFile(id) {
    state.active = id;
    editor.value = state.texts[id];
    editor.scrollTop = 0;
    renderFiles();
    renderLines();
  }

  function renderLines() {
    const count = editor.value.split("\n").length;
    const marks = {};
    for (const d of state.diagnostics) {
      if (d.file !== state.active || !d.line) continue;
      if (marks[d.line] !== "error") marks[d.line] = d.severity;
    }
    const gutter = [], backdrop = [];
    for (let line = 1; line <= count; line++) {
      const mark = marks[line] || "";
      const about = state.diagnostics.filter((d) => d.file === state.active && d.line === line).map((d) => d.text).join("\n");
      gutter.push(h("div", { class: mark, dataset: { line: String(line) }, title: about }, String(line)));
      backdrop.push(h("div", { class: mark }));
    }
    $("gutter").replaceChildren(...gutter);
    $("backdrop").replaceChildren(...backdrop);
    syncScroll();
  }

  function syncScroll() {
    $("gutter").scrollTop = editor.scrollTop;
    $("backdrop").style.transform = `translate(${-editor.scrollLeft}px, ${-editor.scrollTop}px)`;
  }

  function goTo(fileId, line) {
    if (fileId === null || fileId === undefined) return;
    if (fileId !== state.active) openFile(fileId);
    const lines = editor.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, text) => n + text.length + 1, 0);
    editor.focus();
    editor.setSelectionRange(start, start + (lines[line - 1] || "").length);
    const lineHeight = 18;
    editor.scrollTop = Math.max(0, (line - 4) * lineHeight);
    syncScroll();
  }

  let timer = null;
  editor.addEventListener("input", () => {
    state.texts[state.active] = editor.value;
    renderFiles();
    renderLines();
    invalidateReview();
    clearTimeout(timer);
    timer = setTimeout(validate, 300);
  });
  editor.addEventListener("scroll", syncScroll);
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Tab" && !event.shiftKey && !event.ctrlKey) {
      event.preventDefault();
      editor.setRangeText("  ", editor.selectionStart, editor.selectionEnd, "end");
      editor.dispatchEvent(new Event("input"));
    }
  });

  // --- validation -------------------------------------------------------------------------------------------

  async function validate() {
    const seq = ++state.seq;
    const { ok, data } = await api("/api/validate", { texts: state.texts });
    if (seq !== state.seq) return;  // a newer edit is on its way
    if (!ok) {
      setStatus("error", data.message || "validation failed");
      return;
    }
    state.diagnostics = data.diagnostics;
    state.errors = data.errors;
    if (data.errors) setStatus("error", `${data.errors} error${data.errors === 1 ? "" : "s"}, ${data.warnings} warning${data.warnings === 1 ? "" : "s"}`);
    else if (data.warnings) setStatus("warning", `valid, ${data.warnings} warning${data.warnings === 1 ? "" : "s"}`);
    else setStatus("ok", "valid");
    renderDiagnostics();
    renderLines();
    if (data.matrix) {
      state.matrix = data.matrix;
      $("matrix-note").hidden = true;
      renderMatrix();
      renderScopes();
    } else if (state.matrix) {
      const note = $("matrix-note");
      note.textContent = "The edited text does not load: this is the last version that did.";
      note.className = "note stale";
      note.hidden = false;
    }
    updateSave();
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.className = kind;
    status.textContent = text;
  }

  function renderDiagnostics() {
    const list = $("diagnostics");
    if (!state.diagnostics.length) {
      list.replaceChildren(h("li", { class: "clean" }, "No errors or warnings: validated by the same loader as gateway policy validate."));
      return;
    }
    list.replaceChildren(...state.diagnostics.map((d) => h("li", {
      class: d.severity,
      dataset: { file: d.file === null ? "" : d.file, line: String(d.line) },
      title: d.text,
      onclick: () => goTo(d.file, d.line),
    },
    h("span", { class: "where" }, `${d.name}:${d.line}:${d.column}`),
    h("span", { class: "sev" }, d.severity),
    d.key ? `${d.key}: ` : "", d.message,
    d.hint ? h("span", { class: "hint" }, ` (hint: ${d.hint})`) : null)));
  }

  // --- who can do what ---------------------------------------------------------------------------------------

  function renderMatrix() {
    const m = state.matrix;
    const scopeSelect = $("filter-scope"), upstreamSelect = $("filter-upstream");
    const chosenScope = scopeSelect.value, chosenUpstream = upstreamSelect.value;
    scopeSelect.replaceChildren(h("option", { value: "" }, "every scope"), ...m.scopes.map((s) => h("option", { value: s }, s)));
    scopeSelect.value = m.scopes.includes(chosenScope) ? chosenScope : "";
    upstreamSelect.replaceChildren(h("option", { value: "" }, "every upstream"), ...m.upstreams.map((u) => h("option", { value: u }, u)));
    upstreamSelect.value = m.upstreams.includes(chosenUpstream) ? chosenUpstream : "";
    const routeFilter = $("filter-route").value.trim().toLowerCase();
    const scope = scopeSelect.value, upstream = upstreamSelect.value;
    const head = h("tr", {}, h("th", {}, "method"), h("th", {}, "path"),
      ...m.scopes.map((s) => h("th", { class: "scope" + (s === scope ? " chosen" : ""), title: m.vocabulary[s] || "every scope except exact rules" }, s)),
      h("th", {}, "requires"));
    const rows = m.routes.filter((r) =>
      (!routeFilter || `${r.method} ${r.path}`.toLowerCase().includes(routeFilter)) &&
      (!upstream || r.upstream === upstream) &&
      (!scope || r.cells[scope] === true || r.cells[scope] === "public"));
    const body = rows.map((r) => h("tr", {},
      h("td", { class: "method" }, r.method),
      h("td", { class: "route" }, r.path),
      ...m.scopes.map((s) => {
        const cell = r.cells[s];
        const kind = cell === "public" ? "public" : cell ? "yes" : "no";
        const key = `${r.method} ${r.path} ${s}`;
        return h("td", {
          class: `cell ${kind}` + (state.selectedCell === key ? " selected" : ""),
          dataset: { scope: s, method: r.method, path: r.path },
          title: `${s}: ${kind === "no" ? "not enough" : kind === "public" ? "public" : "allowed"}`,
          onclick: () => { state.selectedCell = key; showCell(r, s); renderMatrix(); },
        }, kind === "public" ? "◦" : kind === "yes" ? "✓" : "·");
      }),
      h("td", { class: "requires" }, requirement(r.requires))));
    $("matrix").replaceChildren(h("thead", {}, head), h("tbody", {}, body.length ? body : h("tr", {}, h("td", { colspan: String(m.scopes.length + 3) }, "no route matches the filters"))));
  }

  function requirement(r) {
    let text = r.public ? "public" : r.scopes.length === 1 ? r.scopes[0] : `${r.mode}_of[${r.scopes.join(", ")}]`;
    if (r.exact) text += " (exact)";
    return text;
  }

  function ruleLink(rule) {
    return h("a", { class: "rule", dataset: { file: rule.file === null ? "" : rule.file, line: String(rule.line) }, onclick: () => goTo(rule.file, rule.line) }, rule.label);
  }

  function showCell(route, scope) {
    const cell = route.cells[scope];
    const verdict = cell === "public" ? "anyone, without credentials" : cell ? `a caller holding only ${scope} may call it` : `${scope} alone is not enough`;
    const box = $("cell");
    box.replaceChildren(
      h("div", { class: "verdict " + (cell ? "allow" : "deny") }, `${route.method} ${route.path}`),
      h("dl", {},
        h("dt", {}, "scope"), h("dd", {}, scope),
        h("dt", {}, "answer"), h("dd", {}, verdict),
        h("dt", {}, "requires"), h("dd", {}, requirement(route.requires)),
        h("dt", {}, "rule"), h("dd", { id: "cell-rule" }, ruleLink({ label: route.rule, file: route.file, line: route.line })),
        h("dt", {}, "upstream"), h("dd", {}, route.upstream || "-")));
    box.hidden = false;
  }

  for (const id of ["filter-route", "filter-scope", "filter-upstream"]) {
    $(id).addEventListener("input", () => state.matrix && renderMatrix());
  }

  // --- simulate -----------------------------------------------------------------------------------------------

  function renderScopes() {
    const box = $("sim-scopes");
    const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    box.replaceChildren(...state.matrix.scopes.map((s) => h("label", { title: state.matrix.vocabulary[s] || "superuser: every rule except exact ones" },
      (() => { const input = h("input", { type: "checkbox", value: s }); input.checked = checked.has(s); return input; })(), ` ${s}`)));
  }

  function caller() {
    return document.querySelector("input[name=caller]:checked").value;
  }

  document.querySelectorAll("input[name=caller]").forEach((radio) => radio.addEventListener("change", () => {
    $("sim-scopes").hidden = caller() !== "scopes";
    $("sim-token").hidden = caller() !== "token";
  }));

  $("simulate").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { texts: state.texts, method: $("sim-method").value, path: $("sim-path").value || "/" };
    if (caller() === "scopes") body.scopes = [...$("sim-scopes").querySelectorAll("input:checked")].map((i) => i.value);
    if (caller() === "token") body.token = $("sim-token").value.trim();
    const { ok, data } = await api("/api/simulate", body);
    const box = $("sim-result");
    box.hidden = false;
    if (!ok) {
      box.replaceChildren(h("div", { class: "verdict deny" }, "cannot simulate"), h("p", {}, data.message));
      return;
    }
    const rows = [];
    const add = (name, value) => { if (value !== null && value !== undefined && value !== "") rows.push(h("dt", {}, name), h("dd", {}, value)); };
    add("canonical", data.canonical !== body.path.split("?")[0] ? data.canonical : null);
    add("rule", data.rule ? ruleLink(data.rule) : "no rule matches: 404, nothing is forwarded");
    add("requires", data.requires);
    add("caller", data.principal ? `${data.principal.subject} holding ${data.principal.scopes.join(" ") || "no scope"}` : null);
    add("why", data.allowed ? null : data.message);
    add("forwards to", data.upstream ? `${body.method} ${data.upstream}` : null);
    add("upstream", data.upstream_note);
    add("served by", data.served_by ? `the gateway itself (${data.served_by})` : null);
    if (data.other_methods.length) add("other methods", h("span", {}, ...data.other_methods.map((r) => [ruleLink(r), " "])));
    if (data.nearest.length) add("nearest rules", h("span", {}, ...data.nearest.map((r) => [ruleLink(r), " "])));
    box.replaceChildren(
      h("div", { class: "verdict " + (data.allowed ? "allow" : "deny"), id: "sim-verdict" }, data.allowed ? "ALLOW" : `DENY ${data.outcome}`),
      h("dl", {}, rows),
      h("pre", { title: "what gateway policy check and explain print" }, data.text));
  });

  // --- review and save ----------------------------------------------------------------------------------------

  function invalidateReview() {
    state.reviewed = null;
    updateSave();
  }

  function changedFiles() {
    return state.files.filter((f) => state.texts[f.id] !== state.disk[f.id]);
  }

  function updateSave() {
    const button = $("save");
    const current = state.reviewed !== null && state.reviewed === JSON.stringify(state.texts);
    const changed = changedFiles();
    button.disabled = !current || state.errors > 0 || !changed.length;
    button.textContent = changed.length ? `Save ${changed.map((f) => f.name).join(", ")}` : "Save (nothing changed)";
    if (!current && changed.length) button.title = "review the changes first";
    else button.removeAttribute("title");
  }

  $("review-run").addEventListener("click", async () => {
    const snapshot = JSON.stringify(state.texts);
    const { ok, data } = await api("/api/review", { texts: state.texts });
    const box = $("review");
    box.hidden = false;
    if (!ok) {
      $("diff").replaceChildren(h("li", { class: "removed" }, data.message));
      $("tests").replaceChildren();
      state.reviewed = null;
      updateSave();
      return;
    }
    $("review-note").hidden = !data.note;
    $("review-note").textContent = data.note;
    $("diff").replaceChildren(...(data.changes.length ? data.changes.map((c) => h("li", {
      class: c.became_public ? "public" : c.change,
    }, c.text)) : [h("li", {}, "no access changes")]));
    const tests = data.tests.map((t) => h("div", {},
      h("span", { class: t.failed ? "fail" : "pass" }, `${t.file}: ${t.passed} passed, ${t.failed} failed`),
      t.failures.length ? h("pre", {}, t.failures.join("\n")) : null));
    $("tests").replaceChildren(...(tests.length ? tests : [h("p", { class: "note" }, "no policy tests found for these files")]));
    state.reviewed = snapshot === JSON.stringify(state.texts) ? snapshot : null;
    state.testsFailed = data.tests_failed;
    updateSave();
  });

  $("save").addEventListener("click", async () => {
    const box = $("save-result");
    box.hidden = false;
    box.className = "detail";
    const saved = [];
    for (const f of changedFiles()) {
      const { status, data } = await api("/api/save", { file: f.id, text: state.texts[f.id], base: state.versions[f.id] });
      if (status === 409) return showConflict(f, data, saved);
      if (status !== 200) {
        box.replaceChildren(h("div", { class: "verdict deny" }, `not saved: ${data.message}`));
        return;
      }
      state.disk[f.id] = state.texts[f.id];
      state.versions[f.id] = data.version;
      saved.push(`${f.name} (previous version kept as ${data.previous})`);
    }
    box.className = "detail saved";
    box.replaceChildren(h("div", { class: "verdict allow", id: "save-verdict" }, "saved"), h("p", {}, `Written atomically: ${saved.join(", ")}. A gateway watching the file reloads it.`));
    renderFiles();
    invalidateReview();
  });

  function showConflict(file, data, saved) {
    const box = $("save-result");
    box.className = "detail conflict";
    box.replaceChildren(
      h("div", { class: "verdict deny", id: "save-verdict" }, "conflict: nothing was overwritten"),
      h("p", {}, data.message + (saved.length ? ` (saved before it: ${saved.join(", ")})` : "")),
      h("pre", {}, data.disk_text),
      h("button", { type: "button", id: "conflict-reload", onclick: () => {
        state.texts[file.id] = state.disk[file.id] = data.disk_text;
        state.versions[file.id] = data.disk_version;
        openFile(file.id);
        invalidateReview();
        validate();
        box.hidden = true;
      } }, "Discard my edit, load the disk version"),
      " ",
      h("button", { type: "button", id: "conflict-keep", onclick: () => {
        state.disk[file.id] = data.disk_text;
        state.versions[file.id] = data.disk_version;
        renderFiles();
        invalidateReview();
        box.replaceChildren(h("p", {}, "Your text is kept: review it against the disk version, then save to replace it."));
      } }, "Keep mine (review again, then save over it)"));
    invalidateReview();
  }

  // --- tabs and start --------------------------------------------------------------------------------------------

  document.querySelectorAll("#tabs button").forEach((tab) => tab.addEventListener("click", () => {
    document.querySelectorAll("#tabs button").forEach((other) => other.classList.toggle("active", other === tab));
    document.querySelectorAll(".panel").forEach((panel) => { panel.hidden = panel.id !== `panel-${tab.dataset.panel}`; });
  }));

  async function start() {
    const { ok, data } = await api("/api/files");
    if (!ok) {
      setStatus("error", data.message);
      return;
    }
    state.files = data.files.map((f) => ({ id: f.id, name: f.name }));
    for (const f of data.files) {
      state.texts[f.id] = state.disk[f.id] = f.text;
      state.versions[f.id] = f.version;
    }
    if (!data.tokens) {
      const token = document.querySelector("input[name=caller][value=token]");
      token.disabled = true;
      token.parentElement.title = "start the studio with --config to verify tokens with its issuers";
    }
    openFile(state.files[0].id);
    await validate();
    const first = state.matrix && state.matrix.routes.find((r) => !r.requires.public);
    if (first && !$("sim-path").value) $("sim-path").value = first.path.replace(/\{[^/}]*\}/g, "x");
    document.body.dataset.ready = "true";
  }

  start();
})();
