// Line charts on uPlot (vendored, loaded on first use by the views that draw curves).

let loading = null;

/** Loads uPlot's script and stylesheet once; resolves to the uPlot constructor. */
export function loadUPlot() {
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const css = document.createElement('link');
      css.rel = 'stylesheet';
      css.href = '/assets/vendor/uPlot.min.css';
      document.head.append(css);
      const s = document.createElement('script');
      s.src = '/assets/vendor/uPlot.iife.min.js';
      s.onload = () => resolve(window.uPlot);
      s.onerror = () => {
        loading = null;
        reject(new Error('the chart library did not load'));
      };
      document.head.append(s);
    });
  }
  return loading;
}

/** One colour per experiment (compare) and one per split (a single experiment). */
export const PALETTE = ['#1f5fd6', '#d6452f', '#1c9a5a', '#c98a00', '#8a4fd1', '#00a0b0', '#d43f9a', '#6b7280'];
export const SPLITS = [
  { key: 'train', label: 'train', colour: '#1f5fd6', dash: [] },
  { key: 'val', label: 'validation', colour: '#c98a00', dash: [8, 5] },
  { key: 'test', label: 'test', colour: '#1c9a5a', dash: [2, 4] },
];

export const METRICS = {
  loss: { label: 'loss', fmt: (v) => v.toPrecision(4), axis: (v) => String(+v.toPrecision(3)) },
  accuracy: { label: 'accuracy', fmt: (v) => `${(v * 100).toFixed(2)} %`, axis: (v) => `${+(v * 100).toFixed(2)} %` },
};

/**
 * A line chart in `container`, as wide as it. `series`: [{label, colour, dash}];
 * `metric`: 'loss' | 'accuracy' (value formatting); `log`: logarithmic y;
 * `xLabel`: the x axis's name; `xMax`: where the x axis ends at least; `onDraw(u)`: after
 * every draw (test hooks); `bands`: [[upper, lower, fill]] as indices into `series`, the
 * area between two series filled (a mean's spread), those two drawn as thin edges.
 */
export class LineChart {
  constructor(uPlot, container, { series, metric, log = false, xLabel = 'epoch', xMax, sync, onDraw, height = 280, bands = [] }) {
    this.uPlot = uPlot;
    this.container = container;
    this.cfg = { series, metric, log, xLabel, xMax, sync, onDraw, height, bands };
    this.data = [[], ...series.map(() => [])];
    this.u = null;
    this.build();
    this.resize = new ResizeObserver(() => {
      if (this.u) this.u.setSize(this.size());
    });
    this.resize.observe(container);
  }

  size() {
    return { width: Math.max(240, this.container.clientWidth), height: this.cfg.height };
  }

  build() {
    const { series, metric, log, xLabel, xMax, sync, onDraw, bands } = this.cfg;
    const edges = new Set(bands.flatMap(([a, b]) => [a, b]));
    const m = METRICS[metric];
    const shown = this.u ? this.u.series.slice(1).map((s) => s.show) : series.map(() => true);
    if (this.u) this.u.destroy();
    const opts = {
      ...this.size(),
      scales: {
        // `xMax`: the axis runs to it from the start (a run's last epoch), so that a live
        // curve grows into its chart instead of the chart rescaling at each epoch.
        x: { time: false, ...(xMax > 1 ? { range: (u, min, max) => [1, Math.max(xMax, max)] } : {}) },
        y: log ? { distr: 3, log: 10 } : { auto: true },
      },
      axes: [
        {
          label: xLabel,
          labelSize: 20,
          stroke: '#4b5563',
          grid: { stroke: '#eceff3' },
          ticks: { stroke: '#d1d5db' },
          // Epochs are whole numbers.
          ...(xLabel === 'epoch' ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] } : {}),
        },
        {
          label: m.label,
          labelSize: 20,
          size: 64,
          stroke: '#4b5563',
          grid: { stroke: '#eceff3' },
          ticks: { stroke: '#d1d5db' },
          values: (u, ticks) => ticks.map((v) => (v === null ? '' : m.axis(v))),
        },
      ],
      series: [
        { label: xLabel, value: (u, v) => (v === null || v === undefined ? '—' : +v.toFixed(2)) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.colour,
          dash: s.dash,
          width: edges.has(i) ? 0.5 : 2,
          spanGaps: true,
          show: shown[i] !== false,
          points: edges.has(i) ? { show: false } : { size: 6 },
          value: (u, v) => (v === null || v === undefined ? '—' : m.fmt(v)),
        })),
      ],
      bands: bands.map(([a, b, fill]) => ({ series: [a + 1, b + 1], fill })),
      cursor: sync ? { sync: { key: sync } } : {},
      legend: { live: true },
      hooks: onDraw ? { draw: [onDraw] } : {},
    };
    this.u = new this.uPlot(opts, this.shownData(), this.container);
  }

  /** Logarithmic scales cannot show zero or less: those points are left out. */
  shownData() {
    if (!this.cfg.log) return this.data;
    return this.data.map((col, i) => (i === 0 ? col : col.map((v) => (v > 0 ? v : null))));
  }

  /** `data`: [xs, ys of series 0, ...] with null where a series has no point. */
  setData(data) {
    this.data = data;
    this.u.setData(this.shownData());
  }

  setLog(log) {
    if (log === this.cfg.log) return;
    this.cfg.log = log;
    this.build();
  }

  destroy() {
    this.resize.disconnect();
    if (this.u) this.u.destroy();
    this.u = null;
  }
}

/**
 * Joins curves with different x values into uPlot's aligned columns: `curves` is a list of
 * [xs, ys] pairs; the result is [all xs sorted, ys of curve 0 (null elsewhere), ...].
 */
export function join(curves) {
  const xs = [...new Set(curves.flatMap(([x]) => x))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const cols = curves.map(([x, y]) => {
    const col = new Array(xs.length).fill(null);
    x.forEach((xv, i) => {
      col[at.get(xv)] = y[i] === undefined ? null : y[i];
    });
    return col;
  });
  return [xs, ...cols];
}
