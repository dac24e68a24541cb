// A small SVG line chart: several series over a shared x axis, optional horizontal limit lines,
// log or linear x. Colours come from CSS classes (s0…s5, limit), so the chart follows the theme.

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
