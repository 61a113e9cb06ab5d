// The Spool console: a page per hash route (#/, #/topics/NAME, #/groups, #/groups/NAME,
// #/queues, #/queues/TOPIC/QUEUE) over the JSON API under /api/v1/ (docs/api.md). Record
// data is only ever put into the page as text (textContent), never parsed as HTML; the
// server's CSP allows scripts from this origin only. With auth on, the token asked for
// once is kept in sessionStorage and sent only as the Authorization header.

const main = document.getElementById('main');
const TOKEN = 'spool-token';

/** An element with attributes (`on*` are listeners) and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (method !== 'GET') headers['Content-Type'] = 'application/json';
  const r = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, data.code || String(r.status), data.message || r.statusText);
  return data;
}

const enc = encodeURIComponent;
const num = (s) => Number(s || 0);
const human = (n) => Number(n).toLocaleString('en-US');
function bytes(n) {
  n = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function table(columns, rows, attrs = {}) {
  return el('table', attrs,
    el('thead', {}, el('tr', {}, columns.map(([name, numeric]) => el('th', { class: numeric ? 'num' : undefined }, name)))),
    el('tbody', {}, rows.map((cells) => el('tr', {}, cells.map((c, i) =>
      el('td', { class: columns[i][1] ? 'num' : undefined }, c))))));
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

// ---- record values: text, pretty JSON, or hex ---------------------------------------

function decode64(b64) {
  const raw = atob(b64 || '');
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) out[i] = raw.charCodeAt(i);
  return out;
}

function encode64(text) {
  const data = new TextEncoder().encode(text);
  let raw = '';
  for (const b of data) raw += String.fromCharCode(b);
  return btoa(raw);
}

const hex = (data) => Array.from(data, (b) => b.toString(16).padStart(2, '0')).join(' ');

/** A value as the chosen view: `auto` is JSON if it parses, else text if UTF-8, else hex. */
function view(b64, mode) {
  const data = decode64(b64);
  if (mode === 'hex') return hex(data);
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch {
    return hex(data);
  }
  if (mode === 'text') return text;
  try {
    const parsed = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object') return JSON.stringify(parsed, null, 2);
  } catch { /* not JSON */ }
  return text;
}

// ---- charts: a line over the history's samples (SVG, drawn here: no library) -------

const SVG = 'http://www.w3.org/2000/svg';

/** A small line chart of `points` ([x, y] pairs) with its last value as text. */
function chart(points, label, { width = 160, height = 32 } = {}) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('class', 'chart');
  if (points.length > 1) {
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const top = Math.max(...ys, 1);
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', points.map(([x, y]) =>
      `${((x - x0) / Math.max(x1 - x0, 1)) * (width - 2) + 1},${height - 1 - (y / top) * (height - 2)}`).join(' '));
    svg.append(line);
  }
  const last = points.length ? points[points.length - 1][1] : 0;
  return el('span', { class: 'trend' }, svg, ` ${label(last)}`);
}

/** Per-second rates between consecutive samples of a total. */
function rates(samples, key) {
  const out = [];
  for (let i = 1; i < samples.length; i += 1) {
    const dt = (num(samples[i].atMs) - num(samples[i - 1].atMs)) / 1000;
    if (dt > 0) out.push([num(samples[i].atMs), Math.max(0, num(samples[i][key]) - num(samples[i - 1][key])) / dt]);
  }
  return out;
}

/** How far back the history reaches (90 samples). */
function span(past) {
  const s = (num(past.sampleMs) * 90) / 1000;
  return s >= 120 ? `${Math.round(s / 60)} minutes` : `${Math.round(s)} seconds`;
}

async function history() {
  try {
    return await api('/history');
  } catch {
    return { topics: [], groups: [] };
  }
}

// ---- pages ------------------------------------------------------------------------

