// New experiment (/ui/new, /ui/new?from={id}): a preset or a JSON spec, validated as you
// type, submitted to POST /experiments. Under keys, a line says what the account uses of
// its quotas ("3 of 10 queued").

import { h, replace, append, count, errorBox, displayName } from '../dom.js';
import { api, links, randomKey } from '../api.js';
import { navigate } from '../app.js';
import { session } from '../session.js';
import { summaryTable, footprintLine } from '../summary.js';
import { spans, locate, lineCol, syntaxError } from '../specpos.js';

const DEFAULT = { preset: 'torch-cnn', epochs: 3 };
const ARTICLE = ['keras-cnn', 'torch-cnn'];

export async function mount(main, ctx) {
  ctx.title('New experiment');
  const from = ctx.url.searchParams.get('from');

  const presetSelect = h('select', { id: 'preset', 'aria-label': 'Preset' },
    h('option', { value: '' }, 'start from a preset…'),
    ARTICLE.map((p) => h('option', { value: p }, p)));
  const name = h('input', { id: 'name', name: 'name', maxlength: 200, placeholder: 'optional', autocomplete: 'off' });
  const tags = h('input', { id: 'tags', name: 'tags', placeholder: 'comma-separated, optional', autocomplete: 'off' });
  const ta = h('textarea', {
    id: 'spec', name: 'spec', class: 'code', spellcheck: 'false', wrap: 'off', rows: 24,
    autocomplete: 'off', autocapitalize: 'off', 'aria-label': 'Spec (JSON)', 'aria-describedby': 'validation',
  });
  const backdrop = h('div', { class: 'backdrop', 'aria-hidden': 'true' });
  const editor = h('div', { class: 'editor' }, backdrop, ta);
  const submit = h('button', { type: 'submit', id: 'submit' }, 'Submit');
  const article = h('button', { type: 'button', id: 'reproduce-article', class: 'secondary', onclick: reproduce,
    title: 'Queue keras-cnn and torch-cnn as the article ran them, then compare their curves' }, 'Reproduce the article');
  const formMsg = h('div', { id: 'form-message' });
  const result = h('div', { id: 'validation', 'aria-live': 'polite', dataset: { testid: 'validation' } });

  const form = h('form', { class: 'new-form', id: 'new-form', novalidate: true, onsubmit: onSubmit },
    h('div', { class: 'fields' },
      h('label', {}, 'Name', name),
      h('label', {}, 'Tags', tags),
      h('label', {}, 'Preset', presetSelect)),
    h('label', { class: 'block', for: 'spec' }, 'Spec (JSON) — ',
      h('span', { class: 'muted' }, 'a preset with overrides, or every field written out; see the spec reference in the book')),
    editor,
    h('div', { class: 'form-actions' }, submit, article),
    formMsg);

  const heading = h('h1', {}, 'New experiment');
  const quota = h('p', { class: 'muted small quota', id: 'quota', dataset: { testid: 'quota' }, hidden: true });
  main.append(heading, quota, h('div', { class: 'new-layout' },
    h('section', { class: 'card' }, form),
    h('section', { class: 'card side' }, h('h2', {}, 'Check'), result)));

  let presets = null; // full specs, once GET /specs/presets answers
  let timer = null;
  let inflight = null;
  let marks = []; // [{start, end}] highlighted in the editor
  let key = { body: null, value: null }; // Idempotency-Key per distinct body

  // ---- the highlight layer behind the textarea ----
  function paintBackdrop() {
    const text = ta.value;
    const parts = [];
    let at = 0;
    for (const m of [...marks].sort((a, b) => a.start - b.start)) {
      if (m.start < at) continue;
      parts.push(text.slice(at, m.start), h('mark', {}, text.slice(m.start, Math.max(m.end, m.start + 1))));
      at = Math.max(m.end, m.start + 1);
    }
    parts.push(text.slice(at), '\n');
    replace(backdrop, parts);
    syncScroll();
  }
  function syncScroll() {
    backdrop.scrollTop = ta.scrollTop;
    backdrop.scrollLeft = ta.scrollLeft;
  }
  ta.addEventListener('scroll', syncScroll);

  /** Selects a span in the editor and scrolls it into view. */
  function reveal(span) {
    ta.focus();
    ta.setSelectionRange(span.start, span.end);
    const { line } = lineCol(ta.value, span.start);
    const lh = parseFloat(getComputedStyle(ta).lineHeight) || 20;
    ta.scrollTop = Math.max(0, (line - 3) * lh);
  }

  // ---- reading the form ----
  function tagList() {
    return tags.value.split(',').map((t) => t.trim()).filter(Boolean);
  }

  /** {body} to send, or {error: {offset, message}} when the text is not a JSON object. */
  function body() {
    const text = ta.value;
    const bad = syntaxError(text);
    if (bad) return { error: bad };
    const spec = JSON.parse(text);
    if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
      return { error: { offset: 0, message: 'the spec must be a JSON object ({…})' } };
    }
    const b = { ...spec };
    const n = name.value.trim();
    if (n) b.name = n;
    const t = tagList();
    if (t.length) b.tags = t;
    return { body: b };
  }

  function clearFieldMarks() {
    for (const el of [name, tags, ta]) {
      el.removeAttribute('aria-invalid');
    }
    marks = [];
  }

  // ---- showing the check ----
  function showSyntax(err) {
    clearFieldMarks();
    const { line, col } = lineCol(ta.value, err.offset);
    marks = [{ start: err.offset, end: err.offset + 1 }];
    ta.setAttribute('aria-invalid', 'true');
    paintBackdrop();
    replace(result, h('div', { class: 'alert', dataset: { testid: 'syntax-error' } },
      h('strong', {}, 'Not valid JSON: '),
      h('button', { type: 'button', class: 'link-button', onclick: () => reveal({ start: err.offset, end: err.offset + 1 }) },
        `line ${line}, column ${col}`), `: ${err.message}`));
  }

  function showErrors(err) {
    clearFieldMarks();
    const map = spans(ta.value);
    const items = (err.errors.length ? err.errors : [{ field: '', reason: err.message }]).map((e) => {
      const field = e.field || '';
      let target = null;
      if (field === 'name') target = name;
      else if (field === 'tags' || field.startsWith('tags[')) target = tags;
      const span = target ? null : locate(map, field);
      if (target) target.setAttribute('aria-invalid', 'true');
      if (span) {
        marks.push(span);
        ta.setAttribute('aria-invalid', 'true');
      }
      const where = field
        ? h('button', {
          type: 'button', class: 'link-button field', dataset: { field },
          title: span && !span.exact ? `not written in the text; showing ${span.path}` : null,
          onclick: () => (target ? target.focus() : span && reveal(span)),
        }, h('code', {}, field))
        : h('code', {}, '(spec)');
      return h('li', { dataset: { testid: 'field-error', field } }, where, ': ', e.reason);
    });
    paintBackdrop();
    replace(result, h('div', { class: 'alert', role: 'alert', dataset: { testid: 'errors' } },
      h('strong', {}, err.errors.length === 1 ? 'One problem:' : `${Math.max(1, err.errors.length)} problems:`),
      h('ul', { class: 'field-errors' }, items)));
  }

  function showValid(res) {
    clearFieldMarks();
    paintBackdrop();
    const s = res.summary;
    replace(result,
      h('p', { class: 'ok', dataset: { testid: 'valid' } }, '✓ Valid. ',
        s ? `${count(s.parameters)} parameters, ${count(s.flops_per_sample)} FLOPs per sample.` : ''),
      res.spec ? h('p', { class: 'muted' },
        `${res.spec.dataset && res.spec.dataset.name}, ${res.spec.epochs} epochs, batch ${res.spec.batch_size}, ${res.spec.optimizer && res.spec.optimizer.type}`) : null,
      footprintLine(res.footprint),
      summaryTable(s));
  }

  // ---- validating as you type ----
  async function validate() {
    clearTimeout(timer);
    const b = body();
    if (b.error) return showSyntax(b.error);
    inflight?.abort();
    const ac = new AbortController();
    inflight = ac;
    result.classList.add('checking');
    try {
      const res = await api.validate(b.body, ac.signal);
      if (ctx.alive() && inflight === ac) showValid(res);
    } catch (err) {
      if (err.name === 'AbortError' || !ctx.alive()) return;
      if (err.status === 422) showErrors(err);
      else replace(result, errorBox(err, 'validate-error'));
    } finally {
      if (inflight === ac) {
        inflight = null;
        result.classList.remove('checking');
      }
    }
  }
  function validateSoon() {
    clearTimeout(timer);
    timer = setTimeout(validate, 300);
  }
  ctx.onCleanup(() => {
    clearTimeout(timer);
    inflight?.abort();
  });
  for (const el of [ta, name, tags]) el.addEventListener('input', validateSoon);
  ta.addEventListener('input', () => {
    // Marks would drift as the text changes; they come back with the next check.
    marks = [];
    paintBackdrop();
  });

  presetSelect.addEventListener('change', () => {
    const p = presetSelect.value;
    if (!p) return;
    const spec = presets && presets[p] ? presets[p] : { preset: p };
    setText(spec);
    presetSelect.value = '';
  });

  function setText(spec) {
    ta.value = JSON.stringify(spec, null, 2);
    marks = [];
    paintBackdrop();
    validateSoon();
  }

  // ---- submitting ----
  async function onSubmit(ev) {
    ev.preventDefault();
    const b = body();
    if (b.error) return showSyntax(b.error);
    const text = JSON.stringify(b.body);
    if (key.body !== text) key = { body: text, value: randomKey() };
    submit.disabled = true;
    replace(formMsg, h('p', { class: 'muted' }, 'Submitting…'));
    try {
      const exp = await api.create(b.body, key.value);
      navigate(links.experiment(exp.id));
    } catch (err) {
      if (!ctx.alive()) return;
      if (err.status === 422) {
        showErrors(err);
        replace(formMsg, errorBox('Not submitted: the spec has problems (listed under Check).', 'submit-error'));
      } else {
        replace(formMsg, errorBox(err, 'submit-error'));
      }
    } finally {
      submit.disabled = false;
    }
  }

  async function reproduce() {
    article.disabled = true;
    replace(formMsg, h('p', { class: 'muted' }, 'Queueing keras-cnn and torch-cnn…'));
    try {
      const ids = [];
      for (const p of ARTICLE) {
        const exp = await api.create({ preset: p, name: `${p} (article)`, tags: ['article'] }, randomKey());
        ids.push(exp.id);
      }
      navigate(links.compare(ids));
    } catch (err) {
      if (ctx.alive()) replace(formMsg, errorBox(err, 'submit-error'));
    } finally {
      article.disabled = false;
    }
  }

  // ---- the account's use of its quotas ----
  if (session.get() && session.get().auth) {
    api.account(ctx.signal).then((a) => {
      if (!ctx.alive()) return;
      replace(quota, quotaText(a));
      quota.hidden = false;
    }).catch(() => { /* a line less; a 401 goes to sign-in */ });
  }

  // ---- the starting text ----
  const presetsLoaded = api.presets().then((p) => {
    presets = p;
    const names = Object.keys(p);
    replace(presetSelect, h('option', { value: '' }, 'start from a preset…'), names.map((n) => h('option', { value: n }, n)));
  }).catch(() => { /* the two names above remain, as {"preset": name} */ });

  if (from) {
    try {
      const exp = await api.get(from);
      if (!ctx.alive()) return;
      ctx.title(`Run again: ${displayName(exp)}`);
      replace(heading, 'Run again: ', h('a', { href: links.experiment(exp.id) }, displayName(exp)));
      name.value = exp.name ? `${exp.name} (again)` : '';
      tags.value = (exp.tags || []).join(', ');
      setText(exp.spec);
    } catch (err) {
      append(formMsg, errorBox(err, 'from-error'));
      setText(DEFAULT);
    }
  } else {
    setText(DEFAULT);
  }
  await presetsLoaded;
  validate();
}

/** "alice: 3 of 10 queued · 1 running · 2.1 G of 50 G FLOPs in the last 24 h". */
export function quotaText(a) {
  const q = a.quotas || {};
  const of = (used, max, fmt = String) => (max === null || max === undefined ? fmt(used) : `${fmt(used)} of ${fmt(max)}`);
  const parts = [`${of(a.queued, q.max_queued)} queued`, `${of(a.running, q.max_running)} running`];
  if (q.max_flops_per_day !== null && q.max_flops_per_day !== undefined) {
    parts.push(`${of(a.flops_last_day, q.max_flops_per_day, count)} FLOPs in the last 24 h`);
  }
  return `${a.name}: ${parts.join(' · ')}`;
}
