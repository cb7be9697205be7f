// dfgraph console: a live view of a Dragonfly cluster through the dfgraph
// gateway. Vanilla JS, no dependencies: GraphQL over HTTP for queries and a
// small graphql-transport-ws client for subscriptions.
//
// Endpoints: ?endpoint=URL (or window.DFGRAPH_ENDPOINT), default same-origin
// /graphql; websocket ?ws=URL (or window.DFGRAPH_WS_ENDPOINT), default the
// endpoint + "/ws" as ws(s)://. A token in localStorage.dfgraphToken is sent
// as `Authorization: Bearer` (HTTP) and in the connection_init payload.

const params = new URLSearchParams(location.search);
const HTTP_URL = new URL(params.get('endpoint') || window.DFGRAPH_ENDPOINT || '/graphql', location.href).href;
const WS_URL = params.get('ws') || window.DFGRAPH_WS_ENDPOINT || wsUrlFor(HTTP_URL);

function wsUrlFor(http) {
  const u = new URL(http);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  u.pathname = u.pathname.replace(/\/$/, '') + '/ws';
  u.search = '';
  u.hash = '';
  return u.href;
}

function token() {
  try { return localStorage.getItem('dfgraphToken') || ''; } catch { return ''; }
}

// ---------- DOM helpers ----------

