// jitkit demo page: plain JavaScript, no libraries, no external assets.
// One request per sampling run returns the whole trajectory; every frame is decoded once into a small
// canvas, so stepping and playing only redraws (nearest-neighbour upscaling, no smoothing).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PANE_PX = 288; // target on-screen size of a pane
  const PLAY_MS = 180; // frame time when playing

  const state = {
    info: null,
    run: null, // the last /api/sample response
    zFrames: [], // canvases [S x S], K+1 of them (the last is the final image)
    xFrames: [], // canvases [S x S], K of them
    frame: 0,
    playing: false,
    timer: null,
    loading: false,
    requestId: 0,
    error: null,
  };

  // ---------------------------------------------------------------------------------------------- utils
  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  function setBodyState(s) {
    document.body.dataset.state = s;
  }

  // base64 of uint8 [h, w, 3] RGB -> a canvas of w x h pixels
  function decodeFrame(b64, w, h) {
    const bin = atob(b64);
    if (bin.length !== w * h * 3) throw new Error(`frame has ${bin.length} bytes, expected ${w * h * 3}`);
    const img = new ImageData(w, h);
    for (let i = 0, j = 0; i < w * h; i++, j += 3) {
      img.data[4 * i] = bin.charCodeAt(j);
      img.data[4 * i + 1] = bin.charCodeAt(j + 1);
      img.data[4 * i + 2] = bin.charCodeAt(j + 2);
      img.data[4 * i + 3] = 255;
    }
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    c.getContext("2d").putImageData(img, 0, 0);
    return c;
  }

  function scaleFor(size) {
    return Math.max(1, Math.floor(PANE_PX / size));
  }

  function drawScaled(canvas, src) {
    const s = scaleFor(src.width);
    if (canvas.width !== src.width * s) canvas.width = src.width * s;
    if (canvas.height !== src.height * s) canvas.height = src.height * s;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(src, 0, 0, canvas.width, canvas.height);
    return s;
  }

  function drawGrid(canvas, src, patch, grid) {
    const s = drawScaled(canvas, src);
    const ctx = canvas.getContext("2d");
    const step = patch * s;
    const W = canvas.width;
    const H = canvas.height;
    const lw = Math.max(1, Math.round(Math.min(W, H) / 150));
    // dark halo then bright line, so the grid reads on any image
    for (const [color, width] of [["rgba(0,0,0,0.55)", lw + 2], ["rgba(255,255,255,0.9)", lw]]) {
      ctx.fillStyle = color;
      for (let i = 1; i < grid; i++) {
        const p = Math.round(i * step - width / 2);
        ctx.fillRect(p, 0, width, H);
        ctx.fillRect(0, p, W, width);
      }
    }
    if (grid <= 16 && step >= 18) {
      // token index in each patch's corner (row-major, as the transformer orders them)
      const fs = Math.max(9, Math.min(13, Math.floor(step / 4)));
      ctx.font = `600 ${fs}px ui-monospace, Menlo, Consolas, monospace`;
      ctx.textBaseline = "top";
      for (let r = 0; r < grid; r++) {
        for (let c = 0; c < grid; c++) {
          const label = String(r * grid + c);
          const x = c * step + lw + 3;
          const y = r * step + lw + 2;
          const tw = ctx.measureText(label).width;
          ctx.fillStyle = "rgba(0,0,0,0.6)";
          ctx.fillRect(x - 2, y - 1, tw + 4, fs + 2);
          ctx.fillStyle = "#ffd38a";
          ctx.fillText(label, x, y);
        }
      }
    }
  }

  // --------------------------------------------------------------------------------------------- render
  function nframes() {
    return state.zFrames.length;
  }

  function fmt(t) {
    return t.toFixed(3);
  }

  function render() {
    const run = state.run;
    if (!run || !nframes()) return;
    const K = run.steps;
    const k = Math.min(Math.max(state.frame, 0), K);
    state.frame = k;
    const isFinal = k === K;
    const z = state.zFrames[k];
    const x = state.xFrames[isFinal ? K - 1 : k];
    drawScaled($("z-canvas"), z);
    drawGrid($("grid-canvas"), z, run.patch_size, run.grid_size);
    drawScaled($("x-canvas"), x);

    $("frame-slider").max = String(K);
    $("frame-slider").value = String(k);
    $("step-readout").textContent = isFinal ? `step ${K} / ${K} · final` : `step ${k} / ${K}`;
    $("t-readout").textContent = `t = ${fmt(run.t[k])}`;

    const G = run.grid_size;
    const P = run.patch_size;
    $("grid-caption").textContent = `${G}×${G} = ${G * G} tokens of ${P}×${P} px`;
    if (isFinal) {
      $("z-caption").textContent = "final image, t = 1";
      const d = run.last_x_max_abs_diff;
      const cap = $("x-caption");
      cap.textContent = `last x̂ (t = ${fmt(run.t[K - 1])}) `;
      const badge = document.createElement("span");
      badge.className = d === 0 ? "badge good" : "badge warn";
      badge.textContent = d === 0 ? "= final image" : `≠ final image (up to ${d}/255)`;
      badge.title =
        d === 0
          ? "the last Euler step lands exactly on the last x-prediction"
          : `with 1/steps < t_eps = ${state.info.t_eps} the last step's clamp makes them differ`;
      cap.appendChild(badge);
    } else {
      $("z-caption").textContent = k === 0 ? "pure noise, t = 0" : `t = ${fmt(run.t[k])}`;
      const s = run.scale[k];
      $("x-caption").textContent = `clean-image guess at t = ${fmt(run.t[k])}` + (s !== 1 ? ` · cfg ×${s}` : "");
    }
    $("play-btn").classList.toggle("playing", state.playing);
    document.body.dataset.frame = String(k);
    drawPlot();
  }

  function drawPlot() {
    const canvas = $("plot-canvas");
    const run = state.run;
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 900;
    const cssH = canvas.clientHeight || 170;
    if (canvas.width !== Math.round(cssW * dpr)) canvas.width = Math.round(cssW * dpr);
    if (canvas.height !== Math.round(cssH * dpr)) canvas.height = Math.round(cssH * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    if (!run) return;
    const K = run.steps;
    const L = 40, R = 12, T = 10, B = 26;
    const w = cssW - L - R;
    const h = cssH - T - B;
    const X = (k) => L + (K > 0 ? (k / K) * w : 0);
    const Y = (v) => T + (1 - v) * h;
    // axes and grid
    ctx.strokeStyle = "#2a3140";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#95a0b4";
    ctx.font = "11px ui-monospace, Menlo, Consolas, monospace";
    for (const v of [0, 0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(L, Y(v) + 0.5);
      ctx.lineTo(L + w, Y(v) + 0.5);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(v.toFixed(1), L - 6, Y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const tickEvery = Math.max(1, Math.ceil(K / 10));
    for (let k = 0; k <= K; k += tickEvery) ctx.fillText(String(k), X(k), T + h + 6);
    if (K % tickEvery) ctx.fillText(String(K), X(K), T + h + 6);
    // current step
    ctx.strokeStyle = "rgba(255,255,255,0.35)";
    ctx.beginPath();
    ctx.moveTo(X(state.frame) + 0.5, T);
    ctx.lineTo(X(state.frame) + 0.5, T + h);
    ctx.stroke();
    // RMS(x̂_k − final), normalised to its maximum
    const e = run.x_rms;
    const emax = Math.max(...e, 1e-12);
    series(e.map((v, k) => [X(k), Y(v / emax)]), "#5ec8ff", 2, state.frame < K ? state.frame : -1);
    // t per step (frames 0..K; the last one is t = 1)
    series(run.t.map((v, k) => [X(k), Y(v)]), "#ffb347", 2.5, state.frame);

    function series(pts, color, width, hi) {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      pts.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
      ctx.stroke();
      ctx.fillStyle = color;
      const r = K > 40 ? 1.8 : 2.6;
      pts.forEach(([px, py], i) => {
        ctx.beginPath();
        ctx.arc(px, py, i === hi ? r + 2.5 : r, 0, 2 * Math.PI);
        ctx.fill();
      });
    }
  }

  // ------------------------------------------------------------------------------------------- playback
  function setFrame(k) {
    if (!state.run) return;
    state.frame = Math.min(Math.max(k, 0), state.run.steps);
    render();
  }

  function pause() {
    state.playing = false;
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
    if (state.run) render();
  }

  function play() {
    if (!state.run) return;
    if (state.frame >= state.run.steps) state.frame = 0;
    state.playing = true;
    if (state.timer) clearInterval(state.timer);
    state.timer = setInterval(() => {
      if (!state.run || state.frame >= state.run.steps) return pause();
      setFrame(state.frame + 1);
    }, PLAY_MS);
    render();
  }

  // ------------------------------------------------------------------------------------------- requests
  function params() {
    return {
      class: $("class-select").value,
      seed: Number($("seed-input").value),
      steps: Number($("steps-input").value),
      sampler: $("sampler-select").value,
      cfg: $("cfg-input").value.trim() === "" ? NaN : Number($("cfg-input").value),
      image: $("start-select").value === "" ? -1 : Number($("start-select").value),
    };
  }

  async function sampleRun(opts) {
    const p = params();
    if (!Number.isFinite(p.cfg)) {
      setStatus(`cfg must be a number, found "${$("cfg-input").value}"`, true);
      return;
    }
    const id = ++state.requestId;
    state.loading = true;
    setBodyState("loading");
    const from = p.image >= 0 ? `data image ${p.image} (inverting it first)` : `seed ${p.seed}`;
    setStatus(`sampling ${p.class} from ${from}, ${p.steps} ${p.sampler} steps, cfg ${p.cfg}…`);
    $("sample-btn").disabled = true;
    let resp, body;
    try {
      resp = await fetch("/api/sample", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(p),
      });
      body = await resp.json();
    } catch (err) {
      if (id === state.requestId) fail(`request failed: ${err}`);
      return;
    } finally {
      if (id === state.requestId) $("sample-btn").disabled = false;
    }
    if (id !== state.requestId) return; // a newer request superseded this one
    if (!resp.ok) return fail(body && body.error ? body.error : `HTTP ${resp.status}`);
    try {
      const w = body.width, h = body.height;
      state.zFrames = body.z.map((b) => decodeFrame(b, w, h));
      state.xFrames = body.x.map((b) => decodeFrame(b, w, h));
    } catch (err) {
      return fail(`could not decode the trajectory: ${err}`);
    }
    state.run = body;
    state.loading = false;
    state.error = null;
    state.frame = 0;
    const src = $("source-canvas");
    if (body.image !== undefined) {
      drawScaled(src, decodeFrame(body.source, body.width, body.height));
      src.hidden = false;
      const same = body.source_class === body.class;
      setStatus(
        `${body.class} from data image ${body.image} (${body.source_class}, inverted with ${body.inversion_nfe} ` +
          `network evaluations) · ${body.steps} ${body.sampler} steps · cfg ${body.cfg} · ` +
          (same ? `reconstruction RMS ${body.source_rms.toFixed(3)} · ` : "") +
          `${body.elapsed_ms} ms`
      );
    } else {
      src.hidden = true;
      setStatus(
        `${body.class} · seed ${body.seed} · ${body.steps} ${body.sampler} steps · cfg ${body.cfg} · ` +
          `${body.nfe} network evaluations in ${body.elapsed_ms} ms`
      );
    }
    setBodyState("ready");
    if (opts && opts.autoplay) play();
    else pause();
  }

  function fail(msg) {
    state.loading = false;
    state.error = msg;
    setStatus(msg, true);
    setBodyState("error");
  }

  async function loadInfo() {
    let info;
    try {
      const r = await fetch("/api/info");
      info = await r.json();
      if (!r.ok) throw new Error(info.error || `HTTP ${r.status}`);
    } catch (err) {
      return fail(`could not load /api/info: ${err}`);
    }
    state.info = info;
    const sel = $("class-select");
    info.classes.forEach((name, i) => {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = `${i} · ${name.replace(/_/g, " ")}`;
      sel.appendChild(o);
    });
    info.samplers.forEach((name) => {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = name;
      $("sampler-select").appendChild(o);
    });
    (info.data_images || []).forEach((name, i) => {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = `data image ${i} · ${name.replace(/_/g, " ")}`;
      $("start-select").appendChild(o);
    });
    $("start-field").hidden = !(info.data_images || []).length;
    const d = info.defaults;
    sel.value = d.class;
    $("seed-input").value = d.seed;
    $("seed-input").max = info.seed_range[1];
    $("steps-input").min = info.steps_range[0];
    $("steps-input").max = info.steps_range[1];
    $("steps-input").value = d.steps;
    $("steps-out").textContent = d.steps;
    $("sampler-select").value = d.sampler;
    $("cfg-input").value = d.cfg;
    $("cfg-input").max = info.cfg_range[1];
    const src = info.source ? ` · ${info.source}` : "";
    $("model-line").textContent =
      `${info.model} · ${info.img_size}×${info.img_size} px · patch ${info.patch_size} → ` +
      `${info.grid_size}×${info.grid_size} tokens · ${info.classes.length} classes${src}`;
    sampleRun({ autoplay: true });
  }

  // ---------------------------------------------------------------------------------------------- wiring
  function wire() {
    $("class-select").addEventListener("change", () => sampleRun({ autoplay: true }));
    $("sampler-select").addEventListener("change", () => sampleRun({ autoplay: true }));
    $("start-select").addEventListener("change", () => {
      // a data image starts in its own class (its reconstruction); change the class to transform it
      const i = $("start-select").value;
      if (i !== "" && state.info) $("class-select").value = state.info.data_images[Number(i)];
      sampleRun({ autoplay: true });
    });
    $("steps-input").addEventListener("input", () => ($("steps-out").textContent = $("steps-input").value));
    $("steps-input").addEventListener("change", () => sampleRun({ autoplay: true }));
    $("cfg-input").addEventListener("change", () => sampleRun({ autoplay: true }));
    $("seed-input").addEventListener("change", () => sampleRun({ autoplay: true }));
    $("reseed-btn").addEventListener("click", () => {
      $("seed-input").value = Math.floor(Math.random() * 1000000);
      sampleRun({ autoplay: true });
    });
    $("sample-btn").addEventListener("click", () => sampleRun({ autoplay: true }));
    $("first-btn").addEventListener("click", () => (pause(), setFrame(0)));
    $("prev-btn").addEventListener("click", () => (pause(), setFrame(state.frame - 1)));
    $("next-btn").addEventListener("click", () => (pause(), setFrame(state.frame + 1)));
    $("last-btn").addEventListener("click", () => (pause(), setFrame(state.run ? state.run.steps : 0)));
    $("play-btn").addEventListener("click", () => (state.playing ? pause() : play()));
    $("frame-slider").addEventListener("input", () => (pause(), setFrame(Number($("frame-slider").value))));
    document.addEventListener("keydown", (ev) => {
      const tag = (ev.target && ev.target.tagName) || "";
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
      if (ev.key === "ArrowRight") (pause(), setFrame(state.frame + 1));
      else if (ev.key === "ArrowLeft") (pause(), setFrame(state.frame - 1));
      else if (ev.key === "Home") (pause(), setFrame(0));
      else if (ev.key === "End") (pause(), setFrame(state.run ? state.run.steps : 0));
      else if (ev.key === " ") state.playing ? pause() : play();
      else return;
      ev.preventDefault();
    });
    window.addEventListener("resize", () => drawPlot());
  }

  // ---------------------------------------------------------------------------------- hooks for tests
  // Read back what a pane shows: the on-screen canvas sampled at each source pixel's centre, as base64 of
  // uint8 [S, S, 3] (the same layout as the API's frames).
  function paneNative(id) {
    const c = $(id);
    const run = state.run;
    if (!run) return null;
    const S = run.width;
    const s = c.width / S;
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let bin = "";
    for (let r = 0; r < S; r++) {
      for (let q = 0; q < S; q++) {
        const i = 4 * (Math.floor((r + 0.5) * s) * c.width + Math.floor((q + 0.5) * s));
        bin += String.fromCharCode(data[i], data[i + 1], data[i + 2]);
      }
    }
    return btoa(bin);
  }

  function paneHash(id) {
    const c = $(id);
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let h = 2166136261 >>> 0;
    for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i], 16777619) >>> 0;
    return `${c.width}x${c.height}:${h.toString(16)}`;
  }

  window.jitkitDemo = {
    get state() {
      return document.body.dataset.state;
    },
    get frame() {
      return state.frame;
    },
    get steps() {
      return state.run ? state.run.steps : 0;
    },
    get run() {
      return state.run;
    },
    get playing() {
      return state.playing;
    },
    paneNative,
    paneHash,
    setFrame: (k) => (pause(), setFrame(k)),
  };

  wire();
  loadInfo();
})();
