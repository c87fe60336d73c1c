// The router: picks the view from location.pathname, follows same-app links without a
// page load, and keeps the header's navigation in step. On start it asks who is signed in
// (GET /session) and sends the user to the sign-in view when no one is; so does any API
// call answering 401 later (the session expired, its key was revoked).

import { h, errorBox, pageState } from './dom.js';
import { selection } from './selection.js';
import { api, links, onUnauthorized } from './api.js';
import { session, signInUrl, SIGN_IN } from './session.js';

const routes = [
  { re: /^\/$/, view: 'experiments', nav: 'experiments', load: () => import('./views/experiments.js') },
  { re: /^\/ui\/experiments\/([^/]+)$/, view: 'experiment', nav: 'experiments', load: () => import('./views/experiment.js') },
  { re: /^\/ui\/new$/, view: 'new', nav: 'new', load: () => import('./views/new.js') },
  { re: /^\/ui\/compare$/, view: 'compare', nav: 'compare', load: () => import('./views/compare.js') },
  { re: /^\/ui\/sweeps$/, view: 'sweeps', nav: 'sweeps', load: () => import('./views/sweeps.js') },
  { re: /^\/ui\/sweeps\/([^/]+)$/, view: 'sweep', nav: 'sweeps', load: () => import('./views/sweep.js') },
  { re: /^\/ui\/predict$/, view: 'predict', nav: 'predict', load: () => import('./views/predict.js') },
  { re: /^\/ui\/sign-in$/, view: 'sign-in', nav: null, load: () => import('./views/sign-in.js') },
];

const match = (path) => {
  for (const r of routes) {
    const m = r.re.exec(path);
    if (m) return { route: r, params: m.slice(1).map(decodeURIComponent) };
  }
  return null;
};

const main = document.getElementById('main');
let current = null; // {controller, cleanups}
let generation = 0;

// What went wrong on the page, across views: script errors and Content-Security-Policy
// violations. The browser tests require it to stay empty.
const problems = [];
window.addEventListener('error', (e) => problems.push(`error: ${e.message}`));
window.addEventListener('unhandledrejection', (e) => {
  if (!(e.reason && e.reason.name === 'AbortError')) problems.push(`unhandled rejection: ${e.reason}`);
});
document.addEventListener('securitypolicyviolation', (e) =>
  problems.push(`CSP: ${e.violatedDirective} blocked ${e.blockedURI}`));

/** Test hooks: the view shown, and (experiment view) when each epoch's point was drawn. */
function resetHooks(view) {
  window.trainyard = { view, points: 0, drawn: [], problems };
  document.body.dataset.view = view;
}

async function render() {
  const gen = ++generation;
  if (current) {
    current.controller.abort();
    for (const f of current.cleanups.splice(0)) {
      try {
        f();
      } catch (e) {
        console.error(e);
      }
    }
  }
  const found = match(location.pathname);
  const view = found ? found.route.view : 'not-found';
  resetHooks(view);
  pageState('loading');
  updateNav(found && found.route.nav);
  const controller = new AbortController();
  const cleanups = [];
  current = { controller, cleanups };
  main.replaceChildren();
  window.scrollTo(0, 0);
  if (!found) {
    document.title = 'Not found · trainyard';
    main.append(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/' }, 'Back to the experiments')));
    pageState('ready');
    return;
  }
  const ctx = {
    params: found.params,
    url: new URL(location.href),
    signal: controller.signal,
    /** Runs `f` when the view is left. */
    onCleanup: (f) => cleanups.push(f),
    /** Whether the view is still the one shown. */
    alive: () => gen === generation,
    title: (t) => {
      document.title = t ? `${t} · trainyard` : 'trainyard';
    },
  };
  try {
    const mod = await found.route.load();
    if (!ctx.alive()) return;
    await mod.mount(main, ctx);
    if (ctx.alive() && !ctx.deferReady && document.body.dataset.state === 'loading') pageState('ready');
  } catch (err) {
    if (!ctx.alive() || err.name === 'AbortError') return;
    if (!err.status) console.error(err); // the API's own answers are shown, not logged
    main.append(errorBox(err, 'view-error'));
    pageState('error');
  }
}

/** Shows `url` (a path with query) as if its link had been followed. */
export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  render();
}

/** Changes the URL's query without leaving the view (filters reflected in the URL). */
export function setQuery(params) {
  const q = Object.entries(params)
    .filter(([, v]) => v)
    // Commas stay readable (`ids=a,b`).
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v).replace(/%2C/gi, ',')}`)
    .join('&');
  history.replaceState(null, '', location.pathname + (q ? `?${q}` : ''));
}

function updateNav(active) {
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === active) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  updateCompareLink();
}

function updateCompareLink() {
  const a = document.getElementById('nav-compare');
  const ids = selection.get();
  if (location.pathname === '/ui/compare') {
    a.href = location.pathname + location.search; // the comparison shown
    a.removeAttribute('aria-disabled');
    a.title = '';
  } else if (selection.ready()) {
    a.href = links.compare(ids);
    a.removeAttribute('aria-disabled');
    a.title = `Compare the ${ids.length} selected experiments`;
  } else {
    a.removeAttribute('href');
    a.setAttribute('aria-disabled', 'true');
    a.title = 'Select 2 to 8 experiments in the list to compare them';
  }
  a.querySelector('.count').textContent = ids.length ? ` (${ids.length})` : '';
}

selection.subscribe(updateCompareLink);

// ---- who is signed in: the header's account, admin mark and Sign out ----

const accountBox = document.getElementById('account');
const navBox = document.getElementById('nav-main');

function updateAccount(s) {
  accountBox.hidden = !s;
  // Signed out under keys, the views would only answer 401.
  navBox.hidden = !s;
  if (!s) return;
  document.getElementById('account-name').textContent = s.account;
  document.getElementById('account-admin').hidden = !s.admin;
  document.getElementById('sign-out').hidden = !s.auth;
}
session.subscribe(updateAccount);

/** Sends the user to sign in, coming back to the page shown afterwards. */
function toSignIn() {
  session.set(null);
  if (location.pathname === SIGN_IN) return;
  navigate(signInUrl(location.pathname + location.search), { replace: true });
}
onUnauthorized(toSignIn);

document.getElementById('sign-out').addEventListener('click', async (ev) => {
  const button = ev.currentTarget;
  button.disabled = true;
  try {
    await api.signOut();
    session.set(null);
    navigate(SIGN_IN);
  } catch (err) {
    // The session stays; say why in the view's place.
    main.prepend(errorBox(err, 'sign-out-error'));
  } finally {
    button.disabled = false;
  }
});

/** Who is signed in, then the view (or the sign-in view when no one is). */
async function start() {
  try {
    session.set(await api.session({ signInOn401: false }));
  } catch (err) {
    if (err.status === 401) {
      session.set(null);
      if (location.pathname !== SIGN_IN) history.replaceState(null, '', signInUrl(location.pathname + location.search));
    } else {
      // Unknown (the server is down?): the view shows what its own calls answer.
      console.warn('GET /session:', err);
    }
  }
  render();
}

// Same-app links are followed without a page load; anything else (API files, pictures,
// downloads, new tabs) is left to the browser.
document.addEventListener('click', (ev) => {
  if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const a = ev.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !match(url.pathname)) return;
  ev.preventDefault();
  if (url.pathname + url.search === location.pathname + location.search && !url.hash) return;
  navigate(url.pathname + url.search);
});

window.addEventListener('popstate', render);

start();
