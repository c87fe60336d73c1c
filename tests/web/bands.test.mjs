// The mean curve and band of repeats (src/api/web/assets/js/bands.js): node --test tests/web/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { meanBand, spreadText } from '../../src/api/web/assets/js/bands.js';

test('each epoch is the mean of the runs that reached it, with a one-sd band', () => {
  const runs = [
    [{ epoch: 1, test_loss: 1.0 }, { epoch: 2, test_loss: 0.5 }],
    [{ epoch: 1, test_loss: 3.0 }, { epoch: 2, test_loss: null }],
  ];
  const b = meanBand(runs, 'test_loss');
  assert.deepEqual(b.xs, [1, 2]);
  assert.deepEqual(b.mean, [2.0, 0.5]);
  assert.deepEqual(b.n, [2, 1]);
  assert.ok(Math.abs(b.hi[0] - (2 + Math.SQRT2)) < 1e-12);
  assert.ok(Math.abs(b.lo[0] - (2 - Math.SQRT2)) < 1e-12);
  assert.equal(b.lo[1], 0.5, 'one run: no band');
});

test('a spread reads as mean ± sd, or the mean alone', () => {
  assert.equal(spreadText({ mean: 0.5, std: 0.25 }), '0.5000 ± 0.2500');
  assert.equal(spreadText({ mean: 0.5, std: null }), '0.5000');
  assert.equal(spreadText({ mean: null }), '—');
});
