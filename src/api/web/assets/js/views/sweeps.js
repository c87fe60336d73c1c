// Sweeps (/ui/sweeps): the newest sweeps, each with its children counted by status, kept
// fresh while any of them runs.

import { h, replace, shortId, ago, errorBox } from '../dom.js';
import { api, links } from '../api.js';

const POLL_MS = 4000;

export async function mount(main, ctx) {
  ctx.title('Sweeps');
  const tbody = h('tbody', { id: 'sweeps-body' });
  const empty = h('p', { class: 'muted empty', hidden: true, dataset: { testid: 'empty' } },
    'No sweeps yet: POST /sweeps, or `trainyard sweep FILE` (see the book\'s Sweeps page).');
  const errors = h('div', { class: 'errors' });
  main.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Sweeps')),
    errors,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'list', id: 'sweeps', dataset: { testid: 'sweeps' } },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Kind'), h('th', {}, 'State'),
          h('th', {}, 'Children'), h('th', {}, 'Ranked by'), h('th', {}, 'Created'))),
        tbody)),
    empty);

  let timer = null;
  async function load() {
    let data;
    try {
      data = await api.sweeps();
    } catch (err) {
      if (ctx.alive()) replace(errors, errorBox(err));
      return;
    }
    if (!ctx.alive()) return;
    replace(errors);
    empty.hidden = data.items.length > 0;
    replace(tbody, data.items.map((s) => h('tr', { dataset: { id: s.id, testid: 'sweep-row' } },
      h('td', {}, h('a', { href: links.sweep(s.id), class: s.name ? '' : 'mono' }, s.name || shortId(s.id))),
      h('td', {}, s.kind),
      h('td', {}, h('span', { class: `badge status-${s.state === 'finished' ? 'succeeded' : 'running'}` }, s.state)),
      h('td', {}, countsText(s.counts)),
      h('td', {}, h('code', {}, s.metric)),
      h('td', { title: s.created_at }, ago(s.created_at)))));
    if (data.items.some((s) => s.state !== 'finished')) timer = setTimeout(load, POLL_MS);
  }
  ctx.onCleanup(() => clearTimeout(timer));
  await load();
}

/** `3 succeeded · 1 running`. */
export function countsText(counts) {
  const order = ['succeeded', 'running', 'queued', 'failed', 'cancelled'];
  const parts = order.filter((k) => counts[k]).map((k) => `${counts[k]} ${k}`);
  return parts.length ? parts.join(' · ') : '—';
}
