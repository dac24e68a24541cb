// Cluster: the nodes sharing this gateway's PostgreSQL (GET /admin/cluster, refreshed every two
// seconds): state, whether each is in routing, heartbeat age, loaded models with free slots and
// queues, free memory, version; and this node's own counters (requests relayed from here, quota
// settlements waiting for the store, ledger rows written for lost nodes). A single node says so.

import { api, isAbort } from '../api.js';
import { delay, fmt, h, notice, statusRegion, table } from '../dom.js';

const routingBadge = (n) => h('span', { class: `state job-${n.inRouting ? 'succeeded' : n.state === 'draining' ? 'paused' : 'failed'}` },
  n.inRouting ? 'in routing' : n.state === 'draining' ? 'draining' : 'out (no heartbeat)');

function modelsOf(n) {
  if (!n.models?.length) return '—';
  return n.models.map((m) => `${m.model} ${m.free}/${m.slots} free${m.queued ? `, ${m.queued} queued` : ''}`).join('; ');
}

function memoryOf(n) {
  return Object.entries(n.memory ?? {}).map(([device, m]) => `${device} ${fmt.int(m.freeMiB)} / ${fmt.int(m.budgetMiB ?? m.totalMiB)} MiB free`).join('; ') || '—';
}

export async function cluster(root, _args, signal) {
  const status = statusRegion();
  const summary = h('p', { id: 'cluster-summary' });
  const list = h('div', { id: 'cluster-nodes' });
  root.append(h('h1', {}, 'Cluster'), summary, status, list);

  async function refresh() {
    try {
      const view = await api('/admin/cluster', { signal });
      if (!view.clustered) {
        summary.textContent = 'This Corral is a single node (no store.url on PostgreSQL and no cluster settings in routes.json).';
        list.replaceChildren();
        return;
      }
      summary.textContent = `This node: ${view.node} (${view.state}) at ${view.advertiseURL}. Heartbeat every ${view.heartbeatSeconds} s; `
        + `out of routing after ${view.staleAfterSeconds} s without one. Relayed from here: ${fmt.int(view.relayedFromHere)}; `
        + `settlements waiting for the store: ${fmt.int(view.pendingSettlements)}; rows written for lost nodes: ${fmt.int(view.lostRequestsRecovered)}.`;
      if (view.storeProblem) notice(status, `The shared store does not answer: ${view.storeProblem}`, 'error');
      else notice(status, '');
      list.replaceChildren(table('Nodes', [
        { label: 'Node', value: (n) => (n.self ? h('strong', {}, `${n.name} (this one)`) : n.name) },
        { label: 'Routing', value: routingBadge },
        { label: 'Heartbeat', value: (n) => `${fmt.num(n.heartbeatAgeSeconds, 1)} s ago`, num: true },
        { label: 'URL', value: (n) => n.url },
        { label: 'Loaded models', value: modelsOf },
        { label: 'Free memory', value: memoryOf },
        { label: 'Version', value: (n) => n.version },
      ], view.nodes, 'No node registered.'));
    } catch (error) {
      if (!isAbort(error)) notice(status, error.message, 'error');
    }
  }

  await refresh();
  for (;;) {
    await delay(2000, signal);
    await refresh();
  }
}
