// One sweep (/ui/sweeps/{id}): its ranking (a grid or random search) or an ablation's
// differences ranked by how far each moves A towards B, the overlaid curves with one mean
// and a one-sd band per point over its repeats, and its children. Polls while it runs.

import { h, replace, shortId, badge, num, pct, errorBox, pageState } from '../dom.js';
import { api, links } from '../api.js';
import { loadUPlot, LineChart, PALETTE, join } from '../chart.js';
import { meanBand, spreadText } from '../bands.js';
import { countsText } from './sweeps.js';
import { navigate } from '../app.js';

const POLL_MS = 3000;
const MAX_CURVES = PALETTE.length;
const FETCHES = 6; // metrics requests at once

export async function mount(main, ctx) {
  const [id] = ctx.params;
  const uPlotReady = loadUPlot();
  let sweep = await api.sweep(id);
  if (!ctx.alive()) return;
  ctx.title(sweep.name || `Sweep ${shortId(id)}`);

  const head = h('div', { class: 'page-head' });
  const facts = h('p', { class: 'muted', id: 'sweep-facts' });
  const actions = h('div', { class: 'toolbar' });
  const rankBox = h('div', { id: 'ranking' });
  const lossBox = h('div', { class: 'chart', id: 'chart-loss', dataset: { testid: 'chart-loss' } });
  const accBox = h('div', { class: 'chart', id: 'chart-accuracy', dataset: { testid: 'chart-accuracy' } });
  const curvesNote = h('p', { class: 'muted small', id: 'curves-note' });
  const kids = h('tbody', { id: 'children-body' });
  const errors = h('div', { class: 'errors' });
  main.append(head, facts, actions, errors,
    h('section', { class: 'card' }, h('h2', {}, sweep.kind === 'ablation' ? 'Which difference matters' : 'Ranking'), rankBox),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'Curves'),
        h('span', { class: 'pictures' }, 'Pictures: ',
          h('a', { href: links.sweepPicture(id, 'loss') }, 'loss SVG'), ' · ',
          h('a', { href: links.sweepPicture(id, 'accuracy') }, 'accuracy SVG'), ' · ',
          h('a', { href: links.sweepPicture(id, 'loss', 'png') }, 'loss PNG'), ' · ',
          h('a', { href: links.sweepPicture(id, 'accuracy', 'png') }, 'accuracy PNG'))),
      curvesNote,
      h('div', { class: 'charts' },
        h('figure', {}, h('figcaption', {}, 'Loss'), lossBox),
        h('figure', {}, h('figcaption', {}, 'Accuracy'), accBox))),
    h('section', { class: 'card' }, h('h2', {}, 'Children'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'list', id: 'children', dataset: { testid: 'children' } },
        h('thead', {}, h('tr', {}, h('th', {}, 'Point'), h('th', { class: 'num' }, 'Repeat'), h('th', { class: 'num' }, 'Seed'),
          h('th', {}, 'Status'), h('th', { class: 'num' }, 'Epochs'), h('th', { class: 'num' }, sweep.metric))),
        kids))));

  const family = sweep.metric.split('_')[0]; // train | val | test
  const metrics = new Map(); // child id → {epochs, rows}

  function renderHead() {
    replace(head, h('h1', {}, sweep.name || `Sweep ${shortId(id)}`),
      h('span', { class: `badge status-${sweep.state === 'finished' ? 'succeeded' : 'running'}`, dataset: { testid: 'sweep-state' } }, sweep.state));
    replace(facts, `${sweep.kind} · ${sweep.children.length} children (${countsText(sweep.counts)}) · `,
      `${sweep.repeats} repeat${sweep.repeats === 1 ? '' : 's'} each · ranked by `, h('code', {}, sweep.metric));
    const cancel = h('button', { type: 'button', class: 'secondary', id: 'cancel-sweep', onclick: async () => {
      try {
        sweep = await api.cancelSweep(id);
        renderAll();
      } catch (err) {
        replace(errors, errorBox(err));
      }
    } }, 'Cancel every child');
    const del = h('button', { type: 'button', class: 'danger-outline', id: 'delete-sweep', onclick: async () => {
      if (!confirm('Delete this sweep and all its experiments?')) return;
      try {
        await api.removeSweep(id);
        navigate('/ui/sweeps');
      } catch (err) {
        replace(errors, errorBox(err));
      }
    } }, 'Delete');
    replace(actions, sweep.state === 'finished' ? del : cancel);
  }

  function renderRanking() {
    if (sweep.ablation) {
      const ab = sweep.ablation;
      const lossName = ab.differences[0] ? ab.differences[0].loss.metric : sweep.metric;
      const accName = ab.differences[0] ? ab.differences[0].accuracy.metric : '';
      const base = (label, eid, b) => h('tr', { dataset: { testid: 'baseline' } },
        h('td', {}, label), h('td', {}, eid ? h('a', { href: links.experiment(eid) }, shortId(eid)) : '—'),
        h('td', { class: 'num' }, spreadText(b.loss)), h('td', { class: 'num' }, spreadText(b.accuracy, (v) => pct(v))));
      replace(rankBox,
        h('table', { class: 'list', id: 'baselines' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Baseline'), h('th', {}, 'Experiment'), h('th', { class: 'num' }, lossName), h('th', { class: 'num' }, accName))),
          h('tbody', {}, base('A (from)', ab.from, ab.baseline_from), base('B (to)', ab.to, ab.baseline_to))),
        h('div', { class: 'table-wrap' }, h('table', { class: 'list', id: 'effects', dataset: { testid: 'effects' } },
          h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'Rank'), h('th', {}, 'Difference'), h('th', {}, 'A'), h('th', {}, 'B'),
            h('th', { class: 'num' }, `Δ ${lossName}`), h('th', { class: 'num' }, 'Share of A→B gap'), h('th', { class: 'num' }, `Δ ${accName}`))),
          h('tbody', {}, ab.differences.map((d) => h('tr', { dataset: { testid: 'effect-row', path: d.path } },
            h('td', { class: 'num' }, d.rank ?? '—'), h('td', {}, h('code', {}, d.path)),
            h('td', { class: 'mono' }, brief(d.from)), h('td', { class: 'mono' }, brief(d.to)),
            h('td', { class: 'num' }, spreadText(d.loss.delta)),
            h('td', { class: 'num' }, spreadText(d.loss.fraction, (v) => pct(v, 0))),
            h('td', { class: 'num' }, spreadText(d.accuracy.delta, (v) => pct(v)))))))),
        (sweep.skipped || []).length ? h('p', { class: 'muted small', id: 'skipped' }, 'Not tried: ',
          sweep.skipped.map((s) => `${s.path} (${s.errors.map((e) => `${e.field}: ${e.reason}`).join('; ')})`).join(' · ')) : null,
        h('p', { class: 'muted small' }, 'Δ is the child minus A on the same seed; the share is (child − A) / (B − A): 100 % moves all the way to B. Mean ± sample sd over repeats.'));
      return;
    }
    replace(rankBox, h('div', { class: 'table-wrap' }, h('table', { class: 'list', id: 'ranking-table', dataset: { testid: 'ranking' } },
      h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'Rank'), h('th', {}, 'Point'), h('th', { class: 'num' }, 'n'),
        h('th', { class: 'num' }, `${sweep.metric} (mean ± sd)`))),
      h('tbody', {}, (sweep.ranking || []).map((r) => h('tr', { dataset: { testid: 'rank-row' } },
        h('td', { class: 'num' }, r.rank ?? '—'), h('td', {}, r.label), h('td', { class: 'num' }, r.metric.n),
        h('td', { class: 'num' }, spreadText(r.metric))))))));
  }

  function renderChildren() {
    replace(kids, sweep.children.map((c) => h('tr', { dataset: { testid: 'child-row', id: c.id } },
      h('td', {}, h('a', { href: links.experiment(c.id) }, c.label)),
      h('td', { class: 'num' }, c.repeat + 1), h('td', { class: 'num' }, c.seed ?? '—'),
      h('td', {}, badge(c.status)), h('td', { class: 'num' }, `${c.epochs_done}/${c.epochs ?? '?'}`),
      h('td', { class: 'num' }, num(c.last ? c.last[sweep.metric] : null)))));
  }

  /** The points to draw, best first, each with its children. */
  function groups() {
    const byLabel = new Map();
    for (const c of sweep.children) {
      if (!byLabel.has(c.label)) byLabel.set(c.label, []);
      byLabel.get(c.label).push(c);
    }
    let order = [...byLabel.keys()];
    if (sweep.ranking) order = sweep.ranking.map((r) => r.label);
    if (sweep.ablation) {
      order = ['from (A)', 'to (B)', ...sweep.ablation.differences.map((d) => d.path)];
    }
    return order.filter((l) => byLabel.has(l)).slice(0, MAX_CURVES).map((label) => ({ label, children: byLabel.get(label) }));
  }

  async function fetchMetrics() {
    const stale = sweep.children.filter((c) => c.epochs_done > 0 && (!metrics.has(c.id) || metrics.get(c.id).epochs !== c.epochs_done));
    for (let i = 0; i < stale.length; i += FETCHES) {
      await Promise.all(stale.slice(i, i + FETCHES).map(async (c) => {
        const rows = await api.metrics(c.id);
        metrics.set(c.id, { epochs: c.epochs_done, rows });
      }));
      if (!ctx.alive()) return;
    }
  }

  let charts = null;
  let shape = '';
  let uPlot = null;
  function drawCurves() {
    if (!uPlot) return;
    const gs = groups();
    const hidden = sweep.children.length > 0 && new Set(sweep.children.map((c) => c.label)).size > gs.length;
    curvesNote.textContent = `Each point's ${family} curves: the mean over its repeats, the band one sample sd either side.`
      + (hidden ? ` The first ${MAX_CURVES} points are drawn.` : '');
    const series = [];
    const bands = [];
    gs.forEach((g, i) => {
      const colour = PALETTE[i % PALETTE.length];
      series.push({ label: g.label, colour, dash: [] });
      series.push({ label: `${g.label} +sd`, colour: `${colour}66`, dash: [] });
      series.push({ label: `${g.label} −sd`, colour: `${colour}66`, dash: [] });
      bands.push([series.length - 2, series.length - 1, `${colour}22`]);
    });
    const sig = JSON.stringify(series.map((s) => s.label));
    if (sig !== shape) {
      shape = sig;
      if (charts) for (const c of Object.values(charts)) c.destroy();
      charts = {
        loss: new LineChart(uPlot, lossBox, { series, bands, metric: 'loss', sync: 'sweep' }),
        accuracy: new LineChart(uPlot, accBox, { series, bands, metric: 'accuracy', sync: 'sweep' }),
      };
    }
    for (const [metric, chart] of Object.entries(charts)) {
      const curves = [];
      for (const g of gs) {
        const runs = g.children.map((c) => (metrics.get(c.id) || { rows: [] }).rows);
        const b = meanBand(runs, `${family}_${metric}`);
        curves.push([b.xs, b.mean], [b.xs, b.hi], [b.xs, b.lo]);
      }
      chart.setData(join(curves));
    }
    window.trainyard.points = [...metrics.values()].reduce((n, m) => n + m.rows.length, 0);
  }
  ctx.onCleanup(() => {
    if (charts) for (const c of Object.values(charts)) c.destroy();
  });

  function renderAll() {
    renderHead();
    renderRanking();
    renderChildren();
    drawCurves();
  }

  let timer = null;
  async function refresh() {
    try {
      sweep = await api.sweep(id);
      await fetchMetrics();
      if (!ctx.alive()) return;
      replace(errors);
      renderAll();
    } catch (err) {
      if (ctx.alive()) replace(errors, errorBox(err));
    }
    if (ctx.alive() && sweep.state !== 'finished') timer = setTimeout(refresh, POLL_MS);
  }
  ctx.onCleanup(() => clearTimeout(timer));

  renderHead();
  renderRanking();
  renderChildren();
  try {
    uPlot = await uPlotReady;
  } catch (err) {
    replace(lossBox, errorBox(err));
    pageState('error');
    return;
  }
  await fetchMetrics();
  if (!ctx.alive()) return;
  drawCurves();
  if (sweep.state !== 'finished') timer = setTimeout(refresh, POLL_MS);
}

/** A value short enough for a cell: a layer list by its length. */
function brief(v) {
  if (v === null || v === undefined) return '—';
  if (Array.isArray(v) && v.some((x) => x && typeof x === 'object')) return `${v.length} layers`;
  const t = JSON.stringify(v);
  return t.length > 32 ? `${t.slice(0, 31)}…` : t;
}
