// Models: the library (GET /admin/models) with search, filters and sorting; each row links to
// the model's detail page.

import { api, isAbort } from '../api.js';
import { fmt, h, notice, statusRegion, table, verdictBadge } from '../dom.js';

const select = (id, options) => h('select', { id, name: id }, options.map(([value, label]) => h('option', { value }, label)));

export async function models(root, _args, signal) {
  const status = statusRegion();
  const form = h('form', { role: 'search', class: 'filters', 'aria-label': 'Filter models' },
    h('div', { class: 'field' }, h('label', { for: 'q' }, 'Search'), h('input', { id: 'q', name: 'q', type: 'search', placeholder: 'name, architecture, quantization' })),
    h('div', { class: 'field' }, h('label', { for: 'capability' }, 'Capability'),
      select('capability', [['', 'any'], ...['completion', 'embedding', 'tools', 'thinking', 'insert', 'vision'].map((c) => [c, c])])),
    h('div', { class: 'field' }, h('label', { for: 'fits' }, 'Fits this machine'), select('fits', [['', 'any'], ['true', 'yes'], ['false', 'no']])),
    h('div', { class: 'field' }, h('label', { for: 'sort' }, 'Sort by'),
      select('sort', [['name', 'name'], ['size', 'size'], ['params', 'parameters'], ['context', 'context'], ['lastUsed', 'last used']])),
    h('div', { class: 'field' }, h('label', { for: 'order' }, 'Order'), select('order', [['asc', 'ascending'], ['desc', 'descending']])),
  );
  const list = h('div');
  root.append(h('h1', {}, 'Models'), form, status, list);

  let pending = null;
  async function load() {
    pending?.abort();
    pending = new AbortController();
    const query = new URLSearchParams([...new FormData(form)].filter(([, v]) => v !== ''));
    try {
      const answer = await api(`/admin/models?${query}`, { signal: AbortSignal.any([signal, pending.signal]) });
      notice(status, `${answer.count} model${answer.count === 1 ? '' : 's'}`);
      list.replaceChildren(table('Model library', [
        { label: 'Model', value: (m) => h('a', { href: `#/models/${encodeURIComponent(m.id)}` }, m.id) },
        { label: 'Architecture', value: (m) => m.architecture },
        { label: 'Parameters', value: (m) => m.parameterSize, num: true },
        { label: 'Quantization', value: (m) => m.quantization },
        { label: 'Size', value: (m) => fmt.bytes(m.sizeBytes), num: true },
        { label: 'Context', value: (m) => fmt.int(m.contextLength), num: true },
        { label: 'Capabilities', value: (m) => (m.capabilities ?? []).join(', ') },
        { label: 'State', value: (m) => h('span', { class: `state ${m.state}` }, m.state) },
        { label: 'Compatibility', value: (m) => (m.fit ? verdictBadge(m.fit.verdict) : 'remote') },
      ], answer.models, 'No model matches.'));
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }

  let timer;
  form.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(load, 250); });
  form.addEventListener('submit', (event) => { event.preventDefault(); load(); });
  await load();
}
