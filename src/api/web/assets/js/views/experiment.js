// Experiment (/ui/experiments/{id}): header, live curves, progress, metrics, spec, layers,
// checkpoints and the actions on one experiment.

import {
  h, replace, badge, displayName, modelText, pct, num, bytes, duration,
  localTime, isActive, errorBox, pageState, shortId,
} from '../dom.js';
import { api, links } from '../api.js';
import { loadUPlot, LineChart, SPLITS } from '../chart.js';
import { navigate } from '../app.js';
import { summaryTable, footprintLine } from '../summary.js';

export async function mount(main, ctx) {
  const id = ctx.params[0];
  const hooks = window.trainyard;
  const uPlotReady = loadUPlot(); // in parallel with the experiment

  let exp = await api.get(id);
  if (!ctx.alive()) return;

  const rows = new Map(); // epoch → metrics row
  let charts = null;
  let editingName = false;
  let es = null;
  let streamEnded = false;
  // Ready (body[data-state]) once the charts exist and, for an ended run, its stored epochs
  // have all arrived (the `end` event); a live run is ready as soon as it is drawn.
  ctx.deferReady = true;
  const maybeReady = () => {
    if (charts && (streamEnded || isActive(exp))) pageState('ready');
  };

  // ---- layout ----
  const head = h('div', { class: 'exp-head', id: 'exp-head' });
  const tagsBox = h('div', { class: 'tags-edit', id: 'tags', dataset: { testid: 'tags' } });
  const actions = h('div', { class: 'actions', id: 'actions' });
  const actionError = h('div', { id: 'action-error' });
  const runError = h('div', { id: 'run-error-box' });
  const progressBar = h('progress', { id: 'progress-bar', dataset: { testid: 'progress' }, max: 1, props: { value: 0 } });
  const progressText = h('span', { id: 'progress-text', dataset: { testid: 'progress-text' } });
  const progress = h('section', { class: 'progress', id: 'progress', hidden: true },
    progressBar, progressText);
  const live = h('span', { class: 'live muted', id: 'live', 'aria-live': 'polite' });
  const waiting = h('p', { class: 'muted small', id: 'no-epochs' }, 'The curves start when the first epoch ends.');
  const lossBox = h('div', { class: 'chart', id: 'chart-loss', dataset: { testid: 'chart-loss' } });
  const accBox = h('div', { class: 'chart', id: 'chart-accuracy', dataset: { testid: 'chart-accuracy' } });
  const info = h('dl', { class: 'facts', id: 'facts' });
  const metricsBody = h('tbody', {});
  const metricsHead = h('thead', {});
  const checkpoints = h('div', { id: 'checkpoints' });
  const summaryBox = h('div', { id: 'summary' });
  const spec = h('pre', { class: 'code', id: 'spec', dataset: { testid: 'spec' } });

  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '/' }, 'Experiments'), ' / ', h('span', { class: 'mono' }, shortId(id))),
    head,
    tagsBox,
    actions,
    actionError,
    runError,
    progress,
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'Curves'), live,
        h('span', { class: 'pictures' }, 'Pictures: ',
          h('a', { href: links.curvePicture(id, 'loss') }, 'loss SVG'), ' · ',
          h('a', { href: links.curvePicture(id, 'accuracy') }, 'accuracy SVG'), ' · ',
          h('a', { href: links.curvePicture(id, 'loss', 'png') }, 'loss PNG'), ' · ',
          h('a', { href: links.curvePicture(id, 'accuracy', 'png') }, 'accuracy PNG'))),
      waiting,
      h('div', { class: 'charts' },
        h('figure', {}, h('figcaption', {}, 'Loss'), lossBox),
        h('figure', {}, h('figcaption', {}, 'Accuracy'), accBox))),
    h('div', { class: 'two' },
      h('section', { class: 'card' }, h('h2', {}, 'Run'), info),
      h('section', { class: 'card' }, h('h2', {}, 'Checkpoints'), checkpoints)),
    h('section', { class: 'card' }, h('h2', {}, 'Metrics'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'list num-table', id: 'metrics', dataset: { testid: 'metrics' } }, metricsHead, metricsBody))),
    h('section', { class: 'card' }, h('h2', {}, 'Layers'), summaryBox),
    h('section', { class: 'card' }, h('h2', {}, 'Spec'), spec),
  );

  const validation = exp.spec && exp.spec.dataset && exp.spec.dataset.validation;
  // A split of the training set gives validation metrics; "test" and "none" give none.
  const hasVal = validation !== null && typeof validation === 'object';
  const splits = SPLITS.filter((s) => s.key !== 'val' || hasVal);

  // ---- header ----
  let headShown = null;
  function renderHead() {
    if (editingName) return;
    // Rebuilt only when what it shows changed (a live refresh keeps focus on its button).
    const sig = JSON.stringify([exp.name, exp.status, exp.cancel_requested, exp.epochs_done, exp.error, exp.model]);
    if (sig === headShown) return;
    headShown = sig;
    ctx.title(displayName(exp));
    const nameEl = h('span', { id: 'exp-name', class: exp.name ? '' : 'mono' }, displayName(exp));
    const rename = h('button', { type: 'button', class: 'icon', id: 'rename', title: 'Rename', 'aria-label': 'Rename', onclick: editName }, '✎');
    replace(head,
      h('h1', {}, nameEl, rename),
      h('div', { class: 'sub' },
        badge(exp.status),
        exp.cancel_requested && isActive(exp) ? h('span', { class: 'muted' }, 'cancelling…') : null,
        h('span', { class: 'model', id: 'exp-model' }, modelText(exp)),
        h('span', { class: 'muted' }, `epoch ${exp.epochs_done} of ${exp.epochs ?? exp.spec.epochs}`)));
    replace(runError, exp.status === 'failed' && exp.error
      ? h('div', { class: 'alert', role: 'alert', id: 'run-error', dataset: { testid: 'error' } },
        h('strong', {}, 'The run failed: '), exp.error)
      : null);
  }

  function editName() {
    editingName = true;
    const input = h('input', { id: 'name-input', 'aria-label': 'Name', maxlength: 200, props: { value: exp.name || '' } });
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      editingName = false;
      headShown = null;
      const name = input.value.trim() || null;
      if (save && name !== (exp.name || null)) await change({ name });
      else renderHead();
    };
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') finish(true);
      else if (e.key === 'Escape') finish(false);
    });
    input.addEventListener('blur', () => finish(true));
    replace(head.querySelector('h1'), input);
    input.focus();
    input.select();
  }

  let tagsShown = null;
  function renderTags() {
    const tags = exp.tags || [];
    // Left alone while the tags are the same, so a live refresh keeps what is being typed.
    const sig = JSON.stringify(tags);
    if (sig === tagsShown) return;
    tagsShown = sig;
    const input = h('input', { id: 'tag-input', placeholder: 'add tag', 'aria-label': 'Add a tag', maxlength: 64, size: 10 });
    input.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      const t = input.value.trim();
      if (t && !tags.includes(t)) change({ tags: [...tags, t] });
    });
    replace(tagsBox,
      tags.map((t) => h('span', { class: 'tag', dataset: { tag: t } }, t,
        h('button', { type: 'button', class: 'tag-x', 'aria-label': `Remove tag ${t}`, title: 'Remove', onclick: () => change({ tags: tags.filter((x) => x !== t) }) }, '×'))),
      input);
  }

  /** PATCHes name or tags; shows the API's error when it refuses. */
  async function change(patch) {
    try {
      exp = { ...exp, ...(await api.patch(id, patch)) };
      replace(actionError);
    } catch (err) {
      replace(actionError, errorBox(err, 'action-error'));
    }
    renderHead();
    renderTags();
    if (patch.tags) document.getElementById('tag-input')?.focus();
  }

  let actionsShown = null;
  function renderActions() {
    const ended = !isActive(exp);
    const sig = JSON.stringify([exp.status, exp.cancel_requested]);
    if (sig === actionsShown) return;
    actionsShown = sig;
    replace(actions,
      !ended ? h('button', { type: 'button', id: 'cancel', class: 'danger-outline', disabled: exp.cancel_requested, onclick: cancel }, exp.cancel_requested ? 'Cancelling…' : 'Cancel') : null,
      h('a', { class: 'button secondary', id: 'run-again', href: links.runAgain(id) }, 'Run again'),
      h('a', { class: 'button secondary', id: 'predict-link', href: links.predict(id) }, 'Predict with it'),
      ended ? h('button', { type: 'button', id: 'delete', class: 'danger-outline', onclick: remove }, 'Delete') : null);
  }

  async function cancel() {
    try {
      exp = { ...exp, ...(await api.cancel(id)) };
      replace(actionError);
    } catch (err) {
      replace(actionError, errorBox(err, 'action-error'));
    }
    renderAll();
  }

  async function remove() {
    if (!confirm(`Delete “${displayName(exp)}” with its metrics and checkpoints? This cannot be undone.`)) return;
    try {
      await api.remove(id);
      navigate('/');
    } catch (err) {
      replace(actionError, errorBox(err, 'action-error'));
    }
  }

  function renderInfo() {
    const trained = [...rows.values()].reduce((s, r) => s + (r.train_seconds || 0), 0);
    const wait = exp.started_at ? (Date.parse(exp.started_at) - Date.parse(exp.created_at)) / 1000 : null;
    const facts = [
      ['Id', h('span', { class: 'mono' }, exp.id)],
      ['Created', localTime(exp.created_at)],
      ['Started', localTime(exp.started_at)],
      ['Finished', localTime(exp.finished_at)],
      ['Queued for', wait === null ? '—' : duration(wait)],
      ['Training time', rows.size ? duration(trained) : '—'],
      ['Best epoch', exp.best_epoch ?? '—'],
      ...(exp.stop_reason ? [['Stopped', `early stopping after epoch ${exp.stopped_epoch}`]] : []),
      ...(exp.sweep_id ? [['Sweep', h('a', { href: links.sweep(exp.sweep_id), id: 'sweep-link' }, 'the sweep it belongs to')]] : []),
      ['Best validation accuracy', pct(exp.best_val_accuracy ?? best('val_accuracy'))],
      ['Best test accuracy', pct(exp.best_test_accuracy ?? best('test_accuracy'))],
      ['Attempt', `${exp.attempt}${exp.rescues ? ` (${exp.rescues} rescued)` : ''}`],
      ['Priority', exp.priority],
    ];
    replace(info, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  function best(key) {
    const vals = [...rows.values()].map((r) => r[key]).filter((v) => v !== null && v !== undefined);
    return vals.length ? Math.max(...vals) : null;
  }

  // ---- metrics and curves ----
  const cols = [
    ['epoch', 'Epoch', (v) => v],
    ['train_loss', 'Train loss', num],
    ['train_accuracy', 'Train acc.', pct],
    ...(hasVal ? [['val_loss', 'Val. loss', num], ['val_accuracy', 'Val. acc.', pct]] : []),
    ['test_loss', 'Test loss', num],
    ['test_accuracy', 'Test acc.', pct],
    ...(exp.spec && exp.spec.lr_schedule ? [['learning_rate', 'Rate', (v) => (v === null || v === undefined ? '—' : Number(v).toPrecision(3))]] : []),
    ['train_seconds', 'Seconds', (v) => num(v, 2)],
    ['images_per_second', 'Images/s', (v) => (v === null || v === undefined ? '—' : Math.round(v).toLocaleString('en'))],
  ];
  replace(metricsHead, h('tr', {}, cols.map(([, label], i) => h('th', { class: i ? 'num' : '' }, label))));

  function metricsRow(r) {
    return h('tr', { dataset: { testid: 'metrics-row', epoch: r.epoch }, class: r.epoch === exp.best_epoch ? 'best' : '' },
      cols.map(([key, , fmt], i) => h('td', { class: i ? 'num' : '' }, fmt(r[key]))));
  }

  function renderMetrics() {
    const sorted = [...rows.values()].sort((a, b) => a.epoch - b.epoch);
    replace(metricsBody, sorted.length ? sorted.map(metricsRow)
      : h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, isActive(exp) ? 'No epoch finished yet.' : 'No epochs.')));
  }

  function chartData() {
    const sorted = [...rows.values()].sort((a, b) => a.epoch - b.epoch);
    const xs = sorted.map((r) => r.epoch);
    const col = (key) => sorted.map((r) => (r[key] === undefined ? null : r[key]));
    return {
      loss: [xs, ...splits.map((s) => col(`${s.key}_loss`))],
      accuracy: [xs, ...splits.map((s) => col(`${s.key}_accuracy`))],
    };
  }

  const drawnEpochs = new Set();
  function recordDraw(u) {
    const at = performance.timeOrigin + performance.now();
    const xs = u.data[0];
    for (const e of xs) {
      if (!drawnEpochs.has(e)) {
        drawnEpochs.add(e);
        hooks.drawn.push({ epoch: e, at });
      }
    }
    hooks.points = xs.length;
    document.body.dataset.points = String(xs.length);
  }

  function redraw() {
    waiting.hidden = rows.size > 0 || !isActive(exp);
    renderMetrics();
    renderInfo();
    if (!charts) return;
    const d = chartData();
    charts.loss.setData(d.loss);
    charts.accuracy.setData(d.accuracy);
  }

  // ---- checkpoints ----
  let ckTimer = null;
  async function loadCheckpoints() {
    let list;
    try {
      list = await api.checkpoints(id);
    } catch (err) {
      if (ctx.alive()) replace(checkpoints, errorBox(err, 'checkpoints-error'));
      return;
    }
    if (!ctx.alive()) return;
    if (!list.length) {
      replace(checkpoints, h('p', { class: 'muted' }, 'No checkpoint yet.'));
      return;
    }
    const last = Math.max(...list.map((c) => c.epoch));
    replace(checkpoints,
      h('p', {}, 'Download: ',
        h('a', { href: links.checkpoint(id, 'best'), download: `${shortId(id)}-best.safetensors`, id: 'download-best' }, 'best'), ' · ',
        h('a', { href: links.checkpoint(id, 'last'), download: `${shortId(id)}-last.safetensors`, id: 'download-last' }, 'last')),
      h('table', { class: 'list', dataset: { testid: 'checkpoints' } },
        h('thead', {}, h('tr', {}, h('th', {}, 'Epoch'), h('th', { class: 'num' }, 'Size'), h('th', {}, 'SHA-256'), h('th', {}, ''))),
        h('tbody', {}, list.map((c) => h('tr', { dataset: { testid: 'checkpoint-row', epoch: c.epoch } },
          h('td', {}, String(c.epoch),
            c.epoch === exp.best_epoch ? h('span', { class: 'pill' }, 'best') : null,
            c.epoch === last ? h('span', { class: 'pill' }, 'last') : null),
          h('td', { class: 'num' }, bytes(c.size_bytes)),
          h('td', { class: 'mono', title: c.sha256 }, c.sha256.slice(0, 12) + '…'),
          h('td', {}, h('a', { href: links.checkpoint(id, c.epoch), download: `${shortId(id)}-epoch-${c.epoch}.safetensors` }, 'download')))))));
  }
  function checkpointsSoon() {
    clearTimeout(ckTimer);
    ckTimer = setTimeout(loadCheckpoints, 400);
  }
  ctx.onCleanup(() => clearTimeout(ckTimer));

  // ---- the experiment again, after status changes and epochs ----
  let expTimer = null;
  function refetchSoon() {
    clearTimeout(expTimer);
    expTimer = setTimeout(async () => {
      try {
        const fresh = await api.get(id);
        if (!ctx.alive()) return;
        exp = fresh;
        renderAll();
      } catch {
        /* the stream keeps the page current meanwhile */
      }
    }, 250);
  }
  ctx.onCleanup(() => clearTimeout(expTimer));

  function renderAll() {
    renderHead();
    renderTags();
    renderActions();
    renderInfo();
    renderMetrics();
    if (!isActive(exp)) progress.hidden = true;
  }

  spec.textContent = JSON.stringify(exp.spec, null, 2);
  replace(summaryBox, footprintLine(exp.footprint), summaryTable(exp.summary));
  renderAll();
  loadCheckpoints();

  // ---- live: the curve stream ----
  let lastProgressEpoch = null;
  function onProgress(p) {
    if (!isActive(exp)) return;
    lastProgressEpoch = p.epoch;
    progress.hidden = false;
    progressBar.max = p.batches;
    progressBar.value = p.batch;
    progressText.textContent = `Epoch ${p.epoch} of ${p.epochs} · batch ${p.batch} / ${p.batches} · loss ${num(p.loss)}`;
  }

  function openStream() {
    es = new EventSource(`/experiments/${encodeURIComponent(id)}/curve`);
    es.addEventListener('open', () => { live.textContent = isActive(exp) ? '● live' : ''; });
    es.addEventListener('epoch', (ev) => {
      const r = JSON.parse(ev.data);
      rows.set(r.epoch, r);
      if (r.epoch > exp.epochs_done) exp.epochs_done = r.epoch;
      redraw();
      if (isActive(exp)) {
        const total = exp.epochs ?? exp.spec.epochs;
        if (lastProgressEpoch === r.epoch && r.epoch < total) {
          progressBar.value = 0;
          progressText.textContent = `Epoch ${r.epoch + 1} of ${total} · starting…`;
        }
        refetchSoon();
        checkpointsSoon();
      }
    });
    es.addEventListener('progress', (ev) => onProgress(JSON.parse(ev.data)));
    es.addEventListener('status', (ev) => {
      const s = JSON.parse(ev.data);
      if (s.status !== exp.status) {
        exp = { ...exp, status: s.status, error: s.error ?? exp.error };
        renderAll();
        refetchSoon();
      }
    });
    es.addEventListener('end', (ev) => {
      es.close();
      es = null;
      live.textContent = '';
      const wasActive = isActive(exp);
      exp = { ...exp, ...JSON.parse(ev.data) };
      progress.hidden = true;
      renderAll();
      if (wasActive) loadCheckpoints();
      streamEnded = true;
      maybeReady();
    });
    es.addEventListener('error', () => {
      if (!es) return;
      if (es.readyState === EventSource.CLOSED) {
        // Refused (e.g. too many streams): try again from the start; epochs are keyed.
        // A 401 (the session ended) is not told to an EventSource: asking who is
        // signed in finds it, and goes to the sign-in view.
        live.textContent = 'live updates interrupted; retrying…';
        es = null;
        api.session().catch(() => { /* a 401 has gone to sign in; else retry below */ });
        const t = setTimeout(() => { if (ctx.alive()) openStream(); }, 3000);
        ctx.onCleanup(() => clearTimeout(t));
      } else {
        live.textContent = 'reconnecting…';
      }
    });
  }
  ctx.onCleanup(() => {
    if (es) es.close();
    es = null;
  });
  openStream();

  // ---- charts, once uPlot is here ----
  try {
    const uPlot = await uPlotReady;
    if (!ctx.alive()) return;
    const series = splits.map((s) => ({ label: s.label, colour: s.colour, dash: s.dash }));
    const xMax = exp.epochs ?? exp.spec.epochs;
    charts = {
      loss: new LineChart(uPlot, lossBox, { series, metric: 'loss', xMax, sync: `exp-${id}`, onDraw: recordDraw }),
      accuracy: new LineChart(uPlot, accBox, { series, metric: 'accuracy', xMax, sync: `exp-${id}` }),
    };
    ctx.onCleanup(() => {
      charts.loss.destroy();
      charts.accuracy.destroy();
    });
    redraw();
  } catch (err) {
    replace(lossBox, errorBox(err));
    pageState('error');
    return;
  }
  maybeReady();
}
