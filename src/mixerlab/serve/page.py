"""The page at GET /: pick or drop an image, see the top-5 classes with bars. No external assets."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mixerlab</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 15px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; color: #222; }
 #model { margin: 0 0 1rem; }
 #classes { margin: 0 0 1rem; color: #555; }
 #drop { display: block; border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center;
         cursor: pointer; }
 #drop.over { background: #eef; }
 #preview { width: 12rem; height: 12rem; object-fit: contain; display: none; margin: 1rem auto;
            image-rendering: pixelated; }
 #preview.shown { display: block; }
 .row { display: grid; grid-template-columns: 10rem 1fr 4rem; gap: .5rem; align-items: center; margin: .3rem 0; }
 .bar { background: #4a7; height: 1rem; border-radius: 3px; }
 .error { color: #b00; }
</style></head>
<body>
<h1>mixerlab</h1>
<p id="model">loading the model description...</p>
<details id="classes"><summary>classes</summary><span id="classlist"></span></details>
<label id="drop">Drop an image here, or click to pick one
 <input id="file" type="file" accept="image/*" hidden></label>
<img id="preview" alt="">
<div id="result" aria-live="polite"></div>
<script>
const $ = (id) => document.getElementById(id);
fetch("/v1/model").then(r => r.json()).then(m => {
  $("model").textContent = `${m.name}: ${m.config.arch}, ${m.classes.length} classes, input ` +
    m.preprocess.input_size.join("x");
  $("classes").querySelector("summary").textContent = `${m.classes.length} classes`;
  $("classlist").textContent = m.classes.join(", ");
});
const PROBLEM = { 413: "This image is too large", 415: "This file is not an image the server can read",
                  422: "The request was not understood", 500: "The model failed on this image",
                  503: "The server is busy; try again in a moment", 504: "The answer took too long" };
async function classify(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").classList.add("shown");
  $("result").textContent = "classifying...";
  const r = await fetch("/v1/predict?topk=5", { method: "POST", body: file,
                                                headers: { "Content-Type": "application/octet-stream" } });
  const body = await r.json();
  if (!r.ok) {
    $("result").innerHTML = "";
    const p = document.createElement("p");
    p.className = "error";
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    p.textContent = `${PROBLEM[r.status] || "The server refused the request"}: ${detail.replace(/^body: /, "")}` +
      ` (HTTP ${r.status})`;
    $("result").appendChild(p);
    return;
  }
  $("result").innerHTML = "";
  for (const t of body.top) {
    const row = document.createElement("div");
    row.className = "row";
    row.dataset.cls = t.class;
    row.dataset.prob = t.prob;
    const label = document.createElement("span"); label.className = "label"; label.textContent = t.class;
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * t.prob)}%`;
    const pct = document.createElement("span"); pct.textContent = `${(100 * t.prob).toFixed(1)}%`;
    row.append(label, bar, pct);
    $("result").appendChild(row);
  }
}
$("file").addEventListener("change", (e) => e.target.files[0] && classify(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
});
</script>
</body></html>
"""
