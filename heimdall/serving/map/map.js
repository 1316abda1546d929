// The map page: receivers from GET /v1/model, an estimate from POST /predict, drawn on an SVG
// in Web Mercator (the projection tile servers use, so tiles line up when configured).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const WORLD = 256; // width of the Web Mercator world in world units (one tile at zoom 0)
const EARTH_RADIUS_M = 6378137; // the sphere Web Mercator is defined on
const PADDING_PX = 48;
const TILE_PX = 256;

const api = (path) => new URL(path, document.baseURI).href; // the page is /v1/map
const $ = (id) => document.getElementById(id);

// [lon, lat] in degrees -> Web Mercator world units, x east and y south from the world's top-left.
function project(lon, lat) {
  const s = Math.sin((lat * Math.PI) / 180);
  return [(WORLD * (lon + 180)) / 360, WORLD * (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI))];
}

function unproject(x, y) {
  const lon = (360 * x) / WORLD - 180;
  const lat = (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / WORLD))) * 180) / Math.PI;
  return [lon, lat];
}

const state = { receivers: [], answer: null, body: null, source: "" };

function element(name, attributes, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

// The view: px = (world - origin) * scale. It fits the receivers, or the estimate's ellipse.
function fitView(width, height) {
  let points = state.receivers.map((r) => project(r.lon, r.lat));
  const fitEstimate = document.querySelector("input[name=fit]:checked").value === "estimate";
  if (state.answer) {
    const ring = state.answer.ellipse.coordinates[0].map(([lon, lat]) => project(lon, lat));
    points = fitEstimate ? ring : points.concat(ring);
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const scale = Math.min(
    (width - 2 * PADDING_PX) / Math.max(maxX - minX, 1e-9),
    (height - 2 * PADDING_PX) / Math.max(maxY - minY, 1e-9),
  );
  return {
    x0: (minX + maxX) / 2 - width / (2 * scale),
    y0: (minY + maxY) / 2 - height / (2 * scale),
    scale,
    width,
    height,
  };
}

function toPx(view, lon, lat) {
  const [x, y] = project(lon, lat);
  return [(x - view.x0) * view.scale, (y - view.y0) * view.scale];
}

function drawTiles(svg, view, template) {
  const zoom = Math.max(0, Math.min(19, Math.round(Math.log2(view.scale))));
  const tiles = 2 ** zoom;
  const size = (TILE_PX * view.scale) / tiles; // one tile on screen, px
  const first = (v) => Math.floor((v * tiles) / WORLD);
  const layer = element("g", { class: "tiles" }, svg);
  for (let tx = first(view.x0); tx <= first(view.x0 + view.width / view.scale); tx++) {
    for (let ty = first(view.y0); ty <= first(view.y0 + view.height / view.scale); ty++) {
      if (ty < 0 || ty >= tiles) continue;
      const href = template
        .replace("{z}", zoom)
        .replace("{x}", ((tx % tiles) + tiles) % tiles)
        .replace("{y}", ty);
      element("image", {
        href,
        x: ((tx * WORLD) / tiles - view.x0) * view.scale,
        y: ((ty * WORLD) / tiles - view.y0) * view.scale,
        width: size + 0.5, // overlap by half a pixel: no hairline seams between tiles
        height: size + 0.5,
      }, layer);
    }
  }
}

// Lines of latitude and longitude at a round step, so an untiled map still reads as a map.
function drawGraticule(svg, view) {
  const [west, north] = unproject(view.x0, view.y0);
  const [east, south] = unproject(view.x0 + view.width / view.scale, view.y0 + view.height / view.scale);
  const span = Math.max(east - west, north - south);
  const step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5].find((s) => span / s <= 8) || 10;
  const layer = element("g", { class: "graticule" }, svg);
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  for (let lon = Math.ceil(west / step) * step; lon <= east; lon += step) {
    const [x] = toPx(view, lon, north);
    element("line", { x1: x, y1: 0, x2: x, y2: view.height }, layer);
    element("text", { x: x + 3, y: view.height - 6 }, layer).textContent = `${lon.toFixed(decimals)}°E`;
  }
  for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
    const [, y] = toPx(view, west, lat);
    element("line", { x1: 0, y1: y, x2: view.width, y2: y }, layer);
    element("text", { x: 4, y: y - 3 }, layer).textContent = `${lat.toFixed(decimals)}°N`;
  }
}