async function overview() {
  const [{ topics }, past, node] = await Promise.all([api('/topics'), history(), api('/node')]);
  const samples = Object.fromEntries(past.topics.map((t) => [t.topic, t.samples]));
  const perSec = (v) => `${human(Math.round(v))}/s`;
  const records = (t) => t.partitionInfo.reduce((n, p) => n + num(p.endOffset) - num(p.startOffset), 0);
  const size = (t) => t.partitionInfo.reduce((n, p) => n + num(p.sizeBytes), 0);
  const failed = topics.flatMap((t) => t.partitionInfo.filter((p) => p.state === 'PARTITION_STATE_FAILED'));
  show(
    el('h1', {}, 'Topics'),
    el('p', { id: 'node' }, `Broker ${node.version}: `,
      el('span', { class: node.health === 'SERVING' ? undefined : 'paused' },
        node.health === 'SERVING' ? 'serving' : `${node.failedPartitions.length} partitions failed`),
      `; auth ${node.auth ? 'on' : 'off'}; console writes ${node.consoleWrites ? 'on' : 'off'}.`),
    el('div', { class: 'cards' },
      el('div', { class: 'card' }, el('b', { id: 'topic-count' }, topics.length), 'topics'),
      el('div', { class: 'card' }, el('b', {}, human(topics.reduce((n, t) => n + records(t), 0))), 'records'),
      el('div', { class: 'card' }, el('b', {}, bytes(topics.reduce((n, t) => n + size(t), 0))), 'on disk'),
      el('div', { class: 'card' }, el('b', { class: failed.length ? 'paused' : undefined }, failed.length), 'failed partitions')),
    topics.length === 0
      ? el('p', { class: 'muted' }, 'No topics yet.')
      : table([['Topic'], ['Partitions', true], ['Records', true], ['Size', true], ['Fsync'],
        ['Appended (records/s)'], ['Read (bytes/s)']],
        topics.map((t) => [
          el('a', { href: `#/topics/${enc(t.name)}` }, t.name),
          t.partitions, human(records(t)), bytes(size(t)),
          (t.config.fsync || '').replace('FSYNC_POLICY_', '').toLowerCase(),
          chart(rates(samples[t.name] || [], 'records'), perSec),
          chart(rates(samples[t.name] || [], 'readBytes'), (v) => `${bytes(v)}/s`),
        ]), { id: 'topics' }),
    el('p', { class: 'muted' }, `Rates over the last ${span(past)}, a sample every ${num(past.sampleMs) / 1000} s.`),
  );
}

