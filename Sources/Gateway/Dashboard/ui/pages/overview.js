// Overview: the fleet and live request numbers from GET /admin/events (a snapshot every ~2 s,
// plus the last hour's history points, which the server samples so they exist on page load).

import { isAbort, stream } from '../api.js';
import { lineChart } from '../chart.js';
import { delay, fmt, h, notice, table } from '../dom.js';

const HOUR = 3600 * 1000;
const clock = (t) => new Date(t).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit' });

function stat(label) {
  const value = h('span', { class: 'value' }, '—');
  return { el: h('li', {}, h('span', { class: 'label' }, label), value), value };
}

/** Projected memory next to what llama-server reported allocating (all devices together). */
function memory(instance) {
  const actual = Object.values(instance.allocatedMiB ?? {}).reduce((a, b) => a + b, 0);
  return `${fmt.mib(instance.projectedMiB)} / ${actual ? fmt.mib(actual) : '—'}`;
}

function idleLeft(instance) {
  if (instance.pinned) return 'pinned';
  if (instance.state !== 'loaded') return '—';
  return instance.inFlight > 0 ? 'busy' : fmt.seconds(instance.expiresInSeconds);
}

/** The share of prompt tokens llama-server took from its cache, with the counts behind it. */
function promptCache(instance) {
  const use = instance.promptCache;
  if (!use) return '—';
  return h('span', { title: `${fmt.int(use.cachedTokens)} of ${fmt.int(use.promptTokens)} prompt tokens from the cache since Corral started` },
    `${(use.hitRate * 100).toFixed(0)} %`);
}

function instancesTable(instances) {
  return table('Instances', [
    { label: 'Model', value: (i) => h('a', { href: `#/models/${encodeURIComponent(i.model)}` }, i.model) },
    // A model with replicas has an instance per replica; the first is 0.
    { label: 'Replica', value: (i) => fmt.int(i.replica ?? 0), num: true },
    { label: 'State', value: (i) => h('span', { class: `state ${i.state}` }, i.state) },
    { label: 'Memory projected / actual', value: memory, num: true },
    { label: 'In flight', value: (i) => fmt.int(i.inFlight), num: true },
    { label: 'Queued', value: (i) => fmt.int(i.queued), num: true },
    { label: 'Prompt cache hits', value: promptCache, num: true },
    { label: 'Idle time left', value: idleLeft, num: true },
    { label: 'Uptime', value: (i) => fmt.seconds(i.uptimeSeconds), num: true },
    { label: 'Crashes', value: (i) => fmt.int(i.crashes), num: true },
  ], instances, 'No model has been used yet.');
}

function charts(history) {
  const since = Date.now() - HOUR;
  const points = history.filter((p) => p.t >= since);
  const line = (name, key) => ({ name, points: points.map((p) => [p.t, p[key]]) });
  const common = { xFormat: clock, xDomain: [since, Date.now()], empty: 'Collecting (a point every 10 s).' };
  return [
    lineChart({ ...common, title: 'Requests per second', series: [line('requests/s', 'requestsPerSecond')], yFormat: (v) => fmt.num(v, 2) }),
    lineChart({ ...common, title: 'Latency', series: [line('p50', 'latencyP50Ms'), line('p95', 'latencyP95Ms')], yFormat: fmt.ms }),
    lineChart({ ...common, title: 'Time to first token', series: [line('p50', 'ttftP50Ms'), line('p95', 'ttftP95Ms')], yFormat: fmt.ms }),
    lineChart({ ...common, title: 'Generated tokens per second', series: [line('tokens/s', 'tokensPerSecond')], yFormat: (v) => fmt.num(v, 0) }),
    lineChart({ ...common, title: 'Errors per 10 s', series: [line('errors', 'errors')], yFormat: (v) => fmt.num(v, 0) }),
  ];
}

export async function overview(root, _args, signal) {
  // Not a live region: it changes every 2 s; only a stopped stream is announced (role=alert).
  const status = h('p', { class: 'notice', id: 'live-status' });
  const stats = {
    rate: stat('Requests/s'), latency50: stat('Latency p50'), latency95: stat('Latency p95'),
    ttft50: stat('First token p50'), ttft95: stat('First token p95'), tokens: stat('Tokens/s'), errors: stat('Errors'),
  };
  const chartArea = h('div', { class: 'charts' });
  const fleet = h('div');
  root.append(
    h('h1', {}, 'Overview'), status,
    h('section', { 'aria-labelledby': 'live-h' }, h('h2', { id: 'live-h' }, 'Last minute'),
      h('ul', { class: 'stats', id: 'live-stats' }, Object.values(stats).map((s) => s.el))),
    h('section', { 'aria-labelledby': 'fleet-h' }, h('h2', { id: 'fleet-h' }, 'Loaded instances'), fleet),
    h('section', { 'aria-labelledby': 'hist-h' }, h('h2', { id: 'hist-h' }, 'Last hour'), chartArea),
  );

  let history = [];
  const show = (snapshot) => {
    const live = snapshot.live;
    stats.rate.value.textContent = fmt.num(live.requestsPerSecond, 2);
    stats.latency50.value.textContent = fmt.ms(live.latencyP50Ms);
    stats.latency95.value.textContent = fmt.ms(live.latencyP95Ms);
    stats.ttft50.value.textContent = fmt.ms(live.ttftP50Ms);
    stats.ttft95.value.textContent = fmt.ms(live.ttftP95Ms);
    stats.tokens.value.textContent = fmt.num(live.tokensPerSecond, 1);
    stats.errors.value.textContent = fmt.int(live.errors);
    history = history.concat(snapshot.points).filter((p) => p.t >= Date.now() - HOUR);
    fleet.replaceChildren(instancesTable(snapshot.instances.filter((i) => i.state !== 'unloaded')));
    chartArea.replaceChildren(...charts(history));
    status.removeAttribute('role');
    notice(status, `Live · updated ${new Date(snapshot.time).toLocaleTimeString('en-GB')}`, 'ok');
  };

  // Reconnects after a dropped stream; a fresh connection sends the whole history again.
  while (!signal.aborted) {
    try {
      history = [];
      await stream('/admin/events', (name, data) => { if (name === 'snapshot') show(data); }, signal);
    } catch (error) {
      if (isAbort(error)) return;
      status.setAttribute('role', 'alert');
      notice(status, `Live updates stopped: ${error.message}. Retrying in 3 s.`, 'error');
    }
    await delay(3000, signal).catch(() => {});
  }
}
