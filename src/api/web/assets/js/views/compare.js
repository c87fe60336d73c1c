// Compare (/ui/compare?ids=a,b,...): curves overlaid, one colour per experiment and one
// dash per split, and the specs' differences. Live while any of them runs.

import { h, replace, badge, displayName, modelText, pct, duration, isActive, errorBox, pageState } from '../dom.js';
import { api, links, missingRoute } from '../api.js';
import { loadUPlot, LineChart, PALETTE, SPLITS, join } from '../chart.js';
import { setQuery } from '../app.js';
import { MIN, MAX } from '../selection.js';

const MAX_STREAMS = 4; // browsers open about 6 connections per server over HTTP/1.1
const POLL_MS = 3000;

export async function mount(main, ctx) {
  ctx.title('Compare');
  const q = ctx.url.searchParams;
  const ids = [...new Set((q.get('ids') || '').split(',').map((s) => s.trim()).filter(Boolean))];
  const view = {
    splits: new Set((q.get('splits') || 'train,val,test').split(',').filter((s) => SPLITS.some((x) => x.key === s))),
    log: q.get('scale') === 'log',
    x: q.get('x') === 'time' ? 'time' : 'epoch',
  };

  main.append(h('h1', {}, 'Compare'));
  if (ids.length < MIN || ids.length > MAX) {
    main.append(h('p', { dataset: { testid: 'compare-help' } },
      `Choose ${MIN} to ${MAX} experiments in `, h('a', { href: '/' }, 'the list'), ' and press Compare.'));
    return;
  }

  const uPlotReady = loadUPlot();
  const data = await fetchCompare(ids);
  if (!ctx.alive()) return;
  const exps = data.experiments.map((e, i) => ({ ...e, colour: PALETTE[i % PALETTE.length], rows: new Map(e.metrics.map((r) => [r.epoch, r])) }));

  // ---- layout ----
  const legend = h('tbody', {});
  const controls = h('div', { class: 'controls', id: 'compare-controls' });
  const lossBox = h('div', { class: 'chart', id: 'chart-loss', dataset: { testid: 'chart-loss' } });
  const accBox = h('div', { class: 'chart', id: 'chart-accuracy', dataset: { testid: 'chart-accuracy' } });
  const liveNote = h('span', { class: 'live muted', id: 'live' });
  const waiting = h('p', { class: 'muted small', id: 'no-epochs' }, 'No epoch has ended yet.');
  const diffBox = h('div', { id: 'diff' });
  main.append(
    h('section', { class: 'card' },
      h('div', { class: 'table-wrap' }, h('table', { class: 'list', id: 'compared', dataset: { testid: 'compared' } },
        h('thead', {}, h('tr', {}, h('th', {}, 'Experiment'), h('th', {}, 'Status'), h('th', {}, 'Model'),
          h('th', { class: 'num' }, 'Epochs'), h('th', { class: 'num' }, 'Best val.'), h('th', { class: 'num' }, 'Best test'),
          h('th', { class: 'num' }, 'Training time'))),
        legend))),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'Curves'), liveNote,
        h('span', { class: 'pictures' }, 'Pictures: ',
          h('a', { href: links.comparePicture(ids, 'loss') }, 'loss SVG'), ' · ',
          h('a', { href: links.comparePicture(ids, 'accuracy') }, 'accuracy SVG'), ' · ',
          h('a', { href: links.comparePicture(ids, 'loss', 'png') }, 'loss PNG'), ' · ',
          h('a', { href: links.comparePicture(ids, 'accuracy', 'png') }, 'accuracy PNG'))),
      controls,
      waiting,
      h('div', { class: 'charts' },
        h('figure', {}, h('figcaption', {}, 'Loss'), lossBox),
        h('figure', {}, h('figcaption', {}, 'Accuracy'), accBox)),
      h('p', { class: 'muted small' }, 'Hover for exact values; click a legend entry to hide or show its curve. Dashes: train solid, validation dashed, test dotted.')),
    h('section', { class: 'card' }, h('h2', {}, 'Spec differences'), diffBox),
  );

  // ---- the experiments ----
  const sorted = (e) => [...e.rows.values()].sort((a, b) => a.epoch - b.epoch);
  const bestOf = (e, key) => {
    const v = sorted(e).map((r) => r[key]).filter((x) => x !== null && x !== undefined);
    return v.length ? Math.max(...v) : null;
  };
  function renderLegend() {
    replace(legend, exps.map((e) => {
      const sw = h('span', { class: 'swatch' });
      sw.style.background = e.colour;
      const secs = sorted(e).reduce((s, r) => s + (r.train_seconds || 0), 0);
      return h('tr', { dataset: { id: e.id, testid: 'compared-row' } },
        h('td', {}, sw, h('a', { href: links.experiment(e.id), class: e.name ? '' : 'mono' }, displayName(e))),
        h('td', {}, badge(e.status)),
        h('td', { class: 'model' }, modelText(e)),
        h('td', { class: 'num' }, `${Math.max(e.epochs_done || 0, e.rows.size)}/${e.epochs ?? '?'}`),
        h('td', { class: 'num' }, pct(bestOf(e, 'val_accuracy'))),
        h('td', { class: 'num' }, pct(bestOf(e, 'test_accuracy'))),
        h('td', { class: 'num' }, e.rows.size ? duration(secs) : '—'));
    }));
  }

  // ---- controls ----
  function toggle(label, checked, onchange, attrs = {}) {
    return h('label', { class: 'check' }, h('input', { type: 'checkbox', props: { checked }, onchange, ...attrs }), label);
  }
  function radios(name, options, value, onchange) {
    return h('span', { class: 'radios', role: 'radiogroup' }, options.map(([v, label]) =>
      h('label', { class: 'check' }, h('input', { type: 'radio', name, value: v, props: { checked: v === value }, onchange: () => onchange(v) }), label)));
  }
  function saveView() {
    setQuery({
      ids: ids.join(','),
      splits: view.splits.size === SPLITS.length ? '' : [...view.splits].join(','),
      scale: view.log ? 'log' : '',
      x: view.x === 'time' ? 'time' : '',
    });
  }
  replace(controls,
    h('span', { class: 'group' }, h('span', { class: 'muted' }, 'Show '),
      SPLITS.map((s) => toggle(s.label, view.splits.has(s.key), (ev) => {
        if (ev.target.checked) view.splits.add(s.key);
        else view.splits.delete(s.key);
        saveView();
        draw();
      }, { dataset: { split: s.key } }))),
    h('span', { class: 'group' }, h('span', { class: 'muted' }, 'y '),
      radios('scale', [['linear', 'linear'], ['log', 'log']], view.log ? 'log' : 'linear', (v) => {
        view.log = v === 'log';
        saveView();
        if (charts) for (const c of Object.values(charts)) c.setLog(view.log);
      })),
    h('span', { class: 'group' }, h('span', { class: 'muted' }, 'x '),
      radios('x', [['epoch', 'epoch'], ['time', 'training time']], view.x, (v) => {
        view.x = v;
        saveView();
        draw();
      })));

  // ---- charts ----
  let charts = null;
  let shape = '';
  let uPlot = null;

  /** The series to draw: each experiment × each split it has and the user shows. */
  function seriesList() {
    const has = (e, key) => sorted(e).some((r) => r[`${key}_loss`] !== null && r[`${key}_loss`] !== undefined);
    const out = [];
    exps.forEach((e) => {
      for (const s of SPLITS) {
        if (view.splits.has(s.key) && has(e, s.key)) {
          out.push({ e, split: s, label: `${displayName(e)} · ${s.label}`, colour: e.colour, dash: s.dash });
        }
      }
    });
    return out;
  }

  function columns(series, metric) {
    return join(series.map(({ e, split }) => {
      const rows = sorted(e);
      let t = 0;
      const xs = rows.map((r) => (view.x === 'time' ? +(t += r.train_seconds || 0).toFixed(3) : r.epoch));
      return [xs, rows.map((r) => r[`${split.key}_${metric}`] ?? null)];
    }));
  }

  let frame = 0;
  function draw() {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(drawNow);
  }
  function drawNow() {
    renderLegend();
    waiting.hidden = exps.some((e) => e.rows.size > 0);
    if (!uPlot) return;
    const series = seriesList();
    const xLabel = view.x === 'time' ? 'training seconds' : 'epoch';
    const sig = JSON.stringify([series.map((s) => s.label), xLabel]);
    if (sig !== shape) {
      shape = sig;
      if (charts) for (const c of Object.values(charts)) c.destroy();
      const opts = { series, log: view.log, xLabel, sync: 'compare' };
      charts = {
        loss: new LineChart(uPlot, lossBox, { ...opts, metric: 'loss' }),
        accuracy: new LineChart(uPlot, accBox, { ...opts, metric: 'accuracy' }),
      };
    }
    charts.loss.setData(columns(series, 'loss'));
    charts.accuracy.setData(columns(series, 'accuracy'));
    window.trainyard.points = exps.reduce((n, e) => n + e.rows.size, 0);
  }
  ctx.onCleanup(() => {
    cancelAnimationFrame(frame);
    if (charts) for (const c of Object.values(charts)) c.destroy();
  });

  renderDiff(diffBox, exps, data.diff);
  renderLegend();

  // ---- live ----
  const streams = new Map();
  let poll = null;
  function updateLive() {
    const active = exps.filter(isActive);
    liveNote.textContent = active.length ? `● live (${active.length} running or queued)` : '';
    if (active.length > MAX_STREAMS) {
      if (!poll) poll = setInterval(repoll, POLL_MS);
      return;
    }
    for (const e of active) if (!streams.has(e.id)) follow(e);
  }
  async function repoll() {
    if (document.hidden) return;
    try {
      const fresh = await fetchCompare(ids);
      for (const f of fresh.experiments) {
        const e = exps.find((x) => x.id === f.id);
        if (!e) continue;
        Object.assign(e, { status: f.status, epochs_done: f.epochs_done, name: f.name });
        for (const r of f.metrics) e.rows.set(r.epoch, r);
      }
      draw();
      if (!exps.some(isActive)) {
        clearInterval(poll);
        poll = null;
        updateLive();
      }
    } catch {
      /* the next round tries again */
    }
  }
  function follow(e) {
    const es = new EventSource(`/experiments/${encodeURIComponent(e.id)}/curve`);
    streams.set(e.id, es);
    es.addEventListener('epoch', (ev) => {
      const r = JSON.parse(ev.data);
      e.rows.set(r.epoch, r);
      draw();
    });
    es.addEventListener('status', (ev) => {
      e.status = JSON.parse(ev.data).status;
      draw();
    });
    es.addEventListener('end', (ev) => {
      es.close();
      streams.delete(e.id);
      const end = JSON.parse(ev.data);
      Object.assign(e, { status: end.status, epochs_done: end.epochs_done });
      updateLive();
      draw();
    });
  }
  ctx.onCleanup(() => {
    for (const es of streams.values()) es.close();
    streams.clear();
    clearInterval(poll);
  });
  updateLive();

  try {
    uPlot = await uPlotReady;
  } catch (err) {
    replace(lossBox, errorBox(err));
    pageState('error');
    return;
  }
  if (!ctx.alive()) return;
  drawNow();
}