const $ = (sel, root = document) => root.querySelector(sel);

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'style') el.style.cssText = v; // CSSOM: allowed by a strict CSP
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of kids.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const fmtPct = (v) => (v == null ? '' : `${v.toFixed(1)}%`);
const fmtTime = (iso) => {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString([], { hour12: false });
};
function fmtAge(ms) {
  if (ms == null || !Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
function fmtBytes(n) {
  if (n == null) return '';
  const v = Number(n);
  if (!Number.isFinite(v)) return String(n);
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return `${i ? x.toFixed(1) : x} ${u[i]}`;
}

// ---------- errors banner ----------

const errorSlots = new Map();
function showErrors(slot, errors) {
  if (errors && errors.length) {
    errorSlots.set(slot, errors.map((e) => {
      const code = e.extensions?.code ? `[${e.extensions.code}] ` : '';
      const sch = e.extensions?.scheduler ? ` (${e.extensions.scheduler})` : '';
      return `${slot}: ${code}${e.message}${sch}`;
    }));
  } else {
    errorSlots.delete(slot);
  }
  const box = $('#errors');
  const lines = [...errorSlots.values()].flat();
  box.hidden = lines.length === 0;
  box.replaceChildren(...lines.slice(0, 8).map((l) => h('div', null, l)));
}

// ---------- freshness ----------
// Each panel remembers the instant its data was true as of: the time the
// response arrived minus extensions.freshness.oldestAgeMs. The badge shows
// the oldest of them, whether anything was served stale, and how long ago
// anything on screen last changed (a response or a pushed event).

const freshness = {
  panels: new Map(),
  lastUpdate: 0,
  record(panel, f) {
    const now = Date.now();
    this.panels.set(panel, {
      asOf: now - (Number(f?.oldestAgeMs) || 0),
      stale: !!f?.stale,
      failed: f?.failedSchedulers || [],
    });
    this.lastUpdate = now;
  },
  forget(panel) { this.panels.delete(panel); },
  touch() { this.lastUpdate = Date.now(); },
};

function renderFreshness() {
  const el = $('#freshness');
  const now = Date.now();
  if (!freshness.panels.size) {
    el.dataset.level = 'unknown';
    el.textContent = 'no data yet';
    return;
  }
  let oldest = now;
  let stale = false;
  const failed = new Set();
  for (const p of freshness.panels.values()) {
    oldest = Math.min(oldest, p.asOf);
    stale ||= p.stale;
    for (const f of p.failed) failed.add(typeof f === 'string' ? f : JSON.stringify(f));
  }
  const age = now - oldest;
  const since = now - freshness.lastUpdate;
  const live = ws.state === 'connected';
  let level = 'fresh';
  if (stale || failed.size) level = 'stale';
  else if (age > 60000 || !live) level = 'aging';
  el.dataset.level = level;
  el.dataset.oldestAgeMs = String(Math.round(age));
  el.dataset.stale = String(stale);
  el.dataset.sinceUpdateMs = String(Math.round(since));
  el.dataset.live = String(live);
  el.textContent = `${stale ? 'STALE · ' : ''}${live ? 'live' : 'not live'} · data ≤ ${fmtAge(age)} old · updated ${fmtAge(since)} ago`;
  el.title = [
    'oldest data on screen: ' + fmtAge(age),
    'last update: ' + new Date(freshness.lastUpdate).toLocaleTimeString(),
    stale ? 'some data was served stale from the cache (a scheduler did not answer)' : 'nothing served stale',
    failed.size ? 'failed schedulers: ' + [...failed].join(', ') : '',
  ].filter(Boolean).join('\n');
}

// ---------- GraphQL over HTTP ----------

async function gql(query, variables, panel) {
  const headers = {
    'content-type': 'application/json',
    accept: 'application/graphql-response+json, application/json',
  };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  let res;
  try {
    res = await fetch(HTTP_URL, { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
  } catch (e) {
    throw new Error(`cannot reach ${HTTP_URL}: ${e.message}`);
  }
  let body;
  try { body = await res.json(); } catch { throw new Error(`HTTP ${res.status} ${res.statusText}`); }
  if (!body.data && body.errors?.length) {
    throw new Error(body.errors.map((e) => (e.extensions?.code ? `[${e.extensions.code}] ` : '') + e.message).join('; '));
  }
  if (panel) freshness.record(panel, body.extensions?.freshness);
  return body;
}

// ---------- graphql-transport-ws client ----------
// https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md
// Keeps a registry of active operations and re-subscribes them after each
// reconnect (exponential backoff with jitter). A payload may be a function:
// it is called at each (re)subscribe, so a resumed subscription can pass
// the cursor of the last event it received as `after`.

const payloadOf = (p) => (typeof p === 'function' ? p() : p);

class WsClient {
  constructor(url, initPayload) {
    this.url = url;
    this.initPayload = initPayload;
    this.subs = new Map();
    this.nextId = 1;
    this.socket = null;
    this.acked = false;
    this.everAcked = false;
    this.attempt = 0;
    this.state = 'idle';
    this.detail = '';
    this.listeners = new Set();
    this.reconnectListeners = new Set();
    this.retryTimer = null;
    this.lastMessage = 0;
  }

  onState(fn) { this.listeners.add(fn); fn(this.state, this.detail); }
  onReconnect(fn) { this.reconnectListeners.add(fn); }

  setState(state, detail = '') {
    this.state = state;
    this.detail = detail;
    for (const fn of this.listeners) fn(state, detail);
  }

  // Starts an operation; returns a function that stops it.
  subscribe(payload, sink) {
    const id = String(this.nextId++);
    this.subs.set(id, { id, payload, sink });
    if (this.acked) this.send({ id, type: 'subscribe', payload: payloadOf(payload) });
    else this.connect();
    return () => {
      if (this.subs.delete(id) && this.acked) this.send({ id, type: 'complete' });
    };
  }

  send(msg) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(msg));
  }

  connect() {
    if (this.socket || this.retryTimer) return;
    this.setState('connecting');
    let socket;
    try {
      socket = new WebSocket(this.url, 'graphql-transport-ws');
    } catch (e) {
      this.scheduleRetry(e.message);
      return;
    }
    this.socket = socket;
    this.acked = false;
    socket.onopen = () => {
      this.lastMessage = Date.now();
      this.send({ type: 'connection_init', payload: this.initPayload() });
      this.ackTimer = setTimeout(() => socket.close(4408, 'connection_ack timeout'), 10000);
    };
    socket.onmessage = (ev) => this.onMessage(socket, ev.data);
    socket.onclose = (ev) => this.onClose(socket, ev);
    socket.onerror = () => {}; // a close event follows
  }

  onMessage(socket, raw) {
    if (socket !== this.socket) return;
    this.lastMessage = Date.now();
    let msg;
    try { msg = JSON.parse(raw); } catch { socket.close(4400, 'invalid message'); return; }
    switch (msg.type) {
      case 'connection_ack': {
        clearTimeout(this.ackTimer);
        const reconnected = this.everAcked;
        this.acked = true;
        this.everAcked = true;
        this.attempt = 0;
        this.setState('connected');
        for (const s of this.subs.values()) this.send({ id: s.id, type: 'subscribe', payload: payloadOf(s.payload) });
        this.startHeartbeat(socket);
        if (reconnected) for (const fn of this.reconnectListeners) fn();
        break;
      }
      case 'ping':
        this.send(msg.payload ? { type: 'pong', payload: msg.payload } : { type: 'pong' });
        break;
      case 'pong':
        break;
      case 'next':
        this.subs.get(msg.id)?.sink.next?.(msg.payload);
        break;
      case 'error': {
        const s = this.subs.get(msg.id);
        this.subs.delete(msg.id);
        s?.sink.error?.(msg.payload);
        break;
      }
      case 'complete': {
        const s = this.subs.get(msg.id);
        this.subs.delete(msg.id);
        s?.sink.complete?.();
        break;
      }
      default:
        socket.close(4400, `unexpected message type ${msg.type}`);
    }
  }

  // The server pings every keep-alive interval; if nothing at all arrives for
  // 45 s the connection is presumed dead. When idle we ping it ourselves.
  startHeartbeat(socket) {
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => {
      if (socket !== this.socket) return;
      const idle = Date.now() - this.lastMessage;
      if (idle > 45000) socket.close(4000, 'no message for 45s');
      else if (idle > 20000) this.send({ type: 'ping' });
    }, 5000);
  }

  onClose(socket, ev) {
    if (socket !== this.socket) return;
    clearTimeout(this.ackTimer);
    clearInterval(this.heartbeat);
    this.socket = null;
    this.acked = false;
    const why = `closed ${ev.code}${ev.reason ? ' ' + ev.reason : ''}`;
    if (ev.code === 4403) this.attempt = Math.max(this.attempt, 5); // forbidden: retry slowly
    if (this.subs.size) this.scheduleRetry(why);
    else this.setState('idle', why);
  }

  scheduleRetry(why) {
    const base = Math.min(15000, 500 * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    this.attempt++;
    this.setState('reconnecting', `${why}; retry in ${fmtAge(delay)}`);
    this.retryTimer = setTimeout(() => { this.retryTimer = null; this.connect(); }, delay);
  }

  // Drops the connection and connects again at once (e.g. a new token).
  restart() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.attempt = 0;
    const s = this.socket;
    if (s) { this.socket = null; this.acked = false; clearInterval(this.heartbeat); s.close(1000, 'restart'); }
    if (this.subs.size) this.connect();
  }
}

const ws = new WsClient(WS_URL, () => {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
});

ws.onState((state, detail) => {
  const el = $('#ws-status');
  el.dataset.state = state;
  el.textContent = `ws: ${state}`;
  el.title = `${WS_URL}${detail ? '\n' + detail : ''}`;
  renderFreshness();
});

// Runs a subscription and keeps it running: re-subscribes after an `error`
// (with a pause) unless the sink says stop. `variables` may be a function,
// called at each (re)subscribe. Returns a stop function.
function live(query, variables, handlers) {
  let stop = null;
  let stopped = false;
  let retry = null;
  const start = () => {
    stop = ws.subscribe(() => ({ query, variables: payloadOf(variables) }), {
      next: (payload) => {
        freshness.touch();
        handlers.next(payload);
      },
      error: (errs) => {
        handlers.error?.(errs);
        if (!stopped && handlers.resubscribe !== false) retry = setTimeout(start, 3000);
      },
      complete: () => handlers.complete?.(),
    });
  };
  start();
  return () => { stopped = true; clearTimeout(retry); stop?.(); };
}

// ---------- overview: hostStats ----------

const STATS_QUERY = `query ConsoleStats {
  hostStats {
    total
    byVersion { value count }
    byType { value count }
    byIdc { value count }
    bySchedulerCluster { value count }
    byLiveness { value count }
    countedClusters
    missingClusters
  }
}`;

const BAR_LIMIT = 10;

function renderBars(el, buckets, label = (v) => v || '(none)') {
  const filterKey = el.dataset.filter;
  const sorted = [...buckets].sort((a, b) => b.count - a.count || String(a.value).localeCompare(String(b.value)));
  const max = Math.max(1, ...sorted.map((b) => b.count));
  const rows = sorted.slice(0, BAR_LIMIT).map((b) => {
    const active = hostState.filter[filterKey] === b.value;
    return h('button', {
      type: 'button',
      class: `bar${active ? ' active' : ''}`,
      'data-value': b.value,
      'data-count': b.count,
      title: `${label(b.value)}: ${b.count} — click to filter the host table`,
      onclick: () => setFilter(filterKey, active ? '' : b.value),
    },
    h('span', { class: 'bar-label', text: label(b.value) }),
    h('span', { class: 'bar-track' }, h('span', { class: 'bar-fill', style: `width:${(100 * b.count / max).toFixed(1)}%` })),
    h('span', { class: 'bar-count', text: String(b.count) }));
  });
  if (sorted.length > BAR_LIMIT) {
    const rest = sorted.slice(BAR_LIMIT).reduce((n, b) => n + b.count, 0);
    rows.push(h('div', { class: 'muted bar-more', text: `+${sorted.length - BAR_LIMIT} more (${rest} hosts)` }));
  }
  if (!rows.length) rows.push(h('div', { class: 'muted', text: 'no hosts' }));
  el.replaceChildren(...rows);
}

function fillSelect(sel, buckets, label = (v) => v) {
  const current = sel.value;
  const first = sel.options[0];
  const values = buckets.map((b) => b.value).sort();
  if (current && !values.includes(current)) values.push(current);
  sel.replaceChildren(first, ...values.map((v) => h('option', { value: v, text: label(v) })));
  sel.value = current;
}

let lastStats = null;
async function loadStats() {
  try {
    const r = await gql(STATS_QUERY, null, 'stats');
    showErrors('hostStats', r.errors);
    const s = r.data?.hostStats;
    if (!s) return;
    lastStats = s;
    renderStats();
  } catch (e) {
    showErrors('hostStats', [{ message: e.message }]);
  }
}

function renderStats() {
  const s = lastStats;
  if (!s) return;
  $('#host-total').textContent = String(s.total);
  // Listed by the schedulers, not answering their health service.
  const unreachable = s.byLiveness?.find((b) => b.value === 'UNREACHABLE')?.count ?? 0;
  const down = $('#host-unreachable');
  down.textContent = String(unreachable);
  down.closest('.total').dataset.state = unreachable ? 'alert' : 'ok';
  const clusterLabel = (v) => `cluster ${v}`;
  renderBars($('#chart-version'), s.byVersion);
  renderBars($('#chart-type'), s.byType);
  renderBars($('#chart-idc'), s.byIdc);
  renderBars($('#chart-cluster'), s.bySchedulerCluster, clusterLabel);
  fillSelect($('#filter-cluster'), s.bySchedulerCluster, clusterLabel);
  fillSelect($('#filter-version'), s.byVersion);
  fillSelect($('#filter-idc'), s.byIdc.filter((b) => b.value));
  const missing = $('#missing-clusters');
  missing.hidden = !s.missingClusters.length;
  missing.textContent = s.missingClusters.length
    ? `not counted (unreachable): cluster ${s.missingClusters.join(', ')}` : '';
  $('#counted-clusters').textContent = `counted clusters: ${s.countedClusters.join(', ') || 'none'}`;
}

let statsTimer = null;
let statsLast = 0;
// Re-fetches the counts soon after events, at most every 2 s.
function scheduleStats() {
  if (statsTimer) return;
  const wait = Math.max(300, 2000 - (Date.now() - statsLast));
  statsTimer = setTimeout(async () => {
    statsTimer = null;
    statsLast = Date.now();
    await loadStats();
  }, wait);
}

// ---------- hosts table ----------

const HOST_FIELDS = `fragment ConsoleHost on Host {
  id hostname ip type schedulerClusterId
  build { gitVersion }
  network { idc location }
  cpu { percent }
  memory { usedPercent }
  liveness { state since }
}`;

const HOSTS_QUERY = `query ConsoleHosts($filter: HostFilter, $orderBy: HostOrder, $first: Int, $after: String, $last: Int, $before: String) {
  hosts(filter: $filter, orderBy: $orderBy, first: $first, after: $after, last: $last, before: $before) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    nodes { ...ConsoleHost }
  }
}
${HOST_FIELDS}`;

const hostState = {
  filter: { search: '', types: '', schedulerClusterIds: '', versions: '', idcs: '' },
  orderBy: { field: 'HOSTNAME', direction: 'ASC' },
  size: 50,
  cursor: null, // { after } | { before } | null (first page)
  pageIndex: 0,
  pageInfo: null,
  totalCount: 0,
  rows: new Map(), // host id -> <tr>
  joined: 0,
  left: 0,
  seq: 0,
};

function filterInput() {
  const f = hostState.filter;
  const out = {};
  if (f.search.trim()) out.search = f.search.trim();
  if (f.types) out.types = [f.types];
  if (f.schedulerClusterIds) out.schedulerClusterIds = [f.schedulerClusterIds];
  if (f.versions) out.versions = [f.versions];
  if (f.idcs) out.idcs = [f.idcs];
  return Object.keys(out).length ? out : null;
}

function cell(cls, text, extra) {
  return h('td', { class: cls, ...extra }, text ?? '');
}

function meterCell(cls, v) {
  const p = v == null ? 0 : Math.max(0, Math.min(100, v));
  return h('td', { class: `${cls} num meter`, style: `--p:${p.toFixed(1)}%`, 'data-value': v == null ? '' : v.toFixed(2) }, fmtPct(v));
}

function fillRow(tr, host) {
  const liveness = host.liveness?.state ?? 'UNKNOWN';
  const down = liveness === 'UNREACHABLE';
  const name = cell('hostname', host.hostname, {
    title: down ? `${host.id}: not answering its health service since ${fmtTime(host.liveness.since)}` : host.id,
  });
  if (down) name.prepend(h('span', { class: 'badge unreachable', text: 'unreachable' }), ' ');
  tr.replaceChildren(
    name,
    cell('ip', host.ip),
    cell('type', host.type),
    cell('cluster', host.schedulerClusterId),
    cell('version', host.build?.gitVersion),
    cell('idc', host.network?.idc),
    cell('location', host.network?.location),
    meterCell('cpu', host.cpu?.percent),
    meterCell('mem', host.memory?.usedPercent),
  );
  tr.dataset.type = host.type;
  tr.dataset.liveness = liveness;
  tr.classList.toggle('unreachable', down);
}

const FIELD_CELLS = {
  hostname: ['hostname'], ip: ['ip'], type: ['type'], schedulerClusterId: ['cluster'],
  build: ['version'], network: ['idc', 'location'], cpu: ['cpu'], memory: ['mem'],
  liveness: ['hostname'],
};

function flash(tr, changedFields) {
  tr.classList.remove('flash');
  void tr.offsetWidth; // restart the animation
  tr.classList.add('flash');
  for (const f of changedFields || []) {
    for (const c of FIELD_CELLS[f] || []) tr.querySelector(`td.${c}`)?.classList.add('changed');
  }
}

async function loadHosts() {
  const seq = ++hostState.seq;
  const table = $('#hosts-table');
  table.dataset.state = 'loading';
  const vars = { filter: filterInput(), orderBy: hostState.orderBy };
  if (hostState.cursor?.before) { vars.last = hostState.size; vars.before = hostState.cursor.before; }
  else { vars.first = hostState.size; if (hostState.cursor?.after) vars.after = hostState.cursor.after; }
  let r;
  try {
    r = await gql(HOSTS_QUERY, vars, 'hosts');
  } catch (e) {
    if (seq !== hostState.seq) return;
    table.dataset.state = 'error';
    showErrors('hosts', [{ message: e.message }]);
    return;
  }
  if (seq !== hostState.seq) return; // a newer request is on its way
  showErrors('hosts', r.errors);
  const conn = r.data?.hosts;
  if (!conn) { table.dataset.state = 'error'; return; }
  // Paging backwards onto the first page: count from 0 again.
  if (hostState.cursor?.before && !conn.pageInfo.hasPreviousPage) hostState.pageIndex = 0;
  hostState.pageInfo = conn.pageInfo;
  hostState.totalCount = conn.totalCount;
  hostState.joined = 0;
  hostState.left = 0;
  hostState.rows.clear();
  const rows = conn.nodes.map((host) => {
    const tr = h('tr', { 'data-host-id': host.id, 'data-cluster': host.schedulerClusterId, class: 'pick' });
    fillRow(tr, host);
    hostState.rows.set(host.id, tr);
    return tr;
  });
  const tbody = table.tBodies[0];
  if (rows.length) tbody.replaceChildren(...rows);
  else tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 9, class: 'muted', text: 'no hosts match' })));
  table.dataset.state = 'ready';
  table.dataset.rows = String(rows.length);
  renderPager(rows.length);
  renderNotice();
  renderSortHeaders();
}

