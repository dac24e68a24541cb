// One model: GGUF facts, fit and the compatibility plot, fleet buttons, benchmarks (started here
// and followed over SSE) and tuning sessions (followed over their job's SSE: trials appear as they finish).

import { api, isAbort, modelPath, stream } from '../api.js';
import { lineChart } from '../chart.js';
import { delay, field, fmt, h, notice, statusRegion, table, verdictBadge } from '../dom.js';

const facts = (m) => [
  ['Architecture', m.architecture], ['Name', m.name], ['Parameters', m.parameterSize], ['Quantization', m.quantization],
  ['Bits per weight', m.bitsPerWeight], ['Trained context', fmt.int(m.contextLength)], ['Layers', m.layers],
  ['Embedding length', m.embeddingLength], ['Heads / KV heads', `${m.heads ?? '—'} / ${m.kvHeads ?? '—'}`],
  ['Vocabulary', fmt.int(m.vocabularySize)], ['Capabilities', (m.capabilities ?? []).join(', ')], ['File size', fmt.bytes(m.sizeBytes)],
  ['Source', m.source], ['Aliases', (m.aliases ?? []).join(', ') || '—'], ['State', m.state], ['Pinned', m.pinned ? 'yes' : 'no'],
  ['Requests served', fmt.int(m.usage?.requests)],
  ...(m.running ? [['Running', `pid ${m.running.pid}, context ${fmt.int(m.running.contextSize)}, ${m.running.planSource ?? ''}`],
    ['Arguments', (m.running.arguments ?? []).join(' ')]] : []),
];

const dl = (pairs) => h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
const numberInput = (id, value, min, max) => h('input', { id, name: id, type: 'number', value, min, max, required: true });
const list = (text) => text.split(',').map((s) => s.trim()).filter(Boolean);

/** Memory per device against context, one line per GPU-layer count, with the device's limit. */
function compatibilityPlots(c) {
  const devices = Object.keys(c.availableMiB ?? {});
  const levels = [...new Set(c.table.map((r) => r.gpuLayers))];
  return devices.filter((d) => c.table.some((r) => r[`${d}MiB`] !== undefined)).map((device) => lineChart({
    title: `${device} memory by context`,
    xLog: true, xFormat: (v) => (v >= 1024 ? `${v / 1024}k` : String(v)), yFormat: fmt.mib,
    series: levels.map((ngl) => ({
      name: ngl === 0 ? 'CPU only (-ngl 0)' : `-ngl ${ngl}`,
      points: c.table.filter((r) => r.gpuLayers === ngl).map((r) => [r.context, r[`${device}MiB`] ?? null]),
    })),
    limits: [{ y: c.availableMiB[device], label: `${device} limit ${fmt.mib(c.availableMiB[device])}` }],
  }));
}

function fitSection(model, c) {
  const fit = model.fit ?? {};
  return h('section', { 'aria-labelledby': 'fit-h' }, h('h2', { id: 'fit-h' }, 'Fit on this machine'),
    dl([
      ['Verdict', verdictBadge(c.verdict)], ['Estimated total', fmt.mib(c.estimatedTotalMiB)], ['At context', fmt.int(c.settings?.ctx)],
      ['GPU layers', c.gpuLayers], ['Largest context that fits', fmt.int(c.largestContext)],
      ['Library fit', `${fmt.verdict(fit.verdict)}, ${fmt.mib(fit.estimatedMiB)} at ${fmt.int(fit.context)}`],
    ]),
    table('Estimate per device', [
      { label: 'Device', value: (d) => d.device }, { label: 'Weights', value: (d) => fmt.mib(d.weightsMiB), num: true },
      { label: 'KV cache', value: (d) => fmt.mib(d.kvMiB), num: true }, { label: 'Compute', value: (d) => fmt.mib(d.computeMiB), num: true },
      { label: 'Total', value: (d) => fmt.mib(d.totalMiB), num: true },
      { label: 'Available', value: (d) => fmt.mib(c.availableMiB?.[d.device]), num: true },
    ], c.estimate ?? []),
    (c.suggestions ?? []).length ? h('ul', { class: 'suggestions' }, c.suggestions.map((s) => h('li', {}, `${s.change}: saves ${fmt.mib(s.savesMiB)}`))) : null,
    h('div', { class: 'charts' }, compatibilityPlots(c)));
}

