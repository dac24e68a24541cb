// Fine-tuning: every fine-tuning job (the OpenAI fine-tuning API, read with the admin token) with
// its base model, status, epochs, fine-tuned model and validation perplexity before → after,
// refreshed while one is live; and `#/fine-tuning/{id}` — one job's facts, pause / resume /
// cancel, a live loss chart (training loss per step, validation loss at each epoch's end), its
// checkpoints, its quality before and after, and its message log. The chart starts from
// GET /admin/fine-tuning/ID/curve and then follows the job's event stream (GET /admin/jobs/ID/events).

import { api, isAbort, stream } from '../api.js';
import { lineChart } from '../chart.js';
import { delay, fmt, h, notice, statusRegion, table } from '../dom.js';

const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
const jobPath = (id) => `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`;

/** A job's status as a coloured badge (the Jobs page's colours). */
const statusBadge = (status) => h('span', {
  class: `state job-${status === 'validating_files' ? 'queued' : status}`,
}, status);
/** A perplexity as the page shows it everywhere: two decimals, no grouping. */
const perplexity = (p) => (p && Number.isFinite(p.perplexity) ? p.perplexity.toFixed(2) : '—');
const beforeAfter = (q) => (q?.perplexity_before || q?.perplexity_after
  ? `${perplexity(q.perplexity_before)} → ${perplexity(q.perplexity_after)}` : '—');
const epochs = (j) => `${fmt.int(j.epochs_done ?? 0)} / ${j.hyperparameters?.n_epochs ?? '—'}`;
const unixTime = (s) => (s ? fmt.time(s * 1000) : '—');
const loss = (v) => (v === null || v === undefined ? '—' : Number(v).toFixed(4));

export async function fineTuning(root, [id], signal) {
  return id ? jobDetail(root, id, signal) : jobList(root, signal);
}