function renderPager(n) {
  const pi = hostState.pageInfo;
  const start = hostState.pageIndex * hostState.size;
  $('#hosts-count').textContent = `${hostState.totalCount} match`;
  $('#page-info').textContent = n ? `${start + 1}–${start + n} of ${hostState.totalCount}` : `0 of ${hostState.totalCount}`;
  $('#page-prev').disabled = !(pi?.hasPreviousPage || hostState.pageIndex > 0);
  $('#page-next').disabled = !pi?.hasNextPage;
}

function renderNotice() {
  const el = $('#hosts-notice');
  const { joined, left } = hostState;
  if (!joined && !left) { el.hidden = true; el.replaceChildren(); return; }
  el.hidden = false;
  const parts = [];
  if (joined) parts.push(`${joined} host${joined > 1 ? 's' : ''} joined`);
  if (left) parts.push(`${left} left`);
  el.replaceChildren(
    `${parts.join(', ')} since this page was loaded. `,
    h('button', { type: 'button', class: 'small', onclick: () => loadHosts(), text: 'reload page' }),
  );
}

function renderSortHeaders() {
  for (const th of document.querySelectorAll('#hosts-table th[data-sort]')) {
    const on = th.dataset.sort === hostState.orderBy.field;
    th.setAttribute('aria-sort', on ? (hostState.orderBy.direction === 'ASC' ? 'ascending' : 'descending') : 'none');
  }
  $('#sort-field').value = hostState.orderBy.field;
  $('#sort-dir').value = hostState.orderBy.direction;
}

