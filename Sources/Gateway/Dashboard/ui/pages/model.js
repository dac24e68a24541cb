// One model: GGUF facts, fit and the compatibility plot, fleet buttons, benchmarks (started here
// and followed over SSE) and tuning sessions (followed over their job's SSE: a trial table and a
// scatter plot of the Pareto front, updated from each event as trials start and finish).

import { api, isAbort, modelPath, stream } from '../api.js';
import { lineChart, scatterChart } from '../chart.js';
import { field, fmt, h, notice, statusRegion, table, verdictBadge } from '../dom.js';

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

// Quant ladder: the latest ladder's rungs as a table and a scatter plot of KL divergence against
// size (each point's label gives its speed), the recommended rung ringed.

function ladderSection(job) {
  const result = job?.result;
  if (!result) {
    return h('p', {}, job ? `The latest ladder is ${job.state}${job.error ? `: ${job.error.message}` : ''}.`
      : 'No quant ladder yet: start one with corral quant-ladder MODEL --text FILE, or POST /admin/quant-ladder.');
  }
  const points = result.rungs.map((r) => ({
    x: r.bytes / 1048576, y: r.meanKLD, highlight: r.type === result.recommended, front: r.meanKLD <= result.maxKLD,
    className: `rung${r.type === result.recommended ? ' recommended' : ''}`, data: { type: r.type, fit: r.fit },
    label: `${r.type}: ${fmt.bytes(r.bytes)}, KLD ${r.meanKLD.toPrecision(3)}, ${fmt.num(r.generationTPS)} tok/s generation, `
      + `${fmt.num(r.promptTPS)} tok/s prompt, ${fmt.verdict(r.fit)}`,
  }));
  return h('div', {},
    h('p', { class: 'recommendation' }, result.reason),
    scatterChart({
      title: `Quant ladder of ${result.model} (${result.baseType}, perplexity ${fmt.num(result.basePerplexity)})`,
      xLabel: 'size (MiB)', yLabel: 'mean KL divergence', xFormat: (v) => fmt.num(v, v < 10 ? 1 : 0), yFormat: (v) => v.toPrecision(2),
      points, names: { points: 'over the budget', front: `within KLD ${result.maxKLD}`, highlight: 'recommended' },
    }),
    table('Quant ladder rungs', [
      { label: 'Type', value: (r) => r.type }, { label: 'Size', value: (r) => fmt.bytes(r.bytes), num: true },
      { label: 'Of base', value: (r) => `${fmt.num(r.sizeRatio * 100)}%`, num: true }, { label: 'Fit', value: (r) => verdictBadge(r.fit) },
      { label: 'Prompt tok/s', value: (r) => fmt.num(r.promptTPS), num: true },
      { label: 'Generation tok/s', value: (r) => fmt.num(r.generationTPS), num: true },
      { label: 'Perplexity', value: (r) => fmt.num(r.perplexity), num: true },
      { label: 'Mean KLD', value: (r) => r.meanKLD.toPrecision(3), num: true },
      { label: 'Same top token', value: (r) => (r.sameTopPercent == null ? '—' : `${fmt.num(r.sameTopPercent)}%`), num: true },
    ], result.rungs));
}

// Tuning: a session's trials as a table and a scatter plot of its measured trials.

/** Session states in which more events come. */
const LIVE = ['running', 'queued', 'paused'];
/** A job state as the session's `status` says it. */
const legacyStatus = (state) => (state === 'succeeded' ? 'done' : state);
/** Events whose data is one trial. */
const TRIAL_EVENTS = new Set(['pruned', 'trial_started', 'trial', 'new_best', 'remeasured']);
const SETTING_NAMES = {
  contextSize: 'context', ubatch: 'ubatch', flashAttention: 'flash attention', cacheType: 'KV cache', threads: 'threads',
  parallel: 'parallel', gpuLayers: 'GPU layers',
};

