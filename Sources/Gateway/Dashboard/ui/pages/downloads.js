// Get models: search the Hugging Face hub with a fit verdict for each result before anything is
// downloaded (GET /admin/library/remote?fit=true), pull by any name (an Ollama name or hf.co/…),
// and every download with a live progress bar, rate and time left, and pause / resume / cancel
// (GET /admin/downloads, refreshed every second while one is live).

import { api, isAbort } from '../api.js';
import { delay, field, fmt, h, notice, statusRegion, table, verdictBadge } from '../dom.js';

const FINAL = new Set(['completed', 'failed', 'cancelled', 'interrupted']);
const downloadPath = (id) => `/admin/downloads/${encodeURIComponent(id)}`;
const stateBadge = (state) => h('span', {
  class: `state job-${{ completed: 'succeeded', running: 'running', queued: 'queued', paused: 'paused' }[state] ?? 'failed'}`,
}, state);

function progressOf(d) {
  if (!d.totalBytes) return fmt.bytes(d.completedBytes);
  const text = `${fmt.bytes(d.completedBytes)} / ${fmt.bytes(d.totalBytes)}`;
  return h('span', { class: 'progress' }, h('progress', { max: d.totalBytes, value: d.completedBytes, 'aria-label': `${d.model}: ${text}` }), ` ${text}`);
}

export async function downloads(root, _args, signal) {
  const status = statusRegion();
  const searchStatus = statusRegion();
  const results = h('div', { id: 'remote-results' });
  const list = h('div', { id: 'downloads' });
  const searchForm = h('form', { class: 'filters', role: 'search', 'aria-label': 'Search the Hugging Face hub' },
    field('Search the hub', h('input', { id: 'r-q', placeholder: 'e.g. qwen coder', required: true })),
    h('button', { type: 'submit' }, 'Search'));
  const pullForm = h('form', { class: 'inline-form', 'aria-label': 'Pull a model by name' },
    field('Model name', h('input', { id: 'p-model', placeholder: 'llama3.2:1b or hf.co/org/repo:Q4_K_M', required: true })),
    h('div', { class: 'field check' }, h('input', { id: 'p-insecure', type: 'checkbox' }), h('label', { for: 'p-insecure' }, 'Plain http (insecure)')),
    h('button', { type: 'submit' }, 'Pull'));
  root.append(h('h1', {}, 'Get models'),
    h('section', { 'aria-labelledby': 'search-h' }, h('h2', { id: 'search-h' }, 'Search'), searchForm, searchStatus, results),
    h('section', { 'aria-labelledby': 'pull-h' }, h('h2', { id: 'pull-h' }, 'Pull by name'), pullForm),
    h('section', { 'aria-labelledby': 'downloads-h' }, h('h2', { id: 'downloads-h' }, 'Downloads'), status, list));

  async function pull(model, insecure = false) {
    try {
      const started = await api('/admin/downloads', { method: 'POST', body: { model, insecure }, signal });
      notice(status, `Pulling ${started.model} (${started.id})`, 'ok');
      await refresh();
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }

  const act = (d, action, label, cls) => h('button', {
    type: 'button', class: `${cls} small`, 'aria-label': `${label} ${d.model}`,
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        await api(action === 'cancel' ? downloadPath(d.id) : `${downloadPath(d.id)}/${action}`, { method: action === 'cancel' ? 'DELETE' : 'POST', signal });
        await refresh();
      } catch (error) {
        if (!isAbort(error)) notice(status, error.message, 'error');
      }
    },
  }, label);

  let shown = [];
  async function refresh() {
    try {
      shown = (await api('/admin/downloads', { signal })).downloads;
      list.replaceChildren(table('Downloads, newest first', [
        { label: 'Model', value: (d) => d.name ?? d.model }, { label: 'State', value: (d) => stateBadge(d.state) },
        { label: 'Progress', value: progressOf },
        { label: 'Rate', value: (d) => (d.bytesPerSecond ? `${fmt.bytes(d.bytesPerSecond)}/s` : '—'), num: true },
        { label: 'Time left', value: (d) => fmt.seconds(d.etaSeconds), num: true },
        { label: 'Error', value: (d) => d.error?.message ?? '' },
        {
          label: 'Actions', value: (d) => (FINAL.has(d.state) ? '—' : h('span', { class: 'row-actions' },
            d.state === 'paused' ? act(d, 'resume', 'Resume', 'quiet') : act(d, 'pause', 'Pause', 'quiet'), act(d, 'cancel', 'Cancel', 'danger'))),
        },
      ], shown, 'No download yet.'));
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }

  searchForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const q = searchForm.querySelector('#r-q').value.trim();
    notice(searchStatus, `Searching for “${q}” and reading each model's header for a fit verdict…`);
    try {
      const found = (await api(`/admin/library/remote?${new URLSearchParams({ q, fit: 'true' })}`, { signal })).models;
      results.replaceChildren(table('Hub results: fit verdict before download', [
        { label: 'Model', value: (m) => m.name }, { label: 'Categories', value: (m) => m.categories.join(', ') || '—' },
        { label: 'Files', value: (m) => m.files.map((f) => `${f.quant ?? f.name} ${fmt.bytes(f.sizeBytes)}`).join(', ') },
        { label: 'Fit', value: (m) => (m.fit?.verdict ? verdictBadge(m.fit.verdict) : m.fit?.error ?? '—') },
        { label: 'Largest context', value: (m) => fmt.int(m.fit?.largestContext), num: true },
        { label: 'Get', value: (m) => h('button', { type: 'button', class: 'small', 'aria-label': `Download ${m.fit?.model ?? m.name}`, onclick: () => pull(m.fit?.model ?? m.name) }, 'Download') },
      ], found, 'Nothing found.'));
      notice(searchStatus, `${found.length} model${found.length === 1 ? '' : 's'} found`, 'ok');
    } catch (error) {
      if (!isAbort(error)) notice(searchStatus, error.message, 'error');
    }
  });
  pullForm.addEventListener('submit', (event) => {
    event.preventDefault();
    pull(pullForm.querySelector('#p-model').value.trim(), pullForm.querySelector('#p-insecure').checked);
  });

  await refresh();
  for (;;) {
    await delay(1000, signal);
    if (shown.some((d) => !FINAL.has(d.state))) await refresh();
  }
}
