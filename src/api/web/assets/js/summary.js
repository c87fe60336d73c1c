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

// Bytes as people read them: 512 MiB, 1.4 GiB.
export function bytes(n) {
  const gib = n / 2 ** 30;
  if (gib >= 1) return `${gib.toFixed(gib >= 10 ? 0 : 1)} GiB`;
  return `${Math.ceil(n / 2 ** 20)} MiB`;
}

// The estimate of a job's peak memory, by part (the footprint of /specs/validate and of an
// experiment), in one line.
export function footprintLine(f) {
  if (!f) return null;
  const step = f.peak_step === 'preparing_data' ? 'while preparing the data' : 'while training';
  return h('p', { class: 'muted', dataset: { testid: 'footprint' } },
    `Memory: about ${bytes(f.peak_bytes)} at the peak, ${step} `
    + `(data ${bytes(f.prepared_bytes)} prepared from ${bytes(f.dataset_bytes)}, `
    + `model ${bytes(f.model_bytes)}, batch ${bytes(f.batch_bytes)}).`);
}