/** A candidate's llama-server settings and sampling parameters in words. */
function settingsText(candidate = {}) {
  const parts = Object.entries(candidate).filter(([k, v]) => k !== 'sampling' && v !== null && v !== undefined)
    .map(([k, v]) => `${SETTING_NAMES[k] ?? k} ${v === true ? 'on' : v === false ? 'off' : v}`);
  for (const [k, v] of Object.entries(candidate.sampling ?? {})) parts.push(`${k} ${v}`);
  return parts.join(' · ') || 'defaults';
}

/**
 * What a trial measured, as the server ranks it: generation speed and time to first token (the
 * means over its repetitions when it has several, else the load's p50), memory (measured, else estimated).
 */
function measuresOf(t) {
  const value = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  return {
    generation: value(t.measures?.generationTPS?.mean ?? t.result?.generationTokensPerSecond?.p50),
    ttft: value(t.measures?.ttftMs?.mean ?? t.result?.timeToFirstTokenMs?.p50),
    memory: value(t.memoryMiB ?? t.estimatedMiB),
  };
}

/** A trial with a generation speed and a time to first token (done, infeasible, eliminated …). */
const isMeasured = (t) => measuresOf(t).generation !== null && measuresOf(t).ttft !== null;

/**
 * The Pareto front of the trials measured so far, by the server's rule (`TuningJob.paretoFront`):
 * done trials no other beats on generation speed, first token and memory (and quality, when
 * measured) while being better on one. A finished session's own `pareto` takes its place.
 */
function paretoSoFar(trials) {
  const points = trials.filter((t) => t.status === 'done' && isMeasured(t)).map((t) => {
    const m = measuresOf(t);
    const v = [-m.generation, m.ttft, t.memoryMiB ?? t.estimatedMiB ?? 0];
    if (typeof t.quality === 'number') v.push(t.qualityDetail?.startsWith('PPL') ? t.quality : -t.quality);
    return [t.index, v];
  });
  return points.filter(([i, p]) => !points.some(([j, q]) => j !== i && q.every((x, k) => x <= p[k]) && q.some((x, k) => x < p[k])))
    .map(([i]) => i);
}

/** Memory: measured, else the estimate (said so). */
function memoryText(t) {
  if (typeof t.memoryMiB === 'number') return fmt.mib(t.memoryMiB);
  return typeof t.estimatedMiB === 'number' ? `${fmt.mib(t.estimatedMiB)} (estimate)` : '—';
}

/** Generation tok/s: the mean with its 95 % interval when the trial was repeated, else the p50. */
function generationText(t) {
  const interval = t.measures?.generationTPS;
  if (interval && typeof interval.mean === 'number') {
    return `${fmt.num(interval.mean)} [${fmt.num(interval.low)}–${fmt.num(interval.high)}]`;
  }
  return fmt.num(t.result?.generationTokensPerSecond?.p50);
}

/** The marks of a session drawn now: its best (so far), its Pareto front (so far), a best just announced. */
function sessionMarks(session, liveBest, fresh) {
  const final = !LIVE.includes(session.status);
  const best = session.best ?? (final ? null : liveBest);
  const serverFront = Array.isArray(session.pareto);
  return {
    best, bestFinal: final && best !== null && best !== undefined, fresh,
    pareto: serverFront ? session.pareto : paretoSoFar(session.trials), paretoFinal: serverFront,
  };
}

/**
 * The trials that have started (planned ones still to run are counted in the caption): settings,
 * status with its reason, measures; rows carry `data-index`, `data-status` and the classes `best`,
 * `pareto` and `new-best` (the best announced last, marked while the session runs on).
 */
