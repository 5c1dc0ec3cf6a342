// Analytics page: reads /console/api/analytics and draws the charts as inline SVG (no library).
import { clear, el, errorText, formatPercent, getJSON } from "./common.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = {
  accepted: "#1f6feb", overridden: "#e36209", noAnswer: "#c9d1db", rate: "#13294b",
  shown: "#13294b", silent: "#9aa7b8", suppressed: "#b08800",
};
let lastData = null;
let servicesFilled = false;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (/^on/i.test(name) || name === "style") throw new Error(`refused attribute ${name}`);
    node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const text = (x, y, content, attrs = {}) => svg("text", { x, y, ...attrs }, String(content));
const title = (content) => svg("title", {}, content);

function truncate(value, max) {
  return value.length <= max ? value : `${value.slice(0, max - 1)}…`;
}

/** A "nice" axis maximum and step (1, 2, 5 × 10^k) for counts. */
function niceScale(max, ticks = 4) {
  if (max <= 0) return { top: 1, step: 1 };
  const raw = max / ticks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) || raw;
  const integerStep = Math.max(1, Math.round(step));
  return { top: Math.ceil(max / integerStep) * integerStep, step: integerStep };
}

function emptyChart(container, message) {
  clear(container);
  container.append(el("p", { class: "empty", text: message }));
}

// ---------------------------------------------------------------------------------------------
// Chart 1: served vs accepted per topic (horizontal stacked bars; bar length = cards served)
// ---------------------------------------------------------------------------------------------

