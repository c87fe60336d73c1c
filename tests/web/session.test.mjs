// Where the sign-in view sends the user afterwards (src/api/web/assets/js/session.js):
//   node --test tests/web/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { safeNext, signInUrl } from '../../src/api/web/assets/js/session.js';

const ORIGIN = 'http://127.0.0.1:8080';

test('a path of this origin is where signing in goes next', () => {
  assert.equal(safeNext('/', ORIGIN), '/');
  assert.equal(safeNext('/ui/experiments/0190a3b2', ORIGIN), '/ui/experiments/0190a3b2');
  assert.equal(safeNext('/ui/compare?ids=a,b', ORIGIN), '/ui/compare?ids=a,b');
  assert.equal(safeNext('/?status=running&q=x#top', ORIGIN), '/?status=running&q=x#top');
});

test('no next, or anything but a path of this origin, goes to the experiments', () => {
  for (const next of [
    null,
    undefined,
    '',
    'ui/new',
    'https://evil.example/',
    'http://127.0.0.1:8080/ui/new', // absolute, even this origin's
    '//evil.example/ui/new',
    '/\\evil.example/ui/new',
    '/\t/evil.example',
    'javascript:alert(1)',
    ' /ui/new',
    '/ui/sign-in?next=/ui/new',
  ]) {
    assert.equal(safeNext(next, ORIGIN), '/', JSON.stringify(next));
  }
});

test('the sign-in URL comes back to the page shown', () => {
  assert.equal(signInUrl('/'), '/ui/sign-in?next=%2F');
  assert.equal(signInUrl('/ui/compare?ids=a,b'), '/ui/sign-in?next=%2Fui%2Fcompare%3Fids%3Da%2Cb');
  assert.equal(signInUrl('/ui/sign-in?next=%2F'), '/ui/sign-in');
});