function trialsTable(session, marks) {
  const shown = session.trials.filter((t) => t.status !== 'pending');
  const waiting = session.trials.length - shown.length;
  const rounds = session.request?.strategy === 'halving' || session.trials.some((t) => t.round > 0);
  const columns = [
    { label: '#', value: (t) => [
      String(t.index),
      t.index === marks.best ? ` ★ best${marks.bestFinal ? '' : ' so far'}` : null,
      marks.pareto.includes(t.index) ? [' ', h('span', { class: 'badge', title: 'on the Pareto front' }, 'Pareto')] : null,
      t.index === marks.fresh ? [' ', h('mark', {}, 'new best')] : null,
    ] },
    { label: 'Settings', value: (t) => [settingsText(t.candidate), h('br'), h('code', {}, (t.arguments ?? []).join(' ') || '(defaults)')] },
    { label: 'Status', value: (t) => [
      t.status, t.reason ? ` — ${t.reason}` : null, t.remeasured ? ' (re-measured)' : null, t.server === 'reused' ? ' (server reused)' : null,
    ] },
    ...(rounds ? [{ label: 'Round', value: (t) => t.round, num: true }] : []),
    { label: 'Generation tok/s', value: generationText, num: true },
    { label: 'First token', value: (t) => fmt.ms(measuresOf(t).ttft), num: true },
    { label: 'Memory', value: memoryText, num: true },
    { label: 'Score', value: (t) => fmt.num(t.score, 3), num: true },
  ];
  const caption = `Tuning ${session.id}: ${session.status}`
    + `${waiting ? `, ${waiting} ${waiting === 1 ? 'trial' : 'trials'} still to run` : ''}`;
  const rowClass = (t) => [
    t.index === marks.best ? 'best' : '', marks.pareto.includes(t.index) ? 'pareto' : '', t.index === marks.fresh ? 'new-best' : '',
  ].filter(Boolean).join(' ') || null;
  const body = shown.length
    ? shown.map((t) => h('tr', { 'data-index': t.index, 'data-status': t.status, class: rowClass(t) },
      columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.value(t) ?? '—'))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'empty' },
      session.trials.length ? 'No trial has started yet.' : 'No candidates.'))];
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', {}, h('caption', {}, caption),
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)))),
      h('tbody', {}, body)));
}

/**
 * The measured trials: generation speed against time to first token (or memory), the Pareto front
 * and the best marked. Points carry `data-index` and the classes `pareto` and `best`.
 */