function firstPage() {
  hostState.cursor = null;
  hostState.pageIndex = 0;
  loadHosts();
}

const FILTER_SELECTS = { types: '#filter-type', schedulerClusterIds: '#filter-cluster', versions: '#filter-version', idcs: '#filter-idc' };

function setFilter(key, value) {
  hostState.filter[key] = value;
  if (FILTER_SELECTS[key]) $(FILTER_SELECTS[key]).value = value;
  renderStats();
  firstPage();
}

function wireHosts() {
  let searchTimer = null;
  $('#host-search').addEventListener('input', (e) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { hostState.filter.search = e.target.value; firstPage(); }, 250);
  });
  $('#hosts-filter').addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(searchTimer);
    hostState.filter.search = $('#host-search').value;
    firstPage();
  });
  for (const [key, sel] of Object.entries(FILTER_SELECTS)) {
    $(sel).addEventListener('change', (e) => setFilter(key, e.target.value));
  }
  $('#sort-field').addEventListener('change', (e) => { hostState.orderBy = { ...hostState.orderBy, field: e.target.value }; firstPage(); });
  $('#sort-dir').addEventListener('change', (e) => { hostState.orderBy = { ...hostState.orderBy, direction: e.target.value }; firstPage(); });
  $('#page-size').addEventListener('change', (e) => { hostState.size = Number(e.target.value) || 50; firstPage(); });
  $('#filter-reset').addEventListener('click', () => {
    hostState.filter = { search: '', types: '', schedulerClusterIds: '', versions: '', idcs: '' };
    $('#host-search').value = '';
    for (const sel of Object.values(FILTER_SELECTS)) $(sel).value = '';
    renderStats();
    firstPage();
  });
  for (const th of document.querySelectorAll('#hosts-table th[data-sort]')) {
    th.tabIndex = 0;
    const sort = () => {
      const field = th.dataset.sort;
      const same = hostState.orderBy.field === field;
      hostState.orderBy = { field, direction: same && hostState.orderBy.direction === 'ASC' ? 'DESC' : 'ASC' };
      firstPage();
    };
    th.addEventListener('click', sort);
    th.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sort(); } });
  }
  $('#page-next').addEventListener('click', () => {
    const pi = hostState.pageInfo;
    if (!pi?.hasNextPage) return;
    hostState.cursor = { after: pi.endCursor };
    hostState.pageIndex++;
    loadHosts();
  });
  $('#page-prev').addEventListener('click', () => {
    const pi = hostState.pageInfo;
    if (hostState.pageIndex <= 1 || !pi?.startCursor) { firstPage(); return; }
    hostState.cursor = { before: pi.startCursor };
    hostState.pageIndex--;
    loadHosts();
  });
}

// ---------- live host events ----------

// Batches: a poll that finds many hosts changed is one message, not one
// per host (README, hostEventBatches).
// Resumed with `after`: the cursor of the last event shown (first the
// newest of the log read on load), so a reconnect or a restart of the
// subscription neither misses nor repeats an event (docs/history.md).
const HOST_EVENTS = `subscription ConsoleHostEvents($includeResourceChanges: Boolean!, $after: EventCursor) {
  hostEventBatches(includeResourceChanges: $includeResourceChanges, after: $after) {
    kind changedFields observedAt schedulerClusterId cursor
    host { ...ConsoleHost }
  }
}
${HOST_FIELDS}`;

const RESOURCE_FIELDS = new Set(['cpu', 'memory', 'network', 'disk']);
const FEED_MAX = 200;
let eventCount = 0;
let stopHostEvents = null;
// The last logged event shown (resume point) and the cursors shown, to
// drop an event told twice.
const feedState = { lastCursor: null, seen: new Set() };

// False when the event was already shown.
function markSeen(ev) {
  if (!ev.cursor) return true;
  if (feedState.seen.has(ev.cursor)) return false;
  feedState.seen.add(ev.cursor);
  if (feedState.seen.size > 4 * FEED_MAX) feedState.seen.delete(feedState.seen.values().next().value);
  feedState.lastCursor = ev.cursor;
  return true;
}

function onHostEvent(ev) {
  if (!markSeen(ev)) return;
  onDetailEvent(ev);
  if (ev.kind !== 'UPDATED') scheduleChurn();
  eventCount++;
  $('#event-count').textContent = String(eventCount);
  addFeedItem(ev);
  const tr = hostState.rows.get(ev.host.id);
  if (tr) {
    if (ev.kind === 'LEFT') {
      tr.classList.add('left');
      tr.dataset.state = 'left';
      tr.title = `left at ${fmtTime(ev.observedAt)}`;
      hostState.left++;
    } else {
      fillRow(tr, ev.host);
      tr.classList.remove('left');
      delete tr.dataset.state;
    }
    tr.dataset.updatedAt = ev.observedAt;
    flash(tr, ev.changedFields);
  } else if (ev.kind === 'JOINED') {
    hostState.joined++;
  }
  renderNotice();
  if (ev.kind !== 'UPDATED' || ev.changedFields.some((f) => !RESOURCE_FIELDS.has(f))) scheduleStats();
}

function eventItem(ev, source) {
  return h('li', {
    class: `event kind-${ev.kind.toLowerCase()}`, 'data-kind': ev.kind, 'data-host-id': ev.host.id,
    'data-cluster': ev.schedulerClusterId, 'data-source': source, 'data-cursor': ev.cursor,
  },
  h('time', { datetime: ev.observedAt, text: fmtTime(ev.observedAt), title: ev.observedAt }),
  h('span', { class: 'kind', text: ev.kind }),
  h('span', { class: 'host', text: ev.host.hostname, title: ev.host.id }),
  h('span', { class: 'muted', text: `c${ev.schedulerClusterId}` }),
  ev.changedFields.length ? h('span', { class: 'fields', text: ev.changedFields.join(', ') }) : null);
}

function addFeedItem(ev, source = 'live') {
  if (source === 'live' && $('#opt-pause').checked) return;
  const feed = $('#event-feed');
  feed.prepend(eventItem(ev, source));
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
}

function startHostEvents() {
  stopHostEvents?.();
  const includeResourceChanges = $('#opt-resource-changes').checked;
  stopHostEvents = live(HOST_EVENTS, () => ({ includeResourceChanges, after: feedState.lastCursor }), {
    next: (p) => {
      if (p.errors?.length) hostEventsFailed(p.errors);
      for (const ev of p.data?.hostEventBatches ?? []) onHostEvent(ev);
    },
    error: (errs) => hostEventsFailed(Array.isArray(errs) ? errs : [{ message: String(errs) }]),
  });
}

// The log no longer reaches the last event shown (away longer than its
// retention): say so, and start again from what the log holds now.
function hostEventsFailed(errs) {
  showErrors('hostEvents', errs);
  if (!errs.some((e) => e.extensions?.code === 'CURSOR_EXPIRED')) return;
  feedState.lastCursor = null;
  $('#event-feed').prepend(h('li', { class: 'event gap', 'data-kind': 'GAP', text: 'gap: events older than the log\'s retention were missed' }));
  loadRecent();
}

