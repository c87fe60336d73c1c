// Who is signed in (GET /session), shared by the header and the views, and where the
// sign-in view may send the user afterwards. The session itself is an HttpOnly cookie
// that no script here can read: only the server's answers tell who it is.

export const SIGN_IN = '/ui/sign-in';

let current = null; // {account, admin, auth} once known
const listeners = new Set();

export const session = {
  /** {account, admin, auth}, or null while no one is signed in (or it is not known). */
  get: () => current,
  set(s) {
    current = s || null;
    for (const f of listeners) f(current);
  },
  /** Whether the experiments list should name each experiment's account. */
  seesAccounts: () => Boolean(current && current.admin && current.auth),
  /** Calls `f(session)` on every change; returns the unsubscribe function. */
  subscribe(f) {
    listeners.add(f);
    return () => listeners.delete(f);
  },
};

/**
 * Where to go after signing in: `next` when it is a path of this origin (starting with a
 * single `/`), else `/`. Absolute URLs, `//host` and `/\host` (which browsers read as
 * another host), other schemes and the sign-in view itself all give `/`.
 */
export function safeNext(next, origin) {
  if (typeof next !== 'string' || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/';
  let url;
  try {
    url = new URL(next, origin);
  } catch {
    return '/';
  }
  if (url.origin !== new URL(origin).origin || url.pathname === SIGN_IN) return '/';
  return url.pathname + url.search + url.hash;
}

/** The sign-in view's URL that comes back to `path` (a path with query) afterwards. */
export function signInUrl(path) {
  const own = path === SIGN_IN || (path || '').startsWith(`${SIGN_IN}?`);
  return path && path.startsWith('/') && !own
    ? `${SIGN_IN}?next=${encodeURIComponent(path)}`
    : SIGN_IN;
}
