// The latent explorer: runs the study's trained decoder in the page and lets the reader roam,
// interpolate and sample in its latent space. No server, no libraries: explorer.py writes the
// decoder's weights and the test set's codes into the JSON block next to this script.
(function () {
  "use strict";

  const root = document.currentScript.closest("section");
  const part = (name) => root.querySelector(`[data-lx="${name}"]`);
  const data = JSON.parse(part("data").textContent);
  const units = data.units;
  const k = data.decoder.latent_dim;
  const shape = data.image_shape; // [c, h, w], or null: draw the vector as a line plot
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function el(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  // --- reading the export -----------------------------------------------------------------

  function floats(entry) {
    const bytes = Uint8Array.from(atob(entry.data), (ch) => ch.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const out = new Float32Array(bytes.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true); // written little-endian
    return out;
  }

  function rows(entry) {
    const flat = floats(entry);
    const [n, m] = entry.shape;
    return Array.from({ length: n }, (_, i) => flat.subarray(i * m, (i + 1) * m));
  }

  const layers = data.decoder.layers.map((layer) =>
    layer.weight ? { ...layer, w: floats(layer.weight), b: floats(layer.bias) } : layer);

  // --- the decoder: PyTorch's math in float32 weights, sums in double precision -------------

  function linear(layer, x) {
    const [nOut, nIn] = layer.weight.shape;
    const y = new Float32Array(nOut);
    for (let o = 0; o < nOut; o++) {
      let sum = layer.b[o];
      for (let i = 0, row = o * nIn; i < nIn; i++) sum += layer.w[row + i] * x[i];
      y[o] = sum;
    }
    return y;
  }

  // ConvTranspose2d: input pixel (iy, ix) of channel c adds value * weight[c, o, ky, kx] to output
  // pixel (iy * stride - padding + ky, ix * stride - padding + kx); output_padding only adds rows
  // and columns at the bottom and right, which receive bias and the kernel's overhang.
  function deconv(layer, x, [nIn, h, w]) {
    const [, nOut, kh, kw] = layer.weight.shape;
    const [sy, sx] = layer.stride, [py, px] = layer.padding, [opy, opx] = layer.output_padding;
    const H = (h - 1) * sy - 2 * py + kh + opy, W = (w - 1) * sx - 2 * px + kw + opx;
    const acc = new Float64Array(nOut * H * W);
    for (let o = 0; o < nOut; o++) acc.fill(layer.b[o], o * H * W, (o + 1) * H * W);
    for (let c = 0; c < nIn; c++) {
      for (let iy = 0; iy < h; iy++) {
        for (let ix = 0; ix < w; ix++) {
          const v = x[(c * h + iy) * w + ix];
          if (v === 0) continue; // after a ReLU most inputs are zero: skipping them is the speed-up
          for (let o = 0; o < nOut; o++) addKernel(acc, layer.w, v, (c * nOut + o) * kh * kw, o * H * W,
                                                   iy * sy - py, ix * sx - px, kh, kw, H, W);
        }
      }
    }
    return [Float32Array.from(acc), [nOut, H, W]];
  }

  // One input pixel's contribution to one output channel: the kernel placed at (y0, x0), clipped.
  function addKernel(acc, weights, v, wBase, aBase, y0, x0, kh, kw, H, W) {
    for (let ky = 0; ky < kh; ky++) {
      const y = y0 + ky;
      if (y < 0 || y >= H) continue;
      for (let kx = 0; kx < kw; kx++) {
        const x = x0 + kx;
        if (x >= 0 && x < W) acc[aBase + y * W + x] += v * weights[wBase + ky * kw + kx];
      }
    }
  }

  // z -> E[x | z] in data space: sigmoid of the Bernoulli logits, or the Gaussian means as they are.
  function decode(z) {
    let h = Float32Array.from(z), hShape = null;
    for (const layer of layers) {
      if (layer.kind === "linear") h = linear(layer, h);
      else if (layer.kind === "reshape") hShape = layer.shape;
      else [h, hShape] = deconv(layer, h, hShape);
      if (layer.relu) for (let i = 0; i < h.length; i++) h[i] = Math.max(0, h[i]);
    }
    if (data.decoder.likelihood === "bernoulli") for (let i = 0; i < h.length; i++) h[i] = 1 / (1 + Math.exp(-h[i]));
    return h;
  }

  let lastMs = 0;
  function timedDecode(z) {
    const start = performance.now();
    const out = decode(z);
    lastMs = performance.now() - start;
    // performance.now() is coarsened to 0.1 ms in ordinary pages: below that, say so.
    part("time").textContent = `decoded in ${lastMs < 0.1 ? "< 0.1" : lastMs.toFixed(1)} ms`;
    return out;
  }

  // --- drawing a data vector ----------------------------------------------------------------

  // Images keep their native resolution and are scaled up by a whole factor (crisp pixels);
  // line plots get a canvas of about the same display size.
  function setUp(canvas, size) {
    if (shape) {
      const [, h, w] = shape;
      const scale = Math.max(1, Math.round(size / Math.max(h, w)));
      Object.assign(canvas, { width: w, height: h });
      Object.assign(canvas.style, { width: `${w * scale}px`, height: `${h * scale}px` });
      canvas.classList.add("lx-px");
    } else {
      Object.assign(canvas, { width: Math.round(1.5 * size), height: size });
    }
    return canvas;
  }

  function draw(canvas, x) {
    const ctx = canvas.getContext("2d");
    if (!shape) return plot(canvas, ctx, x);
    const [c, h, w] = shape;
    const img = ctx.createImageData(w, h);
    const n = h * w;
    const clip = (v) => Math.min(1, Math.max(0, v)); // Gaussian means are shown clipped to [0, 1]
    for (let p = 0; p < n; p++) {
      // Three channels are RGB, four RGBA shown over white (as the report's figures show them);
      // any other count shows its first channel in grey.
      const alpha = c === 4 ? clip(x[3 * n + p]) : 1;
      for (let ch = 0; ch < 3; ch++) {
        img.data[4 * p + ch] = 255 * (alpha * clip(x[(c >= 3 ? ch : 0) * n + p]) + 1 - alpha);
      }
      img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  let span = null; // vectors are drawn on [0, 1] widened to the examples' values (standardised data)
  function plot(canvas, ctx, x) {
    if (!span) {
      span = [0, 1];
      for (const r of examples.x) for (const v of r) span = [Math.min(span[0], v), Math.max(span[1], v)];
    }
    const { width: W, height: H } = canvas;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    ctx.beginPath();
    x.forEach((v, i) => {
      const f = Math.min(1, Math.max(0, (v - span[0]) / (span[1] - span[0])));
      const px = ((i + 0.5) * W) / x.length, py = H - 2 - (H - 4) * f;
      if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
    });
    ctx.strokeStyle = PALETTE[0];
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }

  // --- roam: map, sliders, thumbnails, sample -----------------------------------------------

  const examples = { index: data.examples.index, x: rows(data.examples.x), mu: rows(data.examples.mu),
                     labels: data.examples.labels };
  const roam = { z: Array.from(examples.mu[0]), beforeHover: null, output: null };
  const imageCanvas = setUp(part("image"), 200);

  function showRoam() {
    roam.output = timedDecode(roam.z);
    draw(imageCanvas, roam.output);
    for (const s of sliders) {
      s.input.value = roam.z[s.unit];
      s.readout.textContent = roam.z[s.unit].toFixed(2);
    }
    if (map) map.redraw();
  }

  function setZ(z) {
    roam.z = Array.from(z);
    roam.beforeHover = null;
    showRoam();
  }

  const sliders = units.order.map((unit) => {
    const strength = units.kl ? `KL ${units.kl[unit].toFixed(2)} nats` : `var ${units.variance[unit].toFixed(3)}`;
    const input = el("input", { type: "range", min: units.lo[unit], max: units.hi[unit],
                                step: (units.hi[unit] - units.lo[unit]) / 200 });
    const readout = el("output");
    const row = el("label", { className: units.active[unit] ? "lx-slider" : "lx-slider lx-dead" },
                   el("span", { textContent: `z${unit + 1}` }), el("span", { textContent: strength }), input, readout);
    row.dataset.unit = unit;
    input.addEventListener("input", () => {
      roam.z[unit] = Number(input.value);
      showRoam();
    });
    part("sliders").append(row);
    return { unit, input, readout, row };
  });

  const toggle = part("inactive");
  const inactive = units.active.filter((a) => !a).length;
  part("inactive-count").textContent = ` (${inactive} of ${k})`;
  toggle.disabled = inactive === 0;
  toggle.checked = inactive === k; // a fully collapsed model would otherwise show no sliders at all
  const showUnits = () => sliders.forEach((s) => { s.row.hidden = !units.active[s.unit] && !toggle.checked; });
  toggle.addEventListener("change", showUnits);
  showUnits();

  const describe = (i) => `test #${examples.index[i]}` + (examples.labels ? `, label ${examples.labels[i]}` : "");
  const thumbs = examples.x.map((x, i) => {
    const canvas = setUp(el("canvas"), 44);
    draw(canvas, x);
    const button = el("button", { type: "button", className: "lx-thumb", title: describe(i) }, canvas);
    button.addEventListener("click", () => {
      thumbs.forEach((t) => t.classList.toggle("lx-on", t === button));
      setZ(examples.mu[i]);
    });
    part("thumbs").append(button);
    return button;
  });
  thumbs[0].classList.add("lx-on");

  // A small seeded generator (xorshift32): the same page samples the same sequence.
  let seed = (data.seed + 0x9e3779b9) >>> 0 || 1;
  function uniform() {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    seed >>>= 0;
    return seed / 4294967296;
  }
  function gaussian() { // Box-Muller; 1 - u keeps the logarithm finite
    return Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  }
  part("sample").textContent = data.variational ? "Sample z ~ N(0, I)" : "Sample z ~ Gaussian fitted to the codes";
  part("sample").addEventListener("click", () => {
    setZ(roam.z.map((_, u) => units.prior_mean[u] + units.prior_std[u] * gaussian()));
    thumbs.forEach((t) => t.classList.remove("lx-on"));
  });

  // The map shows the two leading units (for k = 2, the whole latent space); the other units stay
  // at their slider values while the pointer moves.
  const map = k >= 2 ? makeMap(part("map")) : null;
  part("map-figure").hidden = !map;

  function makeMap(canvas) {
    const [ax, ay] = units.order;
    const { width: W, height: H } = canvas;
    const toPx = (zx, zy) => [((zx - units.lo[ax]) / (units.hi[ax] - units.lo[ax])) * W,
                              ((units.hi[ay] - zy) / (units.hi[ay] - units.lo[ay])) * H];
    const toZ = (px, py) => [units.lo[ax] + (px / W) * (units.hi[ax] - units.lo[ax]),
                             units.hi[ay] - (py / H) * (units.hi[ay] - units.lo[ay])];
    const background = drawBackground(W, H, ax, ay, toPx);
    const ctx = canvas.getContext("2d");

    function redraw() {
      ctx.drawImage(background, 0, 0);
      const [px, py] = toPx(roam.z[ax], roam.z[ay]);
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(px, py, 6, 0, 2 * Math.PI);
      ctx.moveTo(px - 10, py); ctx.lineTo(px + 10, py);
      ctx.moveTo(px, py - 10); ctx.lineTo(px, py + 10);
      ctx.stroke();
    }
    function setPoint(zx, zy) {
      roam.z[ax] = zx;
      roam.z[ay] = zy;
      showRoam();
    }
    function pointer(e) {
      const r = canvas.getBoundingClientRect();
      return toZ(((e.clientX - r.left) * W) / r.width, ((e.clientY - r.top) * H) / r.height);
    }
    // Hovering previews; leaving without a click goes back to where the reader was.
    canvas.addEventListener("mousemove", (e) => {
      if (!roam.beforeHover) roam.beforeHover = roam.z.slice();
      setPoint(...pointer(e));
    });
    canvas.addEventListener("click", (e) => {
      roam.beforeHover = null;
      setPoint(...pointer(e));
    });
    canvas.addEventListener("mouseleave", () => {
      if (roam.beforeHover) setZ(roam.beforeHover);
    });
    part("legend").append(legend(ax, ay));
    return { redraw, setPoint, units: [ax, ay] };
  }

  // The test set's mu(x) as dots over a labelled grid, drawn once: redrawing 2000 dots on every
  // mouse move would be wasted work.
  function drawBackground(W, H, ax, ay, toPx) {
    const canvas = el("canvas", { width: W, height: H });
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    drawGrid(ctx, W, H, ax, ay, toPx);
    const labels = data.points.labels;
    ctx.globalAlpha = 0.55;
    rows(data.points.mu).forEach((mu, i) => {
      const [px, py] = toPx(mu[ax], mu[ay]);
      ctx.fillStyle = labels ? PALETTE[labels[i] % PALETTE.length] : "#555";
      ctx.beginPath();
      ctx.arc(px, py, 2, 0, 2 * Math.PI);
      ctx.fill();
    });
    return canvas;
  }

  function drawGrid(ctx, W, H, ax, ay, toPx) {
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#888";
    // Values too close to the far edges would be cut off or collide with the axis names: grid line only.
    for (const v of ticks(units.lo[ax], units.hi[ax])) {
      const x = toPx(v, 0)[0];
      line(ctx, x, 0, x, H, v === 0 ? "#bbb" : "#eee");
      if (x < W - 40) ctx.fillText(String(v), x + 2, H - 3);
    }
    for (const v of ticks(units.lo[ay], units.hi[ay])) {
      const y = toPx(0, v)[1];
      line(ctx, 0, y, W, y, v === 0 ? "#bbb" : "#eee");
      if (y > 24) ctx.fillText(String(v), 2, y - 2);
    }
    ctx.fillText(`z${ax + 1} \u2192`, W - 34, H - 14);
    ctx.fillText(`z${ay + 1} \u2191`, 14, 12);
    if (data.variational) { // the prior's 1- and 2-sigma circles: where a VAE packs its codes
      const [x0, y0] = toPx(0, 0), [x1, y1] = toPx(1, 1);
      ctx.strokeStyle = "#ccc";
      ctx.beginPath();
      for (const r of [1, 2]) {
        ctx.moveTo(x0 + r * (x1 - x0), y0);
        ctx.ellipse(x0, y0, r * (x1 - x0), r * (y0 - y1), 0, 0, 2 * Math.PI);
      }
      ctx.stroke();
    }
  }

  function line(ctx, x0, y0, x1, y1, colour) {
    ctx.strokeStyle = colour;
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
  }

  // Round tick values (1, 2 or 5 times a power of ten), about five across [lo, hi].
  function ticks(lo, hi) {
    const rough = (hi - lo) / 5, power = 10 ** Math.floor(Math.log10(rough));
    const step = power * [1, 2, 5, 10].find((m) => m * power >= rough);
    const values = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) values.push(Number(v.toPrecision(6)));
    return values;
  }

  function legend(ax, ay) {
    const what = k === 2 ? "the whole latent space" : "the two units with the most " + (units.kl ? "KL" : "variance");
    const text = el("div", { textContent: `x: z${ax + 1}, y: z${ay + 1} (${what}); dots: mu(x) of test examples` });
    const labels = data.points.labels;
    if (!labels) return text;
    const keys = [...new Set(labels)].sort((a, b) => a - b).map((label) => {
      const swatch = el("i");
      swatch.style.background = PALETTE[label % PALETTE.length];
      return el("span", { className: "lx-key" }, swatch, String(label));
    });
    return el("div", {}, text, el("div", {}, ...keys));
  }

  // --- interpolate --------------------------------------------------------------------------

  const STEPS = Number(part("t").max);
  const STRIP = 9;
  const interp = { a: 0, b: Math.min(1, examples.x.length - 1), t: 0, output: null };
  const fromCanvas = setUp(part("from-image"), 84), toCanvas = setUp(part("to-image"), 84);
  const interpCanvas = setUp(part("interp-image"), 168);
  const strip = Array.from({ length: STRIP }, () => part("strip").appendChild(setUp(el("canvas"), 48)));

  // At t = 0 and t = 1 this is exactly mu(a) and mu(b): the ends decode the two reconstructions.
  const between = (t) => Array.from(examples.mu[interp.a], (v, j) => (1 - t) * v + t * examples.mu[interp.b][j]);

  function showInterp() {
    interp.t = Number(part("t").value) / STEPS;
    part("t-value").textContent = interp.t.toFixed(2);
    interp.output = decode(between(interp.t));
    draw(interpCanvas, interp.output);
  }

  function choosePair() {
    interp.a = Number(part("from").value);
    interp.b = Number(part("to").value);
    draw(fromCanvas, examples.x[interp.a]);
    draw(toCanvas, examples.x[interp.b]);
    strip.forEach((canvas, i) => draw(canvas, decode(between(i / (STRIP - 1)))));
    showInterp();
  }

  for (const [name, chosen] of [["from", interp.a], ["to", interp.b]]) {
    const select = part(name);
    examples.x.forEach((_, i) => select.append(el("option", { value: i, textContent: describe(i) })));
    select.value = chosen;
    select.addEventListener("change", choosePair);
  }
  part("t").addEventListener("input", showInterp);

  // --- start, and the hook for tests --------------------------------------------------------

  showRoam();
  choosePair();

  window.latentExplorer = {
    decode: (z) => Array.from(decode(z)),
    setMapPoint(zx, zy) {
      roam.beforeHover = null;
      map.setPoint(zx, zy);
    },
    state: () => ({
      z: roam.z.slice(),
      output: Array.from(roam.output),
      decodeMs: lastMs,
      mapUnits: map ? map.units : null,
      sliderUnits: sliders.map((s) => s.unit),
      visibleUnits: sliders.filter((s) => !s.row.hidden).map((s) => s.unit),
      examples: examples.index.slice(),
      interp: { a: interp.a, b: interp.b, t: interp.t, output: Array.from(interp.output) },
    }),
  };
})();
