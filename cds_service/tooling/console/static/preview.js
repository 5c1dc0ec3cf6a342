// Card preview: build a request (server: context + full prefetch from the discovery templates),
// send it to the REAL CDS Hooks endpoint, render the cards like an EHR, post real feedback.
import {
  clear, el, errorText, externalLink, getJSON, postJSON, pretty, setSanitizedHtml,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const INDICATORS = {
  critical: { label: "Critical", icon: "⛔" },
  warning: { label: "Warning", icon: "⚠" },
  info: { label: "Info", icon: "ℹ" },
};

const state = {
  fixtures: [],
  hooks: [],
  presets: [],
  reasons: [],
  source: "fixture",
  fixture: null, // the selected fixture listing
  bundle: null, // parsed pasted Bundle (kept in this page only)
  bundleInfo: null,
  hook: "patient-view",
  orders: [], // {kind: "ref"|"compose", reference?, preset?, reason?, display, expect, selected}
  feedbackLog: [],
};

function setStatus(text, kind = "") {
  const node = $("run-status");
  node.textContent = text;
  node.className = `run-status ${kind}`;
}

// ---------------------------------------------------------------------------------------------
// Pickers
// ---------------------------------------------------------------------------------------------

function describePatient(patient) {
  const age = patient.age === null || patient.age === undefined ? "age unknown" : `${patient.age} y`;
  return `${patient.gender}, ${age}${patient.birthDate ? ` (born ${patient.birthDate})` : ""} · Patient/${patient.id}`;
}

function showPatient(patient, extra) {
  $("patient-card").hidden = !patient;
  if (!patient) return;
  $("patient-name").textContent = patient.name;
  $("patient-meta").textContent = describePatient(patient) + (extra ? ` · ${extra}` : "");
}

function fillFixtures() {
  const select = $("fixture-select");
  clear(select);
  if (!state.fixtures.length) {
    select.append(el("option", { value: "", text: "No fixtures installed: paste a Bundle" }));
    select.disabled = true;
    return;
  }
  for (const f of state.fixtures) {
    const age = f.patient.age === null ? "" : `, ${f.patient.age} y`;
    select.append(el("option", { value: f.slug, text: `${f.slug} — ${f.patient.gender}${age}` }));
  }
}

function fillHooks() {
  const box = $("hook-choices");
  clear(box);
  for (const h of state.hooks) {
    const input = el("input", { type: "radio", name: "hook", value: h.hook, checked: h.hook === state.hook });
    input.addEventListener("change", () => selectHook(h.hook));
    box.append(el("label", { title: `POST /cds-services/${h.serviceId}` }, input, ` ${h.hook}`));
  }
}

function fillComposer() {
  const presets = $("compose-preset");
  const reasons = $("compose-reason");
  clear(presets);
  clear(reasons);
  for (const p of state.presets) presets.append(el("option", { value: p.key, text: `${p.display} (CPT ${p.code})` }));
  for (const r of state.reasons) reasons.append(el("option", { value: r.key, text: `Reason: ${r.display}` }));
}

function selectFixture(slug, selectedRefs) {
  state.fixture = state.fixtures.find((f) => f.slug === slug) || null;
  $("fixture-description").textContent = state.fixture ? state.fixture.description : "";
  showPatient(state.fixture && state.fixture.patient, state.fixture ? `dates shifted to ${state.shiftedTo}` : "");
  const chosen = selectedRefs || (state.fixture ? state.fixture.selected : []);
  state.orders = (state.fixture ? state.fixture.orders : []).map((o) => ({
    kind: "ref", reference: o.reference, display: o.display, expect: o.expect, selected: chosen.includes(o.reference),
  }));
  renderOrders();
}

function selectSource(source) {
  state.source = source;
  $("fixture-source").hidden = source !== "fixture";
  $("bundle-source").hidden = source !== "bundle";
  for (const input of document.querySelectorAll("input[name=source]")) input.checked = input.value === source;
  if (source === "fixture") {
    selectFixture($("fixture-select").value);
  } else {
    showPatient(state.bundleInfo && state.bundleInfo.patient, state.bundleInfo ? "pasted Bundle" : "");
    state.orders = state.bundleInfo ? bundleOrders(state.bundleInfo) : [];
    renderOrders();
  }
}

function selectHook(hook) {
  state.hook = hook;
  for (const input of document.querySelectorAll("input[name=hook]")) input.checked = input.value === hook;
  $("orders-fieldset").hidden = hook === "patient-view";
  renderOrders();
}

function bundleOrders(info) {
  return info.orders.map((o) => ({ kind: "ref", reference: o.reference, display: o.display, expect: null, selected: true }));
}

function renderOrders() {
  const list = $("order-list");
  clear(list);
  const sign = state.hook === "order-sign";
  $("orders-hint").textContent = sign
    ? "order-sign checks every draft order below."
    : "Tick the orders the clinician has selected; the others are sent as unselected draft orders.";
  if (!state.orders.length) list.append(el("li", { class: "empty", text: "No draft orders: compose one below." }));
  state.orders.forEach((order, index) => {
    const box = el("input", { type: "checkbox", checked: order.selected, disabled: sign, "aria-label": `Selected: ${order.display}` });
    box.addEventListener("change", () => { order.selected = box.checked; });
    const expect = order.expect === null || order.expect === undefined ? null
      : el("span", { class: "chip subtle", title: "card topics the fixture expects for this order" },
        order.expect.length ? `expects ${order.expect.join(", ")}` : "expects no card");
    const item = el("li", { class: "order", dataset: { reference: order.reference || "" } },
      el("label", {}, box, " ", el("span", { class: "order-display", text: order.display })),
      order.kind === "compose" ? el("span", { class: "chip subtle", text: "composed" }) : expect);
    if (order.kind === "compose") {
      const remove = el("button", { type: "button", class: "link-button", text: "Remove", "aria-label": `Remove ${order.display}` });
      remove.addEventListener("click", () => { state.orders.splice(index, 1); renderOrders(); });
      item.append(remove);
    }
    list.append(item);
  });
}

function composeOrder() {
  const preset = state.presets.find((p) => p.key === $("compose-preset").value);
  const reason = state.reasons.find((r) => r.key === $("compose-reason").value);
  if (!preset) return;
  state.orders.push({
    kind: "compose", preset: preset.key, reason: reason ? reason.key : "none",
    display: `${preset.display} — ${reason ? reason.display : "no reason"}`, expect: null, selected: true,
  });
  renderOrders();
}

async function loadBundle() {
  const text = $("bundle-text").value.trim();
  state.bundle = null;
  state.bundleInfo = null;
  if (!text) {
    setStatus("Paste a Bundle or choose a file first.", "error");
    return false;
  }
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    setStatus(`Not valid JSON: ${error.message}`, "error");
    return false;
  }
  const result = await postJSON("/console/api/bundle", { bundle: parsed });
  if (!result.ok) {
    setStatus(errorText(result), "error");
    showPatient(null);
    return false;
  }
  state.bundle = parsed;
  state.bundleInfo = result.body;
  const counts = Object.entries(result.body.resourceCounts).map(([k, v]) => `${v} ${k}`).join(", ");
  showPatient(result.body.patient, counts);
  state.orders = bundleOrders(result.body);
  renderOrders();
  setStatus("Bundle loaded (kept in this page only).", "ok");
  return true;
}

