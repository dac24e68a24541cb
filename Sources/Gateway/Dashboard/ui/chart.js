// Small SVG charts: a line chart (several series over a shared x axis, optional horizontal limit lines,
// log or linear x) and a scatter plot with a marked front. Colours come from CSS classes (s0…s5, limit), so the charts follow the theme.

const SVG = 'http://www.w3.org/2000/svg';
const W = 320;
const H = 150;
const PAD = { left: 46, right: 8, top: 10, bottom: 22 };

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Rounds a maximum up to 1, 2 or 5 times a power of ten. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

/**
 * lineChart({ title, series: [{ name, points: [[x, y|null], …] }], limits: [{ y, label }],
 *   xFormat, yFormat, xLog, xDomain: [min, max], legend }) → a <figure> with the SVG, a legend and a text summary for screen readers.
 * A null y breaks the line; lone points are drawn as dots.
 */
export function lineChart({
  title, series, limits = [], xFormat = String, yFormat = String, xLog = false, xDomain, legend = series.length > 1 || limits.length > 0,
  empty = 'No data yet.',
}) {
  const figure = document.createElement('figure');
  figure.className = 'chart';
  const caption = document.createElement('figcaption');
  caption.textContent = title;
  figure.append(caption);

  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${all.length ? `${all.length} points` : empty}` });
  figure.append(root);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  root.append(svg('rect', { class: 'frame', x: PAD.left, y: PAD.top, width: plotW, height: plotH }));
  if (!all.length) {
    root.append(svg('text', { class: 'axis', x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, 'text-anchor': 'middle' }, empty));
    return figure;
  }

  const tx = (x) => (xLog ? Math.log2(x) : x);
  const xs = series.flatMap((s) => s.points.map((p) => tx(p[0])));
  let [x0, x1] = xDomain ? xDomain.map(tx) : [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  // A limit far above the data (a tiny model on a big machine) would flatten every line: it is
  // then named at the top edge instead of drawn to scale.
  const dataMax = Math.max(...all.map((p) => p[1]));
  const onScale = limits.filter((l) => !(dataMax > 0) || l.y <= dataMax * 4);
  const yMax = niceMax(Math.max(dataMax, ...onScale.map((l) => l.y)));
  const X = (x) => PAD.left + ((tx(x) - x0) / (x1 - x0)) * plotW;
  const Y = (y) => PAD.top + plotH - (y / yMax) * plotH;

  for (const v of [0, yMax / 2, yMax]) {
    root.append(svg('line', { class: 'grid', x1: PAD.left, x2: PAD.left + plotW, y1: Y(v), y2: Y(v) }));
    root.append(svg('text', { class: 'axis', x: PAD.left - 4, y: Y(v) + 3, 'text-anchor': 'end' }, yFormat(v)));
  }
  const xTicks = xLog ? [...new Set(xs)].sort((a, b) => a - b).map((v) => 2 ** v) : [x0, (x0 + x1) / 2, x1];
  const step = Math.ceil(xTicks.length / 4);
  xTicks.filter((_, i) => i % step === 0 || i === xTicks.length - 1).forEach((v, i, list) => {
    const anchor = i === 0 ? 'start' : i === list.length - 1 ? 'end' : 'middle';
    root.append(svg('text', { class: 'axis', x: X(v), y: H - 6, 'text-anchor': anchor }, xFormat(v)));
  });

  for (const limit of limits) {
    const y = onScale.includes(limit) ? Y(limit.y) : PAD.top;
    root.append(svg('line', { class: 'limit', x1: PAD.left, x2: PAD.left + plotW, y1: y, y2: y }));
    const label = onScale.includes(limit) ? limit.label : `${limit.label} (off scale, above)`;
    root.append(svg('text', { class: 'axis limit-label', x: PAD.left + plotW - 2, y: Math.max(y - 3, PAD.top + 9), 'text-anchor': 'end' }, label));
  }

  series.forEach((s, i) => {
    let run = [];
    const flush = () => {
      if (run.length > 1) root.append(svg('polyline', { class: `line s${i % 6}`, points: run.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(' ') }));
      if (run.length === 1 || s.points.length <= 12) run.forEach(([x, y]) => root.append(svg('circle', { class: `dot s${i % 6}`, cx: X(x), cy: Y(y), r: 2.5 })));
      run = [];
    };
    for (const p of s.points) {
      if (p[1] === null || p[1] === undefined) flush(); else run.push(p);
    }
    flush();
  });

  if (legend) {
    const list = document.createElement('ul');
    list.className = 'legend';
    series.forEach((s, i) => {
      const item = document.createElement('li');
      item.className = `s${i % 6}`;
      item.textContent = s.name;
      list.append(item);
    });
    figure.append(list);
  }
  return figure;
}

/**
 * scatterChart({ title, xLabel, yLabel, points: [{ x, y, label, front, highlight, className, data }], xFormat, yFormat,
 *   names: { points, front, highlight }, empty }) → a <figure> with an SVG scatter plot from 0 on both axes.
 * Points marked `front` are drawn larger in their own colour and joined by a step line in x order
 * (the trade-off frontier: lower x, higher y); the `highlight` point is ringed. Each point is a
 * `circle.point` (plus its `className`, `data-*` from `data`) with its label as a tooltip (<title>).
 * Axis labels sit under and beside the plot; every text goes in as textContent.
 */
export function scatterChart({
  title, xLabel, yLabel, points, xFormat = String, yFormat = String, names = {}, empty = 'No data yet.',
}) {
  const SW = 320;
  const SH = 200;
  const P = { left: 52, right: 12, top: 10, bottom: 36 };
  const figure = document.createElement('figure');
  figure.className = 'chart scatter';
  const caption = document.createElement('figcaption');
  caption.textContent = title;
  figure.append(caption);

  const shown = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const front = shown.filter((p) => p.front).sort((a, b) => a.x - b.x || a.y - b.y);
  const highlight = shown.find((p) => p.highlight);
  const summary = shown.length
    ? `${shown.length} points, ${front.length} on the front${highlight ? `, highlighted: ${highlight.label}` : ''}` : empty;
  const root = svg('svg', { viewBox: `0 0 ${SW} ${SH}`, role: 'img', 'aria-label': `${title}: ${summary}` });
  figure.append(root);
  const plotW = SW - P.left - P.right;
  const plotH = SH - P.top - P.bottom;
  root.append(svg('rect', { class: 'frame', x: P.left, y: P.top, width: plotW, height: plotH }));
  root.append(svg('text', { class: 'axis axis-label', x: P.left + plotW / 2, y: SH - 4, 'text-anchor': 'middle' }, xLabel));
  root.append(svg('text', { class: 'axis axis-label', transform: `translate(11 ${P.top + plotH / 2}) rotate(-90)`, 'text-anchor': 'middle' }, yLabel));
  if (!shown.length) {
    root.append(svg('text', { class: 'axis', x: P.left + plotW / 2, y: P.top + plotH / 2, 'text-anchor': 'middle' }, empty));
    return figure;
  }

  const xMax = niceMax(Math.max(...shown.map((p) => p.x)));
  const yMax = niceMax(Math.max(...shown.map((p) => p.y)));
  const X = (x) => P.left + (x / xMax) * plotW;
  const Y = (y) => P.top + plotH - (y / yMax) * plotH;
  for (const v of [0, yMax / 2, yMax]) {
    root.append(svg('line', { class: 'grid', x1: P.left, x2: P.left + plotW, y1: Y(v), y2: Y(v) }));
    root.append(svg('text', { class: 'axis', x: P.left - 4, y: Y(v) + 3, 'text-anchor': 'end' }, yFormat(v)));
  }
  [0, xMax / 2, xMax].forEach((v, i) => {
    root.append(svg('line', { class: 'grid', x1: X(v), x2: X(v), y1: P.top, y2: P.top + plotH }));
    root.append(svg('text', { class: 'axis', x: X(v), y: P.top + plotH + 12, 'text-anchor': ['start', 'middle', 'end'][i] }, xFormat(v)));
  });

  const dot = (p, cls, r) => {
    const circle = svg('circle', { class: `point dot ${cls} ${p.className ?? ''}`.trim(), cx: X(p.x).toFixed(1), cy: Y(p.y).toFixed(1), r });
    for (const [k, v] of Object.entries(p.data ?? {})) circle.setAttribute(`data-${k}`, String(v));
    if (p.label) circle.append(svg('title', {}, p.label));
    return circle;
  };
  for (const p of shown) if (!p.front && !p.highlight) root.append(dot(p, 's0', 3));
  if (front.length > 1) {
    // A staircase: from each front point across to the next one's x, then up (or down) to it.
    const steps = front.flatMap((p, i) => (i === 0 ? [[p.x, p.y]] : [[p.x, front[i - 1].y], [p.x, p.y]]));
    root.append(svg('polyline', { class: 'line s2 front-line', points: steps.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(' ') }));
  }
  for (const p of front) if (!p.highlight) root.append(dot(p, 's2', 4));
  if (highlight) {
    root.append(svg('circle', { class: 'line s1 ring', cx: X(highlight.x).toFixed(1), cy: Y(highlight.y).toFixed(1), r: 7 }));
    root.append(dot(highlight, 's1', 4.5));
  }

  const list = document.createElement('ul');
  list.className = 'legend';
  for (const [cls, name] of [['s0', names.points ?? 'point'], ['s2', names.front ?? 'front'], ['s1', names.highlight ?? 'highlighted']]) {
    const item = document.createElement('li');
    item.className = cls;
    item.textContent = name;
    list.append(item);
  }
  figure.append(list);
  return figure;
}