function trialsScatter(session, marks, xAxis) {
  const byMemory = xAxis === 'memory';
  const points = session.trials.filter(isMeasured).map((t) => {
    const m = measuresOf(t);
    const front = marks.pareto.includes(t.index);
    return {
      x: byMemory ? m.memory : m.ttft, y: m.generation, front, highlight: t.index === marks.best,
      className: ['trial', front ? 'pareto' : '', t.index === marks.best ? 'best' : ''].filter(Boolean).join(' '),
      data: { index: t.index, status: t.status },
      label: `Trial ${t.index} (${settingsText(t.candidate)}): ${fmt.num(m.generation)} tok/s, first token ${fmt.ms(m.ttft)}, `
        + `${fmt.mib(m.memory)}, ${t.status}`,
    };
  });
  return scatterChart({
    title: `Trials of ${session.id}: generation speed against ${byMemory ? 'memory' : 'time to first token'}`,
    xLabel: byMemory ? 'memory (MiB)' : 'time to first token p50 (ms)', yLabel: 'generation (tokens/s)',
    xFormat: (v) => fmt.num(v, v < 10 ? 1 : 0), yFormat: (v) => fmt.num(v, v < 10 ? 1 : 0),
    points, empty: 'No measured trial yet.',
    names: {
      points: 'measured trial', front: marks.paretoFinal ? 'Pareto front' : 'Pareto front so far', highlight: marks.bestFinal ? 'best' : 'best so far',
    },
  });
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
  const ladderArea = h('div');
  const tuningStatus = statusRegion();

  const benchForm = h('form', { class: 'inline-form', 'aria-label': 'Benchmark' },
    field('Requests', numberInput('b-requests', 8, 1, 10000)), field('Concurrency', numberInput('b-concurrency', 2, 1, 256)),
    field('Max tokens', numberInput('b-max', 16, 1, 32768)), field('Prompt words', numberInput('b-words', 16, 1, 100000)),
    h('button', { type: 'submit' }, 'Run benchmark'));
  const tuneForm = h('form', { class: 'inline-form', 'aria-label': 'Tuning' },
    field('Objective', h('select', { id: 't-objective' }, ['max_generation_tps', 'min_ttft', 'max_throughput_at_concurrency', 'min_memory', 'balanced']
      .map((o) => h('option', { value: o }, o.replaceAll('_', ' '))))),
    field('Strategy', h('select', { id: 't-strategy' }, ['halving', 'grid', 'random', 'tpe', 'hyperband', 'evolutionary']
      .map((o) => h('option', { value: o }, o)))),
    field('Context sizes', h('input', { id: 't-ctx', value: '512,1024' }), 'comma-separated'),
    field('Threads', h('input', { id: 't-threads', value: '' }), 'comma-separated, empty: default'),
    field('Micro-batch sizes', h('input', { id: 't-ubatch', value: '' }), 'comma-separated'),
    field('Temperatures', h('input', { id: 't-temperature', value: '' }), 'comma-separated'),
    field('Requests per trial', numberInput('t-requests', 2, 1, 1000)),
    field('Max tokens', numberInput('t-max', 16, 1, 4096)),
    h('button', { type: 'submit' }, 'Start tuning'));

  body.append(
    actions,
    h('section', { 'aria-labelledby': 'facts-h' }, h('h2', { id: 'facts-h' }, 'GGUF facts'), factsArea),
    fitArea,
    h('section', { 'aria-labelledby': 'bench-h' }, h('h2', { id: 'bench-h' }, 'Benchmarks'), benchForm, benchProgress, benchHistory),
    h('section', { 'aria-labelledby': 'tune-h' }, h('h2', { id: 'tune-h' }, 'Tuning'), tuneForm, tuningStatus, tuningArea),
    h('section', { 'aria-labelledby': 'ladder-h' }, h('h2', { id: 'ladder-h' }, 'Quant ladder'), ladderArea));

  async function refresh() {
    const model = await api(path, { signal });
    actions.replaceChildren(
      ...['load', 'unload', model.pinned ? 'unpin' : 'pin'].map((action) => h('button', { type: 'button', onclick: () => act(action) },
        action[0].toUpperCase() + action.slice(1))));
    factsArea.replaceChildren(dl(facts(model)));
    const runs = await api(`/admin/benchmarks?model=${encodeURIComponent(model.id)}`, { signal });
    benchHistory.replaceChildren(benchmarksTable(runs.benchmarks));
    const ladders = await api(`/admin/jobs?kind=quant-ladder&model=${encodeURIComponent(model.id)}&limit=1`, { signal });
    ladderArea.replaceChildren(ladderSection(ladders.jobs[0]));
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

  let following = null; // the AbortController of the session drawn now: a newer session replaces it

  /**
   * Draws a session, then follows its job's events until it ends: each trial event replaces its
   * trial, each `detail` event the whole list, `state` the status, `new_best` marks the best so
   * far. The stream replays the session's events from its start (so the best so far is known for a
   * session opened halfway), drawn once it reaches the event that was last when the page looked
   * (`fromStart`, for a session started here: every event is news). The session as the API gives
   * it is drawn at the end (its best and Pareto front).
   */
  async function follow(sessionId, { fromStart = false } = {}) {
    following?.abort();
    const mine = new AbortController();
    following = mine;
    signal.addEventListener('abort', () => mine.abort(), { once: true });
    const sig = mine.signal;
    const sessionPath = `/admin/tuning/${encodeURIComponent(sessionId)}`;
    const view = { session: await api(sessionPath, { signal: sig }), liveBest: null, fresh: null };

    const xAxis = h('select', { id: 't-xaxis' }, h('option', { value: 'ttft' }, 'time to first token'), h('option', { value: 'memory' }, 'memory'));
    const chartArea = h('div', { id: 'tuning-chart', class: 'charts' });
    const tableArea = h('div', { id: 'tuning-trials' });
    const applyArea = h('div');
    const render = () => {
      const session = view.session;
      const marks = sessionMarks(session, view.liveBest, LIVE.includes(session.status) ? view.fresh : null);
      const finished = session.trials.filter((t) => !['pending', 'running'].includes(t.status)).length;
      const announced = marks.fresh !== null && marks.fresh !== undefined
        ? `; new best: trial ${marks.fresh}, ${generationText(session.trials.find((t) => t.index === marks.fresh) ?? {})} tok/s` : '';
      notice(tuningStatus, `Tuning ${session.id}: ${session.status}, ${finished} of ${session.trials.length} trials finished`
        + `${session.stoppedEarly ? ` (stopped early: ${session.stoppedEarly})` : ''}${session.error ? `: ${session.error}` : ''}${announced}`,
      session.status === 'failed' ? 'error' : LIVE.includes(session.status) ? 'info' : 'ok');
      chartArea.replaceChildren(trialsScatter(session, marks, xAxis.value));
      tableArea.replaceChildren(trialsTable(session, marks));
      applyArea.replaceChildren(session.status === 'done' && marks.bestFinal
        ? h('button', { type: 'button', onclick: () => applyWinner(session.id) }, 'Apply the winner') : '');
    };
    xAxis.addEventListener('change', render);
    tuningArea.replaceChildren(
      h('div', { class: 'filters', 'data-session': sessionId, id: 'tuning-view' }, field('Scatter plot x axis', xAxis)), chartArea, tableArea, applyArea);
    render();
    if (!LIVE.includes(view.session.status)) return;

    let scheduled = false;
    const schedule = () => {
      if (scheduled) return;
      scheduled = true;
      setTimeout(() => {
        scheduled = false;
        if (!sig.aborted) render();
      }, 0);
    };
    const seen = fromStart ? 0 : (await api(`/admin/jobs/${encodeURIComponent(sessionId)}`, { signal: sig })).lastEventID;
    await stream(`${sessionPath}/events?after=0`, (name, event) => {
      const data = event?.data;
      const session = view.session;
      if (name === 'detail' && Array.isArray(data?.trials)) {
        Object.assign(session, { trials: data.trials, best: data.best ?? null, pareto: data.pareto ?? null, stoppedEarly: data.stoppedEarly ?? null });
      } else if (TRIAL_EVENTS.has(name) && Number.isInteger(data?.index)) {
        const at = session.trials.findIndex((t) => t.index === data.index);
        if (at >= 0) session.trials[at] = data; else session.trials.push(data);
        if (name === 'new_best') {
          view.liveBest = data.index;
          if (event.id > seen) view.fresh = data.index; // announced only when it happens while the page looks
        } else if (name === 'trial' && data.index !== view.fresh) {
          view.fresh = null;
        }
      } else if (name === 'state' && typeof data?.state === 'string') {
        session.status = legacyStatus(data.state);
      } else {
        return; // progress, waiting …: nothing the view shows
      }
      if (!(event.id < seen)) schedule();
    }, sig);
    view.session = await api(sessionPath, { signal: sig });
    if (!sig.aborted) render();
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
    for (const [key, box] of [['contextSize', 't-ctx'], ['threads', 't-threads'], ['ubatch', 't-ubatch'], ['temperature', 't-temperature']]) {
      if (list(get(box)).length) space[key] = list(get(box)).map(Number);
    }
    try {
      const session = await api('/admin/tuning', {
        method: 'POST', signal,
        body: {
          model: id, objective: get('t-objective'), strategy: get('t-strategy'), space, requests: Number(get('t-requests')),
          maxTokens: Number(get('t-max')),
        },
      });
      await follow(session.id, { fromStart: true });
    } catch (error) {
      if (!isAbort(error)) notice(tuningStatus, `Tuning failed: ${error.message}`, 'error');
    }
  });

  try {
    const model = await refresh();
    const sessions = await api(`/admin/tuning?model=${encodeURIComponent(model.id)}`, { signal });
    // The newest session, unless one started from the form meanwhile.
    if (sessions.sessions.length && !following) await follow(sessions.sessions[0].id);
  } catch (error) {
    if (!isAbort(error)) notice(status, error.message, 'error');
  }
}
