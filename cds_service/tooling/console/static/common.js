// Shared helpers of the console pages. Security rules for every console script:
//  * data (fixture text, card text, comments) is only ever inserted with textContent / DOM nodes;
//  * the ONLY HTML ever inserted is card detail HTML already sanitised by the server
//    (/console/api/markdown), through the Trusted Types policy below; the page's CSP
//    (require-trusted-types-for 'script') makes every other innerHTML assignment throw.

const policyName = document.body.dataset.trustedTypesPolicy || "console-sanitized-html";
const policy = window.trustedTypes
  ? window.trustedTypes.createPolicy(policyName, { createHTML: (html) => html })
  : null;

/** Insert server-sanitised HTML (card details only). */
export function setSanitizedHtml(node, html) {
  node.innerHTML = policy ? policy.createHTML(html) : html;
}

/**
 * Create an element. attrs: {class, text, dataset: {...}, hidden, ...plain attributes}.
 * Event handler attributes and style are refused: handlers are added with addEventListener.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (/^on/i.test(name) || name === "style") throw new Error(`refused attribute ${name}`);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Only http(s) URLs become links; anything else is shown as text. */
export function safeHref(url) {
  try {
    const parsed = new URL(url, window.location.href);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
  } catch {
    return null;
  }
}

export function externalLink(url, label) {
  const href = safeHref(url);
  if (!href) return el("span", { text: label });
  return el("a", { href, target: "_blank", rel: "noopener noreferrer" }, label);
}

async function parseBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** fetch JSON; returns {status, ok, body, requestId, ms}. Never throws on HTTP errors. */
export async function request(method, url, body) {
  const started = performance.now();
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    return { status: 0, ok: false, body: { error: "network", message: String(error) }, requestId: "", ms: 0 };
  }
  const parsed = await parseBody(response);
  return {
    status: response.status,
    ok: response.ok,
    body: parsed,
    requestId: response.headers.get("X-Request-ID") || "",
    ms: Math.round(performance.now() - started),
  };
}

export const getJSON = (url) => request("GET", url);
export const postJSON = (url, body) => request("POST", url, body);

export function errorText(result) {
  const body = result.body;
  if (body && typeof body === "object" && body.message) {
    return `HTTP ${result.status}: ${body.message}${body.field ? ` (${body.field})` : ""}`;
  }
  return `HTTP ${result.status}`;
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function formatPercent(rate) {
  return rate === null || rate === undefined ? "—" : `${Math.round(rate * 1000) / 10}%`;
}