async function jobList(root, signal) {
  const status = statusRegion();
  const list = h('div');
  root.append(h('h1', {}, 'Fine-tuning'), status, list);
  let jobs = [];
  const draw = () => {
    list.replaceChildren(table('Fine-tuning jobs, newest first', [
      { label: 'Job', value: (j) => h('a', { href: `#/fine-tuning/${encodeURIComponent(j.id)}` }, j.id) },
      { label: 'Base model', value: (j) => j.model },
      { label: 'Status', value: (j) => statusBadge(j.status) },
      { label: 'Epochs', value: epochs, num: true },
      { label: 'Fine-tuned model', value: (j) => (j.fine_tuned_model ? h('code', {}, j.fine_tuned_model) : '—') },
      { label: 'Validation perplexity', value: (j) => beforeAfter(j.quality), num: true },
      { label: 'Created', value: (j) => unixTime(j.created_at) },
    ], jobs, 'No fine-tuning job yet: create one with the fine-tuning API (client.fine_tuning.jobs.create).'));
    notice(status, `${jobs.length} job${jobs.length === 1 ? '' : 's'}`);
  };
  async function refresh() {
    try {
      jobs = (await api('/v1/fine_tuning/jobs?limit=100', { signal })).data;
      draw();
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }
  await refresh();
  for (;;) {
    await delay(2000, signal);
    if (jobs.some((j) => !FINAL.has(j.status))) await refresh();
  }
}

/**
 * The loss chart: training loss at each training step, validation loss at each epoch's end (the
 * last validation figure of the epoch). Metrics taken while validating carry `valid_loss`; their
 * `train_loss` is not a training step's and is left out.
 */
function lossChart(points, totalSteps) {
  const train = points.filter((p) => p.valid_loss === undefined || p.valid_loss === null).map((p) => [p.step, p.train_loss]);
  const byEpoch = new Map();
  for (const p of points) if (p.valid_loss !== undefined && p.valid_loss !== null) byEpoch.set(p.epoch, [p.step, p.valid_loss]);
  const steps = points.map((p) => p.step);
  const end = totalSteps || (steps.length ? Math.max(...steps) : 0);
  return lineChart({
    title: 'Loss by step', legend: true,
    xDomain: end > 0 ? [0, end] : undefined,
    xFormat: (v) => fmt.int(v), yFormat: (v) => fmt.num(v, 2),
    series: [{ name: 'training loss', points: train }, { name: 'validation loss (epoch end)', points: [...byEpoch.values()] }],
    empty: 'No training step yet.',
  });
}

async function jobDetail(root, id, signal) {
  const status = statusRegion();
  const facts = h('div', { id: 'ft-facts' });
  const chart = h('div', { id: 'ft-chart', class: 'charts' });
  const quality = h('div', { id: 'ft-quality' });
  const checkpoints = h('div', { id: 'ft-checkpoints' });
  const log = h('tbody');
  root.append(h('h1', {}, `Fine-tuning job ${id}`), h('p', {}, h('a', { href: '#/fine-tuning' }, '← All fine-tuning jobs')), status, facts,
    h('h2', {}, 'Loss'), chart,
    h('h2', {}, 'Checkpoints'), checkpoints,
    h('h2', {}, 'Validation perplexity'), quality,
    h('h2', {}, 'Messages'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Message log' },
      h('table', { id: 'ft-messages' }, h('caption', {}, 'Message log, oldest first'),
        h('thead', {}, h('tr', {}, ['Time', 'Level', 'Message'].map((c) => h('th', { scope: 'col' }, c)))), log)));

  let job = null;
  let points = [];
  let last = null; // the newest metrics point: live progress between job reloads
  const progressCell = h('span', { id: 'ft-progress' }); // redrawn alone, so the buttons stay put

  const actions = () => {
    const act = (action, label, cls) => h('button', {
      type: 'button', class: cls, 'aria-label': `${label} ${job.id}`,
      onclick: async (event) => {
        event.currentTarget.disabled = true;
        try {
          job = await api(`${jobPath(job.id)}/${action}`, { method: 'POST', signal });
          drawFacts();
        } catch (error) {
          if (!isAbort(error)) notice(status, error.message, 'error');
          drawFacts();
        }
      },
    }, label);
    const buttons = [];
    if (job.status === 'running') buttons.push(act('pause', 'Pause', 'quiet'));
    if (job.status === 'paused') buttons.push(act('resume', 'Resume', 'quiet'));
    if (!FINAL.has(job.status)) buttons.push(act('cancel', 'Cancel', 'danger'));
    return buttons.length ? h('span', { class: 'actions' }, buttons) : '—';
  };
  const drawProgress = () => {
    if (FINAL.has(job.status) || !last?.total_steps) return progressCell.replaceChildren('—');
    const validating = last.valid_loss !== undefined && last.valid_loss !== null;
    const text = `step ${fmt.int(last.step)} / ${fmt.int(last.total_steps)}, epoch ${last.epoch}`;
    return progressCell.replaceChildren(h('span', { class: 'progress' },
      h('progress', { max: last.total_steps, value: last.step, 'aria-label': text }),
      ` ${text} · ${validating ? 'validation' : 'training'} loss ${loss(validating ? last.valid_loss : last.train_loss)}`,
      last.eta_seconds !== undefined && last.eta_seconds !== null ? ` · epoch ends in ${fmt.seconds(last.eta_seconds)}` : ''));
  };
  const drawFacts = () => {
    const hp = job.hyperparameters ?? {};
    const s = job.settings ?? {};
    const pairs = [['Status', statusBadge(job.status)], ['Base model', job.model],
      ['Fine-tuned model', job.fine_tuned_model ? h('code', { id: 'ft-model' }, job.fine_tuned_model) : '—'],
      ['Epochs done', epochs(job)], ['Progress', progressCell],
      ['Hyperparameters', `batch size ${hp.batch_size ?? '—'}, learning-rate multiplier ${hp.learning_rate_multiplier ?? '—'}`],
      ['Settings', `preset ${s.preset ?? '—'}, context ${fmt.int(s.context_size)}, learning rate ${s.learning_rate ?? '—'}, optimizer ${s.optimizer ?? '—'}`],
      ['Trained tokens', fmt.int(job.trained_tokens)], ['Created', unixTime(job.created_at)],
      ['Estimated finish', unixTime(job.estimated_finish)], ['Finished', unixTime(job.finished_at)],
      ['Error', job.error ? `${job.error.message} (${job.error.code})` : '—'], ['Actions', actions()]];
    drawProgress();
    facts.replaceChildren(h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  };
  const drawChart = () => {
    const figure = lossChart(points, last?.total_steps ?? points.at(-1)?.total_steps);
    chart.replaceChildren(figure);
    chart.dataset.points = String(points.length);
  };
  const drawQuality = () => {
    const q = job.quality ?? {};
    const row = (label, p) => ({ label, p });
    const rows = [row('Before (base model)', q.perplexity_before), row('After (fine-tuned)', q.perplexity_after)].filter((r) => r.p);
    const change = q.perplexity_before?.perplexity && q.perplexity_after?.perplexity
      ? `${fmt.num((q.perplexity_after.perplexity / q.perplexity_before.perplexity - 1) * 100, 1)} %` : null;
    quality.replaceChildren(
      h('p', {}, `Measured on ${q.validation_source ?? '—'}${change ? `; change ${change}` : ''}.`),
      table('Validation perplexity before and after', [
        { label: 'Model', value: (r) => r.label },
        { label: 'Perplexity', value: (r) => h('span', { class: 'perplexity' }, perplexity(r.p)), num: true },
        { label: '±', value: (r) => fmt.num(r.p.error, 4), num: true },
        { label: 'Chunks', value: (r) => fmt.int(r.p.chunks), num: true },
        { label: 'Context', value: (r) => fmt.int(r.p.context_size), num: true },
      ], rows, 'Not measured yet.'),
      ...(q.note ? [h('p', { class: 'notice info' }, q.note)] : []));
  };
  const drawCheckpoints = (list) => {
    checkpoints.replaceChildren(table('Checkpoints, newest first', [
      { label: 'Epoch', value: (c) => fmt.int(c.epoch), num: true },
      { label: 'Step', value: (c) => fmt.int(c.step_number), num: true },
      { label: 'Model', value: (c) => h('code', {}, c.fine_tuned_model_checkpoint) },
      { label: 'Training loss', value: (c) => loss(c.metrics?.train_loss), num: true },
      { label: 'Training accuracy', value: (c) => fmt.num((c.metrics?.train_mean_token_accuracy ?? NaN) * 100, 1), num: true },
      { label: 'Validation loss', value: (c) => loss(c.metrics?.valid_loss), num: true },
      { label: 'Created', value: (c) => unixTime(c.created_at) },
    ], list, 'No checkpoint yet: one is written at the end of each epoch.'));
  };
  const drawAll = () => { drawFacts(); drawQuality(); };

  /** The job and its checkpoints again (after a state change, a checkpoint or the end). */
  async function reload() {
    const [current, list] = await Promise.all([api(jobPath(id), { signal }), api(`${jobPath(id)}/checkpoints?limit=100`, { signal })]);
    job = current;
    drawAll();
    drawCheckpoints(list.data);
  }
  // Reloads asked for by events are coalesced: at most one in flight, one more queued.
  let reloading = null;
  let again = false;
  const scheduleReload = () => {
    if (reloading) { again = true; return; }
    reloading = (async () => {
      do {
        again = false;
        try { await reload(); } catch (error) { if (!isAbort(error)) notice(status, error.message, 'error'); }
        if (again) await delay(300, signal).catch(() => {});
      } while (again && !signal.aborted);
      reloading = null;
    })();
  };
  // Chart redraws are coalesced too (a connection replays many metrics at once).
  let chartTimer = null;
  const scheduleChart = () => {
    if (chartTimer) return;
    chartTimer = setTimeout(() => { chartTimer = null; if (!signal.aborted) { drawChart(); drawProgress(); } }, 150);
  };

  try {
    const curve = await api(`/admin/fine-tuning/${encodeURIComponent(id)}/curve`, { signal });
    job = curve.job;
    points = curve.points;
    last = points.at(-1) ?? null;
    drawAll();
    drawChart();
    drawCheckpoints([]);
    await reload();
  } catch (error) {
    if (!isAbort(error)) notice(status, error.message, 'error');
    return;
  }

  // Follow the job's event stream: its messages, and metrics beyond the curve already drawn. The
  // stream replays every stored event in order, so its k-th metrics event is the curve's k-th point.
  let lastID = 0;
  let metricsSeen = 0;
  let messages = 0;
  for (let attempt = 0; ; attempt += 1) {
    try {
      await stream(`/admin/jobs/${encodeURIComponent(id)}/events?after=${lastID}`, (_name, event) => {
        if (event.id <= lastID) return;
        lastID = event.id;
        attempt = 0;
        if (event.type === 'metrics') {
          metricsSeen += 1;
          if (metricsSeen > points.length) {
            points.push(event.data);
            last = event.data;
            scheduleChart();
          }
        } else if (event.type === 'message') {
          messages += 1;
          const level = event.data?.level ?? 'info';
          log.append(h('tr', { class: `level-${level}` }, h('td', {}, fmt.time(event.at)),
            h('td', {}, level === 'info' ? level : h('strong', {}, level)), h('td', {}, event.data?.message ?? '')));
        } else if (['state', 'detail', 'checkpoint'].includes(event.type)) {
          scheduleReload();
        }
      }, signal);
      // The stream ends with the job: draw its final record, curve and checkpoints.
      await reloading;
      const curve = await api(`/admin/fine-tuning/${encodeURIComponent(id)}/curve`, { signal });
      points = curve.points;
      last = points.at(-1) ?? null;
      await reload();
      drawChart();
      notice(status, `${job.status}; ${points.length} training points, ${messages} messages`, job.status === 'failed' ? 'error' : 'info');
      return;
    } catch (error) {
      if (isAbort(error)) return;
      notice(status, `${error.message}; reconnecting after event ${lastID}…`, 'error');
      await delay(Math.min(5000, 500 * 2 ** attempt), signal);
    }
  }
}
