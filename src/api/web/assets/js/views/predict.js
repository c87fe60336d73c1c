// Predict (/ui/predict?experiment={id}): draw a digit or drop an image, prepare it as
// MNIST was prepared, and show the model's ten probabilities.

import { h, replace, displayName, modelText, errorBox, pageState } from '../dom.js';
import { api, links } from '../api.js';
import { prepare, grayToRgba, SIZE } from '../mnist.js';
import { setQuery } from '../app.js';

const PAD = 280;
const BRUSH = 22;
const FASHION = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

export async function mount(main, ctx) {
  ctx.title('Predict');
  const wanted = ctx.url.searchParams.get('experiment');

  const pad = h('canvas', { id: 'pad', width: PAD, height: PAD, class: 'pad', dataset: { testid: 'pad' }, 'aria-label': 'Drawing pad: draw a digit' });
  const g = pad.getContext('2d', { willReadFrequently: true });
  const preview = h('canvas', { id: 'preview', width: SIZE, height: SIZE, class: 'preview', dataset: { testid: 'preview' }, 'aria-label': 'The 28×28 image sent' });
  const expSelect = h('select', { id: 'experiment', 'aria-label': 'Experiment' });
  const ckSelect = h('select', { id: 'checkpoint', 'aria-label': 'Checkpoint' });
  const file = h('input', { type: 'file', id: 'file', accept: 'image/png,image/jpeg,image/*', class: 'sr-only' });
  const predictBtn = h('button', { type: 'button', id: 'predict', onclick: () => predict() }, 'Predict');
  const out = h('div', { id: 'result', 'aria-live': 'polite', dataset: { testid: 'result' } });
  const msg = h('div', { id: 'predict-message' });
  const expLink = h('span', {});

  main.append(
    h('h1', {}, 'Predict'),
    h('div', { class: 'fields' },
      h('label', {}, 'Experiment', expSelect),
      h('label', {}, 'Checkpoint', ckSelect), expLink),
    msg,
    h('div', { class: 'predict-layout' },
      h('section', { class: 'card' },
        h('p', { class: 'muted small' }, 'Draw one digit, large, in the square (mouse, pen or finger), or drop an image on it.'),
        pad,
        h('div', { class: 'form-actions' },
          predictBtn,
          h('button', { type: 'button', id: 'clear', class: 'secondary', onclick: clear }, 'Clear'),
          h('label', { class: 'button secondary', for: 'file' }, 'Choose image…'), file)),
      h('section', { class: 'card' },
        h('h2', {}, 'Answer'),
        h('div', { class: 'sent' }, preview, h('span', { class: 'muted small' }, 'the 28×28 image sent')),
        out)));

  // ---- drawing ----
  function clear() {
    g.fillStyle = '#000';
    g.fillRect(0, 0, PAD, PAD);
    replace(out);
    preview.getContext('2d').clearRect(0, 0, SIZE, SIZE);
  }
  clear();

  let drawing = null;
  const at = (ev) => {
    const r = pad.getBoundingClientRect();
    return [((ev.clientX - r.left) * PAD) / r.width, ((ev.clientY - r.top) * PAD) / r.height];
  };
  pad.addEventListener('pointerdown', (ev) => {
    if (ev.button !== 0) return;
    ev.preventDefault();
    pad.setPointerCapture(ev.pointerId);
    drawing = ev.pointerId;
    const [x, y] = at(ev);
    g.strokeStyle = '#fff';
    g.fillStyle = '#fff';
    g.lineWidth = BRUSH;
    g.lineCap = 'round';
    g.lineJoin = 'round';
    g.beginPath();
    g.arc(x, y, BRUSH / 2, 0, 2 * Math.PI);
    g.fill();
    g.beginPath();
    g.moveTo(x, y);
  });
  pad.addEventListener('pointermove', (ev) => {
    if (drawing !== ev.pointerId) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of events.length ? events : [ev]) {
      const [x, y] = at(e);
      g.lineTo(x, y);
    }
    g.stroke();
  });
  const end = (ev) => {
    if (drawing !== ev.pointerId) return;
    drawing = null;
    predict();
  };
  pad.addEventListener('pointerup', end);
  pad.addEventListener('pointercancel', end);

  // ---- images ----
  async function loadImage(f) {
    if (!f) return;
    try {
      const bmp = await createImageBitmap(f);
      clear();
      const s = Math.min(PAD / bmp.width, PAD / bmp.height);
      const w = bmp.width * s, hh = bmp.height * s;
      g.drawImage(bmp, (PAD - w) / 2, (PAD - hh) / 2, w, hh);
      bmp.close();
      predict();
    } catch {
      replace(msg, errorBox('That file is not an image this browser can read.', 'predict-error'));
    }
  }
  file.addEventListener('change', () => loadImage(file.files[0]));
  pad.addEventListener('dragover', (ev) => {
    ev.preventDefault();
    pad.classList.add('drop');
  });
  pad.addEventListener('dragleave', () => pad.classList.remove('drop'));
  pad.addEventListener('drop', (ev) => {
    ev.preventDefault();
    pad.classList.remove('drop');
    loadImage(ev.dataTransfer.files[0]);
  });

  // ---- experiments and checkpoints ----
  const experiments = new Map();
  async function loadExperiments() {
    const pages = await Promise.all(['succeeded', 'running'].map((status) => api.list({ status, limit: 100 })));
    const items = pages.flatMap((p) => p.items).filter((e) => e.epochs_done > 0);
    if (wanted && !items.some((e) => e.id === wanted)) {
      try {
        items.unshift(await api.get(wanted));
      } catch {
        /* an unknown id: the list stands */
      }
    }
    for (const e of items) experiments.set(e.id, e);
    replace(expSelect, items.map((e) => h('option', { value: e.id },
      `${displayName(e)} — ${e.model && e.model.preset ? e.model.preset : modelText(e).slice(0, 40)} (${e.status}, ${e.epochs_done} epochs)`)));
    if (wanted && experiments.has(wanted)) expSelect.value = wanted;
    return items.length;
  }

  async function loadCheckpoints() {
    const id = expSelect.value;
    replace(expLink, id ? h('a', { href: links.experiment(id) }, 'open experiment') : null);
    const opts = [h('option', { value: 'best' }, 'best'), h('option', { value: 'last' }, 'last')];
    if (id) {
      try {
        const list = await api.checkpoints(id);
        for (const c of list.sort((a, b) => a.epoch - b.epoch)) opts.push(h('option', { value: String(c.epoch) }, `epoch ${c.epoch}`));
      } catch {
        /* best and last still answer */
      }
    }
    const keep = ckSelect.value;
    replace(ckSelect, opts);
    if ([...ckSelect.options].some((o) => o.value === keep)) ckSelect.value = keep;
  }

  expSelect.addEventListener('change', async () => {
    setQuery({ experiment: expSelect.value });
    await loadCheckpoints();
    predict({ quiet: true });
  });
  ckSelect.addEventListener('change', () => predict({ quiet: true }));

  // ---- predicting ----
  let seq = 0;
  async function predict({ quiet = false } = {}) {
    const id = expSelect.value;
    const img = g.getImageData(0, 0, PAD, PAD);
    const prepared = prepare(img.data, PAD, PAD);
    if (!prepared) {
      if (!quiet) replace(out, h('p', { class: 'muted' }, 'Draw a digit first.'));
      return;
    }
    const pv = preview.getContext('2d');
    pv.putImageData(new ImageData(grayToRgba(prepared.pixels), SIZE, SIZE), 0, 0);
    if (!id) return;
    const blob = await new Promise((resolve) => preview.toBlob(resolve, 'image/png'));
    const n = ++seq;
    predictBtn.disabled = true;
    try {
      const res = await api.predict(id, ckSelect.value || 'best', blob);
      if (n !== seq || !ctx.alive()) return;
      replace(msg);
      showResult(res, experiments.get(id));
    } catch (err) {
      if (n === seq && ctx.alive()) replace(msg, errorBox(err, 'predict-error'));
    } finally {
      if (n === seq) predictBtn.disabled = false;
    }
  }

  function showResult(res, exp) {
    const p = res.predictions[0];
    const names = [];
    if (exp && exp.spec && exp.spec.dataset && exp.spec.dataset.name === 'fashion-mnist') names.push(...FASHION);
    for (const t of p.top_k || []) names[t.label] = t.class_name;
    const label = (i) => names[i] ?? String(i);
    replace(out,
      h('p', { class: 'answer' }, h('span', { class: 'big', id: 'prediction', dataset: { testid: 'prediction' } }, label(p.label)),
        h('span', { class: 'muted' }, ` ${(p.probabilities[p.label] * 100).toFixed(1)} % · epoch ${res.epoch}`)),
      h('div', { class: 'bars', dataset: { testid: 'probabilities' } }, p.probabilities.map((v, i) => {
        const fill = h('span', { class: 'fill' });
        fill.style.width = `${(v * 100).toFixed(2)}%`;
        return h('div', { class: i === p.label ? 'bar-row winner' : 'bar-row', dataset: { label: i, testid: 'probability' } },
          h('span', { class: 'label' }, label(i)),
          h('span', { class: 'bar' }, fill),
          h('span', { class: 'pct' }, `${(v * 100).toFixed(1)} %`));
      })));
  }

  const n = await loadExperiments().catch((err) => {
    replace(msg, errorBox(err, 'predict-error'));
    return 0;
  });
  if (!ctx.alive()) return;
  if (!n) {
    replace(msg, h('p', { class: 'notice', dataset: { testid: 'no-experiments' } },
      'No experiment has a checkpoint yet. ', h('a', { href: '/ui/new' }, 'Train one'), ' first.'));
    predictBtn.disabled = true;
  }
  await loadCheckpoints();
  pageState('ready');
}