function benchmarksTable(runs) {
  return table('Benchmark history', [
    { label: 'Started', value: (r) => fmt.time(r.createdAt) }, { label: 'Status', value: (r) => r.status },
    { label: 'Requests × concurrency', value: (r) => `${r.parameters.requests} × ${r.parameters.concurrency}`, num: true },
    { label: 'TTFT p50', value: (r) => fmt.ms(r.result?.timeToFirstTokenMs?.p50), num: true },
    { label: 'Generation tok/s p50', value: (r) => fmt.num(r.result?.generationTokensPerSecond?.p50), num: true },
    { label: 'Throughput tok/s', value: (r) => fmt.num(r.result?.throughputTokensPerSecond), num: true },
    { label: 'Errors', value: (r) => fmt.int(r.result?.errors), num: true },
  ], runs, 'No benchmark yet.');
}

function trialsTable(session) {
  return table(`Tuning ${session.id}: ${session.status}`, [
    { label: '#', value: (t) => (t.index === session.best ? `${t.index} ★ best` : t.index), num: true },
    { label: 'Arguments', value: (t) => h('code', {}, t.arguments.join(' ') || '(defaults)') },
    { label: 'Status', value: (t) => t.status }, { label: 'Round', value: (t) => t.round, num: true },
    { label: 'Generation tok/s', value: (t) => fmt.num(t.result?.generationTokensPerSecond?.p50), num: true },
    { label: 'TTFT p50', value: (t) => fmt.ms(t.result?.timeToFirstTokenMs?.p50), num: true },
    { label: 'Memory', value: (t) => fmt.mib(t.memoryMiB ?? t.estimatedMiB), num: true },
    { label: 'Score', value: (t) => fmt.num(t.score, 3), num: true },
    { label: 'Note', value: (t) => t.reason ?? '' },
  ], session.trials, 'No candidates.');
}