function readFile(file) {
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    $("bundle-text").value = String(reader.result || "");
    loadBundle();
  });
  reader.addEventListener("error", () => setStatus("The file could not be read.", "error"));
  reader.readAsText(file);
}

// ---------------------------------------------------------------------------------------------
// Running the hook
// ---------------------------------------------------------------------------------------------

function ordersPayload() {
  return state.orders.map((o) => (o.kind === "ref"
    ? { reference: o.reference, selected: o.selected }
    : { preset: o.preset, reason: o.reason, selected: o.selected }));
}

function showRaw(id, metaId, value, meta) {
  $(id).textContent = typeof value === "string" ? value : pretty(value);
  $(metaId).textContent = meta || "";
}

async function run(event) {
  if (event) event.preventDefault();
  const button = $("run-button");
  button.disabled = true;
  setStatus("Building the request…");
  try {
    const body = { hook: state.hook };
    if (state.hook !== "patient-view") body.orders = ordersPayload();
    if (state.source === "bundle") {
      if (!state.bundle && !(await loadBundle())) return;
      body.bundle = state.bundle;
    } else {
      if (!state.fixture) { setStatus("Pick a fixture first.", "error"); return; }
      body.fixture = state.fixture.slug;
    }
    const built = await postJSON("/console/api/request", body);
    if (!built.ok) { setStatus(errorText(built), "error"); return; }
    const { serviceId, request: hookRequest, expected } = built.body;
    const requestText = JSON.stringify(hookRequest);
    const prefetchKeys = Object.keys(hookRequest.prefetch || {}).length;
    showRaw("raw-request", "raw-request-meta", hookRequest,
      `POST /cds-services/${serviceId} · ${prefetchKeys} prefetch keys · ${(requestText.length / 1024).toFixed(1)} KB`);

    setStatus(`Calling ${serviceId}…`);
    const answer = await postJSON(`/cds-services/${encodeURIComponent(serviceId)}`, requestText);
    showRaw("raw-response", "raw-response-meta", answer.body,
      `HTTP ${answer.status} · ${answer.ms} ms · X-Request-ID ${answer.requestId}`);
    if (!answer.ok) {
      renderError(errorText(answer));
      setStatus(`The service answered ${errorText(answer)}`, "error");
      return;
    }
    const cards = (answer.body && answer.body.cards) || [];
    const markdown = await postJSON("/console/api/markdown", { texts: cards.map((c) => c.detail || "") });
    if (!markdown.ok) { setStatus(errorText(markdown), "error"); return; }
    renderCards(cards, markdown.body.html, serviceId);
    renderExpectation(expected, cards);
    setStatus(`${cards.length} card${cards.length === 1 ? "" : "s"} · HTTP ${answer.status} in ${answer.ms} ms`, "ok");
  } finally {
    button.disabled = false;
  }
}

