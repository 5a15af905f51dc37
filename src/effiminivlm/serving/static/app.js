// The page's only script: no build step, no dependencies. Talks to /v1/model, /v1/score, /v1/score/csv.
"use strict";

const $ = (id) => document.getElementById(id);
let chosenImage = null;

function show(el, text) { el.textContent = text; el.hidden = false; }

async function detail(resp) {
  try { return (await resp.json()).detail || resp.statusText; } catch (e) { return resp.statusText; }
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model");
    const m = await r.json();
    $("model-info").textContent =
      `model ${m.config.arch || "effiminivlm"} · ${m.params_m.toFixed(2)} M params · ` +
      `${m.flops_g.toFixed(3)} GFLOPs · C ${m.c.toFixed(3)} · E ${m.e.toFixed(3)} · v${m.version}`;
  } catch (e) {
    $("model-info").textContent = "model info unavailable";
  }
}

function setImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { show($("error"), "image: not an image file"); return; }
  chosenImage = file;
  $("drop-text").textContent = `image: ${file.name} (${Math.round(file.size / 1024)} KiB)`;
  $("drop").classList.add("has-image");
}

function stars(score) {
  const full = Math.round(score * 2) / 2;
  let s = "";
  for (let i = 1; i <= 5; i++) s += full >= i ? "★" : (full >= i - 0.5 ? "⯪" : "☆");
  return s;
}

async function scoreListing(ev) {
  ev.preventDefault();
  $("error").hidden = true;
  const lines = (v) => v.split("\n").map((x) => x.trim()).filter((x) => x);
  const item = {
    parent_asin: "web", main_category: $("category").value, title: $("title").value,
    features: lines($("features").value), description: $("description").value,
    images: chosenImage ? ["upload:image"] : [],
  };
  const body = new FormData();
  body.append("items", JSON.stringify([item]));
  if (chosenImage) body.append("image", chosenImage, chosenImage.name);
  $("score-btn").disabled = true;
  try {
    const r = await fetch("/v1/score?image=true", { method: "POST", body });
    if (!r.ok) { show($("error"), `${r.status}: ${await detail(r)}`); return; }
    const res = await r.json();
    const it = res.items[0];
    $("score").textContent = it.score.toFixed(2);
    $("stars").textContent = stars(it.score);
    $("image-status").textContent = it.image_status === "ok"
      ? "scored from the text and the image" : "scored from the text only (no image)";
    if (it.model_image) { $("seen").src = it.model_image; $("seen-fig").hidden = false; }
    else { $("seen-fig").hidden = true; }
    $("result").hidden = false;
    $("result").dataset.score = String(it.score);
  } catch (e) {
    show($("error"), `request failed: ${e}`);
  } finally {
    $("score-btn").disabled = false;
  }
}

function drawHistogram(scores) {
  // Bins over the scores' own range (a narrow model output would sit in one bin of a fixed 1..5 axis).
  const c = $("hist"), g = c.getContext("2d"), bins = 20;
  let lo = Math.min(...scores), hi = Math.max(...scores);
  if (hi - lo < 1e-6) { lo -= 0.05; hi += 0.05; }
  const counts = new Array(bins).fill(0);
  for (const s of scores) counts[Math.min(bins - 1, Math.floor((s - lo) / (hi - lo) * bins))]++;
  const max = Math.max(1, ...counts), pad = 30, w = (c.width - 2 * pad) / bins, h = c.height - 2 * pad;
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = "#2f6fdf";
  counts.forEach((n, i) => { const bh = n / max * h; g.fillRect(pad + i * w + 1, pad + h - bh, w - 2, bh); });
  g.fillStyle = "#333"; g.font = "12px sans-serif"; g.textAlign = "center";
  for (let k = 0; k <= 4; k++) {
    g.fillText((lo + (hi - lo) * k / 4).toFixed(hi - lo < 0.1 ? 3 : 2), pad + k / 4 * (c.width - 2 * pad), c.height - 10);
  }
  g.textAlign = "left"; g.fillText(`scores (${scores.length}); tallest bin ${max}`, pad, 16);
}

async function scoreCsv(ev) {
  ev.preventDefault();
  $("csv-error").hidden = true;
  const file = $("csv").files[0];
  if (!file) return;
  const body = new FormData();
  body.append("file", file, file.name);
  $("csv-btn").disabled = true;
  try {
    const r = await fetch("/v1/score/csv", { method: "POST", body });
    if (!r.ok) { show($("csv-error"), `${r.status}: ${await detail(r)}`); return; }
    const text = await r.text();
    const rows = text.trim().split("\n").slice(1).map((l) => l.split(","));
    const scores = rows.map((r) => parseFloat(r[1]));
    const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
    $("csv-summary").textContent = `${scores.length} listings scored, mean ${mean.toFixed(3)}`;
    const link = $("csv-download");
    link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    link.download = file.name.replace(/\.csv$/i, "") + "_scored.csv";
    link.dataset.csv = text;
    drawHistogram(scores);
    $("csv-result").hidden = false;
  } catch (e) {
    show($("csv-error"), `request failed: ${e}`);
  } finally {
    $("csv-btn").disabled = false;
  }
}

const drop = $("drop");
drop.addEventListener("click", () => $("image").click());
$("image").addEventListener("click", (e) => e.stopPropagation());
$("image").addEventListener("change", (e) => setImage(e.target.files[0]));
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => setImage(e.dataTransfer.files[0]));
$("listing-form").addEventListener("submit", scoreListing);
$("csv-form").addEventListener("submit", scoreCsv);
loadModel();
