// Evaluations: every run of every evaluation (the OpenAI Evals API, read with the admin token),
// runs picked for a side-by-side comparison (GET /admin/evaluations/compare: pass rates, McNemar's
// p-value, speed deltas, each item's answers), and `#/evaluations/{run}` — one run's live console
// (its prompts and answer tokens as they stream, then each item's grades, over SSE) and its
// results table (the stored output items).

import { api, isAbort, stream } from '../api.js';
import { delay, fmt, h, notice, statusRegion, table } from '../dom.js';

const FINAL = new Set(['completed', 'failed', 'canceled']);
const runState = (status) => h('span', {
  class: `state job-${{ completed: 'succeeded', in_progress: 'running', canceled: 'cancelled' }[status] ?? status}`,
}, status);
/** An item's grade (`pass`, `fail`, `error`, `missing`) as a coloured badge. */
const itemState = (status) => h('span', { class: `state job-${status === 'pass' ? 'succeeded' : 'failed'}` }, status);
const percent = (v) => (v === null || v === undefined ? '—' : `${(v * 100).toFixed(1)} %`);
const passRate = (counts) => (counts?.total ? counts.passed / counts.total : null);

/** Every run of the newest evaluations, newest first, each with its evaluation's name. */
async function allRuns(signal) {
  const evals = (await api('/v1/evals?limit=100&order=desc', { signal })).data;
  const lists = await Promise.all(evals.map((e) => api(`/v1/evals/${encodeURIComponent(e.id)}/runs?limit=100&order=desc`, { signal })));
  return lists.flatMap((list, i) => list.data.map((run) => ({ ...run, evalName: evals[i].name })))
    .sort((a, b) => b.created_at - a.created_at);
}

export async function evaluations(root, [runID], signal) {
  return runID ? runDetail(root, runID, signal) : runList(root, signal);
}