// ---------- recent changes: the log, newest first ----------

const RECENT_QUERY = `query ConsoleRecent($first: Int!) {
  hostEventLog(first: $first) {
    events { kind changedFields observedAt schedulerClusterId cursor host { id hostname } }
  }
  eventLog { retentionSeconds oldestAt }
}`;

// Fills the feed from the log; the live subscription continues after its
// newest event. Without a log (disabled, unavailable) the feed is live only.
async function loadRecent() {
  const note = $('#feed-source');
  let r;
  try {
    r = await gql(RECENT_QUERY, { first: FEED_MAX }, 'recent');
  } catch (e) {
    showErrors('recent', [{ message: e.message }]);
    note.textContent = 'live only';
    return;
  }
  showErrors('recent', r.errors);
  const events = r.data?.hostEventLog?.events;
  if (!events) { note.textContent = 'live only (no event log)'; return; }
  // Oldest first, each on top: the newest ends up first.
  for (const ev of [...events].reverse()) {
    if (!markSeen(ev)) continue;
    addFeedItem(ev, 'log');
    eventCount++;
  }
  $('#event-count').textContent = String(eventCount);
  const feed = $('#event-feed');
  feed.dataset.loaded = String(events.length);
  const info = r.data.eventLog;
  const kept = info ? `kept ${fmtAge(Number(info.retentionSeconds) * 1000)}` : '';
  note.dataset.retention = info ? String(info.retentionSeconds) : '';
  note.title = info?.oldestAt ? `the log reaches back to ${info.oldestAt}` : '';
  note.textContent = events.length ? `from the log (${kept}), then live` : `live (the log, ${kept}, is empty)`;
}

// ---------- flapping hosts: hostChurn over the last hour ----------

const CHURN_QUERY = `query ConsoleChurn {
  hostChurn(windowSeconds: 3600, first: 20, minChanges: 2) {
    scanLimitReached
    hosts { host { id hostname } schedulerClusterId joins leaves updates outages lastAt }
  }
}`;
let churnTimer = null;
let churnSeq = 0;

function scheduleChurn() {
  clearTimeout(churnTimer);
  churnTimer = setTimeout(loadChurn, 1000);
}

async function loadChurn() {
  const seq = ++churnSeq;
  const table = $('#churn-table');
  let r;
  try {
    r = await gql(CHURN_QUERY, {}, 'churn');
  } catch (e) {
    if (seq === churnSeq) { table.dataset.state = 'error'; showErrors('churn', [{ message: e.message }]); }
    return;
  }
  if (seq !== churnSeq) return;
  showErrors('churn', r.errors);
  const report = r.data?.hostChurn;
  if (!report) { table.dataset.state = 'error'; return; }
  const rows = report.hosts.map((c) => h('tr', { 'data-host-id': c.host.id, 'data-cluster': c.schedulerClusterId, class: 'pick' },
    cell('hostname', c.host.hostname, { title: c.host.id }),
    cell('cluster', c.schedulerClusterId),
    cell('joins num', String(c.joins)),
    cell('leaves num', String(c.leaves)),
    cell('outages num', String(c.outages)),
    cell('updates num', String(c.updates)),
    cell('last', fmtTime(c.lastAt), { title: c.lastAt })));
  const tbody = table.tBodies[0];
  if (rows.length) tbody.replaceChildren(...rows);
  else tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 7, class: 'muted', text: 'no host changed twice in the last hour' })));
  table.dataset.state = 'ready';
  table.dataset.rows = String(rows.length);
  $('#churn-note').textContent = report.scanLimitReached ? 'partial: the log holds more than one query reads' : '';
}

// ---------- host detail: the host and its recent history ----------

const DETAIL_QUERY = `query ConsoleHostDetail($id: ID!, $cluster: ID, $first: Int!) {
  host(id: $id, schedulerClusterId: $cluster) {
    ...ConsoleHost
    events(first: $first) { kind changedFields observedAt schedulerClusterId cursor host { id hostname } }
  }
}
${HOST_FIELDS}`;
// A host that is gone is not in the schedulers' lists: its history comes
// from the log alone.
const GONE_QUERY = `query ConsoleGoneHost($id: ID!, $first: Int!) {
  hostEventLog(hostId: $id, first: $first) {
    events { kind changedFields observedAt schedulerClusterId cursor host { id hostname ip type schedulerClusterId } }
  }
}`;
const HISTORY_MAX = 20;
const detailState = { id: null, seq: 0 };

async function openHostDetail(id, cluster) {
  const seq = ++detailState.seq;
  detailState.id = id;
  const card = $('#host-detail');
  card.hidden = false;
  card.dataset.hostId = id;
  card.dataset.state = 'loading';
  let host = null;
  let events = null;
  try {
    const r = await gql(DETAIL_QUERY, { id, cluster: cluster || null, first: HISTORY_MAX }, 'host');
    if (seq !== detailState.seq) return;
    showErrors('host', r.errors);
    host = r.data?.host ?? null;
    events = host?.events ?? null;
    if (!host) {
      const g = await gql(GONE_QUERY, { id, first: HISTORY_MAX }, 'host');
      if (seq !== detailState.seq) return;
      showErrors('host', g.errors);
      events = g.data?.hostEventLog?.events ?? null;
      host = events?.[0]?.host ?? null;
    }
  } catch (e) {
    if (seq !== detailState.seq) return;
    showErrors('host', [{ message: e.message }]);
  }
  if (seq !== detailState.seq) return;
  renderHostDetail(id, host, events);
}

function renderHostDetail(id, host, events) {
  const card = $('#host-detail');
  $('#detail-title').textContent = host?.hostname ?? id;
  $('#detail-fields').replaceChildren(host ? kv(host, [
    ['id', host.id, 'mono'], ['ip', host.ip, 'mono'], ['type', host.type],
    ['schedulerClusterId', host.schedulerClusterId], ['version', host.build?.gitVersion],
    ['idc', host.network?.idc], ['location', host.network?.location],
    ['liveness', host.liveness ? `${host.liveness.state}${host.liveness.since ? ` since ${fmtTime(host.liveness.since)}` : ''}` : null],
  ]) : h('p', { class: 'muted', text: `${id}: not known to the schedulers nor to the log` }));
  const list = $('#detail-history');
  list.replaceChildren(...(events ?? []).map((ev) => eventItem(ev, 'log')));
  if (events && !events.length) list.replaceChildren(h('li', { class: 'muted', text: 'nothing in the log' }));
  card.dataset.state = events ? 'ready' : 'error';
  card.dataset.events = String(events?.length ?? 0);
}

// A live event of the host shown: on top of its history.
function onDetailEvent(ev) {
  if (ev.host.id !== detailState.id || $('#host-detail').dataset.state !== 'ready') return;
  if (ev.kind === 'UPDATED' && ev.changedFields.every((f) => RESOURCE_FIELDS.has(f))) return;
  const list = $('#detail-history');
  list.querySelector('li.muted')?.remove();
  list.prepend(eventItem(ev, 'live'));
  while (list.children.length > HISTORY_MAX) list.lastElementChild.remove();
  $('#host-detail').dataset.events = String(list.children.length);
}

function closeHostDetail() {
  detailState.seq++;
  detailState.id = null;
  $('#host-detail').hidden = true;
}

