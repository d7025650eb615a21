// wsi-mil view: the slide as a deep-zoom pyramid, one map overlay, an annotation outline,
// a patch panel and a top-k gallery. Every request goes to this server; nothing from a CDN.
"use strict";

const state = { slides: [], slide: null, info: null, head: null, map: null, overlay: null, annotation: null };
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

const viewer = OpenSeadragon({
  id: "osd",
  prefixUrl: "/static/openseadragon/images/",
  showNavigator: true,
  navigatorPosition: "BOTTOM_RIGHT",
  maxZoomPixelRatio: 4,
  gestureSettingsMouse: { clickToZoom: false },
  imageLoaderLimit: 8,
  drawer: "canvas",  // 2D canvas: the same pixels everywhere, no GPU needed (headless, remote desktops)
  timeout: 60000,
});

function tileSource(info, url) {
  return {
    width: info.width, height: info.height, tileSize: info.tile_size, tileOverlap: 0,
    minLevel: 0, maxLevel: info.max_level,
    getTileUrl: (level, x, y) => url(level, x, y),
  };
}

function scaleMode() { return document.querySelector("input[name=scale]:checked").value; }

function mapInfo() { return state.info.heads[state.head].maps[state.map]; }

function overlayQuery() {
  const mode = scaleMode();
  if (mode !== "fixed") return `scale=${mode}`;
  return `scale=fixed&vmin=${enc($("vmin").value)}&vmax=${enc($("vmax").value)}`;
}

function currentRange() {
  const info = mapInfo(), mode = scaleMode();
  if (mode === "fixed") return { vmin: Number($("vmin").value), vmax: Number($("vmax").value), cmap: info.cmap };
  return info[mode];
}

function fmt(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "";
  const abs = Math.abs(value);
  return abs !== 0 && (abs < 0.01 || abs >= 1e4) ? value.toExponential(2) : String(Number(value.toPrecision(3)));
}

function drawLegend() {
  const range = currentRange();
  $("legend-bar").src = `/api/legend/${enc(range.cmap)}.png`;
  $("legend-min").textContent = fmt(range.vmin);
  $("legend-max").textContent = fmt(range.vmax);
  $("legend-bar").title = `${state.map}: ${fmt(range.vmin)} .. ${fmt(range.vmax)} (${scaleMode()} scale)`;
}

const pending = {};

function replaceItem(key, source, opacity) {
  const old = state[key];
  state[key] = null;
  if (old) viewer.world.removeItem(old);
  const token = (pending[key] = {});
  if (!source) return;
  viewer.addTiledImage({
    tileSource: source, opacity,
    success: (event) => {
      if (pending[key] !== token) viewer.world.removeItem(event.item);  // replaced while it loaded
      else state[key] = event.item;
      restack();
    },
  });
}

// Layers load in any order; keep them stacked slide < map overlay < annotation outline.
function restack() {
  let index = viewer.world.getItemCount() - 1;
  for (const key of ["annotation", "overlay"]) {
    if (state[key]) viewer.world.setItemIndex(state[key], index--);
  }
}

function imageItem() { return viewer.world.getItemAt(0); }

function showOverlay() {
  if (!state.info || !state.head || !state.map) return;
  const slide = enc(state.slide), head = enc(state.head), map = enc(state.map), query = overlayQuery();
  if (scaleMode() === "fixed" && !(Number($("vmin").value) < Number($("vmax").value))) {
    $("status-line").textContent = "fixed scale: give vmin < vmax";
    return;
  }
  const url = (level, x, y) => `/tiles/${slide}/map/${head}/${map}/${level}/${x}_${y}.png?${query}`;
  replaceItem("overlay", tileSource(state.info, url), Number($("opacity").value));
  drawLegend();
  loadGallery();
}

function showAnnotation() {
  const wanted = state.info && state.info.has_annotation && $("annotation").checked;
  const slide = enc(state.slide);
  const source = wanted ? tileSource(state.info, (l, x, y) => `/tiles/${slide}/annotation/${l}/${x}_${y}.png`) : null;
  replaceItem("annotation", source, 1);
}

