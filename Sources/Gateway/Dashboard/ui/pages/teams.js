// Teams: teams and their limits, keys (create, rotate, revoke; a new key is shown once) and
// usage by day per model and per team (GET /admin/usage).

import { api, isAbort } from '../api.js';
import { lineChart } from '../chart.js';
import { field, fmt, h, notice, statusRegion, table } from '../dom.js';

const LIMITS = [
  ['requestsPerMinute', 'Requests/min'], ['tokensPerMinute', 'Tokens/min'], ['maxParallel', 'Parallel'],
  ['tokensPerDay', 'Tokens/day'], ['tokensPerMonth', 'Tokens/month'],
];

const limitsText = (l) => [
  l.models ? `models ${l.models.join(', ')}` : null,
  ...LIMITS.filter(([k]) => l[k] !== null && l[k] !== undefined).map(([k, label]) => `${label} ${fmt.int(l[k])}`),
].filter(Boolean).join(' · ') || 'unlimited';

/** The limits typed into a form (blank fields are left out). */
function limitsFrom(form, prefix) {
  const body = {};
  for (const [key] of LIMITS) {
    const v = form.querySelector(`#${prefix}-${key}`).value;
    if (v !== '') body[key] = Number(v);
  }
  const models = form.querySelector(`#${prefix}-models`).value.split(',').map((s) => s.trim()).filter(Boolean);
  if (models.length) body.models = models;
  return body;
}

const limitFields = (prefix) => [
  field('Models', h('input', { id: `${prefix}-models`, placeholder: 'all' }), 'names or globs, comma-separated'),
  ...LIMITS.map(([key, label]) => field(label, h('input', { id: `${prefix}-${key}`, type: 'number', min: 0 }))),
];

/** Tokens per day, one line per group value (model or team). */
function usageChart(title, rows, key, from) {
  const days = [...new Set(rows.map((r) => r.bucket))].sort();
  const groups = [...new Set(rows.map((r) => r[key] ?? '(open mode)'))];
  return lineChart({
    title, yFormat: (v) => fmt.num(v, 0), legend: true, xDomain: [Date.parse(from.slice(0, 10)), Date.parse(new Date().toISOString().slice(0, 10))],
    xFormat: (t) => new Date(t).toISOString().slice(5, 10),
    series: groups.map((g) => ({
      name: g,
      points: days.map((d) => {
        const row = rows.find((r) => r.bucket === d && (r[key] ?? '(open mode)') === g);
        return [Date.parse(`${d}T00:00:00Z`), row ? row.promptTokens + row.completionTokens : 0];
      }),
    })),
    empty: 'No usage in the last 14 days.',
  });
}