async function topicPage(name) {
  const { topic } = await api(`/topics/${enc(name)}`);
  const out = el('div', { id: 'records' });
  const partition = el('select', { name: 'partition' },
    topic.partitionInfo.map((p) => el('option', { value: p.partition }, `partition ${p.partition}`)));
  const from = el('select', { name: 'from' },
    el('option', { value: 'end' }, 'the last'), el('option', { value: 'offset' }, 'from offset'),
    el('option', { value: 'time' }, 'from time'));
  const offset = el('input', { name: 'offset', type: 'number', min: 0, value: 0, size: 8 });
  const time = el('input', { name: 'time', type: 'datetime-local', step: 1 });
  const count = el('input', { name: 'count', type: 'number', min: 1, max: 1000, value: 20, size: 5 });
  const mode = el('select', { name: 'mode' },
    ['auto', 'text', 'hex'].map((m) => el('option', { value: m }, m === 'auto' ? 'JSON or text' : m)));

  async function browse(ev) {
    ev?.preventDefault();
    const p = topic.partitionInfo[Number(partition.value)];
    const n = Number(count.value) || 20;
    let where;
    if (from.value === 'end') where = `offset=${Math.max(num(p.startOffset), num(p.endOffset) - n)}`;
    else if (from.value === 'time') where = `timestamp_ms=${new Date(time.value).getTime() || 0}`;
    else where = `offset=${Number(offset.value) || 0}`;
    try {
      const { records } = await api(`/topics/${enc(name)}/partitions/${p.partition}/records?${where}&max_records=${n}`);
      out.replaceChildren(records.length === 0
        ? el('p', { class: 'muted' }, 'No records there.')
        : table([['Offset', true], ['Time'], ['Key'], ['Value'], ['Headers']], records.map((r) => [
          r.offset,
          new Date(num(r.timestampMs)).toISOString(),
          el('pre', { class: 'value' }, view(r.key, mode.value)),
          el('pre', { class: 'value record-value' }, view(r.value, mode.value)),
          r.headers.map((h) => `${h.key}=${view(h.value, 'text')}`).join('\n'),
        ])));
    } catch (e) {
      out.replaceChildren(failure(e));
    }
  }

  const key = el('input', { name: 'key', placeholder: 'key (optional)' });
  const value = el('textarea', { name: 'value', placeholder: 'value' });
  const produced = el('p', { class: 'muted', id: 'produced' });
  async function produce(ev) {
    ev.preventDefault();
    const record = { value: encode64(value.value) };
    if (key.value) record.key = encode64(key.value);
    try {
      const r = await api(`/topics/${enc(name)}/records`, { method: 'POST', body: { records: [record] } });
      produced.textContent = `appended to partition ${r.partition} at offset ${r.baseOffset}`;
      value.value = '';
    } catch (e) {
      produced.replaceChildren(failure(e));
    }
  }

  show(
    el('h1', {}, `Topic ${topic.name}`),
    table([['Partition', true], ['Start', true], ['End', true], ['Records', true], ['Size', true], ['State']],
      topic.partitionInfo.map((p) => [p.partition, p.startOffset, p.endOffset,
        human(num(p.endOffset) - num(p.startOffset)), bytes(p.sizeBytes),
        p.state === 'PARTITION_STATE_FAILED' ? el('span', { class: 'paused' }, `failed: ${p.failure}`) : 'ok'])),
    el('h2', {}, 'Browse records'),
    el('form', { class: 'inline', onsubmit: browse, id: 'browse' }, partition, from, count, 'records;', 'offset', offset,
      'time', time, mode,
      el('button', { type: 'submit' }, 'Show')),
    out,
    el('h2', {}, 'Produce a test record'),
    el('form', { onsubmit: produce, id: 'produce' }, key, value, el('button', { type: 'submit' }, 'Append'), produced),
  );
  await browse();
}

async function groupsPage() {
  const { groups } = await api('/groups');
  show(el('h1', {}, 'Consumer groups'),
    groups.length === 0 ? el('p', { class: 'muted' }, 'No groups yet.')
      : table([['Group'], ['Topics']], groups.map((g) => [
        el('a', { href: `#/groups/${enc(g.group)}` }, g.group), g.topics.join(', ')]), { id: 'groups' }));
}

async function groupPage(name) {
  const [{ topics }, past] = await Promise.all([api(`/groups/${enc(name)}`), history()]);
  const lagOf = (topic) => (past.groups.find((g) => g.group === name && g.topic === topic)?.samples || [])
    .map((s) => [num(s.atMs), num(s.lag)]);
  show(el('h1', {}, `Group ${name}`), ...topics.flatMap((t) => [
    el('h2', {}, `${t.topic} (generation ${t.generation})`),
    el('p', {}, 'Lag over time: ', chart(lagOf(t.topic), (v) => `${human(v)} records now`, { width: 320, height: 48 })),
    t.members.length === 0 ? el('p', { class: 'muted' }, 'No members.')
      : table([['Member'], ['Partitions'], ['Connected']],
        t.members.map((m) => [m.memberId, m.partitions.join(', '), m.connected ? 'yes' : 'no'])),
    table([['Partition', true], ['Committed', true], ['End', true], ['Lag', true]],
      t.partitions.map((p) => [p.partition, p.committed ?? '—', p.endOffset, human(p.lag)]),
      { class: 'lag', 'data-topic': t.topic }),
  ]));
}