function fillSelect(select, names, chosen) {
  select.replaceChildren(...names.map((name) => el("option", name, { value: name })));
  select.value = names.includes(chosen) ? chosen : names[0];
}

function chooseHead(head) {
  state.head = head;
  const maps = Object.keys(state.info.heads[head].maps);
  const preferred = maps.find((m) => m.startsWith("logit_")) || maps[0];
  fillSelect($("map"), maps, maps.includes(state.map) ? state.map : preferred);
  chooseMap($("map").value);
}

function chooseMap(name) {
  const changed = name !== state.map;
  state.map = name;
  if (changed || $("vmin").value === "" || $("vmax").value === "") {  // a fixed range stays across heads
    const cohort = mapInfo().cohort;
    $("vmin").value = fmt(cohort.vmin);
    $("vmax").value = fmt(cohort.vmax);
  }
  showOverlay();
}

async function openSlide(slideId) {
  state.slide = slideId;
  for (const row of document.querySelectorAll("#slides tr.slide")) row.classList.toggle("selected", row.dataset.id === slideId);
  const info = await getJSON(`/api/slides/${enc(slideId)}/info`);
  state.info = info;
  state.overlay = null;
  state.annotation = null;
  viewer.world.removeAll();
  $("patch").replaceChildren(el("p", "Click a patch.", { class: "hint" }));
  $("files").replaceChildren(...info.files.map((f) => {
    const item = el("li");
    item.append(el("a", f.split("/").slice(-1)[0], { href: `/run/${f.split("/").map(enc).join("/")}`, target: "_blank", title: f }));
    return item;
  }));
  const slide = enc(slideId);
  const image = info.has_image ? tileSource(info, (l, x, y) => `/tiles/${slide}/image/${l}/${x}_${y}.jpeg`) : null;
  if (image) {  // first, so that every overlay goes above it
    await new Promise((resolve, reject) => viewer.addTiledImage({
      tileSource: image, index: 0, success: resolve, error: (e) => reject(new Error(e.message)),
    }));
  }
  $("annotation-toggle").hidden = !info.has_annotation;
  const heads = Object.keys(info.heads);
  if (!heads.length) return;
  fillSelect($("head"), heads, heads.includes(state.head) ? state.head : heads[0]);
  chooseHead($("head").value);
  showAnnotation();
  const summary = heads.map((h) => {
    const s = info.summary[h];
    return `${h}: P(${s.classes[s.pred]}) = ${fmt(s.probs[s.pred])}`;
  });
  $("status-line").textContent = `${slideId} · ${info.width} x ${info.height} px` +
    (info.mpp ? ` · ${fmt(info.mpp)} µm/px` : "") + ` · ${summary.join(" · ")}` +
    (info.has_image ? "" : ` · no slide image: ${info.image_error}; the maps alone`);
}

function positiveIndex(summary) { return summary.classes.length === 2 ? 1 : summary.pred; }

async function loadSlides() {
  const data = await getJSON("/api/slides");
  state.slides = data.slides;
  $("run-name").textContent = `wsi-mil view: ${data.run}`;
  $("prob-head").textContent = data.heads.length ? `P (${data.heads.join(" / ")})` : "P";
  const rows = data.slides.map((slide) => {
    const row = el("tr", null, { class: `slide ${slide.status}` });
    row.dataset.id = slide.slide_id;
    const probs = data.heads.map((h) => {
      const s = slide.heads[h];
      return s ? `${s.classes[positiveIndex(s)]} ${fmt(s.probs[positiveIndex(s)])}` : "-";
    });
    const folds = [...new Set(Object.values(slide.heads).map((s) => `${s.fold_policy} ${s.folds.join(",")}`))];
    row.append(el("td", slide.slide_id), el("td", slide.label || "-"), el("td", probs.join(" / ")),
      el("td", folds.join("; ")), el("td", slide.status, { title: slide.errors.join("\n") }));
    if (slide.has_image || Object.keys(slide.heads).length) row.addEventListener("click", () => openSlide(slide.slide_id));
    return row;
  });
  $("slides").tBodies[0].replaceChildren(...rows);
  const first = data.slides.find((s) => Object.keys(s.heads).length);
  if (first) await openSlide(first.slide_id);
}