/** GET /compare, or (a server without it) the same assembled from each experiment. */
async function fetchCompare(ids) {
  try {
    return await api.compare(ids);
  } catch (err) {
    if (!missingRoute(err)) throw err;
  }
  const exps = await Promise.all(ids.map(async (id) => {
    const [e, metrics] = await Promise.all([api.get(id), api.metrics(id)]);
    return { ...e, epochs: e.epochs ?? e.spec.epochs, metrics };
  }));
  return { experiments: exps, diff: specDiff(exps.map((e) => e.spec)) };
}

/** Leaf paths of a spec in the API's notation: `model.layers[0].filters`. */
function leaves(v, path = '', out = new Map()) {
  const scalarList = Array.isArray(v) && v.every((x) => x === null || typeof x !== 'object');
  if (v !== null && typeof v === 'object' && !scalarList) {
    if (Array.isArray(v)) v.forEach((x, i) => leaves(x, `${path}[${i}]`, out));
    else for (const [k, x] of Object.entries(v)) leaves(x, path ? `${path}.${k}` : k, out);
  } else {
    out.set(path, v);
  }
  return out;
}

function specDiff(specs) {
  const maps = specs.map((s) => leaves(s));
  const paths = [...new Set(maps.flatMap((m) => [...m.keys()]))];
  return paths
    .map((path) => ({ path, values: maps.map((m) => (m.has(path) ? m.get(path) : null)) }))
    .filter((d) => new Set(d.values.map((v) => JSON.stringify(v))).size > 1);
}

function renderDiff(box, exps, diff) {
  if (!diff || !diff.length) {
    replace(box, h('p', { class: 'muted', dataset: { testid: 'no-diff' } }, 'The resolved specs are the same.'));
    return;
  }
  const head = exps.map((e) => {
    const sw = h('span', { class: 'swatch' });
    sw.style.background = e.colour;
    return h('th', {}, sw, displayName(e));
  });
  replace(box, h('div', { class: 'table-wrap' }, h('table', { class: 'list diff', id: 'spec-diff', dataset: { testid: 'spec-diff' } },
    h('thead', {}, h('tr', {}, h('th', {}, 'Field'), head)),
    h('tbody', {}, diff.map((d) => h('tr', { dataset: { testid: 'diff-row', path: d.path } },
      h('td', {}, h('code', {}, d.path)),
      d.values.map((v) => h('td', { class: v === null ? 'muted' : 'mono' }, v === null ? '—' : JSON.stringify(v)))))))));
}