// A bar of a round length, true at the latitude of the map's centre.
function drawScaleBar(svg, view) {
  const [, lat] = unproject(view.x0 + view.width / (2 * view.scale), view.y0 + view.height / (2 * view.scale));
  const pxPerMetre = (view.scale * WORLD) / (2 * Math.PI * EARTH_RADIUS_M * Math.cos((lat * Math.PI) / 180));
  const target = view.width / (5 * pxPerMetre);
  const magnitude = 10 ** Math.floor(Math.log10(target));
  const metres = [5, 2, 1].map((m) => m * magnitude).find((m) => m <= target);
  const length = metres * pxPerMetre;
  const x = view.width - length - 24;
  const y = view.height - 28;
  const bar = element("g", { id: "scale-bar", "data-metres": metres }, svg);
  element("rect", { x: x - 8, y: y - 18, width: length + 16, height: 30, rx: 4, class: "backdrop" }, bar);
  element("path", { d: `M${x},${y - 5}v5h${length}v-5` }, bar);
  const label = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
  element("text", { x: x + length / 2, y: y - 7, "text-anchor": "middle" }, bar).textContent = label;
}

// Label sides to try, in order: right, left, below right, above right. Giaveno and Coazze are
// 1.6 km apart, one marker on most views, and their names must not print over each other.
const LABEL_SPOTS = [
  [10, 4, "start"],
  [-10, 4, "end"],
  [8, 18, "start"],
  [8, -10, "start"],
];

function drawReceivers(svg, view) {
  const used = new Set(state.answer ? state.answer.receivers : []);
  const layer = element("g", { class: "receivers" }, svg);
  const placed = [];
  for (const r of state.receivers) {
    const [x, y] = toPx(view, r.lon, r.lat);
    const marker = element("g", { class: used.has(r.id) ? "station used" : "station", "data-id": r.id }, layer);
    element("circle", { cx: x, cy: y, r: 6 }, marker);
    const text = element("text", {}, marker);
    text.textContent = r.name;
    const width = text.getComputedTextLength();
    const box = ([dx, dy, anchor]) => {
      const left = x + dx - (anchor === "end" ? width : 0);
      return { left, right: left + width, top: y + dy - 12, bottom: y + dy + 2 };
    };
    const overlaps = (b) =>
      placed.some((p) => b.left < p.right && p.left < b.right && b.top < p.bottom && p.top < b.bottom);
    const spot = LABEL_SPOTS.find((s) => !overlaps(box(s))) || LABEL_SPOTS[0];
    placed.push(box(spot));
    text.setAttribute("x", x + spot[0]);
    text.setAttribute("y", y + spot[1]);
    text.setAttribute("text-anchor", spot[2]);
    element("title", {}, marker).textContent = `${r.name} (${r.id}): ${r.lat}°N ${r.lon}°E, ${r.alt_m} m`;
  }
}

function drawEstimate(svg, view) {
  const a = state.answer;
  const layer = element("g", { class: "estimate" }, svg);
  // The polygon's vertices are the GeoJSON ring's, less its closing repeat, projected one by one.
  const ring = a.ellipse.coordinates[0].slice(0, -1);
  const points = ring.map(([lon, lat]) => toPx(view, lon, lat).map((v) => v.toFixed(3)).join(","));
  element("polygon", { id: "ellipse", points: points.join(" ") }, layer);
  const [x, y] = toPx(view, a.lon, a.lat);
  element("path", { id: "estimate", d: `M${x - 9},${y}h18M${x},${y - 9}v18` }, layer);
  element("circle", { cx: x, cy: y, r: 3 }, layer);
}