export async function modelDetail(root, [id], signal) {
  const path = `/admin/models/${modelPath(id)}`;
  const status = statusRegion();
  const body = h('div');
  root.append(h('p', {}, h('a', { href: '#/models' }, '← All models')), h('h1', {}, id), status, body);

  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Fleet actions' });
  const factsArea = h('div');
  const fitArea = h('div');
  const benchHistory = h('div');
  const benchProgress = statusRegion();
  const tuningArea = h('div');
  const tuningStatus = statusRegion();

  const benchForm = h('form', { class: 'inline-form', 'aria-label': 'Benchmark' },
    field('Requests', numberInput('b-requests', 8, 1, 10000)), field('Concurrency', numberInput('b-concurrency', 2, 1, 256)),
    field('Max tokens', numberInput('b-max', 16, 1, 32768)), field('Prompt words', numberInput('b-words', 16, 1, 100000)),
    h('button', { type: 'submit' }, 'Run benchmark'));
  const tuneForm = h('form', { class: 'inline-form', 'aria-label': 'Tuning' },
    field('Objective', h('select', { id: 't-objective' }, ['max_generation_tps', 'min_ttft', 'max_throughput_at_concurrency', 'min_memory', 'balanced']
      .map((o) => h('option', { value: o }, o.replaceAll('_', ' '))))),
    field('Strategy', h('select', { id: 't-strategy' }, ['halving', 'grid', 'random'].map((o) => h('option', { value: o }, o)))),
    field('Context sizes', h('input', { id: 't-ctx', value: '512,1024' }), 'comma-separated'),
    field('Threads', h('input', { id: 't-threads', value: '' }), 'comma-separated, empty: default'),
    field('Requests per trial', numberInput('t-requests', 2, 1, 1000)),
    h('button', { type: 'submit' }, 'Start tuning'));

  body.append(
    actions,
    h('section', { 'aria-labelledby': 'facts-h' }, h('h2', { id: 'facts-h' }, 'GGUF facts'), factsArea),
    fitArea,
    h('section', { 'aria-labelledby': 'bench-h' }, h('h2', { id: 'bench-h' }, 'Benchmarks'), benchForm, benchProgress, benchHistory),
    h('section', { 'aria-labelledby': 'tune-h' }, h('h2', { id: 'tune-h' }, 'Tuning'), tuneForm, tuningStatus, tuningArea));

  async function refresh() {
    const model = await api(path, { signal });
    actions.replaceChildren(
      ...['load', 'unload', model.pinned ? 'unpin' : 'pin'].map((action) => h('button', { type: 'button', onclick: () => act(action) },
        action[0].toUpperCase() + action.slice(1))));
    factsArea.replaceChildren(dl(facts(model)));
    const runs = await api(`/admin/benchmarks?model=${encodeURIComponent(model.id)}`, { signal });
    benchHistory.replaceChildren(benchmarksTable(runs.benchmarks));
    if (model.fit) {
      const c = await api(`${path}/compatibility`, { signal });
      fitArea.replaceChildren(fitSection(model, c));
    }
    return model;
  }

  async function act(action) {
    notice(status, `${action}…`);
    try {
      await api(`${path}/${action}`, { method: 'POST', signal });
      notice(status, `${action}: done`, 'ok');
      await refresh();
    } catch (error) {
      if (!isAbort(error)) notice(status, `${action} failed: ${error.message}`, 'error');
    }
  }

  benchForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = (id) => Number(benchForm.querySelector(`#${id}`).value);
    const button = event.submitter ?? benchForm.querySelector('button');
    button.disabled = true;
    try {
      const run = await api('/admin/benchmarks', {
        method: 'POST', signal,
        body: { model: id, requests: value('b-requests'), concurrency: value('b-concurrency'), maxTokens: value('b-max'), promptWords: value('b-words') },
      });
      let last = run;
      notice(benchProgress, `Benchmark ${run.id}: 0 of ${run.parameters.requests} requests`);
      await stream(`/admin/benchmarks/${encodeURIComponent(run.id)}/events`, (_, r) => {
        last = r;
        notice(benchProgress, `Benchmark ${r.id}: ${r.completed} of ${r.parameters.requests} requests (${r.status})`);
      }, signal);
      const summary = last.result
        ? `, ${fmt.num(last.result.throughputTokensPerSecond)} tokens/s throughput, TTFT p50 ${fmt.ms(last.result.timeToFirstTokenMs?.p50)}` : '';
      notice(benchProgress, `Benchmark ${last.id} ${last.status}${summary}${last.error ? `: ${last.error}` : ''}`, last.status === 'done' ? 'ok' : 'error');
      await refresh();
    } catch (error) {
      if (!isAbort(error)) notice(benchProgress, `Benchmark failed: ${error.message}`, 'error');
    } finally {
      button.disabled = false;
    }
  });

  /** Polls a session until it ends, redrawing the trials as each finishes. */
  /** Draws the session now and after each of its job events (trials as they finish) until it ends. */
  async function follow(sessionId) {
    const sessionPath = `/admin/tuning/${encodeURIComponent(sessionId)}`;
    const draw = async () => {
      const session = await api(sessionPath, { signal });
      const finished = session.trials.filter((t) => !['pending', 'running'].includes(t.status)).length;
      notice(tuningStatus, `Tuning ${session.id}: ${session.status}, ${finished} of ${session.trials.length} trials finished${session.error ? `: ${session.error}` : ''}`,
        session.status === 'failed' ? 'error' : ['running', 'queued', 'paused'].includes(session.status) ? 'info' : 'ok');
      const apply = session.status === 'done' && session.best !== null && session.best !== undefined
        ? h('button', { type: 'button', onclick: () => applyWinner(session.id) }, 'Apply the winner') : null;
      tuningArea.replaceChildren(trialsTable(session), apply ?? '');
      return session;
    };
    const first = await draw();
    if (!['running', 'queued', 'paused'].includes(first.status)) return;
    const { lastEventID } = await api(`/admin/jobs/${encodeURIComponent(sessionId)}`, { signal });
    let drawing = null;
    await stream(`${sessionPath}/events?after=${lastEventID}`, (name) => {
      if (name !== 'progress' && !drawing) drawing = draw().finally(() => { drawing = null; });
    }, signal);
    await drawing;
    await draw();
  }

  async function applyWinner(sessionId) {
    try {
      await api(`/admin/tuning/${encodeURIComponent(sessionId)}/apply`, { method: 'POST', signal });
      notice(tuningStatus, 'The winner is now the model\'s runtime profile (used from its next load).', 'ok');
    } catch (error) {
      if (!isAbort(error)) notice(tuningStatus, `Apply failed: ${error.message}`, 'error');
    }
  }

  tuneForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const get = (id) => tuneForm.querySelector(`#${id}`).value;
    const space = {};
    if (list(get('t-ctx')).length) space.contextSize = list(get('t-ctx')).map(Number);
    if (list(get('t-threads')).length) space.threads = list(get('t-threads')).map(Number);
    try {
      const session = await api('/admin/tuning', {
        method: 'POST', signal,
        body: { model: id, objective: get('t-objective'), strategy: get('t-strategy'), space, requests: Number(get('t-requests')) },
      });
      await follow(session.id);
    } catch (error) {
      if (!isAbort(error)) notice(tuningStatus, `Tuning failed: ${error.message}`, 'error');
    }
  });

  try {
    const model = await refresh();
    const sessions = await api(`/admin/tuning?model=${encodeURIComponent(model.id)}`, { signal });
    if (sessions.sessions.length) await follow(sessions.sessions[0].id);
  } catch (error) {
    if (!isAbort(error)) notice(status, error.message, 'error');
  }
}
