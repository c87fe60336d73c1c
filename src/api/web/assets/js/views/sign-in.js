// Sign in (/ui/sign-in?next=/path): an API key in, a session cookie out (POST /session),
// then on to where the user was heading.

import { h, replace, errorBox } from '../dom.js';
import { api } from '../api.js';
import { navigate } from '../app.js';
import { session, safeNext } from '../session.js';

export async function mount(main, ctx) {
  ctx.title('Sign in');
  const next = safeNext(ctx.url.searchParams.get('next'), location.origin);
  const now = session.get();

  const key = h('input', {
    id: 'key', name: 'key', type: 'password', required: true, autocomplete: 'current-password',
    spellcheck: 'false', autocapitalize: 'off', placeholder: 'ty_…', 'aria-describedby': 'sign-in-message',
  });
  const submit = h('button', { type: 'submit', id: 'sign-in-submit' }, 'Sign in');
  const message = h('div', { id: 'sign-in-message', 'aria-live': 'polite' });

  async function onSubmit(ev) {
    ev.preventDefault();
    const k = key.value.trim();
    if (!k) {
      key.setAttribute('aria-invalid', 'true');
      replace(message, errorBox('Enter an API key (it starts with ty_).', 'sign-in-error'));
      key.focus();
      return;
    }
    submit.disabled = true;
    replace(message, h('p', { class: 'muted' }, 'Signing in…'));
    try {
      const s = await api.signIn(k);
      if (!ctx.alive()) return;
      key.value = '';
      session.set(s);
      navigate(next, { replace: true });
    } catch (err) {
      if (!ctx.alive()) return;
      key.setAttribute('aria-invalid', 'true');
      replace(message, err.status === 401
        ? errorBox('Not signed in: unknown or revoked key.', 'sign-in-error')
        : errorBox(err, 'sign-in-error'));
      key.select();
    } finally {
      submit.disabled = false;
    }
  }
  key.addEventListener('input', () => key.removeAttribute('aria-invalid'));

  const form = h('form', { class: 'sign-in', id: 'sign-in-form', novalidate: true, onsubmit: onSubmit },
    h('label', { for: 'key' }, 'API key', key),
    h('div', { class: 'form-actions' }, submit),
    message);

  if (now && !now.auth) {
    main.append(h('section', { class: 'card narrow' },
      h('h1', {}, 'Sign in'),
      h('p', { class: 'notice', dataset: { testid: 'auth-off' } },
        'This server runs without keys (--auth off): there is nothing to sign in to. ',
        h('a', { href: '/' }, 'Go to the experiments'))));
    return;
  }
  main.append(h('section', { class: 'card narrow' },
    h('h1', {}, 'Sign in'),
    now
      ? h('p', { class: 'muted', dataset: { testid: 'signed-in-as' } }, 'Signed in as ', h('strong', {}, now.account),
        '. Another key signs in as its account instead.')
      : h('p', { class: 'muted' }, 'Sign in with an API key. The browser keeps a session cookie, not the key; ',
        'an admin makes keys with ', h('code', {}, 'trainyard keys create --account NAME'), '.'),
    form,
    h('p', { class: 'muted', dataset: { testid: 'first-key' } },
      'The first admin key: a new server makes one at its first start, prints it once in its log and ',
      'keeps it in its admin key file. With Docker Compose, read it with ',
      h('code', {}, 'docker compose exec trainyard cat /var/lib/trainyard/admin-key'), '.')));
  key.focus();
}