function renderError(text) {
  const box = $("cards");
  clear(box);
  box.append(el("p", { class: "error-box", text }));
  $("expectation").hidden = true;
}

function topicOf(card) {
  return (card.source && card.source.topic && card.source.topic.code) || "?";
}

function renderExpectation(expected, cards) {
  const box = $("expectation");
  clear(box);
  if (!expected) {
    box.hidden = false;
    box.className = "expectation neutral";
    box.append("No expectation (pasted Bundle or composed order)");
    return;
  }
  const actual = cards.map(topicOf).sort();
  const missing = [...expected];
  const unexpected = [];
  for (const topic of actual) {
    const at = missing.indexOf(topic);
    if (at >= 0) missing.splice(at, 1); else unexpected.push(topic);
  }
  const ok = !missing.length && !unexpected.length;
  box.hidden = false;
  box.className = `expectation ${ok ? "match" : "mismatch"}`;
  box.dataset.match = ok ? "true" : "false";
  if (ok) {
    box.append(`✓ As the fixture expects: ${expected.length ? expected.join(", ") : "no card"}`);
    return;
  }
  box.append("✗ Differs from the fixture's expectation: ");
  for (const t of missing) box.append(el("span", { class: "chip missing", text: `missing ${t}` }), " ");
  for (const t of unexpected) box.append(el("span", { class: "chip unexpected", text: `unexpected ${t}` }), " ");
}

// ---------------------------------------------------------------------------------------------
// Cards, the way an EHR shows them
// ---------------------------------------------------------------------------------------------

function renderCards(cards, htmls, serviceId) {
  const box = $("cards");
  clear(box);
  if (!cards.length) {
    box.append(el("p", { class: "empty no-cards", text: "No cards: the service has no advice for this patient and hook." }));
    return;
  }
  const order = { critical: 0, warning: 1, info: 2 };
  cards
    .map((card, i) => ({ card, html: htmls[i] || "" }))
    .sort((a, b) => (order[a.card.indicator] ?? 3) - (order[b.card.indicator] ?? 3))
    .forEach(({ card, html }) => box.append(renderCard(card, html, serviceId)));
}