// Clicking a host (table, feed, flapping list) opens its detail.
function wireHostDetail() {
  for (const sel of ['#hosts-table tbody', '#event-feed', '#churn-table tbody']) {
    $(sel).addEventListener('click', (e) => {
      const el = e.target.closest('[data-host-id]');
      if (el) openHostDetail(el.dataset.hostId, el.dataset.cluster);
    });
  }
  $('#detail-close').addEventListener('click', closeHostDetail);
}

// ---------- scheduler health ----------

const HEALTH_QUERY = `query ConsoleHealth {
  schedulerClusters {
    id reachable
    schedulers {
      address schedulerClusterId
      health { up circuit lastSuccessAt lastError lastErrorAt latencyMs consecutiveFailures }
    }
  }
}`;

// Resumed with `after`: the cursor of the last logged transition shown, so
// what changed while the websocket was down arrives once after a reconnect.
const HEALTH_SUB = `subscription ConsoleClusterHealth($after: EventCursor) {
  clusterHealth(after: $after) { scheduler { address schedulerClusterId } up circuit observedAt cursor }
}`;

// live: address -> { up, circuit, observedAt }; lastCursor: resume point.
const health = { clusters: [], live: new Map(), lastCursor: null };

async function loadHealth() {
  try {
    const r = await gql(HEALTH_QUERY, null, 'health');
    showErrors('schedulerClusters', r.errors);
    if (r.data?.schedulerClusters) {
      health.clusters = r.data.schedulerClusters;
      renderHealth();
    }
  } catch (e) {
    showErrors('schedulerClusters', [{ message: e.message }]);
    $('#health').dataset.state = 'error';
  }
}

function renderHealth() {
  const root = $('#health');
  let up = 0;
  let total = 0;
  const blocks = health.clusters.map((c) => {
    let clusterUp = 0;
    const rows = c.schedulers.map((s) => {
      const lv = health.live.get(s.address);
      const isUp = lv ? lv.up : s.health.up;
      const circuit = lv ? lv.circuit : s.health.circuit;
      total++;
      if (isUp) { up++; clusterUp++; }
      return h('tr', { 'data-scheduler': s.address, 'data-up': String(isUp), 'data-circuit': circuit, class: isUp ? 'up' : 'down' },
        h('td', null, h('span', { class: `dot ${isUp ? 'ok' : 'bad'}` }), s.address),
        h('td', { class: `circuit c-${circuit.toLowerCase()}`, text: circuit }),
        h('td', { class: 'num', text: s.health.latencyMs == null ? '' : `${s.health.latencyMs.toFixed(1)}ms` }),
        h('td', { class: 'err', text: s.health.lastError ? `${s.health.lastError} (${fmtTime(s.health.lastErrorAt)})` : '', title: s.health.lastError || '' }));
    });
    const reachable = clusterUp > 0 || (c.reachable && !c.schedulers.some((s) => health.live.has(s.address)));
    return h('div', { class: 'health-cluster', 'data-cluster-id': c.id, 'data-reachable': String(reachable) },
      h('h3', null, h('span', { class: `dot ${reachable ? 'ok' : 'bad'}` }), `cluster ${c.id}`,
        h('span', { class: 'muted', text: ` ${clusterUp}/${c.schedulers.length} up` })),
      h('table', { class: 'health-table' },
        h('thead', null, h('tr', null, h('th', { text: 'scheduler' }), h('th', { text: 'circuit' }), h('th', { class: 'num', text: 'latency' }), h('th', { text: 'last error' }))),
        h('tbody', null, rows)));
  });
  root.replaceChildren(...(blocks.length ? blocks : [h('p', { class: 'muted', text: 'no scheduler clusters' })]));
  root.dataset.state = up === total ? 'healthy' : up === 0 ? 'down' : 'degraded';
  root.dataset.up = String(up);
  root.dataset.total = String(total);
  $('#health-summary').textContent = `${up}/${total} up`;
}

let healthRefetch = null;
function startHealth() {
  live(HEALTH_SUB, () => ({ after: health.lastCursor }), {
    next: (p) => {
      const ev = p.data?.clusterHealth;
      if (!ev) return;
      if (ev.cursor) health.lastCursor = ev.cursor;
      const prev = health.live.get(ev.scheduler.address);
      health.live.set(ev.scheduler.address, { up: ev.up, circuit: ev.circuit, observedAt: ev.observedAt });
      const known = health.clusters.some((c) => c.schedulers.some((s) => s.address === ev.scheduler.address));
      // A change (or a scheduler we have not listed): fetch the details too.
      if (!known || (prev && (prev.up !== ev.up || prev.circuit !== ev.circuit))) {
        clearTimeout(healthRefetch);
        healthRefetch = setTimeout(loadHealth, 300);
      }
      renderHealth();
    },
    error: (errs) => {
      const list = Array.isArray(errs) ? errs : [{ message: String(errs) }];
      showErrors('clusterHealth', list);
      // Older than the log reaches: start from the current state again.
      if (list.some((e) => e.extensions?.code === 'CURSOR_EXPIRED')) health.lastCursor = null;
    },
  });
}

// ---------- task & peer lookup ----------

const TASK_FIELDS = `fragment ConsoleTask on Task {
  id type url digest tag application filteredQueryParams contentLength pieceCount sizeScope
  state rawState peerCount hasAvailablePeer createdAt updatedAt schedulerClusterId
}`;
const TASK_QUERY = `query ConsoleTask($ids: [ID!]!, $schedulerClusterId: ID) {
  tasks(ids: $ids, schedulerClusterId: $schedulerClusterId) { ...ConsoleTask }
}
${TASK_FIELDS}`;
const TASK_SUB = `subscription ConsoleTaskChanged($id: ID!, $schedulerClusterId: ID) {
  taskChanged(id: $id, schedulerClusterId: $schedulerClusterId) { changedFields observedAt task { ...ConsoleTask } }
}
${TASK_FIELDS}`;

const PEER_FIELDS = `fragment ConsolePeer on Peer {
  id state rawState priority finishedPieceCount pieceCount costMs needBackToSource
  concurrentPieceCount createdAt updatedAt schedulerClusterId
  range { start length }
  host { id hostname ip }
  task { id state url peerCount }
}`;
const PEER_QUERY = `query ConsolePeer($hostId: ID!, $taskId: ID!, $peerId: ID!, $schedulerClusterId: ID) {
  peer(hostId: $hostId, taskId: $taskId, peerId: $peerId, schedulerClusterId: $schedulerClusterId) { ...ConsolePeer }
}
${PEER_FIELDS}`;
const PEER_SUB = `subscription ConsolePeerState($hostId: ID!, $taskId: ID!, $peerId: ID!, $schedulerClusterId: ID) {
  peerStateChanged(hostId: $hostId, taskId: $taskId, peerId: $peerId, schedulerClusterId: $schedulerClusterId) {
    from to observedAt peer { ...ConsolePeer }
  }
}
${PEER_FIELDS}`;

// The dfdaemon's URL-based task id (dragonfly client, id_generator +
// url::filter_query_params): sha256 over the canonical url, then the tag,
// the application and the piece length when given, then "STANDARD" (the
// task type). The url is used as given unless query parameters are
// filtered; then the remaining parameters are sorted by key (values of one
// key keep their order), escaped like Go's url.QueryEscape, segments holding
// ';' are dropped, and a bare "/" path loses its trailing slash.
function goQueryEscape(s) {
  let out = '';
  for (const b of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-._~]/.test(c)) out += c;
    else if (b === 0x20) out += '+';
    else out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

