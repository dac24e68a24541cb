// Jobs: every long-running job of every kind (GET /admin/jobs), filtered by kind, state and model,
// paged, refreshed while any shown job is live, with pause / resume / cancel. `#/jobs/{id}`
// follows one job's event log over SSE and, when the connection drops, reconnects after the last
// event id it saw, so no event is missed or shown twice.

import { api, isAbort, stream } from '../api.js';
import { delay, field, fmt, h, notice, statusRegion, table } from '../dom.js';

const STATES = ['queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'interrupted'];
const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);
const KINDS = ['benchmark', 'perplexity', 'tuning', 'eval_run', 'download'];
const jobPath = (id) => `/admin/jobs/${encodeURIComponent(id)}`;

/** A job's state as a coloured badge. */
const stateBadge = (state) => h('span', { class: `state job-${state}` }, state);

/** "3 / 20 requests" with a progress bar when the total is known. */
function progressOf(p) {
  if (!p) return '—';
  const unit = p.unit ? ` ${p.unit}` : '';
  if (!p.total) return `${fmt.int(p.completed)}${unit}${p.message ? ` · ${p.message}` : ''}`;
  const text = `${fmt.int(p.completed)} / ${fmt.int(p.total)}${unit}`;
  return h('span', { class: 'progress' }, h('progress', { max: p.total, value: p.completed, 'aria-label': text }), ` ${text}`);
}

/** Pause / Resume / Cancel for a job that is not final; `after(error?)` runs once the call returns. */
function actions(job, after) {
  const act = (action, label, cls) => h('button', {
    type: 'button', class: cls, 'aria-label': `${label} ${job.id}`,
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        await api(`${jobPath(job.id)}/${action}`, { method: 'POST' });
        after();
      } catch (error) {
        if (!isAbort(error)) after(error);
      }
    },
  }, label);
  const buttons = [];
  if (job.state === 'running') buttons.push(act('pause', 'Pause', 'quiet'));
  if (job.state === 'paused') buttons.push(act('resume', 'Resume', 'quiet'));
  if (!FINAL.has(job.state)) buttons.push(act('cancel', 'Cancel', 'danger'));
  return buttons.length ? h('span', { class: 'actions' }, buttons) : '—';
}

export async function jobs(root, [id], signal) {
  return id ? jobDetail(root, id, signal) : jobList(root, signal);
}