function renderCard(card, html, serviceId) {
  const indicator = INDICATORS[card.indicator] || { label: card.indicator, icon: "•" };
  const topic = card.source && card.source.topic;
  const article = el("article", {
    class: `cds-card indicator-${card.indicator}`,
    dataset: { topic: topicOf(card), cardUuid: card.uuid || "", indicator: card.indicator },
    "aria-label": `${indicator.label} card: ${card.summary}`,
  });
  article.append(el("header", { class: "card-head" },
    el("span", { class: "indicator-badge", text: `${indicator.icon} ${indicator.label}` }),
    el("h3", { class: "card-summary", text: card.summary })));

  if (card.source) {
    const source = el("div", { class: "card-source" }, "Source: ",
      card.source.url ? externalLink(card.source.url, card.source.label) : el("span", { text: card.source.label }));
    if (topic) source.append(" ", el("span", { class: "chip topic", title: topic.system, text: topic.display || topic.code }));
    article.append(source);
  }
  if (card.detail) {
    const detail = el("div", { class: "card-detail" });
    setSanitizedHtml(detail, html);
    article.append(detail);
  }

  const status = el("p", { class: "feedback-status", role: "status" });
  const controls = [];
  const suggestions = card.suggestions || [];
  if (suggestions.length) {
    const wrap = el("div", { class: "card-suggestions" });
    if (card.selectionBehavior) wrap.append(el("div", { class: "selection-behavior", text: `Suggestions (${card.selectionBehavior}):` }));
    for (const suggestion of suggestions) {
      const button = el("button", {
        type: "button",
        class: suggestion.isRecommended ? "suggestion primary" : "suggestion secondary",
        dataset: { suggestionUuid: suggestion.uuid || "" },
      }, suggestion.label, suggestion.isRecommended ? el("span", { class: "recommended", text: "Recommended" }) : null);
      button.addEventListener("click", () => accept(card, suggestion, serviceId, button, controls, status));
      controls.push(button);
      const actions = (suggestion.actions || []).map((a) => el("li", {},
        el("span", { class: "action-type", text: a.type }), " ", a.description || "",
        a.resourceId ? el("code", { text: ` ${a.resourceId}` }) : null));
      wrap.append(el("div", { class: "suggestion-row" }, button, actions.length ? el("ul", { class: "actions" }, actions) : null));
    }
    article.append(wrap);
  }

  const links = (card.links || []).filter((l) => l.url);
  if (links.length) {
    article.append(el("ul", { class: "card-links", "aria-label": "Links" },
      links.map((l) => el("li", {}, l.type === "smart" ? smartLinkButton(l) : externalLink(l.url, l.label)))));
  }

  article.append(overrideControls(card, serviceId, controls, status));
  article.append(status);
  return article;
}

// The console acts as the EHR for a smart link: it registers the launch (patient, appContext) and
// opens the app with launch + iss; run the hook again after saving to see the new cards.
function smartLinkButton(link) {
  const button = el("button", { type: "button", class: "smart-link", text: `Open app: ${link.label}` });
  const note = el("span", { class: "smart-link-status" });
  button.addEventListener("click", async () => {
    const body = { link: { url: link.url, appContext: link.appContext } };
    if (state.source === "bundle") body.bundle = state.bundle; else body.fixture = state.fixture && state.fixture.slug;
    const answer = await postJSON("/console/api/smart-launch", body);
    if (!answer.ok) { note.textContent = ` ${errorText(answer)}`; return; }
    window.open(answer.body.url, "_blank", "noopener");
    note.textContent = " Opened in a new tab: save there, then send the hook request again.";
  });
  return el("span", {}, button, note);
}

function overrideControls(card, serviceId, controls, status) {
  const reasons = card.overrideReasons || [];
  const toggle = el("button", { type: "button", class: "override-toggle secondary", text: "Override…" });
  const select = el("select", { class: "override-reason", "aria-label": "Override reason" },
    reasons.length ? null : el("option", { value: "", text: "(the card offers no reasons)" }),
    reasons.map((r, i) => el("option", { value: String(i), text: r.display || r.code })));
  const comment = el("textarea", { class: "override-comment", rows: "2", maxlength: "4000",
    placeholder: "Comment (optional)", "aria-label": "Override comment" });
  const submit = el("button", { type: "submit", class: "override-submit primary", text: "Submit override" });
  const cancel = el("button", { type: "button", class: "link-button", text: "Cancel" });
  const form = el("form", { class: "override-form", hidden: true },
    el("label", {}, "Reason ", select), comment, el("div", { class: "row" }, submit, cancel));
  toggle.addEventListener("click", () => { form.hidden = !form.hidden; if (!form.hidden) select.focus(); });
  cancel.addEventListener("click", () => { form.hidden = true; });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const reason = select.value === "" ? null : reasons[Number(select.value)];
    override(card, reason, comment.value.trim(), serviceId, [...controls, toggle, submit], status, form);
  });
  controls.push(toggle);
  return el("div", { class: "card-override" }, toggle, form);
}

// ---------------------------------------------------------------------------------------------
// Feedback: the real CDS Hooks feedback endpoint
// ---------------------------------------------------------------------------------------------