export function canonicalTaskUrl(rawUrl, filteredQueryParams) {
  if (!filteredQueryParams.length) return rawUrl;
  const url = new URL(rawUrl);
  const query = url.search.startsWith('?') ? url.search.slice(1) : '';
  const pairs = [];
  for (const seg of query.split('&')) {
    if (!seg || seg.includes(';')) continue;
    for (const [k, v] of new URLSearchParams(seg)) {
      if (!filteredQueryParams.includes(k)) pairs.push([k, v]);
    }
  }
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); // stable
  url.search = pairs.length ? '?' + pairs.map(([k, v]) => `${goQueryEscape(k)}=${goQueryEscape(v)}`).join('&') : '';
  let s = url.href;
  if (url.pathname === '/' && s.endsWith('/')) s = s.replace(/\/+$/, '');
  return s;
}

export async function dfdaemonTaskId({ url, tag, application, filteredQueryParams = [], pieceLength }) {
  let s = canonicalTaskUrl(url, filteredQueryParams);
  if (tag) s += tag;
  if (application) s += application;
  if (pieceLength != null && pieceLength !== '') s += String(pieceLength);
  s += 'STANDARD';
  const bytes = new TextEncoder().encode(s);
  // crypto.subtle exists only in secure contexts (https, localhost); a
  // console on plain http elsewhere uses the small fallback below.
  const digest = globalThis.crypto?.subtle
    ? new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))
    : sha256(bytes);
  return [...digest].map((b) => b.toString(16).padStart(2, '0')).join('');
}

// SHA-256 (FIPS 180-4) of a Uint8Array, for when crypto.subtle is missing.
export function sha256(msg) {
  const K = new Uint32Array(64);
  const H = new Uint32Array(8);
  const frac = (x) => ((x - Math.floor(x)) * 2 ** 32) >>> 0;
  for (let n = 2, i = 0; i < 64; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) if (n % d === 0) { prime = false; break; }
    if (!prime) continue;
    if (i < 8) H[i] = frac(Math.sqrt(n));
    K[i++] = frac(Math.cbrt(n));
  }
  const len = msg.length;
  const padded = new Uint8Array(((len + 9 + 63) >> 6) << 6);
  padded.set(msg);
  padded[len] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(len / 2 ** 29));
  view.setUint32(padded.length - 4, (len << 3) >>> 0);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = H;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += hh;
  }
  const out = new Uint8Array(32);
  const ov = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) ov.setUint32(i * 4, H[i]);
  return out;
}

