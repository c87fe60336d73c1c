// Repeats as one curve: the mean of each epoch over the runs that reached it, with the
// band of one sample standard deviation either side. Pure, so Node's test runner checks
// it (tests/web/bands.test.mjs).

/**
 * `runs`: each run's metric rows ([{epoch, ...}]); `key`: the field (`test_loss`).
 * Returns {xs, mean, lo, hi, n}: per epoch reached by any run, the mean of the runs that
 * have a value there, mean ± sd (the mean alone below two values), and how many.
 */
export function meanBand(runs, key) {
  const at = new Map();
  for (const rows of runs) {
    for (const r of rows) {
      const v = r[key];
      if (v === null || v === undefined || !Number.isFinite(v)) continue;
      if (!at.has(r.epoch)) at.set(r.epoch, []);
      at.get(r.epoch).push(v);
    }
  }
  const xs = [...at.keys()].sort((a, b) => a - b);
  const out = { xs, mean: [], lo: [], hi: [], n: [] };
  for (const x of xs) {
    const v = at.get(x);
    const m = v.reduce((s, y) => s + y, 0) / v.length;
    const sd = v.length > 1 ? Math.sqrt(v.reduce((s, y) => s + (y - m) ** 2, 0) / (v.length - 1)) : 0;
    out.mean.push(m);
    out.lo.push(m - sd);
    out.hi.push(m + sd);
    out.n.push(v.length);
  }
  return out;
}

/** `mean ± sd` as text, or the one value, or a dash. */
export function spreadText(s, fmt = (v) => v.toFixed(4)) {
  if (!s || s.mean === null || s.mean === undefined) return '—';
  return s.std === null || s.std === undefined ? fmt(s.mean) : `${fmt(s.mean)} ± ${fmt(s.std)}`;
}