async function sendFeedback(serviceId, item) {
  const body = { feedback: [item] };
  const result = await postJSON(`/cds-services/${encodeURIComponent(serviceId)}/feedback`, body);
  state.feedbackLog.unshift({ request: `POST /cds-services/${serviceId}/feedback`, body, status: result.status, response: result.body });
  showRaw("raw-feedback", "raw-feedback-meta", state.feedbackLog, `${state.feedbackLog.length} sent · last HTTP ${result.status}`);
  $("raw-feedback-details").open = true;
  return result;
}

function stored(result) {
  const item = result.body && result.body.feedback && result.body.feedback[0];
  if (!item) return "stored";
  return item.flag ? `stored, flagged ${item.flag}` : "stored";
}

async function accept(card, suggestion, serviceId, button, controls, status) {
  if (!card.uuid || !suggestion.uuid) {
    status.textContent = "This card or suggestion has no uuid: feedback cannot be reported.";
    return;
  }
  button.disabled = true;
  const result = await sendFeedback(serviceId, {
    card: card.uuid, outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }],
    outcomeTimestamp: new Date().toISOString(),
  });
  if (!result.ok) {
    button.disabled = false;
    status.className = "feedback-status error";
    status.textContent = `Feedback failed: ${errorText(result)}`;
    return;
  }
  if (card.selectionBehavior !== "any") for (const c of controls) c.disabled = true;
  button.classList.add("accepted");
  status.className = "feedback-status ok";
  status.dataset.outcome = "accepted";
  status.textContent = `✓ Accepted “${suggestion.label}” — feedback ${stored(result)} (HTTP ${result.status})`;
}

async function override(card, reason, comment, serviceId, controls, status, form) {
  if (!card.uuid) {
    status.textContent = "This card has no uuid: feedback cannot be reported.";
    return;
  }
  const overrideReason = {};
  if (reason) overrideReason.reason = { system: reason.system, code: reason.code, display: reason.display };
  if (comment) overrideReason.userComment = comment;
  const item = { card: card.uuid, outcome: "overridden", outcomeTimestamp: new Date().toISOString() };
  if (Object.keys(overrideReason).length) item.overrideReason = overrideReason;
  for (const c of controls) c.disabled = true;
  const result = await sendFeedback(serviceId, item);
  if (!result.ok) {
    for (const c of controls) c.disabled = false;
    status.className = "feedback-status error";
    status.textContent = `Feedback failed: ${errorText(result)}`;
    return;
  }
  form.hidden = true;
  status.className = "feedback-status overridden";
  status.dataset.outcome = "overridden";
  status.textContent = `Overridden${reason ? `: ${reason.display || reason.code}` : ""}${comment ? ` — “${comment}”` : ""} — feedback ${stored(result)} (HTTP ${result.status})`;
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

async function init() {
  const data = await getJSON("/console/api/fixtures");
  if (!data.ok) { setStatus(errorText(data), "error"); return; }
  Object.assign(state, {
    fixtures: data.body.fixtures, hooks: data.body.hooks, presets: data.body.orderPresets,
    reasons: data.body.orderReasons, shiftedTo: data.body.shiftedTo,
  });
  fillFixtures();
  fillHooks();
  fillComposer();

  const params = new URLSearchParams(window.location.search);
  const wanted = params.get("fixture");
  if (wanted && state.fixtures.some((f) => f.slug === wanted)) $("fixture-select").value = wanted;
  const hook = params.get("hook");
  const selected = params.get("select") ? params.get("select").split(",") : null;

  $("fixture-select").addEventListener("change", () => selectFixture($("fixture-select").value));
  for (const input of document.querySelectorAll("input[name=source]")) {
    input.addEventListener("change", () => selectSource(input.value));
  }
  $("bundle-load").addEventListener("click", loadBundle);
  $("bundle-text").addEventListener("input", () => { state.bundle = null; });
  $("bundle-file").addEventListener("change", (event) => {
    const file = event.target.files && event.target.files[0];
    if (file) readFile(file);
  });
  $("compose-add").addEventListener("click", composeOrder);
  $("run-form").addEventListener("submit", run);

  selectSource(state.fixtures.length ? "fixture" : "bundle");
  if (state.fixtures.length) selectFixture($("fixture-select").value, selected);
  selectHook(state.hooks.some((h) => h.hook === hook) ? hook : "patient-view");
  document.body.dataset.ready = "true";
  if (params.get("run") === "1" && state.fixture) run();
}

init();
