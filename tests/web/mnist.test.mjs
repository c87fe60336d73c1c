// The web app's MNIST preparation (src/api/web/assets/js/mnist.js), pure functions only:
//   node --test tests/web/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  inkBox, fitSize, resample, centreOfMass, placeByMass, prepare, luminance, stretch, SIZE,
} from '../../src/api/web/assets/js/mnist.js';

/** A w×h RGBA picture, black, with a white (or `ink`) rectangle. */
function picture(w, h, rect, { ink = 255, ground = 0 } = {}) {
  const px = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const inside = x >= rect.x && x < rect.x + rect.w && y >= rect.y && y < rect.y + rect.h;
      const v = inside ? ink : ground;
      px.set([v, v, v, 255], 4 * (y * w + x));
    }
  }
  return px;
}

test('the ink box is the smallest rectangle around the ink', () => {
  const g = luminance(picture(50, 40, { x: 7, y: 5, w: 10, h: 20 }));
  assert.deepEqual(inkBox(g, 50, 40), { x: 7, y: 5, w: 10, h: 20 });
  assert.equal(inkBox(new Float32Array(100), 10, 10), null);
});

test('the larger side becomes 20 and the aspect ratio stays', () => {
  assert.deepEqual(fitSize(100, 200), { w: 10, h: 20 });
  assert.deepEqual(fitSize(280, 7), { w: 20, h: 1 });
  assert.deepEqual(fitSize(3, 3), { w: 20, h: 20 });
});

test('area averaging keeps the mean and antialiases edges', () => {
  // A 4×1 row [0, 255, 255, 0] to 2×1: each output averages two inputs.
  const g = Float32Array.from([0, 255, 255, 0]);
  assert.deepEqual([...resample(g, 4, { x: 0, y: 0, w: 4, h: 1 }, 2, 1)], [127.5, 127.5]);
  // 3 → 2: the middle input is split between both outputs.
  const r = resample(Float32Array.from([255, 0, 0]), 3, { x: 0, y: 0, w: 3, h: 1 }, 2, 1);
  assert.ok(Math.abs(r[0] - 170) < 1e-3 && Math.abs(r[1]) < 1e-3, `${[...r]}`);
  // A uniform box stays uniform.
  const flat = new Float32Array(280 * 280).fill(200);
  const out = resample(flat, 280, { x: 13, y: 20, w: 201, h: 157 }, 20, 16);
  for (const v of out) assert.ok(Math.abs(v - 200) < 1e-2);
});

test('the centre of mass lands on (14, 14)', () => {
  const img = new Float32Array(20 * 20);
  img[3 * 20 + 5] = 100; // one bright pixel at (5, 3)
  assert.deepEqual(centreOfMass(img, 20, 20), { x: 5, y: 3 });
  const { pixels, offset } = placeByMass(img, 20, 20);
  assert.deepEqual(offset, { x: 9, y: 11 });
  assert.equal(pixels[14 * SIZE + 14], 100);
});

test('a drawn bar comes out 20 px tall, centred, white on black', () => {
  const p = prepare(picture(280, 280, { x: 30, y: 40, w: 30, h: 200 }), 280, 280);
  assert.equal(p.inverted, false);
  assert.deepEqual(p.fit, { w: 3, h: 20 });
  const rows = [];
  for (let y = 0; y < SIZE; y++) rows.push(p.pixels.slice(y * SIZE, y * SIZE + SIZE).some((v) => v > 0));
  assert.equal(rows.filter(Boolean).length, 20);
  const c = centreOfMass(p.pixels, SIZE, SIZE);
  assert.ok(Math.abs(c.x - 14) <= 0.5 && Math.abs(c.y - 14) <= 0.5, JSON.stringify(c));
  assert.equal(p.pixels[0], 0);
  assert.equal(Math.max(...p.pixels), 255);
});

test('dark ink on a light ground is inverted; a grey ground becomes black', () => {
  const p = prepare(picture(100, 100, { x: 40, y: 10, w: 20, h: 80 }, { ink: 20, ground: 230 }), 100, 100);
  assert.equal(p.inverted, true);
  assert.equal(p.pixels[0], 0);
  assert.equal(Math.max(...p.pixels), 255);
  const g = stretch(Float32Array.from([60, 60, 60, 60, 200, 60, 60, 60, 60]), 3, 3);
  assert.deepEqual([...g], [0, 0, 0, 0, 255, 0, 0, 0, 0]);
});

test('an empty pad gives nothing to send', () => {
  assert.equal(prepare(picture(28, 28, { x: 0, y: 0, w: 0, h: 0 }), 28, 28), null);
});