async function jobList(root, signal) {
  const status = statusRegion();
  const list = h('div');
  const more = h('button', { type: 'button', class: 'quiet', hidden: true }, 'Older jobs');
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs' },
    field('Kind', h('select', { id: 'j-kind' }, h('option', { value: '' }, 'any'), KINDS.map((k) => h('option', { value: k }, k)))),
    field('State', h('select', { id: 'j-state' }, h('option', { value: '' }, 'any'), STATES.map((s) => h('option', { value: s }, s)))),
    field('Model', h('input', { id: 'j-model', placeholder: 'any' })),
    h('button', { type: 'submit' }, 'Apply'));
  root.append(h('h1', {}, 'Jobs'), form, status, list, more);

  let shown = [];
  let next = null;
  const query = (after, limit) => {
    const get = (key) => form.querySelector(`#j-${key}`).value.trim();
    const q = new URLSearchParams({ limit });
    for (const key of ['kind', 'state', 'model']) if (get(key)) q.set(key, get(key));
    if (after) q.set('after', after);
    return `/admin/jobs?${q}`;
  };
  const draw = () => {
    list.replaceChildren(table('Jobs, newest first', [
      { label: 'Job', value: (j) => h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id) },
      { label: 'Kind', value: (j) => j.kind }, { label: 'Model', value: (j) => j.model ?? '—' },
      ...(shown.some((j) => j.node) ? [{ label: 'Node', value: (j) => j.node ?? '—' }] : []),
      { label: 'State', value: (j) => stateBadge(j.state) }, { label: 'Progress', value: (j) => progressOf(j.progress) },
      { label: 'Created', value: (j) => fmt.time(j.createdAt) }, { label: 'Finished', value: (j) => fmt.time(j.finishedAt) },
      { label: 'Error', value: (j) => j.error?.message ?? '' },
      { label: 'Actions', value: (j) => actions(j, (error) => (error ? notice(status, error.message, 'error') : refresh())) },
    ], shown, 'No job matches.'));
    more.hidden = !next;
    notice(status, `${shown.length} job${shown.length === 1 ? '' : 's'}${next ? ' (older ones on request)' : ''}`);
  };
  /** Reloads what is shown (at least one page) from the newest. */
  async function refresh() {
    try {
      const page = await api(query(null, Math.min(500, Math.max(50, shown.length))), { signal });
      shown = page.jobs;
      next = page.next ?? null;
      draw();
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }
  more.addEventListener('click', async () => {
    try {
      const page = await api(query(next, 50), { signal });
      shown = shown.concat(page.jobs);
      next = page.next ?? null;
      draw();
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  });
  form.addEventListener('submit', (event) => { event.preventDefault(); shown = []; refresh(); });
  await refresh();
  for (;;) {
    await delay(2000, signal);
    if (shown.some((j) => !FINAL.has(j.state))) await refresh();
  }
}

async function jobDetail(root, id, signal) {
  const status = statusRegion();
  const facts = h('div');
  const log = h('tbody');
  const result = h('div');
  root.append(h('h1', {}, `Job ${id}`), h('p', {}, h('a', { href: '#/jobs' }, '← All jobs')), status, facts,
    h('h2', {}, 'Events'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Event log' },
      h('table', { id: 'job-events' }, h('caption', {}, 'Event log, oldest first'),
        h('thead', {}, h('tr', {}, ['Id', 'Time', 'Event', 'Data'].map((c) => h('th', { scope: 'col' }, c)))), log)),
    result);

  let job = null;
  const drawFacts = () => {
    const pairs = [['Kind', job.kind], ['Model', job.model ?? '—'], ['State', stateBadge(job.state)], ['Progress', progressOf(job.progress)],
      ['Created', fmt.time(job.createdAt)], ['Started', fmt.time(job.startedAt)], ['Finished', fmt.time(job.finishedAt)],
      ...(job.node ? [['Node', job.node]] : []),
      ['Restarts', fmt.int(job.restarts)], ['Error', job.error ? (job.error.message === job.error.code ? job.error.message : `${job.error.message} (${job.error.code})`) : '—'],
      ['Actions', actions(job, (error) => (error ? notice(status, error.message, 'error') : reload()))]];
    facts.replaceChildren(h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
    result.replaceChildren(...(job.result ? [h('h2', {}, 'Result'), h('pre', { class: 'log', tabindex: 0 }, JSON.stringify(job.result, null, 2))] : []));
  };
  async function reload() {
    job = await api(jobPath(id), { signal });
    drawFacts();
  }
  try {
    await reload();
  } catch (error) {
    if (!isAbort(error)) notice(status, error.message, 'error');
    return;
  }

  // Follow the event log; after a dropped connection, go on after the last id seen.
  let lastID = 0;
  for (let attempt = 0; ; attempt += 1) {
    try {
      await stream(`${jobPath(id)}/events?after=${lastID}`, (_name, event) => {
        if (event.id <= lastID) return;
        lastID = event.id;
        log.append(h('tr', { 'data-id': event.id }, h('td', { class: 'num' }, event.id), h('td', {}, fmt.time(event.at)),
          h('td', {}, event.type), h('td', {}, h('code', {}, JSON.stringify(event.data)))));
        if (event.type === 'progress') job.progress = event.data;
        if (event.type === 'state') job.state = event.data.state;
        drawFacts();
      }, signal);
      await reload(); // the stream ends with the job: show its final record and result
      notice(status, `${job.state}; ${log.children.length} events`);
      return;
    } catch (error) {
      if (isAbort(error)) return;
      notice(status, `${error.message}; reconnecting after event ${lastID}…`, 'error');
      await delay(Math.min(5000, 500 * 2 ** attempt), signal);
    }
  }
}
