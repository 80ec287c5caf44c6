// The annotators' page: plain JavaScript over the API, no build step. The token is entered once and
// kept in this tab's sessionStorage; every request (images included) sends it as a bearer token.
"use strict";

const PAGE = 100;
const state = { token: sessionStorage.getItem("paal-token") || "", auth: true, run: null, offset: 0, urls: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const r = await fetch(path, Object.assign({}, options, { headers }));
  if (r.status === 401) { showLogin("The token was not accepted."); throw new Error("unauthorized"); }
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return r;
}

function showLogin(problem) {
  sessionStorage.removeItem("paal-token");
  state.token = "";
  $("login").hidden = false;
  $("runs-section").hidden = true;
  $("run-section").hidden = true;
  $("login-error").textContent = problem || "";
  $("who-text").textContent = "";
  $("forget").hidden = true;
}

async function start() {
  const health = await (await fetch("health")).json();
  state.auth = health.auth;
  if (state.auth && !state.token) { showLogin(); return; }
  $("login").hidden = true;
  $("forget").hidden = !state.auth;
  $("who-text").textContent = state.auth ? "token set" : "no authentication (local)";
  await loadRuns();
}

async function loadRuns() {
  const runs = await (await api("runs")).json();
  const body = $("runs").querySelector("tbody");
  body.replaceChildren();
  for (const r of runs) {
    if (!r.readable) {
      body.append(el("tr", { class: "unreadable" }, el("td", {}, r.name), el("td", { colspan: 7 },
        el("span", { class: "badge bad" }, "unreadable"), " ", r.error)));
      continue;
    }
    const status = r.waiting_for_masks ? el("span", { class: "badge wait" }, "waiting for masks")
      : el("span", { class: "badge" }, r.phase === "done" ? "done" : "running");
    const row = el("tr", { "data-run": r.name, onclick: () => openRun(r.name) },
      el("td", {}, r.name), el("td", {}, r.strategy), el("td", {}, r.phase), el("td", {}, `${r.round} / ${r.rounds}`),
      el("td", {}, `${r.labelled} / ${r.budget}`), el("td", {}, fmt(r.best_val_dice)), el("td", {}, fmt(r.final_dice)),
      el("td", {}, status));
    body.append(row);
  }
  $("runs-section").hidden = false;
  const waiting = runs.find((r) => r.readable && r.waiting_for_masks);
  if (!state.run && waiting) await openRun(waiting.name);
}

async function openRun(name) {
  state.run = name;
  state.offset = 0;
  for (const tr of $("runs").querySelectorAll("tbody tr")) tr.classList.toggle("current", tr.dataset.run === name);
  const detail = await (await api(`runs/${encodeURIComponent(name)}`)).json();
  $("run-title").textContent = `${name} · ${detail.strategy} · round ${detail.round} of ${detail.rounds} · ${detail.phase}`;
  drawCurve(detail.curve);
  $("run-section").hidden = false;
  await loadSelection();
}

function drawCurve(curve) {
  const box = $("curve");
  box.replaceChildren();
  const pts = curve.filter((p) => p.val_dice !== null && p.labeled_count !== null);
  if (!pts.length) { box.append(el("p", {}, "no finished round yet")); return; }
  const W = 360, H = 180, m = 32;
  const xs = pts.map((p) => p.labeled_count), ys = pts.map((p) => p.val_dice);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y1 = Math.max(1e-6, ...ys) * 1.05;
  const X = (x) => m + (W - 2 * m) * (x - x0) / (x1 - x0), Y = (y) => H - m + (2 * m - H) * y / y1;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("id", "curve-svg");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
  };
  add("line", { x1: m, y1: H - m, x2: W - m, y2: H - m, stroke: "#889" });
  add("line", { x1: m, y1: m / 2, x2: m, y2: H - m, stroke: "#889" });
  add("polyline", { points: pts.map((p) => `${X(p.labeled_count)},${Y(p.val_dice)}`).join(" "), fill: "none", stroke: "#1f6fd1", "stroke-width": 2 });
  for (const p of pts) add("circle", { cx: X(p.labeled_count), cy: Y(p.val_dice), r: 3.5, fill: p.kind === "final" ? "#d1541f" : "#1f6fd1" }, undefined);
  add("text", { x: m, y: H - 8, "font-size": 11 }, String(x0));
  add("text", { x: W - m, y: H - 8, "font-size": 11, "text-anchor": "end" }, `${x1} labelled`);
  add("text", { x: 2, y: m / 2 + 4, "font-size": 11 }, fmt(y1, 2));
  add("text", { x: W - m, y: Y(ys[ys.length - 1]) - 8, "font-size": 11, "text-anchor": "end" }, `Dice ${fmt(ys[ys.length - 1])}`);
  box.append(svg);
}

function releaseImages() {
  for (const u of state.urls) URL.revokeObjectURL(u);
  state.urls = [];
}