// OCI blob urls (…/v2/<name>/blobs/sha256:<hex>) are fetched by the dfdaemon
// proxy under the blob digest itself.
export function blobDigestTaskId(url) {
  const m = /\/v2\/.+\/blobs\/(sha256:([a-f0-9]{64})|sha512:([a-f0-9]{128}))(?:$|[?#])/.exec(url);
  return m ? (m[2] || m[3]) : null;
}

const lookups = { task: null, peer: null };

function kv(obj, keys) {
  return h('dl', { class: 'kv' }, keys.flatMap(([k, v, cls]) => [
    h('dt', { text: k }),
    h('dd', { class: cls, 'data-field': k, text: v == null || v === '' ? '–' : String(v) }),
  ]));
}

function renderTask(task, changed = []) {
  const el = $('#task-result');
  el.classList.remove('muted');
  el.dataset.state = task.state;
  el.dataset.taskId = task.id;
  el.replaceChildren(kv(task, [
    ['id', task.id, 'mono'], ['state', task.state, `state s-${task.state.toLowerCase()}`], ['rawState', task.rawState],
    ['url', task.url, 'mono'], ['peerCount', task.peerCount], ['hasAvailablePeer', task.hasAvailablePeer],
    ['contentLength', `${fmtBytes(task.contentLength)} (${task.contentLength})`], ['pieceCount', task.pieceCount],
    ['sizeScope', task.sizeScope], ['type', task.type], ['tag', task.tag], ['application', task.application],
    ['digest', task.digest, 'mono'], ['filteredQueryParams', task.filteredQueryParams.join(', ')],
    ['schedulerClusterId', task.schedulerClusterId], ['createdAt', task.createdAt], ['updatedAt', task.updatedAt],
  ]));
  for (const f of changed) el.querySelector(`dd[data-field="${f}"]`)?.classList.add('changed');
}

function setLive(which, state, text) {
  const el = $(`#${which}-live`);
  el.dataset.state = state;
  el.textContent = text || state;
  $(`#${which}-stop`).hidden = state !== 'live';
}

// A lookup's subscription failed: NOT_FOUND means the entity went away.
function subError(which, field, errs) {
  const list = Array.isArray(errs) ? errs : [{ message: String(errs) }];
  lookups[which] = null;
  if (list.some((e) => e.extensions?.code === 'NOT_FOUND')) {
    setLive(which, 'ended', 'gone');
    logLine(`#${which}-events`, [`${which} no longer exists`]);
    return;
  }
  setLive(which, 'error');
  logLine(`#${which}-events`, [`${field}: ${list.map((e) => e.message).join('; ')}`]);
  showErrors(field, list);
}

function stopLookup(which) {
  lookups[which]?.();
  lookups[which] = null;
  freshness.forget(which);
}

function logLine(listSel, parts) {
  const list = $(listSel);
  list.prepend(h('li', null, ...parts));
  while (list.children.length > 50) list.lastElementChild.remove();
}

async function lookupTask(ids, clusterId, note) {
  stopLookup('task');
  $('#task-events').replaceChildren();
  const el = $('#task-result');
  el.dataset.state = 'loading';
  el.textContent = `looking up ${ids.join(' / ')}…`;
  setLive('task', 'idle');
  let r;
  try {
    r = await gql(TASK_QUERY, { ids, schedulerClusterId: clusterId || null }, 'task');
  } catch (e) {
    el.dataset.state = 'error';
    el.textContent = e.message;
    return;
  }
  showErrors('task', r.errors);
  const task = (r.data?.tasks || []).find(Boolean);
  if (!task) {
    el.dataset.state = 'not-found';
    el.classList.add('muted');
    el.textContent = `no task ${ids.join(' or ')}${note ? ` (${note})` : ''}`;
    freshness.forget('task');
    return;
  }
  renderTask(task);
  const vars = { id: task.id, schedulerClusterId: clusterId || task.schedulerClusterId };
  setLive('task', 'live');
  lookups.task = live(TASK_SUB, vars, {
    next: (p) => {
      if (p.errors?.length) showErrors('taskChanged', p.errors);
      const ev = p.data?.taskChanged;
      if (!ev) return;
      freshness.forget('task'); // pushed on every change: current while live
      renderTask(ev.task, ev.changedFields);
      logLine('#task-events', [
        h('time', { text: fmtTime(ev.observedAt) }), ' ',
        ev.changedFields.length ? `${ev.changedFields.join(', ')} → ${ev.task.state}, ${ev.task.peerCount} peers` : `current: ${ev.task.state}, ${ev.task.peerCount} peers`,
      ]);
    },
    error: (errs) => subError('task', 'taskChanged', errs),
    complete: () => { setLive('task', 'ended', 'gone'); logLine('#task-events', ['task disappeared']); },
    resubscribe: false,
  });
}

function renderPeer(peer) {
  const el = $('#peer-result');
  el.classList.remove('muted');
  el.dataset.state = peer.state;
  el.replaceChildren(kv(peer, [
    ['id', peer.id, 'mono'], ['state', peer.state, `state s-${peer.state.toLowerCase()}`], ['rawState', peer.rawState],
    ['progress', peer.pieceCount ? `${peer.finishedPieceCount}/${peer.pieceCount} pieces` : `${peer.finishedPieceCount} pieces`],
    ['host', peer.host ? `${peer.host.hostname} (${peer.host.ip})` : null],
    ['task', peer.task && peer.task.id !== $('#peer-task-id').value.trim() ? `${peer.task.id} (not the task asked for)` : peer.task?.id, 'mono'],
    ['taskState', peer.task?.state], ['priority', peer.priority], ['costMs', peer.costMs],
    ['needBackToSource', peer.needBackToSource], ['range', peer.range ? `${peer.range.start}+${peer.range.length}` : null],
    ['schedulerClusterId', peer.schedulerClusterId], ['updatedAt', peer.updatedAt],
  ]));
}

async function lookupPeer(vars) {
  stopLookup('peer');
  $('#peer-events').replaceChildren();
  const el = $('#peer-result');
  el.dataset.state = 'loading';
  el.textContent = 'looking up…';
  setLive('peer', 'idle');
  let r;
  try {
    r = await gql(PEER_QUERY, vars, 'peer');
  } catch (e) {
    el.dataset.state = 'error';
    el.textContent = e.message;
    return;
  }
  showErrors('peer', r.errors);
  const peer = r.data?.peer;
  if (!peer) {
    el.dataset.state = 'not-found';
    el.classList.add('muted');
    el.textContent = `no peer ${vars.peerId}`;
    freshness.forget('peer');
    return;
  }
  renderPeer(peer);
  setLive('peer', 'live');
  lookups.peer = live(PEER_SUB, { ...vars, schedulerClusterId: vars.schedulerClusterId || peer.schedulerClusterId }, {
    next: (p) => {
      if (p.errors?.length) showErrors('peerStateChanged', p.errors);
      const ev = p.data?.peerStateChanged;
      if (!ev) return;
      freshness.forget('peer');
      renderPeer(ev.peer);
      logLine('#peer-events', [h('time', { text: fmtTime(ev.observedAt) }), ' ', ev.from ? `${ev.from} → ${ev.to}` : `current: ${ev.to}`,
        ` (${ev.peer.finishedPieceCount}${ev.peer.pieceCount ? '/' + ev.peer.pieceCount : ''} pieces)`]);
    },
    error: (errs) => subError('peer', 'peerStateChanged', errs),
    complete: () => { setLive('peer', 'ended', 'gone'); logLine('#peer-events', ['peer disappeared']); },
    resubscribe: false,
  });
}

// Dragonfly peer ids are "<ip>-<hostname>-<uuid>[-seed]" and host ids
// "<ip>-<hostname>[-seed]".
export function hostIdFromPeerId(peerId) {
  const m = /^(.*)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-seed)?$/i.exec(peerId);
  return m ? m[1] + (m[2] || '') : '';
}

function urlInputs() {
  return {
    url: $('#task-url').value.trim(),
    tag: $('#task-tag').value,
    application: $('#task-app').value,
    filteredQueryParams: $('#task-filtered').value.split(',').map((s) => s.trim()).filter(Boolean),
    pieceLength: $('#task-piece-length').value.trim(),
  };
}

async function computeUrlId() {
  const inp = urlInputs();
  const out = $('#task-computed-id');
  if (!inp.url) { out.textContent = ''; return null; }
  try {
    const id = await dfdaemonTaskId(inp);
    out.textContent = id;
    out.dataset.taskId = id;
    return id;
  } catch (e) {
    out.textContent = `invalid url: ${e.message}`;
    delete out.dataset.taskId;
    return null;
  }
}

function wireLookup() {
  $('#task-id-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('#task-id').value.trim();
    if (id) lookupTask([id], $('#task-cluster').value.trim());
  });
  for (const id of ['#task-url', '#task-tag', '#task-app', '#task-filtered', '#task-piece-length']) {
    $(id).addEventListener('input', computeUrlId);
  }
  $('#task-url-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const id = await computeUrlId();
    if (!id) return;
    const ids = [id];
    const blob = blobDigestTaskId($('#task-url').value.trim());
    if (blob) ids.push(blob);
    lookupTask(ids, '', 'computed from the url');
  });
  $('#peer-id').addEventListener('input', (e) => {
    $('#peer-host-id').placeholder = hostIdFromPeerId(e.target.value.trim()) || 'host id (default: from peer id)';
  });
  $('#peer-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const peerId = $('#peer-id').value.trim();
    const hostId = $('#peer-host-id').value.trim() || hostIdFromPeerId(peerId);
    const taskId = $('#peer-task-id').value.trim();
    if (!hostId) {
      $('#peer-result').textContent = 'host id needed (it cannot be derived from this peer id)';
      return;
    }
    lookupPeer({ hostId, taskId, peerId, schedulerClusterId: $('#peer-cluster').value.trim() || null });
  });
  $('#task-stop').addEventListener('click', () => { stopLookup('task'); setLive('task', 'idle', 'stopped'); });
  $('#peer-stop').addEventListener('click', () => { stopLookup('peer'); setLive('peer', 'idle', 'stopped'); });
  // Deep links: ?task=ID, ?peer=PEER&peerTask=TASK[&peerHost=HOST].
  if (params.get('task')) { $('#task-id').value = params.get('task'); lookupTask([params.get('task')], ''); }
  if (params.get('peer') && params.get('peerTask')) {
    $('#peer-id').value = params.get('peer');
    $('#peer-task-id').value = params.get('peerTask');
    $('#peer-host-id').value = params.get('peerHost') || '';
    $('#peer-form').requestSubmit();
  }
}

// ---------- start ----------

function start() {
  $('#endpoint-http').textContent = HTTP_URL;
  $('#endpoint-ws').textContent = WS_URL;
  const resources = $('#opt-resource-changes');
  let stored = null;
  try { stored = localStorage.getItem('dfgraphResourceChanges'); } catch { /* private mode */ }
  resources.checked = params.has('resources') ? params.get('resources') !== '0' : stored === '1';
  resources.addEventListener('change', () => {
    try { localStorage.setItem('dfgraphResourceChanges', resources.checked ? '1' : '0'); } catch { /* ignore */ }
    startHostEvents();
  });
  $('#token-btn').addEventListener('click', () => {
    const t = prompt('Bearer token for the gateway (empty to clear):', token());
    if (t === null) return;
    try { if (t) localStorage.setItem('dfgraphToken', t); else localStorage.removeItem('dfgraphToken'); } catch { /* ignore */ }
    ws.restart();
    refreshAll();
  });
  $('#token-btn').classList.toggle('on', !!token());

  wireHosts();
  wireLookup();
  wireHostDetail();
  // The log first, then live events after its newest.
  loadRecent().finally(startHostEvents);
  startHealth();
  refreshAll();

  // Missed events while the socket was down: host events resume from the
  // last cursor (startHostEvents); the rest is fetched again.
  ws.onReconnect(refreshAll);
  setInterval(renderFreshness, 1000);
  // Events cover joins, leaves and changes; these keep load figures (not
  // pushed unless asked for) and cache ages current.
  setInterval(() => { if (!document.hidden) loadStats(); }, 30000);
  setInterval(() => { if (!document.hidden) loadHealth(); }, 15000);
  setInterval(() => { if (!document.hidden) loadHosts(); }, 30000);
  setInterval(() => { if (!document.hidden) loadChurn(); }, 60000);
}

function refreshAll() {
  loadStats();
  loadHosts();
  loadHealth();
  loadChurn();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
