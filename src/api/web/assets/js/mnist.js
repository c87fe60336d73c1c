// Preparing a drawing as MNIST's digits were prepared: white ink on black, the ink's
// bounding box scaled (aspect kept, area-averaged, so antialiased) to fit 20×20, then
// placed in a 28×28 field so that its centre of mass is at the centre. Pure functions on
// arrays; the view only reads the canvas and writes the result.

export const SIZE = 28;
export const BOX = 20;

/** Grey levels 0–255 from RGBA bytes, transparent parts counting as black. */
export function luminance(rgba) {
  const out = new Float32Array(rgba.length / 4);
  for (let i = 0; i < out.length; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2], a = rgba[4 * i + 3];
    out[i] = ((0.299 * r + 0.587 * g + 0.114 * b) * a) / 255;
  }
  return out;
}

function borderValues(gray, w, h) {
  const v = [];
  for (let x = 0; x < w; x++) v.push(gray[x], gray[(h - 1) * w + x]);
  for (let y = 1; y < h - 1; y++) v.push(gray[y * w], gray[y * w + w - 1]);
  return v.sort((a, b) => a - b);
}

/** Whether the picture is dark ink on a light ground (a photo, a scan): its border is light. */
export function isLightBackground(gray, w, h) {
  const v = borderValues(gray, w, h);
  return v[v.length >> 1] > 127;
}

export function invert(gray) {
  return gray.map((v) => 255 - v);
}

/**
 * Stretches the levels so that the background (the border's median) is 0 and the
 * brightest ink 255: a grey ground from a photo becomes black. A drawing is unchanged.
 */
export function stretch(gray, w, h) {
  const v = borderValues(gray, w, h);
  const bg = v[v.length >> 1];
  let max = 0;
  for (const x of gray) if (x > max) max = x;
  if (max - bg < 1) return new Float32Array(gray.length);
  const k = 255 / (max - bg);
  return gray.map((x) => Math.min(255, Math.max(0, (x - bg) * k)));
}

/** The smallest rectangle holding every pixel brighter than `threshold`, or null. */
export function inkBox(gray, w, h, threshold = 24) {
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (gray[y * w + x] > threshold) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return x1 < 0 ? null : { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
}

/** The size of a `bw`×`bh` box scaled so that its larger side is `size`. */
export function fitSize(bw, bh, size = BOX) {
  const s = size / Math.max(bw, bh);
  return { w: Math.max(1, Math.round(bw * s)), h: Math.max(1, Math.round(bh * s)) };
}

/** For each of `n` outputs covering `len` inputs from `start`: [[input, weight], ...]. */
function weights(start, len, n) {
  const step = len / n;
  const out = [];
  for (let d = 0; d < n; d++) {
    const a = start + d * step, b = a + step;
    const taps = [];
    for (let s = Math.floor(a); s < Math.ceil(b); s++) {
      const cover = Math.min(b, s + 1) - Math.max(a, s);
      if (cover > 0) taps.push([s, cover / step]);
    }
    out.push(taps);
  }
  return out;
}

/**
 * The `box` of a `w`-wide grey image resampled to `dw`×`dh` by area averaging (each
 * output pixel is the mean of the input area it covers): antialiased, exact, the same in
 * every browser.
 */
export function resample(gray, w, box, dw, dh) {
  const wx = weights(box.x, box.w, dw);
  const wy = weights(box.y, box.h, dh);
  const rows = new Float32Array(box.h * dw); // horizontal pass, box rows only
  for (let y = 0; y < box.h; y++) {
    const src = (box.y + y) * w;
    for (let x = 0; x < dw; x++) {
      let acc = 0;
      for (const [s, k] of wx[x]) acc += gray[src + s] * k;
      rows[y * dw + x] = acc;
    }
  }
  const out = new Float32Array(dw * dh);
  for (let y = 0; y < dh; y++) {
    for (const [s, k] of wy[y]) {
      const r = (s - box.y) * dw;
      for (let x = 0; x < dw; x++) out[y * dw + x] += rows[r + x] * k;
    }
  }
  return out;
}

/** The centre of mass of the intensities, in pixel indices (scipy's convention). */
export function centreOfMass(img, w, h) {
  let m = 0, sx = 0, sy = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = img[y * w + x];
      m += v;
      sx += v * x;
      sy += v * y;
    }
  }
  return m > 0 ? { x: sx / m, y: sy / m } : { x: (w - 1) / 2, y: (h - 1) / 2 };
}

/**
 * A `size`×`size` black image with `img` (`w`×`h`) pasted so that its centre of mass lands
 * on (size/2, size/2); what falls outside is cut off. Returns bytes 0–255.
 */
export function placeByMass(img, w, h, size = SIZE) {
  const c = centreOfMass(img, w, h);
  const ox = Math.round(size / 2 - c.x);
  const oy = Math.round(size / 2 - c.y);
  const out = new Uint8ClampedArray(size * size);
  for (let y = 0; y < h; y++) {
    const ty = y + oy;
    if (ty < 0 || ty >= size) continue;
    for (let x = 0; x < w; x++) {
      const tx = x + ox;
      if (tx >= 0 && tx < size) out[ty * size + tx] = Math.round(img[y * w + x]);
    }
  }
  return { pixels: out, offset: { x: ox, y: oy } };
}

/**
 * The whole preparation of an RGBA picture (`w`×`h`): 784 grey bytes, white digit on
 * black, or null when there is no ink. `inverted` says whether it was dark on light.
 */
export function prepare(rgba, w, h) {
  let gray = luminance(rgba);
  const inverted = isLightBackground(gray, w, h);
  if (inverted) gray = invert(gray);
  gray = stretch(gray, w, h);
  const box = inkBox(gray, w, h);
  if (!box) return null;
  const fit = fitSize(box.w, box.h);
  const small = resample(gray, w, box, fit.w, fit.h);
  const { pixels, offset } = placeByMass(small, fit.w, fit.h);
  return { pixels, box, fit, offset, inverted };
}

/** Grey bytes as opaque RGBA (for ImageData). */
export function grayToRgba(gray) {
  const out = new Uint8ClampedArray(gray.length * 4);
  for (let i = 0; i < gray.length; i++) {
    out[4 * i] = out[4 * i + 1] = out[4 * i + 2] = gray[i];
    out[4 * i + 3] = 255;
  }
  return out;
}