function drawTopicChart(container, topics, serviceHooks) {
  if (!topics.length) return emptyChart(container, "No cards served in this period.");
  clear(container);
  const width = 680;
  const labelWidth = 230;
  const annotationWidth = 150;
  const rowHeight = 42;
  const top = 8;
  const barArea = width - labelWidth - annotationWidth;
  const height = top + rowHeight * topics.length + 24;
  const { top: maxServed, step } = niceScale(Math.max(...topics.map((t) => t.served)));
  const scale = (n) => (n / maxServed) * barArea;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Cards served and accepted per topic: ${topics.map((t) => `${t.topic} ${t.served} served, ${t.accepted} accepted`).join("; ")}`,
  });
  for (let v = 0; v <= maxServed; v += step) {
    const x = labelWidth + scale(v);
    chart.append(svg("line", { class: "grid-line", x1: x, x2: x, y1: top, y2: height - 20 }));
    chart.append(text(x, height - 6, v, { class: "tick", "text-anchor": "middle" }));
  }
  topics.forEach((t, i) => {
    const y = top + i * rowHeight;
    const hook = serviceHooks[t.serviceId] || t.serviceId;
    const row = svg("g", { class: "topic-row", "data-topic": t.topic, "data-service": t.serviceId });
    row.append(title(`${t.display} (${t.topic}, ${t.serviceId}): ${t.served} served, ${t.accepted} accepted, ${t.overridden} overridden, ${t.noAnswer} no answer`));
    row.append(text(labelWidth - 10, y + 16, truncate(t.display, 34), { "text-anchor": "end", "font-size": 12.5 }));
    row.append(text(labelWidth - 10, y + 31, `${t.topic} · ${hook}`, { "text-anchor": "end", class: "tick" }));
    let x = labelWidth;
    const barY = y + 7;
    const barH = 24;
    for (const [key, value] of [["accepted", t.accepted], ["overridden", t.overridden], ["noAnswer", t.noAnswer]]) {
      if (value <= 0) continue;
      const w = scale(value);
      row.append(svg("rect", { x, y: barY, width: Math.max(w, 1), height: barH, fill: COLORS[key], class: `bar-${key}` }));
      if (w > 22) {
        row.append(text(x + w / 2, barY + 16, value, {
          "text-anchor": "middle", class: "value-label", fill: key === "noAnswer" ? "#2a3342" : "#ffffff",
        }));
      }
      x += w;
    }
    row.append(text(x + 8, barY + 11, `${t.served} served`, { class: "value-label" }));
    row.append(text(x + 8, barY + 24, `${formatPercent(t.acceptanceRate)} accepted`, { class: "tick" }));
    chart.append(row);
  });
  container.append(chart);
}

// ---------------------------------------------------------------------------------------------
// Chart 2: weekly trend (stacked columns per week + acceptance-rate line on a 0–100 % axis)
// ---------------------------------------------------------------------------------------------

function weekLabel(iso) {
  const d = new Date(`${iso}T00:00:00Z`);
  return d.toLocaleDateString("en-GB", { day: "numeric", month: "short", timeZone: "UTC" });
}

function drawTrendChart(container, weeks) {
  const served = weeks.reduce((n, w) => n + w.served, 0);
  if (!weeks.length || !served) return emptyChart(container, "No cards served in this period.");
  clear(container);
  const width = 680;
  const height = 300;
  const m = { left: 44, right: 48, top: 14, bottom: 44 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const { top: maxY, step } = niceScale(Math.max(...weeks.map((w) => w.served)));
  const slot = plotW / weeks.length;
  const barW = Math.max(3, Math.min(36, slot * 0.7));
  const y = (v) => m.top + plotH - (v / maxY) * plotH;
  const yRate = (r) => m.top + plotH - r * plotH;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Cards per week: ${weeks.map((w) => `week of ${w.weekStart}: ${w.served} served, ${w.accepted} accepted`).join("; ")}`,
  });
  for (let v = 0; v <= maxY; v += step) {
    chart.append(svg("line", { class: "grid-line", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }));
    chart.append(text(m.left - 6, y(v) + 4, v, { class: "tick", "text-anchor": "end" }));
  }
  for (const r of [0, 0.5, 1]) {
    chart.append(text(width - m.right + 6, yRate(r) + 4, `${r * 100}%`, { class: "tick" }));
  }
  chart.append(text(12, m.top + plotH / 2, "cards", {
    class: "axis-label", transform: `rotate(-90 12 ${m.top + plotH / 2})`, "text-anchor": "middle",
  }));
  const labelEvery = Math.ceil(weeks.length / 10);
  const points = [];
  weeks.forEach((w, i) => {
    const cx = m.left + slot * i + slot / 2;
    // weeks cut by the period's ends are faded: their counts cover fewer than 7 days
    const group = svg("g", { class: w.partial ? "week partial" : "week", "data-week": w.weekStart, opacity: w.partial ? 0.45 : null });
    group.append(title(`Week of ${w.weekStart}${w.partial ? " (partly outside the period)" : ""}: ${w.served} served, ${w.accepted} accepted, ${w.overridden} overridden (${formatPercent(w.acceptanceRate)} accepted)`));
    let base = 0;
    const noAnswer = w.served - w.accepted - w.overridden;
    for (const [key, value] of [["accepted", w.accepted], ["overridden", w.overridden], ["noAnswer", noAnswer]]) {
      if (value <= 0) continue;
      group.append(svg("rect", { x: cx - barW / 2, y: y(base + value), width: barW, height: y(base) - y(base + value), fill: COLORS[key], class: `bar-${key}` }));
      base += value;
    }
    if (w.served && barW >= 14) group.append(text(cx, y(w.served) - 4, w.served, { class: "tick", "text-anchor": "middle" }));
    if (i % labelEvery === 0) group.append(text(cx, height - m.bottom + 16, weekLabel(w.weekStart), { class: "tick", "text-anchor": "middle" }));
    chart.append(group);
    if (w.served) points.push([cx, yRate(w.acceptanceRate || 0), w.partial]);
  });
  chart.append(text(m.left + plotW / 2, height - 6, "week starting (Monday, UTC)", { class: "axis-label", "text-anchor": "middle" }));
  // the rate line joins whole weeks only: a cut week's rate rests on a few days and would mislead
  const whole = points.filter((p) => !p[2]);
  if (whole.length > 1) {
    chart.append(svg("polyline", {
      points: whole.map((p) => `${p[0]},${p[1]}`).join(" "), fill: "none", stroke: COLORS.rate, "stroke-width": 2.2,
      "stroke-linejoin": "round", class: "rate-line",
    }));
  }
  for (const [px, py, partial] of points) {
    chart.append(svg("circle", { cx: px, cy: py, r: 3.5, fill: "#fff", stroke: COLORS.rate, "stroke-width": 2, opacity: partial ? 0.35 : null }));
  }
  container.append(chart);
}

// ---------------------------------------------------------------------------------------------
// Chart 3: alert burden per topic — shown, silent (would have shown), suppressed
// ---------------------------------------------------------------------------------------------

