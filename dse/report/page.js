// The report's behaviour: draw the embedded figures, show a clicked point's per-layer panel, download its
// configuration JSON (the exact text `dse export --trial N` writes, embedded at report time).
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("dse-data").textContent);
  // each configuration's text = its pieces concatenated (shared pieces stored once; see pack_texts)
  const PACKED = JSON.parse(document.getElementById("dse-configs").textContent);
  const CONFIGS = PACKED.texts.map((ids) => (ids === null ? null : ids.map((k) => PACKED.pieces[k]).join("")));
  const cfg = { responsive: true, displaylogo: false };

  for (const fig of DATA.figures) {
    const el = document.getElementById(fig.id);
    if (!el) continue;
    if (fig.empty) {
      el.classList.add("empty");
      el.textContent = fig.empty;
      continue;
    }
    Plotly.newPlot(el, fig.data, fig.layout, cfg);
  }

  const fmtPct = (x, d) => {
    if (x === null || x === undefined) return "–";
    const s = (100 * x).toFixed(d);
    return (/^-0\.?0*$/.test(s) ? s.slice(1) : s) + " %"; // no "-0.0 %"
  };
  const fmtNum = (x) => {
    if (x === null || x === undefined) return "–";
    const a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(2) : x.toPrecision(3);
  };
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

  function showPoint(index) {
    const p = DATA.points[index];
    const panel = document.getElementById("panel");
    panel.dataset.index = String(index);
    panel.dataset.trial = p.trial === null ? "" : String(p.trial);
    const text = CONFIGS[index];
    const q = DATA.quant_accuracy;
    const loss = q === null || p.accuracy === null ? null : 100 * (q - p.accuracy);
    let head =
      `<h3>${p.trial === null ? "point" : "trial " + p.trial} <span class="tag ${esc(p.group)}">${esc(p.group_label)}</span></h3>` +
      `<p class="facts"><b>${fmtPct(1 - p.energy_rel, 1)}</b> energy saving (energy_rel ${p.energy_rel.toFixed(4)}) · ` +
      `accuracy <b>${fmtPct(p.accuracy, 2)}</b> validation` +
      (loss === null ? "" : ` (${loss >= 0 ? "−" : "+"}${Math.abs(loss).toFixed(2)} pp)`) +
      (p.test_accuracy === null ? "" : ` · ${fmtPct(p.test_accuracy, 2)} test`) +
      (p.predicted_accuracy === null ? "" : ` · surrogate ${fmtPct(p.predicted_accuracy, 2)}`) +
      `<br><span class="muted">origin: ${esc(p.origin || "–")}</span></p>`;
    let body;
    if (text === null) {
      body = `<p class="warn">No configuration for this point: ${esc(DATA.config_error || "unknown reason")}</p>` +
        "<table><tr><th>layer</th><th>multiplier</th></tr>" +
        Object.entries(p.assignment).map(([l, m]) => `<tr><td>${esc(l)}</td><td>${esc(m)}</td></tr>`).join("") + "</table>";
    } else {
      const c = JSON.parse(text);
      const lam = c.provenance.tolerance_lambda;
      body =
        `<table class="layers"><thead><tr><th>layer</th><th>MACs share</th><th>multiplier</th><th>energy share</th>` +
        `<th title="the multiplier's energy relative to exact: static (gate count) / data-dependent (toggle activity of its circuit under this layer's profiled operands, weight-stationary; – : no circuit)">energy static / toggle</th>` +
        `<th title="predicted std of the output error vs the learned AGN tolerance${lam === null ? "" : " (λ = " + lam + ")"}">predicted σ / tolerance</th>` +
        `<th>predicted mean</th></tr></thead><tbody>` +
        c.layers.map((l) => {
          const ratio = l.predicted_sigma !== null && l.tolerance ? l.predicted_sigma / l.tolerance : null;
          const bar = ratio === null ? "" :
            `<span class="bar ${ratio > 1 ? "over" : ""}"><span style="width:${Math.min(100, 100 * ratio / 2).toFixed(1)}%"></span></span>`;
          const shifted = DATA.shifted_layers.includes(l.name)
            ? ' <span class="muted" title="negative inputs: a non-zero activation zero point (layers[].quant)">shifted zero point</span>' : "";
          return `<tr><td>${esc(l.name)} <span class="muted">${esc(l.kind)}</span>${shifted}</td>` +
            `<td class="num">${fmtPct(l.mac_share, 1)}</td>` +
            `<td>${esc(l.multiplier)}${l.energy_rel < 1 ? ` <span class="muted">e=${l.energy_rel.toFixed(3)}</span>` : ""}</td>` +
            `<td class="num">${fmtPct(l.energy_share, 1)}</td>` +
            `<td class="num">${l.energy_rel.toFixed(3)} / ${l.toggle_energy_rel == null ? "–" : l.toggle_energy_rel.toFixed(3)}</td>` +
            `<td class="num">${fmtNum(l.predicted_sigma)} / ${fmtNum(l.tolerance)} ${bar}</td>` +
            `<td class="num">${fmtNum(l.predicted_mean)}</td></tr>`;
        }).join("") + "</tbody></table>" +
        `<p class="muted">σ and mean: predicted output error in the layer's float output units (before bias); ` +
        `tolerance: learned |σ_l|·std(output)${lam === null ? "" : ", AGN λ = " + lam}. Bar: σ/tolerance, half width = 1.</p>`;
    }
    const button = text === null ? "" :
      `<button id="download" type="button">Download configuration JSON</button> <span class="muted">same file as ` +
      `<code>dse export RUN_DIR --trial ${p.trial === null ? "N" : p.trial}</code></span>`;
    panel.innerHTML = head + button + body;
    highlight(p);
    panel.classList.remove("placeholder");
    if (text !== null) {
      document.getElementById("download").addEventListener("click", () => {
        const blob = new Blob([text], { type: "application/json" });
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = p.trial === null ? `${DATA.study}_point_${index}.json` : `trial_${p.trial}.json`;
        document.body.appendChild(a);
        a.click();
        setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      });
    }
  }

  const pareto = document.getElementById("pareto");
  const baseAnnotations = pareto && pareto.layout ? (pareto.layout.annotations || []).slice() : [];
  function highlight(p) {
    // an arrow to the selected point (an annotation, not a trace: the point count stays the same)
    if (!pareto || !pareto.layout) return;
    const label = p.trial === null ? "selected" : "trial " + p.trial;
    Plotly.relayout(pareto, {
      annotations: baseAnnotations.concat([{
        x: 100 * (1 - p.energy_rel), y: 100 * p.accuracy, text: label, showarrow: true, arrowhead: 2,
        ax: 30, ay: -35, bgcolor: "rgba(255,255,255,0.85)", bordercolor: "#d62728", font: { size: 12 },
      }]),
    });
  }
  if (pareto && pareto.on) {
    pareto.on("plotly_click", (ev) => {
      if (ev && ev.points && ev.points.length && ev.points[0].customdata !== undefined) showPoint(ev.points[0].customdata);
    });
  }
  window.dseShowPoint = showPoint;
})();