async function imageUrl(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

async function loadSelection() {
  const name = state.run;
  const sel = await (await api(`runs/${encodeURIComponent(name)}/selection?offset=${state.offset}&limit=${PAGE}`)).json();
  const received = sel.total - sel.masks_missing;
  $("selection-info").replaceChildren(...[
    el("div", {}, `Round ${sel.round} selection: ${sel.total} slices (${sel.strategy})`),
    sel.annotating ? el("div", { id: "received-count" }, `${received} of ${sel.total} masks received`)
      : el("div", {}, "This round is not waiting for masks."),
    sel.annotating && sel.masks_missing === 0
      ? el("div", { class: "badge ok" }, "all masks in: resume the run (paal run --resume)") : null].filter(Boolean));
  $("page-text").textContent = sel.total ? `slices ${sel.offset + 1}–${sel.offset + sel.slices.length} of ${sel.total}` : "";
  $("prev").disabled = sel.offset === 0;
  $("next").disabled = sel.next_offset === null;
  releaseImages();
  const gallery = $("gallery");
  gallery.replaceChildren();
  for (const s of sel.slices) gallery.append(card(name, sel, s));
}

function card(run, sel, s) {
  const path = (kind) => `runs/${encodeURIComponent(run)}/${kind}/${s.slice_id.split("/").map(encodeURIComponent).join("/")}`;
  const img = el("img", { alt: s.slice_id });
  const thumb = el("div", { class: "thumb" }, img);
  imageUrl(path("images") + "?format=png").then((u) => { img.src = u; }).catch((e) => { thumb.append(el("span", { class: "error" }, e.message)); });
  if (s.has_prediction) overlayPrediction(thumb, path("predictions") + "?format=png");
  const status = el("div", { class: "status" });
  const predicted = s.pred_dice || s.pred_acc;  // per class, from the accuracy predictor
  const node = el("div", { class: "card", "data-slice": s.slice_id }, thumb,
    el("div", { class: "meta" }, el("span", {}, `#${s.rank + 1}`), el("span", {}, `score ${fmt(s.score)}`)),
    el("div", { class: "sid" }, s.slice_id),
    predicted ? el("div", { class: "pred" }, `AP's predicted Dice ${predicted.map((d) => fmt(d, 2)).join(" / ")}`) : null,
    status);
  const mark = (ok) => {
    node.classList.toggle("received", ok);
    status.replaceChildren(ok ? el("span", { class: "badge ok received-mark" }, "mask received") : el("span", { class: "badge wait" }, "mask missing"));
  };
  if (sel.annotating) {
    mark(Boolean(s.mask_received));
    const input = el("input", { type: "file", accept: ".png,.npy,.nii,.nii.gz", "aria-label": `mask for ${s.slice_id}` });
    input.addEventListener("change", async () => {
      const file = input.files[0];
      if (!file) return;
      const lower = file.name.toLowerCase();
      const format = lower.endsWith(".nii.gz") ? "nii.gz" : lower.endsWith(".nii") ? "nii" : lower.endsWith(".npy") ? "npy" : "png";
      status.replaceChildren(el("span", {}, "uploading…"));
      try {
        const r = await (await api(path("masks") + `?format=${format}`, { method: "PUT", body: file,
          headers: { "Content-Type": "application/octet-stream" } })).json();
        mark(true);
        $("received-count").textContent = `${sel.total - r.masks_missing} of ${sel.total} masks received`;
        sel.masks_missing = r.masks_missing;
      } catch (e) {
        status.replaceChildren(el("span", { class: "error" }, e.message));
      }
    });
    node.append(input);
  }
  return node;
}

async function overlayPrediction(thumb, path) {
  // The predicted mask's class indices, coloured and half transparent over the slice.
  try {
    const blob = await (await api(path)).blob();
    const bitmap = await createImageBitmap(blob);
    const canvas = el("canvas", { class: "prediction", width: bitmap.width, height: bitmap.height });
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const px = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    const colours = [[0, 0, 0], [255, 80, 80], [80, 200, 120], [80, 140, 255], [255, 200, 60], [200, 90, 255]];
    for (let i = 0; i < px.data.length; i += 4) {
      const k = px.data[i];
      const c = colours[k % colours.length];
      px.data[i] = c[0]; px.data[i + 1] = c[1]; px.data[i + 2] = c[2]; px.data[i + 3] = k ? 110 : 0;
    }
    ctx.putImageData(px, 0, 0);
    thumb.append(canvas);
  } catch (e) { /* no prediction to show */ }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem("paal-token", state.token);
    try { await start(); } catch (e) { if (e.message !== "unauthorized") $("message").textContent = e.message; }
  });
  $("forget").addEventListener("click", () => showLogin());
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadSelection(); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadSelection(); });
  start().catch((e) => { if (e.message !== "unauthorized") $("message").textContent = e.message; });
});
