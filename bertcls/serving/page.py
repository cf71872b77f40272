"""The page ``GET /`` serves: type or paste texts, see the labels with probability bars. Self-contained (no external
scripts, styles or fonts: the machine may be offline). ``/?text=...`` fills the box and predicts at once."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bertcls</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 52rem;
         padding: 0 1rem; color: #1d2330; background: #fafbfc; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  #model { color: #5a6272; font-size: .9rem; margin-bottom: 1rem; }
  textarea { width: 100%; min-height: 7rem; font: inherit; padding: .6rem; box-sizing: border-box;
             border: 1px solid #c8ccd4; border-radius: 6px; }
  .row { display: flex; gap: .6rem; align-items: center; margin: .6rem 0 1.2rem; }
  button { font: inherit; padding: .45rem 1.1rem; border: 0; border-radius: 6px; background: #2756c5; color: #fff;
           cursor: pointer; }
  input { font: inherit; min-width: 17rem; padding: .35rem .5rem; border: 1px solid #c8ccd4; border-radius: 6px; }
  .hint { color: #5a6272; font-size: .85rem; }
  .result { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px; padding: .8rem 1rem;
            margin-bottom: .8rem; }
  .text { color: #5a6272; font-size: .9rem; margin-bottom: .5rem; white-space: pre-wrap; }
  .decision { font-weight: 600; margin-bottom: .5rem; }
  .bar { display: grid; grid-template-columns: 11rem 1fr 4rem; gap: .5rem; align-items: center; font-size: .9rem; }
  .track { background: #eef0f4; border-radius: 4px; height: .8rem; }
  .fill { background: #7a9be6; border-radius: 4px; height: .8rem; }
  .given .fill { background: #2756c5; }
  .error { color: #b42318; }
</style>
</head>
<body>
<h1>bertcls</h1>
<div id="model">Loading the model&hellip;</div>
<label for="texts">One text per line:</label>
<textarea id="texts" placeholder="Paste or type texts here, one per line"></textarea>
<div class="row">
  <button id="go" type="button">Classify</button>
  <input id="key" type="password" placeholder="API key (if the server needs one)" autocomplete="off">
  <span class="hint">Ctrl+Enter classifies too.</span>
</div>
<div id="results"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
async function loadModel() {
  try {
    const response = await fetch("/v1/model", {headers: headers()});
    const info = await response.json();
    if (!response.ok) { $("model").textContent = info.error || response.statusText; return; }
    const test = (info.metrics && info.metrics.test) || {};
    const parts = [info.name, (info.architecture && info.architecture.task) || info.task, info.backend];
    if (test.f1 !== undefined) parts.push("test macro F1 " + Number(test.f1).toFixed(3));
    if (test.accuracy !== undefined) parts.push("accuracy " + Number(test.accuracy).toFixed(3));
    $("model").textContent = parts.filter(Boolean).join(" \\u00b7 ");
  } catch (error) { $("model").textContent = "The server cannot be reached: " + error; }
}
function render(texts, predictions) {
  const results = $("results");
  results.replaceChildren();
  predictions.forEach((p, i) => {
    const box = el("div", "result");
    box.appendChild(el("div", "text", texts[i]));
    const decision = p.abstained && !p.labels.length ? "(abstained: not sure enough)"
      : p.labels.length ? p.labels.join(", ") : "(no label)";
    const confidence = p.confidence === null ? "" : "  \\u2014 " + (100 * p.confidence).toFixed(1) + "%";
    box.appendChild(el("div", "decision", decision + confidence));
    Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]).forEach(([label, prob]) => {
      const bar = el("div", "bar" + (p.labels.includes(label) ? " given" : ""));
      bar.appendChild(el("span", "label", label));
      const track = el("div", "track"), fill = el("div", "fill");
      fill.style.width = (100 * prob).toFixed(1) + "%";
      track.appendChild(fill);
      bar.appendChild(track);
      bar.appendChild(el("span", "prob", (100 * prob).toFixed(1) + "%"));
      box.appendChild(bar);
    });
    results.appendChild(box);
  });
}
async function classify() {
  const texts = $("texts").value.split("\\n").map((t) => t.trim()).filter((t) => t);
  if (!texts.length) return;
  $("results").replaceChildren(el("div", "hint", "Classifying\\u2026"));
  try {
    const response = await fetch("/v1/predict", {method: "POST", headers: headers(), body: JSON.stringify({texts})});
    const body = await response.json();
    if (!response.ok) { $("results").replaceChildren(el("div", "error", body.error || response.statusText)); return; }
    render(texts, body.predictions);
  } catch (error) { $("results").replaceChildren(el("div", "error", "The server cannot be reached: " + error)); }
}
$("go").addEventListener("click", classify);
$("texts").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) classify(); });
$("key").addEventListener("change", loadModel);
const given = new URLSearchParams(location.search).get("text");
loadModel().then(() => { if (given) { $("texts").value = given; classify(); } });
</script>
</body>
</html>
"""
