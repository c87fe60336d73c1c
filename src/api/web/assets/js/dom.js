// Building DOM safely: every string becomes a text node or an attribute value, never HTML.

/**
 * h('a', {href: '/x', class: 'link', dataset: {testid: 'y'}, onclick: fn}, 'text', child, [more])
 * Attributes: `class`, `dataset` (object), `on<event>` (listener), `props` (object of DOM
 * properties such as `value` or `checked`); anything else is set with setAttribute
 * (`false`/`null`/`undefined` leave it out, `true` sets it empty). Children: strings and
 * numbers become text; null/undefined/false are skipped; arrays are flattened.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'props') Object.assign(el, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'style') throw new Error('no style attributes (CSP); use a class or el.style');
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// ---- formatting ----

// UUIDv7 ids begin with their creation time; their random end tells them apart.
export const shortId = (id) => String(id).slice(-8);

/** An experiment's display name: its name, or its short id. */
export const displayName = (e) => (e.name ? e.name : shortId(e.id));

export function pct(x, digits = 2) {
  return x === null || x === undefined ? '—' : `${(x * 100).toFixed(digits)} %`;
}

export function num(x, digits = 4) {
  return x === null || x === undefined ? '—' : Number(x).toFixed(digits);
}

/** 1234567 → "1,234,567"; big counts as "12.3 M". */
export function count(n) {
  if (n === null || n === undefined) return '—';
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (n >= 1e7) return `${(n / 1e6).toFixed(1)} M`;
  return Number(n).toLocaleString('en');
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** "just now", "3 min ago", "2 h ago", "5 d ago". */
export function ago(iso, now = Date.now()) {
  if (!iso) return '—';
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 10) return 'just now';
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** Seconds as "42.1 s", "3 min 5 s", "1 h 2 min". */
export function duration(s) {
  if (s === null || s === undefined) return '—';
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function localTime(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

/** [1, 28, 28] → "1×28×28". */
export const shape = (dims) => (Array.isArray(dims) ? dims.join('×') : '—');

export const ACTIVE = new Set(['queued', 'running']);
export const isActive = (e) => ACTIVE.has(e.status);

export function badge(status) {
  return h('span', { class: `badge status-${status}`, dataset: { testid: 'status' } }, status);
}

/** The short description of a model: the API's, or one made from the spec's layers. */
export function modelText(e) {
  if (e.model && e.model.layers) {
    return e.model.preset ? `${e.model.preset}: ${e.model.layers}` : e.model.layers;
  }
  const model = (e.spec && e.spec.model) || {};
  const layers = model.layers;
  if (!Array.isArray(layers)) return '—';
  const prefix = model.preset ? `${model.preset}: ` : '';
  const size = (s) => (Array.isArray(s) ? s.join('x') : `${s}x${s}`);
  return prefix + layers
    .map((l) => {
      switch (l.type) {
        case 'conv2d': return `conv2d ${l.filters} ${size(l.kernel)}`;
        case 'dense': return `dense ${l.units}`;
        case 'max_pool2d': case 'avg_pool2d': return `${l.type} ${Array.isArray(l.size) ? l.size.join('x') : l.size}`;
        case 'dropout': return `dropout ${l.rate}`;
        default: return l.type;
      }
    })
    .join(' · ');
}

/** A message box (role=alert) for an error; `null` when there is none. */
export function errorBox(err, testid = 'error') {
  if (!err) return null;
  const box = h('div', { class: 'alert', role: 'alert', dataset: { testid } });
  append(box, [typeof err === 'string' ? err : err.message || String(err)]);
  if (err.errors && err.errors.length) {
    box.append(h('ul', {}, err.errors.map((e) => h('li', {}, h('code', {}, e.field || '(body)'), ': ', e.reason))));
  }
  return box;
}

/** Sets the page's state for tests and screen readers. */
export function pageState(state) {
  document.body.dataset.state = state;
}