function valueTable(values) {
  const table = el("table");
  for (const [key, value] of Object.entries(values)) {
    const text = typeof value === "object" ? Object.entries(value).map(([c, v]) => `${c}: ${fmt(v)}`).join(", ") : fmt(value);
    const row = el("tr");
    row.append(el("td", key), el("td", text));
    table.append(row);
  }
  return table;
}

async function showPatch(x, y) {
  const data = await getJSON(`/api/slides/${enc(state.slide)}/patch?x=${x}&y=${y}`);
  const panel = $("patch");
  const heads = Object.entries(data.heads);
  if (!heads.length) {
    panel.replaceChildren(el("p", `No patch at (${Math.round(x)}, ${Math.round(y)}).`, { class: "hint" }));
    return;
  }
  const parts = [];
  const [firstHead, first] = heads[0];
  parts.push(el("p", `patch (${first.x}, ${first.y}), ${first.size} px at level 0`));
  if (state.info.has_image) {
    parts.push(el("img", null, { src: `/api/slides/${enc(state.slide)}/patch/${enc(firstHead)}/${first.row}.jpeg`, alt: "patch" }));
  }
  for (const [head, patch] of heads) {
    parts.push(el("h3", head), valueTable(patch.values));
    for (const method of patch.cams) {
      parts.push(el("img", null, { src: `/api/slides/${enc(state.slide)}/cam/${enc(head)}/${enc(method)}/${patch.row}.png`,
        alt: method, title: `${method} CAM` }));
    }
  }
  panel.replaceChildren(...parts);
}

async function loadGallery() {
  const slide = state.slide, head = state.head, map = state.map;
  $("gallery-map").textContent = `(${map})`;
  const rows = await getJSON(`/api/slides/${enc(slide)}/top?head=${enc(head)}&map=${enc(map)}&k=12`);
  if (slide !== state.slide || map !== state.map) return;
  const size = state.info.heads[head].patch_size_level0;
  $("gallery").replaceChildren(...rows.map((r) => {
    const figure = el("figure", null, { title: `(${r.x}, ${r.y})` });
    if (state.info.has_image) figure.append(el("img", null, { src: `/api/slides/${enc(slide)}/patch/${enc(head)}/${r.row}.jpeg`, loading: "lazy", alt: "" }));
    figure.append(el("figcaption", fmt(r.value)));
    figure.addEventListener("click", () => {
      const rect = imageItem().imageToViewportRectangle(r.x - size, r.y - size, 3 * size, 3 * size);
      viewer.viewport.fitBounds(rect);
      showPatch(r.x + size / 2, r.y + size / 2);
    });
    return figure;
  }));
}

viewer.addHandler("canvas-click", (event) => {
  if (!event.quick || !state.info || !imageItem()) return;
  const point = imageItem().viewerElementToImageCoordinates(event.position);
  showPatch(point.x, point.y);
});

$("head").addEventListener("change", (e) => chooseHead(e.target.value));
$("map").addEventListener("change", (e) => chooseMap(e.target.value));
for (const radio of document.querySelectorAll("input[name=scale]")) radio.addEventListener("change", showOverlay);
$("vmin").addEventListener("change", () => { if (scaleMode() === "fixed") showOverlay(); });
$("vmax").addEventListener("change", () => { if (scaleMode() === "fixed") showOverlay(); });
$("opacity").addEventListener("input", (e) => { if (state.overlay) state.overlay.setOpacity(Number(e.target.value)); });
$("annotation").addEventListener("change", showAnnotation);

// For tests and scripting: the viewer, the state, and whether every layer has drawn.
window.wsiView = {
  viewer, state, openSlide, showPatch,
  loaded: () => viewer.world.getItemCount() > 0 &&
    [...Array(viewer.world.getItemCount()).keys()].every((i) => viewer.world.getItemAt(i).getFullyLoaded()) &&
    (!state.head || state.overlay !== null),
  ready: loadSlides().catch((error) => { $("status-line").textContent = String(error); throw error; }),
};