function draw() {
  const svg = $("map");
  const { width, height } = svg.getBoundingClientRect();
  svg.replaceChildren();
  if (!state.receivers.length) return;
  const view = fitView(width, height);
  // The view, for anyone who needs to project the same way (the browser test does).
  for (const key of ["x0", "y0", "scale"]) svg.dataset[key] = view[key];
  const tiles = document.body.dataset.tileUrl;
  if (tiles) drawTiles(svg, view, tiles);
  else drawGraticule(svg, view);
  if (state.answer) drawEstimate(svg, view);
  drawReceivers(svg, view);
  drawScaleBar(svg, view);
}

const km = (m) => `${(m / 1000).toFixed(m < 10000 ? 2 : 1)} km`;

function showNumbers() {
  const a = state.answer;
  const u = a.uncertainty;
  $("source").textContent = state.source;
  $("n-lat").textContent = `${a.lat.toFixed(5)}°`;
  $("n-lon").textContent = `${a.lon.toFixed(5)}°`;
  $("n-major").textContent = km(u.semi_major_m);
  $("n-minor").textContent = km(u.semi_minor_m);
  $("n-bearing").textContent = `${u.orientation_deg.toFixed(1)}° from north`;
  $("n-area").textContent = `${u.area_km2.toFixed(u.area_km2 < 10 ? 2 : 0)} km² at ${Math.round(u.confidence_level * 100)} %`;
  $("n-confidence-label").textContent = `Within ${km(a.confidence_radius_m)}`;
  $("n-confidence").textContent = `${(a.confidence * 100).toFixed(1)} % probable`;
  $("n-receivers").textContent = `${a.receivers.length} of ${state.receivers.length}`;
  $("n-model").textContent = a.model_version;
  $("n-model").title = `${a.model_name}:${a.model_version}`;
  $("n-server").textContent = `${a.server_ms.toFixed(1)} ms${a.cached ? " (cached)" : ""}`;
  $("numbers").hidden = false;
}

function status(text, stateName) {
  $("status").textContent = text;
  $("status").dataset.state = stateName;
}

async function locate() {
  if (!state.body) return;
  status("Locating", "posting");
  const level = Number($("level").value);
  try {
    const response = await fetch(api("../predict"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...state.body, confidence_level: level }),
    });
    const answer = await response.json();
    if (!response.ok) {
      // The service's one error format: error, field, received, expected, reason.
      status(`Refused (${response.status}): ${answer.error || JSON.stringify(answer)}`, "error");
      return;
    }
    state.answer = answer;
  } catch (error) {
    status(`The service did not answer: ${error}`, "error");
    return;
  }
  showNumbers();
  draw();
  status(`Estimate from ${state.answer.receivers.length} receivers`, "drawn");
}

async function useFile(file) {
  status(`Reading ${file.name}`, "reading");
  try {
    state.body = JSON.parse(await file.text());
  } catch (error) {
    status(`${file.name} is not JSON: ${error.message}`, "error");
    return;
  }
  state.source = file.name;
  await locate();
}

async function useExample() {
  const response = await fetch(api("map/example.json"));
  state.body = await response.json();
  state.source = "the example capture set";
  await locate();
}

async function start() {
  const attribution = document.body.dataset.tileAttribution;
  if (document.body.dataset.tileUrl && attribution) $("attribution").textContent = attribution;
  const info = await (await fetch(api("model"))).json();
  state.receivers = info.receivers;
  draw();
  status(`${state.receivers.length} receivers`, "ready");
  $("locate-example").addEventListener("click", useExample);
  $("level").addEventListener("change", locate);
  for (const radio of document.querySelectorAll("input[name=fit]")) radio.addEventListener("change", draw);
  $("capture-file").addEventListener("change", (event) => useFile(event.target.files[0]));
  const drop = $("drop");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("armed");
  });
  document.addEventListener("dragleave", () => drop.classList.remove("armed"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("armed");
    if (event.dataTransfer.files.length) useFile(event.dataTransfer.files[0]);
  });
  window.addEventListener("resize", draw);
  await useExample();
}

start().catch((error) => status(`The map could not start: ${error}`, "error"));
