// Experiments (/): the list, filtered by status, tag and name, kept fresh by polling. An
// admin sees every account's experiments, so the list names each one's account.

import { h, replace, badge, displayName, modelText, pct, ago, localTime, isActive, errorBox, pageState } from '../dom.js';
import { api, links } from '../api.js';
import { selection, MIN, MAX } from '../selection.js';
import { navigate, setQuery } from '../app.js';
import { session } from '../session.js';

const PAGE = 25;
const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const FAST_MS = 2000; // while any listed experiment is queued or running
const SLOW_MS = 5000;

export async function mount(main, ctx) {
  ctx.title('Experiments');
  const q = ctx.url.searchParams;
  const accounts = session.seesAccounts();
  const filters = { status: q.get('status') || '', tag: q.get('tag') || '', q: q.get('q') || '' };

  let items = [];
  let cursor = null;
  let timer = null;
  let inflight = null;
  const rows = new Map(); // id → {tr, sig, age}

  const status = h('select', { id: 'filter-status', name: 'status', 'aria-label': 'Status' },
    h('option', { value: '' }, 'any status'),
    STATUSES.map((s) => h('option', { value: s }, s)));
  status.value = filters.status;
  const tag = h('input', { id: 'filter-tag', name: 'tag', type: 'search', placeholder: 'tag', 'aria-label': 'Tag', props: { value: filters.tag } });
  const text = h('input', { id: 'filter-q', name: 'q', type: 'search', placeholder: 'name contains…', 'aria-label': 'Name contains', props: { value: filters.q } });
  const tbody = h('tbody', { id: 'experiments-body' });
  const empty = h('p', { class: 'muted empty', hidden: true, dataset: { testid: 'empty' } });
  const errors = h('div', { class: 'errors' });
  const more = h('button', { id: 'load-more', type: 'button', class: 'secondary', hidden: true, onclick: loadMore }, 'Load more');
  const compareBtn = h('button', { id: 'compare-selected', type: 'button', onclick: () => navigate(links.compare(selection.get())) });
  const clearBtn = h('button', { type: 'button', class: 'link-button', onclick: () => selection.clear() }, 'clear selection');
  const pickNote = h('span', { class: 'muted' });

  const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
    h('label', {}, 'Status ', status), h('label', {}, 'Tag ', tag), h('label', { class: 'grow' }, 'Name ', text));

  main.append(
    h('div', { class: 'page-head' },
      h('h1', {}, 'Experiments'),
      h('a', { class: 'button', href: '/ui/new', id: 'new-experiment' }, 'New experiment')),
    form,
    h('div', { class: 'toolbar' }, compareBtn, pickNote, clearBtn),
    errors,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'list', id: 'experiments', dataset: { testid: 'experiments' } },
        h('thead', {}, h('tr', {},
          h('th', { class: 'pick' }, h('span', { class: 'sr-only' }, 'Select')),
          h('th', {}, 'Name'), accounts ? h('th', {}, 'Account') : null, h('th', {}, 'Status'), h('th', {}, 'Model'),
          h('th', { class: 'num' }, 'Epochs'), h('th', { class: 'num' }, 'Best val.'),
          h('th', { class: 'num' }, 'Best test'), h('th', {}, 'Created'))),
        tbody)),
    empty,
    h('div', { class: 'more' }, more),
  );

  function updateSelectionUi() {
    const n = selection.get().length;
    compareBtn.textContent = n ? `Compare ${n}` : 'Compare';
    compareBtn.disabled = !selection.ready();
    pickNote.textContent = n < MIN ? `select ${MIN}–${MAX} experiments to compare` : n >= MAX ? `at most ${MAX}` : '';
    clearBtn.hidden = n === 0;
    for (const [id, r] of rows) {
      r.box.checked = selection.has(id);
      r.box.disabled = !r.box.checked && n >= MAX;
    }
  }
  ctx.onCleanup(selection.subscribe(updateSelectionUi));

  function params(extra) {
    return { status: filters.status, tag: filters.tag, q: filters.q, ...extra };
  }

  function row(e) {
    const box = h('input', {
      type: 'checkbox', 'aria-label': `Select ${displayName(e)}`, dataset: { testid: 'select' },
      onchange: (ev) => { if (!selection.toggle(e.id, ev.target.checked)) ev.target.checked = false; },
    });
    const age = h('td', { class: 'age', title: localTime(e.created_at) }, ago(e.created_at));
    const total = e.epochs ?? (e.spec && e.spec.epochs);
    const tr = h('tr', { dataset: { id: e.id, status: e.status, testid: 'experiment-row' } },
      h('td', { class: 'pick' }, box),
      h('td', { class: 'name' },
        h('a', { href: links.experiment(e.id), class: e.name ? '' : 'mono' }, displayName(e)),
        (e.tags || []).map((t) => h('span', { class: 'tag' }, t))),
      accounts ? h('td', { class: 'account-cell', dataset: { testid: 'account' } }, e.account ?? '—') : null,
      h('td', {}, badge(e.status)),
      h('td', { class: 'model' }, modelText(e)),
      h('td', { class: 'num' }, `${e.epochs_done}/${total ?? '?'}`),
      h('td', { class: 'num' }, pct(e.best_val_accuracy)),
      h('td', { class: 'num' }, pct(e.best_test_accuracy)),
      age);
    return { tr, box, age };
  }

  // Rows are replaced only when what they show changed, so a poll keeps focus and
  // checkboxes where they are.
  function render() {
    const now = Date.now();
    const seen = new Set();
    const order = items.map((e) => {
      seen.add(e.id);
      const sig = JSON.stringify([e.name, e.tags, e.status, e.epochs_done, e.epochs, e.best_val_accuracy, e.best_test_accuracy, e.model]);
      let r = rows.get(e.id);
      if (!r || r.sig !== sig) {
        const fresh = { ...row(e), sig };
        if (r) r.tr.replaceWith(fresh.tr);
        rows.set(e.id, fresh);
        r = fresh;
      }
      r.age.textContent = ago(e.created_at, now);
      return r.tr;
    });
    for (const [id, r] of rows) {
      if (!seen.has(id)) {
        r.tr.remove();
        rows.delete(id);
      }
    }
    const same = order.length === tbody.children.length && order.every((tr, i) => tbody.children[i] === tr);
    if (!same) tbody.append(...order);
    more.hidden = !cursor;
    empty.hidden = items.length > 0;
    empty.textContent = filters.status || filters.tag || filters.q
      ? 'No experiment matches these filters.'
      : 'No experiments yet. Start one with “New experiment”.';
    updateSelectionUi();
  }

  function showError(err) {
    replace(errors, errorBox(err, 'list-error'));
  }

  /** The first page again (or as many as are shown, up to 100), merged with the rest. */
  async function refresh() {
    inflight?.abort();
    const ac = new AbortController();
    inflight = ac;
    const wanted = Math.min(100, Math.max(PAGE, items.length));
    try {
      const page = await api.list(params({ limit: wanted }), ac.signal);
      if (!ctx.alive()) return;
      const fresh = page.items;
      if (!page.next_cursor) {
        items = fresh;
        cursor = null;
      } else {
        // Older items loaded by "Load more" stay; those inside the fresh page's range that
        // it no longer has (deleted, or no longer matching) go.
        const ids = new Set(fresh.map((e) => e.id));
        const last = fresh[fresh.length - 1];
        const older = items.filter((e) => !ids.has(e.id) && Date.parse(e.created_at) < Date.parse(last.created_at));
        if (items.length <= wanted) cursor = page.next_cursor;
        items = [...fresh, ...older];
      }
      replace(errors);
      render();
      pageState('ready');
    } catch (err) {
      if (err.name !== 'AbortError' && ctx.alive()) {
        showError(err);
        pageState('error');
      }
    } finally {
      if (inflight === ac) inflight = null;
    }
  }

  async function loadMore() {
    if (!cursor) return;
    more.disabled = true;
    try {
      const page = await api.list(params({ limit: PAGE, cursor }), ctx.signal);
      const ids = new Set(items.map((e) => e.id));
      items = [...items, ...page.items.filter((e) => !ids.has(e.id))];
      cursor = page.next_cursor || null;
      render();
    } catch (err) {
      if (err.name !== 'AbortError') showError(err);
    } finally {
      more.disabled = false;
    }
  }

  function schedule() {
    clearTimeout(timer);
    const delay = items.some(isActive) ? FAST_MS : SLOW_MS;
    timer = setTimeout(async () => {
      if (!document.hidden) await refresh();
      if (ctx.alive()) schedule();
    }, delay);
  }
  ctx.onCleanup(() => {
    clearTimeout(timer);
    inflight?.abort();
  });
  const onVisible = () => {
    if (!document.hidden) refresh().then(schedule);
  };
  document.addEventListener('visibilitychange', onVisible);
  ctx.onCleanup(() => document.removeEventListener('visibilitychange', onVisible));

  let typing = null;
  function filtersChanged() {
    filters.status = status.value;
    filters.tag = tag.value.trim();
    filters.q = text.value.trim();
    setQuery(filters);
    items = [];
    cursor = null;
    refresh().then(schedule);
  }
  status.addEventListener('change', filtersChanged);
  for (const input of [tag, text]) {
    input.addEventListener('input', () => {
      clearTimeout(typing);
      typing = setTimeout(filtersChanged, 300);
    });
  }
  ctx.onCleanup(() => clearTimeout(typing));

  updateSelectionUi();
  await refresh();
  schedule();
}
