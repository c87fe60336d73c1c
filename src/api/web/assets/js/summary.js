// The layer table of a spec's summary (shapes, parameters, FLOPs), for the experiment and
// the new-experiment views.

import { h, count, shape } from './dom.js';

export function summaryTable(s) {
  if (!s) return h('p', { class: 'muted' }, 'No layer summary.');
  return h('div', { class: 'table-wrap' }, h('table', { class: 'list', id: 'layers', dataset: { testid: 'layers' } },
    h('thead', {}, h('tr', {},
      h('th', {}, 'Layer'), h('th', {}, 'Name'), h('th', {}, 'Output'),
      h('th', { class: 'num' }, 'Parameters'), h('th', { class: 'num' }, 'FLOPs'))),
    h('tbody', {},
      h('tr', { class: 'muted' }, h('td', {}, 'input'), h('td', {}), h('td', {}, shape(s.input)), h('td', {}), h('td', {})),
      s.layers.map((l) => h('tr', { dataset: { testid: 'layer-row' } },
        h('td', {}, l.kind), h('td', { class: 'mono' }, l.name || ''), h('td', {}, shape(l.output)),
        h('td', { class: 'num' }, count(l.parameters)), h('td', { class: 'num' }, count(l.flops))))),
    h('tfoot', {}, h('tr', {},
      h('th', { colspan: 3 }, 'Total (FLOPs per sample)'),
      h('th', { class: 'num', dataset: { testid: 'parameters' } }, count(s.parameters)),
      h('th', { class: 'num', dataset: { testid: 'flops' } }, count(s.flops_per_sample))))));
}
