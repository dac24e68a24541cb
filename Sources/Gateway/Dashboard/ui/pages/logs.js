// Logs: the tail of a loaded instance's llama-server log (GET /admin/models/{id}/log), refreshed
// every 2 s while "Follow" is on.

import { api, isAbort, modelPath } from '../api.js';
import { delay, field, h, notice } from '../dom.js';

export async function logs(root, [wanted], signal) {
  const status = h('p', { class: 'notice' }); // refreshed every 2 s: not a live region
  const pick = h('select', { id: 'log-model' });
  const lines = h('select', { id: 'log-lines' }, [100, 300].map((n) => h('option', { value: n }, n)));
  const follow = h('input', { id: 'log-follow', type: 'checkbox', checked: true });
  const output = h('pre', { class: 'log', tabindex: 0, 'aria-label': 'Log lines', 'aria-live': 'off' });
  root.append(h('h1', {}, 'Logs'),
    h('form', { class: 'filters', 'aria-label': 'Log source', onsubmit: (e) => e.preventDefault() },
      field('Instance', pick), field('Lines', lines),
      h('div', { class: 'field check' }, follow, h('label', { for: 'log-follow' }, 'Follow'))),
    status, output);

  const loaded = (await api('/admin/instances', { signal })).filter((i) => i.state === 'loaded');
  if (!loaded.length) {
    notice(status, 'No instance is loaded: load a model (Models page) or send it a request.');
    pick.disabled = true;
    return;
  }
  pick.append(...loaded.map((i) => h('option', { value: i.model, selected: i.model === wanted }, i.model)));

  async function tail() {
    try {
      const answer = await api(`/admin/models/${modelPath(pick.value)}/log?lines=${lines.value}`, { signal });
      const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.textContent = answer.lines.join('\n');
      if (atBottom) output.scrollTop = output.scrollHeight;
      notice(status, `${pick.value} (pid ${answer.pid}): last ${answer.lines.length} lines`);
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }
  pick.addEventListener('change', tail);
  lines.addEventListener('change', tail);
  for (;;) {
    await tail();
    do await delay(2000, signal); while (!follow.checked);
  }
}
