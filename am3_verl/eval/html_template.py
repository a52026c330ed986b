"""The HTML, CSS and JavaScript of ``report.html`` (one self-contained page, no network access).

The page is filled by :mod:`am3_verl.eval.report`: server-side tables and plots (PNG data URLs), and a
dialogue viewer rendered in the browser from a JSON block. The viewer builds its DOM with
``textContent`` only, so model replies and dataset text can never inject markup or script.
"""

from __future__ import annotations

from string import Template

CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; --bad:#cf222e; --good:#1a7f37;
        --warn:#9a6700; --accent:#1f6feb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg); background: var(--bg);
       margin: 0; padding: 24px 32px 64px; max-width: 1280px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid var(--line);
padding-bottom: 6px; } h3 { font-size: 15px; margin: 18px 0 8px; }
.sub { color: var(--muted); margin: 0 0 16px; } .sub code { font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 5px 10px; text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; } td.name, th.name { text-align: left; }
td .ci { color: var(--muted); font-size: 12px; margin-left: 4px; }
.better { color: var(--good); font-weight: 600; } .worse { color: var(--bad); font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0 6px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px; background: var(--soft); }
.card .label { color: var(--muted); font-size: 12px; } .card .value { font-size: 24px; font-weight: 600; }
.card .delta { font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; } .plots img.plot { border: 1px solid var(--line); border-radius: 6px;
max-width: 100%; }
.note { color: var(--muted); font-size: 12px; } .warn { color: var(--warn); }
#controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 8px 0 12px; padding: 8px 10px;
background: var(--soft); border: 1px solid var(--line); border-radius: 8px; position: sticky; top: 0; z-index: 2; }
#controls label { font-size: 13px; } #controls input[type=search] { width: 220px; }
.item { border: 1px solid var(--line); border-radius: 8px; margin: 0 0 14px; }
.item > summary { cursor: pointer; padding: 8px 12px; background: var(--soft); border-radius: 8px; list-style: none; }
.item > summary::-webkit-details-marker { display: none; }
.item[open] > summary { border-bottom: 1px solid var(--line); border-radius: 8px 8px 0 0; }
.item .body { padding: 8px 12px; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; margin-right: 4px; border: 1px solid var(--line);
background: #fff; } .badge.bad { color: #fff; background: var(--bad); border-color: var(--bad); }
.badge.good { color: #fff; background: var(--good); border-color: var(--good); }
.badge.warn { color: #fff; background: var(--warn); border-color: var(--warn); }
.turn { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; margin: 10px 0; padding-bottom: 10px;
border-bottom: 1px dashed var(--line); } .turn:last-child { border-bottom: none; }
.bubble { border-radius: 8px; padding: 8px 10px; white-space: pre-wrap; word-wrap: break-word; }
.user { background: #ddf4ff; } .assistant { background: #f6f8fa; border: 1px solid var(--line); }
.assistant.given { background: #fff; border-style: dashed; } .assistant.base { background: #fff8c5; }
.who { font-size: 11px; color: var(--muted); margin-bottom: 2px; text-transform: uppercase; letter-spacing: .04em; }
.bubble img { display: block; max-width: 220px; max-height: 180px; margin: 6px 0; border-radius: 4px; border: 1px solid var(--line); }
.verdict { font-size: 12px; margin-top: 6px; } .rationale { font-size: 12px; color: var(--muted); margin-top: 4px; white-space: pre-wrap; }
.extras { font-size: 12px; color: var(--muted); margin-top: 4px; }
"""

JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var list = document.getElementById("dialogues");
  var fSource = document.getElementById("f-source"), fCat = document.getElementById("f-category");
  var fUnsafe = document.getElementById("f-unsafe"), fRefusal = document.getElementById("f-refusal");
  var fText = document.getElementById("f-text"), countEl = document.getElementById("f-count");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function fmt(x) { return (x === null || x === undefined) ? "n/a" : Number(x).toFixed(2); }
  function options(select, values) {
    values.forEach(function (v) { var o = el("option", null, v); o.value = v; select.appendChild(o); });
  }
  function userBubble(turn) {
    var box = el("div", "bubble user");
    box.appendChild(el("div", "who", "user, turn " + (turn.index + 1)));
    var parts = turn.user_text.split("<image>");
    parts.forEach(function (part, i) {
      if (part) box.appendChild(document.createTextNode(part));
      if (i < turn.images.length) {
        var img = el("img", "dialogue-image");
        img.src = DATA.images[turn.images[i]];
        img.alt = "image " + (i + 1) + " of turn " + (turn.index + 1);
        box.appendChild(img);
      }
    });
    return box;
  }
  function verdictLine(v) {
    var line = el("div", "verdict");
    if (!v) return line;
    if (v.failed) { line.appendChild(el("span", "badge warn", "judge failed")); line.appendChild(document.createTextNode(" " + (v.error || ""))); return line; }
    var unsafe = v.harmless < DATA.threshold;
    line.appendChild(el("span", "badge " + (unsafe ? "bad" : "good"), unsafe ? "unsafe" : "safe"));
    line.appendChild(el("span", "badge", "harmless " + fmt(v.harmless)));
    line.appendChild(el("span", "badge", "helpful " + fmt(v.helpful)));
    if (v.refused) line.appendChild(el("span", "badge", "refused"));
    return line;
  }
  function replyBubble(text, who, cls, verdict, extras, error) {
    var box = el("div", "bubble assistant " + cls);
    box.appendChild(el("div", "who", who));
    if (text === null || text === undefined) box.appendChild(el("em", null, error || "no reply"));
    else box.appendChild(document.createTextNode(text));
    if (verdict) {
      box.appendChild(verdictLine(verdict));
      if (verdict.rationale) box.appendChild(el("div", "rationale", "Judge: " + verdict.rationale));
    }
    if (extras && Object.keys(extras).length) {
      box.appendChild(el("div", "extras", Object.keys(extras).map(function (k) { return k + " = " + fmt(extras[k]); }).join("   ")));
    }
    return box;
  }
  function renderItem(item) {
    var det = el("details", "item");
    var sum = el("summary");
    sum.appendChild(el("strong", null, item.uid + "  "));
    sum.appendChild(el("span", "badge", item.data_source));
    sum.appendChild(el("span", "badge", item.category));
    sum.appendChild(el("span", "badge", item.mode));
    if (!item.harmful && item.category !== "benign") sum.appendChild(el("span", "badge", "benign request"));
    if (item.flags.unsafe) sum.appendChild(el("span", "badge bad", "unsafe turn"));
    if (item.flags.over_refusal) sum.appendChild(el("span", "badge warn", "refused a benign request"));
    if (item.flags.failed) sum.appendChild(el("span", "badge warn", "failure"));
    if (item.error) sum.appendChild(el("span", "note", " " + item.error));
    det.appendChild(sum);
    det.addEventListener("toggle", function () {
      if (!det.open || det.dataset.rendered) return;
      det.dataset.rendered = "1";
      var body = el("div", "body");
      item.turns.forEach(function (turn) {
        var row = el("div", "turn");
        row.appendChild(userBubble(turn));
        var right = el("div");
        var who = turn.generated ? "assistant (this model)" : "assistant (given by the data)";
        right.appendChild(replyBubble(turn.reply, who, turn.generated ? "" : "given", turn.verdict, turn.extras, turn.error));
        if (turn.baseline) {
          right.appendChild(replyBubble(turn.baseline.reply, "baseline", "base", turn.baseline.verdict, null, turn.baseline.error));
        }
        if (turn.pairwise) {
          var p = turn.pairwise, line = el("div", "verdict");
          line.appendChild(el("span", "badge", "helpful: " + p.helpful));
          line.appendChild(el("span", "badge", "harmless: " + p.harmless));
          right.appendChild(line);
          if (p.rationale) right.appendChild(el("div", "rationale", "Pairwise judge: " + p.rationale));
        }
        row.appendChild(right);
        body.appendChild(row);
      });
      det.appendChild(body);
    });
    return det;
  }
  var rendered = DATA.items.map(function (item) { var node = renderItem(item); list.appendChild(node); return node; });
  options(fSource, Array.from(new Set(DATA.items.map(function (i) { return i.data_source; }))).sort());
  options(fCat, Array.from(new Set(DATA.items.map(function (i) { return i.category; }))).sort());
  function apply() {
    var text = fText.value.trim().toLowerCase(), shown = 0;
    DATA.items.forEach(function (item, i) {
      var ok = (!fSource.value || item.data_source === fSource.value) && (!fCat.value || item.category === fCat.value) &&
        (!fUnsafe.checked || item.flags.unsafe) && (!fRefusal.checked || item.flags.over_refusal) &&
        (!text || item.search.indexOf(text) >= 0);
      rendered[i].style.display = ok ? "" : "none";
      if (ok) shown += 1;
    });
    countEl.textContent = shown + " shown";
  }
  [fSource, fCat, fUnsafe, fRefusal].forEach(function (n) { n.addEventListener("change", apply); });
  fText.addEventListener("input", apply);
  if (rendered.length) rendered[0].open = true;
  apply();
})();
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>$title</title>
<style>$css</style>
</head>
<body>
<h1>$title</h1>
<p class="sub">$subtitle</p>
$warnings
<h2>Headline</h2>
$cards
$headline
<h2>Turn by turn</h2>
<div class="plots">$turn_plots</div>
$round_section
$winrate_section
<h2>By data source</h2>
$source_table
<h2>By category</h2>
<div class="plots">$category_plot</div>
$category_table
<h2>Dialogues</h2>
<p class="note">$viewer_note</p>
<div id="controls">
  <label>Source <select id="f-source"><option value="">all</option></select></label>
  <label>Category <select id="f-category"><option value="">all</option></select></label>
  <label><input type="checkbox" id="f-unsafe"> unsafe turns only</label>
  <label><input type="checkbox" id="f-refusal"> refused benign only</label>
  <label>Search <input type="search" id="f-text" placeholder="text in any turn"></label>
  <span id="f-count" class="note"></span>
</div>
<div id="dialogues"></div>
<p class="note">$footer</p>
<script type="application/json" id="report-data">$data_json</script>
<script>$js</script>
</body>
</html>
""")
