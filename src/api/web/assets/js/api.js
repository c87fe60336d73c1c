// The JSON API: fetch helpers that turn problem+json answers into ApiError. Every call is
// same-origin, so the session cookie goes along (fetch's default `credentials`).

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    /** [{field, reason}] for a 422. */
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
  }
}

async function problemOf(res) {
  const type = res.headers.get('content-type') || '';
  if (type.includes('json')) {
    try {
      return await res.json();
    } catch {
      /* fall through */
    }
  }
  return { title: res.statusText, detail: `${res.status} ${res.statusText}` };
}

let unauthorized = null;

/**
 * Sets what happens when the API answers 401 (no session, or it expired or its key was
 * revoked): the app sends the user to sign in.
 */
export function onUnauthorized(f) {
  unauthorized = f;
}

/**
 * request('/experiments', {method: 'POST', json: {...}}) → parsed JSON, or null for 204.
 * `body` + `headers` send anything else (an image). Throws ApiError on any non-2xx; a 401
 * also calls the `onUnauthorized` handler first, unless `signInOn401: false` (the sign-in
 * itself, whose 401 means a wrong key).
 */
export async function request(path, { method = 'GET', json, body, headers = {}, signal, signInOn401 = true } = {}) {
  const init = { method, headers: { accept: 'application/json', ...headers }, signal, credentials: 'same-origin' };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers['content-type'] = 'application/json';
  } else if (body !== undefined) {
    init.body = body;
  }
  const res = await fetch(path, init);
  if (!res.ok) {
    const err = new ApiError(res.status, await problemOf(res));
    if (res.status === 401 && signInOn401 && unauthorized) unauthorized(err);
    throw err;
  }
  if (res.status === 204) return null;
  return res.json();
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

const enc = encodeURIComponent;

export const api = {
  list: (params, signal) => request(`/experiments${query(params)}`, { signal }),
  get: (id) => request(`/experiments/${enc(id)}`),
  create: (body, idempotencyKey) =>
    request('/experiments', {
      method: 'POST',
      json: body,
      headers: idempotencyKey ? { 'idempotency-key': idempotencyKey } : {},
    }),
  patch: (id, changes) => request(`/experiments/${enc(id)}`, { method: 'PATCH', json: changes }),
  remove: (id) => request(`/experiments/${enc(id)}`, { method: 'DELETE' }),
  cancel: (id) => request(`/experiments/${enc(id)}/cancel`, { method: 'POST' }),
  metrics: (id) => request(`/experiments/${enc(id)}/metrics`),
  checkpoints: (id) => request(`/experiments/${enc(id)}/checkpoints`),
  compare: (ids) => request(`/compare?ids=${ids.map(enc).join(',')}`),
  sweeps: () => request('/sweeps?limit=100'),
  sweep: (id) => request(`/sweeps/${enc(id)}`),
  cancelSweep: (id) => request(`/sweeps/${enc(id)}/cancel`, { method: 'POST' }),
  removeSweep: (id) => request(`/sweeps/${enc(id)}`, { method: 'DELETE' }),
  validate: (body, signal) => request('/specs/validate', { method: 'POST', json: body, signal }),
  presets: () => request('/specs/presets'),
  /** Who is signed in; answers 401 when no one is. */
  session: ({ signInOn401 = true } = {}) => request('/session', { signInOn401 }),
  signIn: (key) => request('/session', { method: 'POST', json: { key }, signInOn401: false }),
  signOut: () => request('/session', { method: 'DELETE', signInOn401: false }),
  /** The caller's account: quotas and what it uses of them. */
  account: (signal) => request('/account', { signal }),
  predict: (experiment, checkpoint, blob) =>
    request(`/predict${query({ experiment, checkpoint, top_k: 3 })}`, {
      method: 'POST',
      body: blob,
      headers: { 'content-type': 'image/png' },
    }),
};

/** A random key (Idempotency-Key), also where crypto.randomUUID is not offered (plain HTTP). */
export function randomKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export const links = {
  experiment: (id) => `/ui/experiments/${enc(id)}`,
  sweep: (id) => `/ui/sweeps/${enc(id)}`,
  sweepPicture: (id, metric, ext = 'svg') => `/sweeps/${enc(id)}/curve.${ext}?metric=${metric}`,
  compare: (ids) => `/ui/compare?ids=${ids.map(enc).join(',')}`,
  runAgain: (id) => `/ui/new?from=${enc(id)}`,
  predict: (id) => `/ui/predict${query({ experiment: id })}`,
  checkpoint: (id, which) => `/experiments/${enc(id)}/checkpoints/${enc(which)}`,
  curvePicture: (id, metric, ext = 'svg') => `/experiments/${enc(id)}/curve.${ext}?metric=${metric}`,
  comparePicture: (ids, metric, ext = 'svg') => `/compare.${ext}?ids=${ids.map(enc).join(',')}&metric=${metric}`,
};