async function queuesPage() {
  const { queues } = await api('/queues');
  show(el('h1', {}, 'Queues'),
    queues.length === 0 ? el('p', { class: 'muted' }, 'No queues yet.')
      : table([['Queue'], ['Ready', true], ['Delayed', true], ['Leased', true], ['Acked', true], ['Dead-lettered', true], ['Paused']],
        queues.map((q) => [el('a', { href: `#/queues/${enc(q.topic)}/${enc(q.queue)}` }, `${q.topic}/${q.queue}`),
          human(q.ready), human(q.delayed), human(q.leased), human(q.ackedTotal), human(q.deadLetteredTotal),
          q.paused ? el('span', { class: 'paused' }, q.paused) : '']), { id: 'queues' }));
}

async function queuePage(topic, name) {
  const { queue: q } = await api(`/queues/${enc(topic)}/${enc(name)}`);
  const said = el('p', { class: 'muted', id: 'redrive-result' });
  async function redrive() {
    try {
      const r = await api(`/queues/${enc(topic)}/${enc(name)}/redrive`, { method: 'POST', body: {} });
      said.textContent = `redriving dead letters ${r.startOffset}..${r.endOffset}`;
    } catch (e) {
      said.replaceChildren(failure(e));
    }
  }
  const card = (label, value) => el('div', { class: 'card' }, el('b', {}, human(value)), label);
  show(el('h1', {}, `Queue ${topic}/${name}`),
    q.paused ? el('p', { class: 'paused' }, `Paused: ${q.paused}`) : null,
    el('div', { class: 'cards' }, card('ready', q.ready), card('delayed', q.delayed), card('leased', q.leased),
      card('acked', q.ackedTotal), card('dead-lettered', q.deadLetteredTotal), card('redriven', q.redrivenTotal),
      card('redrive remaining', q.redriveRemaining)),
    el('p', {}, `Dead letters go to ${q.config.deadLetterTopic}. `,
      el('button', { onclick: redrive, id: 'redrive' }, 'Redrive dead letters')), said,
    el('h2', {}, 'Partitions'),
    table([['Partition', true], ['Ack floor', true], ['End', true], ['Leased', true]],
      q.partitions.map((p) => [p.partition, p.ackFloor, p.endOffset, p.leased])),
    el('h2', {}, 'Workers'),
    q.consumers.length === 0 ? el('p', { class: 'muted' }, 'None in the last lease period.')
      : table([['Worker'], ['Leased', true]], q.consumers.map((c) => [c.consumer || '(unnamed)', c.leased])));
}

// ---- routing, errors, login -------------------------------------------------------

function failure(e) {
  return el('p', { class: 'error' }, `${e.code || 'ERROR'}: ${e.message}`);
}

function login(message) {
  const input = el('input', { type: 'password', name: 'token', placeholder: 'token', autocomplete: 'off', size: 40 });
  show(el('h1', {}, 'Sign in'),
    el('p', {}, message),
    el('form', {
      class: 'inline', id: 'login',
      onsubmit: (ev) => {
        ev.preventDefault();
        sessionStorage.setItem(TOKEN, input.value.trim());
        route();
      },
    }, input, el('button', { type: 'submit' }, 'Use this token')));
}

async function route() {
  document.getElementById('logout').hidden = !sessionStorage.getItem(TOKEN);
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  try {
    if (parts.length === 0) await overview();
    else if (parts[0] === 'topics' && parts.length === 2) await topicPage(parts[1]);
    else if (parts[0] === 'groups' && parts.length === 1) await groupsPage();
    else if (parts[0] === 'groups' && parts.length === 2) await groupPage(parts[1]);
    else if (parts[0] === 'queues' && parts.length === 1) await queuesPage();
    else if (parts[0] === 'queues' && parts.length === 3) await queuePage(parts[1], parts[2]);
    else show(el('p', { class: 'error' }, 'No such page.'));
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem(TOKEN);
      login('This broker has auth on: give a token (kept in this tab only).');
    } else {
      show(failure(e));
    }
  }
}

document.getElementById('logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN);
  route();
});
window.addEventListener('hashchange', route);
route();