export async function teams(root, _args, signal) {
  const status = statusRegion();
  const teamList = h('div');
  const keysArea = h('div');
  const usageArea = h('div', { class: 'charts' });
  const createForm = h('form', { class: 'inline-form', 'aria-label': 'New team' },
    field('Team name', h('input', { id: 'team-name', required: true })), ...limitFields('team'), h('button', { type: 'submit' }, 'Create team'));
  root.append(h('h1', {}, 'Teams'), status,
    h('section', { 'aria-labelledby': 'new-team-h' }, h('h2', { id: 'new-team-h' }, 'New team'), createForm),
    h('section', { 'aria-labelledby': 'teams-h' }, h('h2', { id: 'teams-h' }, 'Teams'), teamList),
    keysArea,
    h('section', { 'aria-labelledby': 'usage-h' }, h('h2', { id: 'usage-h' }, 'Usage, last 14 days (tokens)'), usageArea));

  let selected = null;

  async function loadTeams() {
    const { teams: all } = await api('/admin/teams', { signal });
    teamList.replaceChildren(table('Teams', [
      { label: 'Team', value: (t) => t.name },
      { label: 'Limits', value: (t) => limitsText(t.limits) },
      { label: 'Tokens today', value: (t) => fmt.int(t.usage.tokensToday), num: true },
      { label: 'Tokens this month', value: (t) => fmt.int(t.usage.tokensThisMonth), num: true },
      { label: 'In flight', value: (t) => fmt.int(t.usage.inFlight), num: true },
      { label: 'State', value: (t) => (t.disabled ? 'disabled' : 'active') },
      { label: 'Keys', value: (t) => h('button', { type: 'button', class: 'small', onclick: () => selectTeam(t), 'aria-label': `Keys of ${t.name}` }, 'Keys') },
    ], all, 'No team yet: Corral serves everyone without a key while it listens on loopback.'));
    return all;
  }

  /** Shows a newly issued key: this answer is the only time Corral reveals it. */
  function showKey(answer, where) {
    const input = h('input', { id: 'new-key', readonly: true, value: answer.key, class: 'secret', onfocus: (e) => e.target.select() });
    where.replaceChildren(h('div', { class: 'notice ok', role: 'status' },
      h('label', { for: 'new-key' }, `New key ${answer.prefix} — copy it now, it is shown only once:`), input));
    input.focus();
  }

  async function selectTeam(team, { focus = true } = {}) {
    selected = team;
    const shown = h('div');
    const keyStatus = statusRegion();
    const keyForm = h('form', { class: 'inline-form', 'aria-label': 'New key' },
      field('Key name', h('input', { id: 'key-name' })),
      field('Expires in', h('input', { id: 'key-expires', placeholder: 'never' }), 'e.g. 30d, 12h'),
      ...limitFields('key'), h('button', { type: 'submit' }, 'Create key'));
    const keys = h('div');
    keysArea.replaceChildren(h('section', { 'aria-labelledby': 'keys-h' },
      h('h2', { id: 'keys-h', tabindex: -1 }, `Keys of ${team.name}`), keyForm, keyStatus, shown, keys));

    async function keyAction(prefix, action) {
      try {
        const answer = await api(`/admin/keys/${encodeURIComponent(prefix)}/${action}`, { method: 'POST', signal });
        if (answer.key) showKey(answer, shown);
        notice(keyStatus, `${prefix}: ${action === 'rotate' ? 'rotated (the old key is revoked)' : 'revoked'}`, 'ok');
        await loadKeys();
      } catch (error) {
        if (!isAbort(error)) notice(keyStatus, `${action} failed: ${error.message}`, 'error');
      }
    }

    async function loadKeys() {
      const answer = await api(`/admin/keys?team=${encodeURIComponent(team.id)}`, { signal });
      keys.replaceChildren(table(`Keys of ${team.name}`, [
        { label: 'Prefix', value: (k) => h('code', {}, k.prefix) }, { label: 'Name', value: (k) => k.name },
        { label: 'State', value: (k) => k.state }, { label: 'Created', value: (k) => fmt.time(k.createdAt) },
        { label: 'Expires', value: (k) => (k.expiresAt ? fmt.time(k.expiresAt) : 'never') },
        { label: 'Limits', value: (k) => limitsText(k.limits) },
        {
          label: 'Actions', value: (k) => (k.state === 'active' ? h('span', { class: 'row-actions' },
            h('button', { type: 'button', class: 'small', onclick: () => keyAction(k.prefix, 'rotate'), 'aria-label': `Rotate ${k.prefix}` }, 'Rotate'),
            h('button', { type: 'button', class: 'small danger', onclick: () => keyAction(k.prefix, 'revoke'), 'aria-label': `Revoke ${k.prefix}` }, 'Revoke')) : ''),
        },
      ], answer.keys, 'No key yet.'));
    }

    keyForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      const body = { name: keyForm.querySelector('#key-name').value, ...limitsFrom(keyForm, 'key') };
      const expires = keyForm.querySelector('#key-expires').value.trim();
      if (expires) body.expiresIn = expires;
      try {
        showKey(await api(`/admin/teams/${encodeURIComponent(team.id)}/keys`, { method: 'POST', body, signal }), shown);
        notice(keyStatus, '');
        keyForm.reset();
        await loadKeys();
      } catch (error) {
        if (!isAbort(error)) notice(keyStatus, `Could not create the key: ${error.message}`, 'error');
      }
    });
    await loadKeys();
    if (focus) keysArea.querySelector('#keys-h').focus();
  }

  async function loadUsage() {
    const from = new Date(Date.now() - 14 * 86400000).toISOString();
    const [byModel, byTeam] = await Promise.all(['model', 'team'].map((group) =>
      api(`/admin/usage?group=${group}&bucket=day&from=${encodeURIComponent(from)}`, { signal })));
    const teamNames = Object.fromEntries((await api('/admin/teams', { signal })).teams.map((t) => [t.id, t.name]));
    byTeam.data.forEach((r) => { r.team = teamNames[r.team] ?? r.team; });
    usageArea.replaceChildren(usageChart('Tokens per day by model', byModel.data, 'model', from), usageChart('Tokens per day by team', byTeam.data, 'team', from));
  }

  createForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const team = await api('/admin/teams', { method: 'POST', body: { name: createForm.querySelector('#team-name').value.trim(), ...limitsFrom(createForm, 'team') }, signal });
      notice(status, `Team ${team.name} created. Create a key for it below.`, 'ok');
      createForm.reset();
      await loadTeams();
      await selectTeam(team);
    } catch (error) {
      if (!isAbort(error)) notice(status, `Could not create the team: ${error.message}`, 'error');
    }
  });

  try {
    const all = await loadTeams();
    if (selected === null && all.length) await selectTeam(all[0], { focus: false });
    await loadUsage();
  } catch (error) {
    if (!isAbort(error)) notice(status, error.message, 'error');
  }
}