async function runList(root, signal) {
  const status = statusRegion();
  const list = h('div');
  const compareStatus = statusRegion();
  const compared = h('div', { id: 'compare' });
  const compareButton = h('button', { type: 'button', disabled: true }, 'Compare selected runs');
  root.append(h('h1', {}, 'Evaluations'), status, list,
    h('div', { class: 'actions' }, compareButton), compareStatus, compared);

  let runs = [];
  const selected = new Set();
  const draw = () => {
    list.replaceChildren(table('Evaluation runs, newest first', [
      {
        label: 'Compare', value: (r) => h('input', {
          type: 'checkbox', 'aria-label': `Compare ${r.id}`, checked: selected.has(r.id),
          onchange: (event) => {
            if (event.target.checked) selected.add(r.id); else selected.delete(r.id);
            compareButton.disabled = selected.size < 2 || selected.size > 5;
          },
        }),
      },
      { label: 'Run', value: (r) => h('a', { href: `#/evaluations/${encodeURIComponent(r.id)}` }, r.id) },
      { label: 'Evaluation', value: (r) => r.evalName }, { label: 'Model', value: (r) => r.model || '—' },
      { label: 'Status', value: (r) => runState(r.status) },
      { label: 'Passed', value: (r) => fmt.int(r.result_counts?.passed), num: true },
      { label: 'Failed', value: (r) => fmt.int(r.result_counts?.failed), num: true },
      { label: 'Errors', value: (r) => fmt.int(r.result_counts?.errored), num: true },
      { label: 'Pass rate', value: (r) => percent(passRate(r.result_counts)), num: true },
      { label: 'Created', value: (r) => fmt.time(r.created_at * 1000) },
    ], runs, 'No evaluation run yet: create one with the Evals API (client.evals.runs.create).'));
    notice(status, `${runs.length} run${runs.length === 1 ? '' : 's'}`);
  };
  async function refresh() {
    try {
      runs = await allRuns(signal);
      draw();
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }
  compareButton.addEventListener('click', async () => {
    try {
      // Oldest first, so each pair reads "the newer run against the older one".
      const ids = runs.map((r) => r.id).filter((id) => selected.has(id)).reverse();
      const result = await api(`/admin/evaluations/compare?runs=${ids.map(encodeURIComponent).join(',')}`, { signal });
      compared.replaceChildren(...comparison(result));
      notice(compareStatus, `${result.runs.length} runs, ${result.items.length} items compared`, 'ok');
    } catch (error) {
      if (!isAbort(error)) notice(compareStatus, error.message, 'error');
    }
  });
  await refresh();
  for (;;) {
    await delay(2000, signal);
    if (runs.some((r) => !FINAL.has(r.status))) await refresh();
  }
}

/** The compare view: one row per run, one per pair (with the significance test), one per item. */
function comparison(result) {
  const short = (id) => id.replace(/^evalrun-/, '').slice(0, 8);
  const signed = (v, unit = '') => (v === null || v === undefined ? '—' : `${v > 0 ? '+' : ''}${fmt.num(v)}${unit}`);
  return [
    h('h2', {}, 'Comparison'),
    table('Runs', [
      { label: 'Run', value: (r) => r.id }, { label: 'Model', value: (r) => r.model },
      { label: 'Items', value: (r) => fmt.int(r.items), num: true }, { label: 'Pass rate', value: (r) => percent(r.pass_rate), num: true },
      { label: 'Mean time', value: (r) => fmt.ms(r.mean_total_ms), num: true },
      { label: 'Mean first token', value: (r) => fmt.ms(r.mean_ttft_ms), num: true },
      { label: 'Tokens/s', value: (r) => fmt.num(r.mean_generation_tokens_per_second), num: true },
    ], result.runs),
    table('Pairs (b against a): pass-rate difference and McNemar\'s exact test on the items both answered', [
      { label: 'a', value: (p) => p.a }, { label: 'b', value: (p) => p.b },
      { label: 'Paired items', value: (p) => fmt.int(p.paired_items), num: true },
      { label: 'Only a passes', value: (p) => fmt.int(p.only_a_passes), num: true },
      { label: 'Only b passes', value: (p) => fmt.int(p.only_b_passes), num: true },
      { label: 'Pass-rate difference', value: (p) => signed(p.pass_rate_difference * 100, ' pt'), num: true },
      // Bold where the difference is significant at the 5 % level.
      { label: 'p-value', value: (p) => h(p.mcnemar_p < 0.05 ? 'strong' : 'span', {}, p.mcnemar_p.toPrecision(3)), num: true },
      { label: 'Time Δ', value: (p) => signed(p.total_ms_delta, ' ms'), num: true },
      { label: 'Tokens/s Δ', value: (p) => signed(p.generation_tokens_per_second_delta), num: true },
    ], result.pairs),
    table('Items side by side', [
      { label: 'Item', value: (i) => fmt.int(i.index), num: true },
      ...result.runs.map((run, k) => ({
        label: `Run ${short(run.id)}`,
        value: (i) => h('span', {}, itemState(i.runs[k].status), ' ', String(i.runs[k].output ?? '')),
      })),
    ], result.items),
  ];
}

async function runDetail(root, runID, signal) {
  const status = statusRegion();
  const facts = h('div');
  const console_ = h('ol', { id: 'eval-console', class: 'console', 'aria-live': 'off' });
  const results = h('div', { id: 'eval-results' });
  root.append(h('h1', {}, `Evaluation run ${runID}`), h('p', {}, h('a', { href: '#/evaluations' }, '← All runs')), status, facts,
    h('h2', {}, 'Live console'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Live console' }, console_),
    h('h2', {}, 'Results'), results);

  // The run's evaluation id is in the run object; the admin may read any team's.
  let run;
  try {
    const found = (await allRuns(signal)).find((r) => r.id === runID);
    if (!found) throw new Error(`no evaluation run '${runID}'`);
    run = found;
  } catch (error) {
    if (!isAbort(error)) notice(status, error.message, 'error');
    return;
  }
  const runPath = `/v1/evals/${encodeURIComponent(run.eval_id)}/runs/${encodeURIComponent(runID)}`;
  const drawFacts = () => {
    const c = run.result_counts ?? {};
    const pairs = [['Evaluation', `${run.evalName} (${run.eval_id})`], ['Model', run.model || '—'], ['Status', runState(run.status)],
      ['Items', `${fmt.int(c.passed)} passed, ${fmt.int(c.failed)} failed, ${fmt.int(c.errored)} errors of ${fmt.int(c.total)}`],
      ['Pass rate', percent(passRate(c))], ['Created', fmt.time(run.created_at * 1000)],
      ['Error', run.error?.message || '—']];
    facts.replaceChildren(h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  };
  drawFacts();
  async function drawResults() {
    const items = (await api(`${runPath}/output_items?limit=100`, { signal })).data;
    results.replaceChildren(table('Output items', [
      { label: 'Item', value: (i) => fmt.int(i.datasource_item_id), num: true },
      { label: 'Status', value: (i) => itemState(i.status) },
      { label: 'Prompt', value: (i) => (i.sample.input ?? []).map((m) => m.content).join(' / ') },
      { label: 'Answer', value: (i) => i.sample.output?.[0]?.content ?? '' },
      { label: 'Grades', value: (i) => i.results.map((r) => `${r.name}: ${r.passed ? 'pass' : 'fail'} (${fmt.num(r.score, 2)})`).join(', ') },
      { label: 'First token', value: (i) => fmt.ms(i.sample.timings?.time_to_first_token_ms), num: true },
      { label: 'Total', value: (i) => fmt.ms(i.sample.timings?.total_ms), num: true },
    ], items, 'No graded item yet.'));
  }

  // The console: a line per request, its answer growing token by token, its grades when done.
  const lines = new Map();
  const line = (index, repetition) => {
    const key = `${index}/${repetition}`;
    if (!lines.has(key)) {
      const entry = { prompt: h('span', { class: 'prompt' }), answer: h('span', { class: 'answer' }), grades: h('span', { class: 'grades' }) };
      console_.append(h('li', { 'data-item': index }, h('strong', {}, `#${index} `), entry.prompt, ' → ', entry.answer, ' ', entry.grades));
      lines.set(key, entry);
    }
    return lines.get(key);
  };
  try {
    if (!FINAL.has(run.status)) {
      await stream(`/admin/evaluations/runs/${encodeURIComponent(runID)}/events`, (name, event) => {
        if (name === 'prompt') {
          const entry = line(event.index, event.repetition);
          entry.prompt.textContent = event.input.at(-1)?.content ?? '';
          if (event.turn === 0) entry.answer.textContent = '';
        } else if (name === 'token') {
          line(event.index, event.repetition).answer.append(event.text);
        } else if (name === 'item') {
          const item = event.data;
          const entry = line(item.index, item.repetition);
          entry.answer.textContent = item.output;
          // A request already on its way when the console connected: its prompt comes with its grades.
          if (!entry.prompt.textContent) entry.prompt.textContent = item.input?.at(-1)?.content ?? '';
          entry.grades.replaceChildren(itemState(item.status),
            ` ${item.results.map((r) => `${r.name} ${r.passed ? '✓' : '✗'}`).join(' ')} · ${fmt.ms(item.ttft_ms)} to first token`);
        } else if (name === 'progress') {
          notice(status, `${fmt.int(event.data.completed)} of ${fmt.int(event.data.total)} items`);
        }
      }, signal);
    }
    run = { ...run, ...(await api(runPath, { signal })) };
    drawFacts();
    await drawResults();
    notice(status, `${run.status}; ${lines.size} requests watched live`);
  } catch (error) {
    if (!isAbort(error)) notice(status, error.message, 'error');
  }
}
