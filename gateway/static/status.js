// The ringstore status page (GET /status): polls /api/cluster once a second (never two
// requests at a time) and follows the change feed /api/users/changes. Every string that comes
// from the API is inserted as text, never as markup: ids and names are user-supplied.
'use strict';

(() => {
  const POLL_MS = 1000;
  const POLL_TIMEOUT_MS = 5000;
  /** A node silent for longer than this is down (the gateway's presence window). */
  const SILENT_MS = 3000;
  /** How often heartbeat ages (and so down states) are brought up to date between polls. */
  const AGE_EVERY_MS = 250;
  const MAX_CHANGES = 20;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  const KEY_STORAGE = 'ringstore.api-key';
  const STATE_LABEL = { ready: 'ready', 'catching-up': 'catching up', down: 'down' };
  const STATE_BADGE = { ready: 'ok', 'catching-up': 'warn', down: 'bad' };

  const byId = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const clock = (date) => date.toLocaleTimeString([], { hour12: false });

  /** An element; string and number children become text nodes, null ones are skipped. */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  const num = (value) => el('span', { class: 'num' }, value === null || value === undefined ? '–' : String(value));
  const badge = (kind, text) => el('span', { class: `badge badge-${kind}` }, text);

  // ---- API key: from #key=…, kept in sessionStorage, asked for on 401/403 ----

  let apiKey = null;
  let keyWanted = null; // { promise, resolve } while the form is shown

  function loadKey() {
    const match = /(?:^#|&)key=([^&]*)/.exec(location.hash);
    let given = null;
    try { given = match ? decodeURIComponent(match[1]) : null; } catch (_) { given = match[1]; }
    if (given) {
      history.replaceState(null, '', location.pathname + location.search);
      apiKey = given;
      try { sessionStorage.setItem(KEY_STORAGE, given); } catch (_) { /* storage off: this page only */ }
      return;
    }
    try { apiKey = sessionStorage.getItem(KEY_STORAGE); } catch (_) { apiKey = null; }
  }

  function headers(extra) {
    const result = new Headers(extra);
    if (apiKey) result.set('Authorization', `Bearer ${apiKey}`);
    return result;
  }

  /** Shows the key form; resolves once a key was entered. Both loops may wait on it. */
  function askForKey(status, what) {
    const why = status === 403
      ? `This key may not read the ${what} (${what === 'cluster view' ? 'admin' : 'read'} scope needed).`
      : (apiKey ? 'The gateway did not accept this key.' : 'The gateway asks for an API key.');
    byId('auth-why').textContent = why;
    const form = byId('auth');
    if (!keyWanted) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      keyWanted = { promise, resolve };
      form.hidden = false;
      byId('auth-key').focus();
    }
    return keyWanted.promise;
  }

  function onKeySubmit(event) {
    event.preventDefault();
    const input = byId('auth-key');
    const key = input.value.trim();
    if (!key) return;
    apiKey = key;
    try { sessionStorage.setItem(KEY_STORAGE, key); } catch (_) { /* this page only */ }
    input.value = '';
    byId('auth').hidden = true;
    const waiting = keyWanted;
    keyWanted = null;
    if (waiting) waiting.resolve();
  }

  // ---- the cluster view ----

  const everSeen = new Set();
  let previousTraffic = null; // { at, routes: Map }
  let lastCluster = null; // { view, at }: the last answer while the gateway answers

  function setGateway(kind, text) {
    if (kind !== 'ok') lastCluster = null; // keep showing what was last known, unaged
    const node = byId('gateway');
    node.className = `badge badge-${kind}`;
    node.dataset.state = kind;
    node.textContent = text;
    document.body.classList.toggle('stale', kind !== 'ok');
  }

  async function pollLoop() {
    for (;;) {
      const started = performance.now();
      await poll();
      await sleep(Math.max(0, POLL_MS - (performance.now() - started)));
    }
  }

  async function poll() {
    let view;
    try {
      const response = await fetch('/api/cluster', {
        headers: headers({ Accept: 'application/json' }),
        cache: 'no-store',
        signal: AbortSignal.timeout(POLL_TIMEOUT_MS),
      });
      if (response.status === 401 || response.status === 403) {
        setGateway('wait', 'API key needed');
        await response.body?.cancel();
        await askForKey(response.status, 'cluster view');
        return;
      }
      if (!response.ok) {
        await response.body?.cancel();
        setGateway('bad', `gateway unreachable (HTTP ${response.status})`);
        return;
      }
      view = await response.json();
    } catch (error) {
      const why = error && error.name === 'TimeoutError' ? 'no answer in 5 s' : 'no connection';
      setGateway('bad', `gateway unreachable (${why})`);
      return;
    }
    const at = performance.now();
    setGateway('ok', 'gateway live');
    byId('updated').textContent = `updated ${clock(new Date())}`;
    lastCluster = { view, at };
    renderHolders();
    renderTraffic(view, at);
    renderNats(view.nats);
  }

  /** Nodes and partitions from the last answer, each heartbeat aged by the time since (up to
   *  one poll interval, so that a slow gateway does not look like silent nodes): a node is
   *  shown down as soon as it has been silent for 3 s, not only at the next poll. */
  function renderHolders() {
    if (!lastCluster) return;
    const { view, at } = lastCluster;
    const since = Math.min(performance.now() - at, POLL_MS);
    const nodes = (view.nodes || []).map((node) => ({ ...node, last_seen_ms: node.last_seen_ms + since }));
    const states = renderNodes(nodes, (view.partitions || []).length);
    renderPartitions(view.partitions || [], nodes, states);
  }

  function nodeIndex(id) {
    const match = /^db-(\d+)$/.exec(id);
    return match ? Number(match[1]) : Number.MAX_SAFE_INTEGER;
  }

  function stateOf(node) {
    if (node.last_seen_ms > SILENT_MS) return 'down';
    if (node.state === 'catching-up') return 'catching-up';
    return node.live ? 'ready' : 'down';
  }

  /** Renders one card per node; returns each node id's state. */
  function renderNodes(nodes, partitionCount) {
    const heard = new Map(nodes.map((node) => [String(node.node), node]));
    for (const id of heard.keys()) everSeen.add(id);
    const ids = new Set([...everSeen]);
    for (let i = 0; i < partitionCount; i += 1) ids.add(`db-${i}`);
    const ordered = [...ids].sort((a, b) => nodeIndex(a) - nodeIndex(b) || a.localeCompare(b));
    const states = new Map();
    const cards = ordered.map((id) => {
      const node = heard.get(id);
      const state = node ? stateOf(node) : 'down';
      states.set(id, state);
      let detail;
      if (!node) detail = everSeen.has(id) ? 'gone from the cluster view' : 'never heard from';
      else detail = `last heartbeat ${(node.last_seen_ms / 1000).toFixed(1)} s ago`;
      const rows = (node ? node.partitions : []).map((part) => el('tr', null,
        el('td', null, num(`P${part.partition}`)),
        el('td', null, part.role),
        el('td', { class: 'n' }, num(part.applied)),
        el('td', { class: part.lag > 0 ? 'n lagging' : 'n' }, num(part.lag))));
      return el('article', { class: 'node', 'data-node': id, 'data-state': state },
        el('header', null,
          el('span', { class: 'node-id' }, id),
          badge(STATE_BADGE[state], STATE_LABEL[state])),
        el('p', { class: 'muted small' }, detail),
        rows.length === 0 ? null : el('table', { class: 'mini' },
          el('thead', null, el('tr', null,
            el('th', null, 'Partition'), el('th', null, 'Role'),
            el('th', { class: 'n' }, 'Applied'), el('th', { class: 'n' }, 'Lag'))),
          el('tbody', null, rows)));
    });
    byId('nodes').replaceChildren(...cards);
    return states;
  }

  function holder(id, states) {
    if (id === null || id === undefined) return el('span', { class: 'muted' }, '–');
    const state = states.get(String(id)) || 'down';
    return el('span', { class: 'holder' },
      el('span', { class: `dot dot-${STATE_BADGE[state]}`, title: STATE_LABEL[state] }), String(id));
  }

  function renderPartitions(partitions, nodes, states) {
    const copies = new Map();
    for (const node of nodes) {
      for (const part of node.partitions || []) copies.set(`${node.node}/${part.partition}`, part);
    }
    const rows = [...partitions].sort((a, b) => a.partition - b.partition).map((p) => {
      const holders = [p.primary, p.replica].filter((id) => id !== null && id !== undefined);
      const applied = holders.map((id) => {
        const copy = copies.get(`${id}/${p.partition}`);
        return el('div', null, el('span', { class: 'copy' }, id), num(copy ? copy.applied : null));
      });
      const lag = holders.map((id) => {
        const copy = copies.get(`${id}/${p.partition}`);
        const behind = copy && copy.lag > 0;
        return el('div', { class: behind ? 'lagging' : null }, el('span', { class: 'copy' }, id),
          num(copy ? copy.lag : null));
      });
      const log = p.log;
      let leader = el('span', { class: 'muted' }, log ? '–' : 'log unreadable');
      if (log && log.leader) {
        const replicas = log.replicas || [];
        const current = replicas.filter((r) => r.current && !r.offline).length;
        leader = el('span', null,
          el('code', { class: 'server', title: log.leader }, log.leader),
          replicas.length === 0 ? null
            : el('div', { class: 'muted small' }, `${current}/${replicas.length} replicas current`));
      }
      return el('tr', { 'data-partition': p.partition, 'data-log-end': log ? log.last_sequence : null },
        el('td', null, el('strong', null, num(`P${p.partition}`)),
          log ? el('div', { class: 'muted small' }, log.stream) : null),
        el('td', null, holder(p.primary, states)),
        el('td', null, holder(p.replica, states)),
        el('td', { class: 'n' }, applied),
        el('td', { class: 'n' }, lag),
        el('td', { class: 'n' }, num(log ? log.last_sequence : null)),
        el('td', { class: 'n' }, num(log ? log.entries : null)),
        el('td', null, leader));
    });
    if (rows.length === 0) {
      rows.push(el('tr', null, el('td', { colspan: 8, class: 'muted' }, 'No partition logs (gateway without NATS).')));
    }
    byId('partitions').replaceChildren(...rows);
  }

  const formatMs = (ms) => `${Number(ms.toFixed(3))} ms`;

  /** The upper bound of the bucket holding quantile `q` of the `total` requests counted in
   *  `counts` (cumulative per bucket, like a Prometheus histogram). */
  function quantile(counts, total, bounds, q) {
    if (!(total > 0) || bounds.length === 0) return null;
    const rank = Math.max(1, Math.ceil(q * total));
    for (let i = 0; i < bounds.length && i < counts.length; i += 1) {
      if (counts[i] >= rank) return formatMs(bounds[i]);
    }
    return `>${formatMs(bounds[bounds.length - 1])}`;
  }

  function renderTraffic(view, at) {
    byId('feeds').textContent = String(view.change_feeds ?? '–');
    const bounds = view.latency_buckets_ms || [];
    const routes = new Map();
    const rows = [];
    for (const route of view.traffic || []) {
      const key = `${route.method} ${route.route}`;
      routes.set(key, route);
      const before = previousTraffic ? previousTraffic.routes.get(key) : null;
      const seconds = previousTraffic ? (at - previousTraffic.at) / 1000 : 0;
      let rate = null;
      let p50 = null;
      let p99 = null;
      const requests = route.requests - (before ? before.requests : 0);
      if (previousTraffic && seconds > 0 && requests >= 0) {
        rate = (requests / seconds).toFixed(requests / seconds < 10 ? 1 : 0);
        const counts = (route.latency_buckets || [])
          .map((count, i) => count - (before ? before.latency_buckets[i] || 0 : 0));
        p50 = quantile(counts, requests, bounds, 0.5);
        p99 = quantile(counts, requests, bounds, 0.99);
      }
      rows.push(el('tr', null,
        el('td', null, el('span', { class: 'method' }, route.method), ' ', el('code', null, route.route)),
        el('td', { class: 'n' }, num(rate)),
        el('td', { class: 'n' }, num(p50)),
        el('td', { class: 'n' }, num(p99)),
        el('td', { class: route.server_errors > 0 ? 'n bad' : 'n' }, num(route.server_errors)),
        el('td', { class: 'n' }, num(route.requests))));
    }
    if (rows.length === 0) rows.push(el('tr', null, el('td', { colspan: 6, class: 'muted' }, 'No requests yet.')));
    byId('traffic').replaceChildren(...rows);
    previousTraffic = { at, routes };
  }

  function renderNats(nats) {
    const facts = [];
    const fact = (name, ...value) => facts.push(el('dt', null, name), el('dd', null, ...value));
    if (!nats) {
      fact('Connection', badge('wait', 'no NATS'));
    } else {
      fact('Connection', nats.connected ? badge('ok', 'connected') : badge('bad', 'disconnected'));
      fact('Server', el('code', null, nats.server || '–'));
      fact('Version', num(nats.version || null));
      fact('Cluster', nats.cluster ? el('code', null, nats.cluster) : el('span', { class: 'muted' }, 'none'));
      const peers = nats.peers || [];
      fact('Peers', peers.length === 0 ? el('span', { class: 'muted' }, 'none')
        : peers.map((peer, i) => [i > 0 ? ', ' : null, el('code', null, peer)]));
    }
    byId('nats').replaceChildren(...facts);
  }

  // ---- the change feed: fetch() + a small Server-Sent Events parser ----

  /** Splits a text/event-stream into events `{ event, data, id }` (the SSE rules: CR, LF or
   *  CRLF line ends; `:` comments; one optional space after the field's colon). */
  class SseParser {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.buffer = '';
      this.afterCr = false; // the last chunk ended with CR: a leading LF belongs to it
      this.reset();
    }

    reset() {
      this.event = '';
      this.data = [];
      this.id = undefined;
    }

    push(text) {
      this.buffer += text;
      let start = 0;
      if (this.afterCr && this.buffer.startsWith('\n')) start = 1; // a CRLF split in two
      this.afterCr = false;
      for (;;) {
        const cr = this.buffer.indexOf('\r', start);
        const lf = this.buffer.indexOf('\n', start);
        if (cr === -1 && lf === -1) break;
        let end;
        let next;
        if (cr !== -1 && (lf === -1 || cr < lf)) {
          end = cr;
          next = this.buffer[cr + 1] === '\n' ? cr + 2 : cr + 1;
          this.afterCr = next === this.buffer.length;
        } else {
          end = lf;
          next = lf + 1;
        }
        this.line(this.buffer.slice(start, end));
        start = next;
      }
      this.buffer = this.buffer.slice(start);
    }

    line(line) {
      if (line === '') {
        if (this.data.length > 0 || this.id !== undefined || this.event) {
          this.onEvent({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
        }
        this.reset();
        return;
      }
      if (line.startsWith(':')) return; // keep-alive comment
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
      else if (field === 'id' && !value.includes('\0')) this.id = value;
      // `retry` and unknown fields: the page keeps its own back-off.
    }
  }

  const feed = { lastId: null, backoff: BACKOFF_MIN_MS };

  function setFeed(kind, text) {
    const node = byId('feed');
    node.className = `badge badge-${kind}`;
    node.dataset.state = kind;
    node.textContent = text;
  }

  function showChange(change) {
    const user = change.user;
    const deleted = change.op === 'delete';
    const item = el('li', { class: 'change', 'data-change-id': change.id, 'data-op': change.op },
      el('time', { class: 'num muted' }, clock(new Date())),
      badge(deleted ? 'bad' : 'ok', String(change.op)),
      el('code', { class: 'change-id' }, String(change.id)),
      el('span', { class: 'num muted' }, `v${change.version}`),
      user
        ? el('span', { class: 'change-user' }, `${user.name} · ${user.email} · group ${user.group}`)
        : el('span', { class: 'muted' }, 'deleted'));
    const list = byId('changes');
    list.prepend(item);
    while (list.children.length > MAX_CHANGES) list.lastElementChild.remove();
    byId('no-changes').hidden = true;
  }

  /** One connection to the feed; resolves with why it ended. */
  async function follow() {
    const request = headers({ Accept: 'text/event-stream' });
    let url = '/api/users/changes?since=now';
    if (feed.lastId !== null) {
      url = '/api/users/changes';
      request.set('Last-Event-ID', feed.lastId);
    }
    let response;
    try {
      response = await fetch(url, { headers: request, cache: 'no-store' });
    } catch (_) {
      return { why: 'no connection' };
    }
    if (response.status === 401 || response.status === 403) {
      await response.body?.cancel();
      return { auth: response.status };
    }
    if (response.status === 400 && feed.lastId !== null) {
      // The position is not one of these logs (they were recreated): start again from now.
      await response.body?.cancel();
      feed.lastId = null;
      return { why: 'position lost, restarting from now' };
    }
    if (!response.ok || !response.body) {
      await response.body?.cancel();
      return { why: `HTTP ${response.status}` };
    }
    let ended = null;
    const parser = new SseParser(({ event, data, id }) => {
      if (id !== undefined) feed.lastId = id;
      if (event === 'end') {
        try { ended = JSON.parse(data).reason; } catch (_) { ended = 'unknown'; }
        return;
      }
      if (event !== 'message') return;
      if (data === '') { // the opening event: only the starting position
        feed.backoff = BACKOFF_MIN_MS;
        setFeed('ok', 'live');
        return;
      }
      try { showChange(JSON.parse(data)); } catch (_) { /* not a change: skip it */ }
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      while (ended === null) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch (_) {
      return { why: 'connection lost' };
    }
    if (ended !== null) {
      try { await reader.cancel(); } catch (_) { /* already closed */ }
      return { why: `ended (${ended})` };
    }
    return { why: 'closed by the gateway' };
  }

  async function feedLoop() {
    for (;;) {
      const outcome = await follow();
      if (outcome.auth) {
        setFeed('wait', 'API key needed');
        await askForKey(outcome.auth, 'change feed');
        continue;
      }
      const wait = feed.backoff;
      feed.backoff = Math.min(feed.backoff * 2, BACKOFF_MAX_MS);
      setFeed('warn', `${outcome.why}; reconnecting in ${wait / 1000} s`);
      await sleep(wait);
      setFeed('wait', 'connecting…');
    }
  }

  loadKey();
  byId('auth').addEventListener('submit', onKeySubmit);
  pollLoop();
  feedLoop();
  setInterval(renderHolders, AGE_EVERY_MS);
})();
