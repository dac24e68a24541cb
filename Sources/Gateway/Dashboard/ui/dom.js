// Small DOM helpers. Data only ever reaches the page as text (textContent / text nodes), never
// as HTML.

/**
 * Creates an element: h('a', { href: '#/x', class: 'y', onclick: fn }, 'text', child, …).
 * `on*` attributes become listeners; true sets a boolean attribute; null/false/undefined skip it.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A message region: notice(el, 'text', 'error' | 'ok' | 'info'); an empty text hides it. */
export function notice(el, text, kind = 'info') {
  el.className = `notice ${kind}`;
  el.textContent = text ?? '';
  el.hidden = !text;
}

/** A status region screen readers announce (`role=status`, or `alert` for errors). */
export function statusRegion() {
  const el = h('p', { class: 'notice', role: 'status', 'aria-live': 'polite' });
  el.hidden = true;
  return el;
}

/**
 * A table in a horizontally scrolling wrapper: columns are { label, value: row => text|Node, num }.
 * `empty` is shown in one row when there is no data.
 */
export function table(caption, columns, rows, empty = 'Nothing yet.') {
  const head = h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)));
  const body = rows.length
    ? rows.map((row) => h('tr', {}, columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.value(row) ?? '—'))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, empty))];
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', {}, h('caption', {}, caption), h('thead', {}, head), h('tbody', {}, body)));
}

/** A labelled form control: field('Requests', h('input', { id, … })). The control needs an id. */
export function field(label, control, hint) {
  return h('div', { class: 'field' }, h('label', { for: control.id }, label), control, hint ? h('small', {}, hint) : null);
}

/** Resolves after ms, or rejects with an AbortError when the signal fires first. */
export function delay(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new DOMException('left the page', 'AbortError'));
    }, { once: true });
  });
}

// Formatting. Missing values are an em dash.
const dash = (v) => v === null || v === undefined || Number.isNaN(v);
export const fmt = {
  num: (v, digits = 1) => (dash(v) ? '—' : Number(v).toLocaleString('en-US', { maximumFractionDigits: digits })),
  int: (v) => (dash(v) ? '—' : Math.round(v).toLocaleString('en-US')),
  ms: (v) => (dash(v) ? '—' : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 && v > 0 ? 1 : 0)} ms`),
  mib: (v) => (dash(v) ? '—' : v >= 1024 ? `${(v / 1024).toFixed(1)} GiB` : `${Math.round(v)} MiB`),
  bytes: (v) => (dash(v) ? '—' : v < 1048576 ? `${Math.round(v / 1024)} KiB` : fmt.mib(v / 1048576)),
  seconds: (s) => {
    if (dash(s)) return '—';
    if (s < 0) return 'never';
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  },
  time: (iso) => (iso ? new Date(iso).toLocaleString('en-GB', { hour12: false }) : '—'),
  verdict: (v) => ({ fits_gpu: 'fits GPU', partial_offload: 'partial offload', cpu_only: 'CPU only', does_not_fit: 'does not fit' }[v] ?? v ?? '—'),
};

/** A verdict badge: text plus a class for its colour. */
export const verdictBadge = (v) => h('span', { class: `badge ${v ?? ''}` }, fmt.verdict(v));