function drawBurdenChart(container, topics) {
  const rows = topics.filter((t) => t.served + t.silentWouldHaveShown + t.suppressed > 0);
  if (!rows.length) return emptyChart(container, "No cards computed in this period.");
  clear(container);
  const width = 680;
  const labelWidth = 230;
  const barArea = width - labelWidth - 150;
  const rowHeight = 30;
  const top = 8;
  const height = top + rowHeight * rows.length + 24;
  const { top: maxN, step } = niceScale(Math.max(...rows.map((t) => t.served + t.silentWouldHaveShown + t.suppressed)));
  const scale = (n) => (n / maxN) * barArea;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Alert burden per topic: ${rows.map((t) => `${t.topic} ${t.served} shown, ${t.silentWouldHaveShown} silent, ${t.suppressed} suppressed`).join("; ")}`,
  });
  for (let v = 0; v <= maxN; v += step) {
    const x = labelWidth + scale(v);
    chart.append(svg("line", { class: "grid-line", x1: x, x2: x, y1: top, y2: height - 20 }));
    chart.append(text(x, height - 6, v, { class: "tick", "text-anchor": "middle" }));
  }
  rows.forEach((t, i) => {
    const y = top + i * rowHeight;
    const row = svg("g", { class: "burden-row", "data-topic": t.topic, "data-service": t.serviceId });
    row.append(title(`${t.display} (${t.topic}, ${t.serviceId}): ${t.served} shown, ${t.silentWouldHaveShown} silent (would have shown), ${t.suppressed} suppressed`));
    row.append(text(labelWidth - 10, y + 18, truncate(`${t.display}`, 34), { "text-anchor": "end", "font-size": 12.5 }));
    let x = labelWidth;
    for (const [key, value] of [["shown", t.served], ["silent", t.silentWouldHaveShown], ["suppressed", t.suppressed]]) {
      if (value <= 0) continue;
      const w = scale(value);
      row.append(svg("rect", { x, y: y + 5, width: Math.max(w, 1), height: 20, fill: COLORS[key], class: `bar-${key}` }));
      x += w;
    }
    row.append(text(x + 8, y + 19, `${t.served} shown · ${t.silentWouldHaveShown} silent · ${t.suppressed} suppressed`, { class: "tick" }));
    chart.append(row);
  });
  container.append(chart);
}

// ---------------------------------------------------------------------------------------------
// KPIs, tables, reasons, comments
// ---------------------------------------------------------------------------------------------

function kpi(label, value, sub, kind = "") {
  return el("div", { class: `kpi ${kind}` }, el("div", { class: "label", text: label }),
    el("div", { class: "value", text: value }), sub ? el("div", { class: "sub", text: sub }) : null);
}

function drawKpis(totals) {
  const box = $("kpis");
  clear(box);
  box.append(
    kpi("Cards served", totals.served),
    kpi("Accepted", totals.accepted, `${formatPercent(totals.acceptanceRate)} of served`, "accepted"),
    kpi("Overridden", totals.overridden, `${formatPercent(totals.overrideRate)} of served`, "overridden"),
    kpi("No answer", totals.noAnswer, "never reported by the EHR"),
    kpi("Silent", totals.silentWouldHaveShown, "would have shown (silent rollout)", "silent"),
  );
}

function drawTable(topics, serviceHooks, unknown) {
  const body = $("topic-table").querySelector("tbody");
  clear(body);
  if (!topics.length) body.append(el("tr", {}, el("td", { colspan: "10", class: "empty", text: "No cards served in this period." })));
  for (const t of topics) {
    const reasons = t.overrideReasons.map((r) => `${r.display || r.code || "(no reason)"} (${r.count})`).join("; ");
    body.append(el("tr", { dataset: { topic: t.topic, service: t.serviceId } },
      el("td", {}, el("div", { text: t.display }), el("code", { text: t.topic })),
      el("td", { text: `${t.serviceId} (${serviceHooks[t.serviceId] || "?"})` }),
      el("td", { class: "num served", text: t.served }),
      el("td", { class: "num accepted", text: t.accepted }),
      el("td", { class: "num overridden", text: t.overridden }),
      el("td", { class: "num", text: t.noAnswer }),
      el("td", { class: "num rate", text: formatPercent(t.acceptanceRate) }),
      el("td", { class: "num silent", text: t.silentWouldHaveShown }),
      el("td", { class: "num suppressed", text: t.suppressed }),
      el("td", { text: reasons || "—" })));
  }
  const note = $("unknown-note");
  note.hidden = !unknown;
  note.textContent = unknown ? `${unknown} feedback item(s) named cards this service never served; they are not attributed to a topic.` : "";
}

function drawReasons(topics) {
  const box = $("reasons");
  clear(box);
  const withReasons = topics.filter((t) => t.overrideReasons.length);
  if (!withReasons.length) { box.append(el("p", { class: "empty", text: "No overrides in this period." })); return; }
  const max = Math.max(...withReasons.flatMap((t) => t.overrideReasons.map((r) => r.count)));
  for (const t of withReasons) {
    box.append(el("h3", { class: "reason-topic", text: `${t.display} · ${t.serviceId}` }));
    const table = el("table", { class: "data reasons-table" });
    for (const r of t.overrideReasons) {
      const bar = el("span", { class: "bar-inline" });
      bar.style.width = `${Math.max(4, (r.count / max) * 160)}px`;
      table.append(el("tr", {}, el("td", { text: r.display || r.code || "(no reason given)" }),
        el("td", { class: "num" }, bar, String(r.count))));
    }
    box.append(table);
  }
}

function drawComments(comments) {
  const body = $("comments").querySelector("tbody");
  clear(body);
  if (!comments.length) body.append(el("tr", {}, el("td", { colspan: "4", class: "empty", text: "No comments in this period." })));
  for (const c of comments) {
    body.append(el("tr", { class: "comment-row", dataset: { topic: c.topic } },
      el("td", { class: "nowrap", text: c.outcomeTimestamp.slice(0, 10) }),
      el("td", { text: c.topic }),
      el("td", { text: c.reasonDisplay || c.reasonCode || "—" }),
      el("td", { class: "comment-text", text: c.comment })));
  }
}

function drawTrend() {
  if (!lastData) return;
  const topic = $("trend-topic").value;
  drawTrendChart($("trend-chart"), topic ? (lastData.weeksByTopic[topic] || []) : lastData.weeks);
}

// ---------------------------------------------------------------------------------------------
// Period and loading
// ---------------------------------------------------------------------------------------------

const isoDay = (d) => d.toISOString().slice(0, 10);

function setPreset(days) {
  const until = new Date();
  const since = new Date(until.getTime() - (days - 1) * 86400000);
  $("since").value = isoDay(since);
  $("until").value = isoDay(until);
}

function markPreset() {
  const since = new Date(`${$("since").value}T00:00:00Z`);
  const until = new Date(`${$("until").value}T00:00:00Z`);
  const days = Math.round((until - since) / 86400000) + 1;
  const today = isoDay(new Date());
  for (const b of document.querySelectorAll(".presets button")) {
    b.setAttribute("aria-pressed", String($("until").value === today && Number(b.dataset.days) === days));
  }
}

function query() {
  const params = new URLSearchParams();
  if ($("since").value) params.set("since", $("since").value);
  if ($("until").value) params.set("until", $("until").value);
  if ($("service").value) params.set("service", $("service").value);
  return params;
}

async function load(pushHistory = true) {
  const params = query();
  const status = $("analytics-status");
  status.textContent = "Loading…";
  status.className = "run-status";
  const result = await getJSON(`/console/api/analytics?${params}`);
  if (!result.ok) {
    status.textContent = errorText(result);
    status.className = "run-status error";
    return;
  }
  if (pushHistory) window.history.replaceState(null, "", `?${params}`);
  $("csv-link").href = `/console/api/analytics.csv?${params}`;
  const data = result.body;
  lastData = data;
  $("since").value = data.period.since;
  $("until").value = data.period.until;
  markPreset();
  const serviceSelect = $("service");
  if (!servicesFilled) {
    clear(serviceSelect);
    serviceSelect.append(el("option", { value: "", text: "All services" }));
    for (const s of data.services) serviceSelect.append(el("option", { value: s.id, text: `${s.id} (${s.hook})` }));
    serviceSelect.value = params.get("service") || "";
    servicesFilled = true;
  }
  const serviceHooks = Object.fromEntries(data.services.map((s) => [s.id, s.hook]));
  const trendSelect = $("trend-topic");
  const current = trendSelect.value;
  clear(trendSelect);
  trendSelect.append(el("option", { value: "", text: "All topics" }));
  for (const topic of Object.keys(data.weeksByTopic)) trendSelect.append(el("option", { value: topic, text: topic }));
  trendSelect.value = Object.hasOwn(data.weeksByTopic, current) ? current : "";

  drawKpis(data.totals);
  drawTopicChart($("topic-chart"), data.topics, serviceHooks);
  drawTrend();
  drawBurdenChart($("burden-chart"), data.topics);
  drawTable(data.topics, serviceHooks, data.totals.unknownCardFeedback);
  drawReasons(data.topics);
  drawComments(data.comments);
  status.textContent = data.databaseReady ? `Period ${data.period.since} – ${data.period.until}` : "No feedback tables yet.";
  document.body.dataset.ready = "true";
}

function init() {
  const params = new URLSearchParams(window.location.search);
  if (params.get("since")) $("since").value = params.get("since");
  if (params.get("until")) $("until").value = params.get("until");
  if (!params.get("since") && !params.get("until")) setPreset(84);
  for (const b of document.querySelectorAll(".presets button")) {
    b.addEventListener("click", () => { setPreset(Number(b.dataset.days)); load(); });
  }
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); load(); });
  $("trend-topic").addEventListener("change", drawTrend);
  if (params.get("service")) {
    $("service").append(el("option", { value: params.get("service"), text: params.get("service") }));
    $("service").value = params.get("service");
  }
  load(false);
}

init();
