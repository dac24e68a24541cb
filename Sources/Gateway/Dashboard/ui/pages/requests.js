// Requests: the usage ledger (GET /admin/usage/requests), newest first, filtered by team,
// model and time.

import { api, isAbort } from '../api.js';
import { field, fmt, h, notice, statusRegion, table } from '../dom.js';

/** A datetime-local value (local time) as RFC 3339, or null when empty. */
const rfc3339 = (v) => (v ? new Date(v).toISOString() : null);

export async function requests(root, _args, signal) {
  const status = statusRegion();
  const list = h('div');
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter requests' },
    field('Team', h('input', { id: 'r-team', placeholder: 'any' })),
    field('Model', h('input', { id: 'r-model', placeholder: 'any' })),
    field('From', h('input', { id: 'r-from', type: 'datetime-local' })),
    field('To', h('input', { id: 'r-to', type: 'datetime-local' })),
    field('Rows', h('select', { id: 'r-limit' }, [50, 200, 1000].map((n) => h('option', { value: n }, n)))),
    h('button', { type: 'submit' }, 'Apply'));
  root.append(h('h1', {}, 'Requests'), form, status, list);

  async function load() {
    const get = (id) => form.querySelector(`#${id}`).value.trim();
    const query = new URLSearchParams({ limit: get('r-limit') });
    if (get('r-team')) query.set('team', get('r-team'));
    if (get('r-model')) query.set('model', get('r-model'));
    if (rfc3339(get('r-from'))) query.set('from', rfc3339(get('r-from')));
    if (rfc3339(get('r-to'))) query.set('to', rfc3339(get('r-to')));
    try {
      const { data } = await api(`/admin/usage/requests?${query}`, { signal });
      notice(status, `${data.length} request${data.length === 1 ? '' : 's'}, newest first`);
      list.replaceChildren(table('Request ledger', [
        { label: 'Time', value: (r) => fmt.time(r.ts) }, { label: 'Team', value: (r) => r.team ?? '—' },
        { label: 'Key', value: (r) => (r.keyPrefix ? h('code', {}, r.keyPrefix) : '—') }, { label: 'Model', value: (r) => r.model },
        { label: 'Route', value: (r) => r.route },
        { label: 'Status', value: (r) => h('span', { class: r.status >= 400 ? 'bad' : '' }, r.errorKind ? `${r.status} ${r.errorKind}` : r.status), num: true },
        { label: 'Prompt', value: (r) => fmt.int(r.promptTokens), num: true }, { label: 'Output', value: (r) => fmt.int(r.completionTokens), num: true },
        { label: 'Queue + load', value: (r) => fmt.ms(r.queueMs + r.loadMs), num: true }, { label: 'First token', value: (r) => fmt.ms(r.ttftMs), num: true },
        { label: 'Total', value: (r) => fmt.ms(r.totalMs), num: true }, { label: 'Tokens/s', value: (r) => fmt.num(r.generationTPS), num: true },
      ], data, 'No request in this range.'));
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }

  form.addEventListener('submit', (event) => { event.preventDefault(); load(); });
  await load();
}
