//! Every plot kind, drawn from synthetic run and sweep folders with awkward data ranges (losses
//! within a few percent, FLOPs within one decade, two test lengths, a single metrics row, lengths
//! up to 65536), is read back from its SVG: each axis has at least three tick labels, no two
//! labels overlap (extents estimated from font size and character count) and the legend sits
//! outside the data.

use std::path::Path;

use experiments::plot::plot;

use crate::common::*;

/// One `<text>` of an SVG, with the tick mark drawn right after it, if any.
#[derive(Debug)]
struct Label {
    text: String,
    x: f64,
    y: f64,
    font: f64,
    anchor: String,
    dy: String,
    rotated: bool,
    /// Some(true): an x-axis tick (a vertical mark), Some(false): a y-axis tick.
    tick: Option<bool>,
}

impl Label {
    /// (left, top, right, bottom), with a character 0.6 em wide and a line 1 em high.
    fn bbox(&self) -> (f64, f64, f64, f64) {
        let w = self.text.chars().count() as f64 * 0.6 * self.font;
        let left = match self.anchor.as_str() {
            "middle" => self.x - w / 2.0,
            "end" => self.x - w,
            _ => self.x,
        };
        let top = match self.dy.as_str() {
            "0.76em" => self.y,
            "-0.5ex" => self.y - self.font,
            _ => self.y - self.font / 2.0,
        };
        (left, top, left + w, top + self.font)
    }
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[start..].split('"').next()?.to_string())
}

fn labels(svg: &str) -> Vec<Label> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(at) = rest.find("<text ") {
        rest = &rest[at..];
        let tag_end = rest.find('>').unwrap();
        let tag = &rest[..tag_end];
        let close = rest.find("</text>").unwrap();
        let text = rest[tag_end + 1..close].trim().to_string();
        rest = &rest[close + "</text>".len()..];
        let next = rest.trim_start();
        // A tick mark is a short black line (legend samples are coloured and longer).
        let tick = next
            .strip_prefix("<polyline")
            .filter(|p| attr(p, "stroke").as_deref() == Some("#000000"))
            .and_then(|p| attr(p, "points"))
            .and_then(|points| {
                let p: Vec<Vec<f64>> = points
                    .split_whitespace()
                    .map(|xy| xy.split(',').map(|v| v.parse().unwrap()).collect())
                    .collect();
                let length = (p[1][0] - p[0][0]).abs() + (p[1][1] - p[0][1]).abs();
                (length <= 10.0).then_some(p[0][0] == p[1][0])
            });
        let num = |n: &str| attr(tag, n).unwrap().parse::<f64>().unwrap();
        out.push(Label {
            text,
            x: num("x"),
            y: num("y"),
            font: num("font-size"),
            anchor: attr(tag, "text-anchor").unwrap_or_default(),
            dy: attr(tag, "dy").unwrap_or_default(),
            rotated: tag.contains("rotate("),
            tick,
        });
    }
    out
}

/// Checks the rules above on one SVG; returns its labels.
/// DejaVu Sans is embedded, byte for byte, and every text is set in it.
fn check_font(svg: &str, name: &str) {
    use base64::Engine;
    let start = "src:url(data:font/ttf;base64,";
    let at = svg
        .find(start)
        .unwrap_or_else(|| panic!("{name}: no embedded font"))
        + start.len();
    let end = at + svg[at..].find(')').unwrap();
    let font = base64::engine::general_purpose::STANDARD
        .decode(&svg[at..end])
        .unwrap();
    assert!(
        font == dejavu::sans::regular(),
        "{name}: another font embedded"
    );
    assert!(
        svg.contains("@font-face{font-family:\"DejaVu Sans\""),
        "{name}"
    );
    let texts = svg.matches("<text ").count();
    assert!(texts > 0, "{name}: no text");
    assert_eq!(
        svg.matches("font-family=\"DejaVu Sans, sans-serif\"")
            .count(),
        texts,
        "{name}: every text in the embedded font"
    );
}

fn check_svg(path: &Path) -> Vec<Label> {
    let svg = std::fs::read_to_string(path).unwrap();
    let name = path.display();
    check_font(&svg, &name.to_string());
    let all = labels(&svg);
    let flat: Vec<&Label> = all.iter().filter(|l| !l.rotated).collect();
    for (i, a) in flat.iter().enumerate() {
        for b in &flat[i + 1..] {
            let (p, q) = (a.bbox(), b.bbox());
            let overlap = (p.2.min(q.2) - p.0.max(q.0)).min(p.3.min(q.3) - p.1.max(q.1));
            assert!(
                overlap <= 0.5,
                "{name}: labels {:?} and {:?} overlap by {overlap:.1} px",
                a.text,
                b.text
            );
        }
    }
    // Y axes by the x of their labels; each x tick belongs to the y axis at its left.
    let mut y_axes: Vec<(f64, usize)> = Vec::new();
    for l in all.iter().filter(|l| l.tick == Some(false)) {
        match y_axes.iter_mut().find(|(x, _)| (x - l.x).abs() < 1.0) {
            Some(axis) => axis.1 += 1,
            None => y_axes.push((l.x, 1)),
        }
    }
    y_axes.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(!y_axes.is_empty(), "{name}: no y tick labels");
    let mut x_axes = vec![0usize; y_axes.len()];
    let x_ticks: Vec<&Label> = all.iter().filter(|l| l.tick == Some(true)).collect();
    for l in &x_ticks {
        let axis = y_axes.iter().rposition(|(x, _)| *x < l.x).unwrap();
        x_axes[axis] += 1;
    }
    for (i, (y, x)) in y_axes.iter().zip(&x_axes).enumerate() {
        assert!(
            y.1 >= 3 && *x >= 3,
            "{name}: chart {i} has {} y and {x} x tick labels: {:?}",
            y.1,
            all.iter()
                .filter(|l| l.tick.is_some())
                .map(|l| &l.text)
                .collect::<Vec<_>>()
        );
    }
    // Legend entries (left-anchored text above the x axis) lie right of every x tick label.
    let x_labels_top = x_ticks.iter().map(|l| l.y).fold(f64::INFINITY, f64::min);
    let data_right = x_ticks.iter().map(|l| l.bbox().2).fold(0.0, f64::max);
    for l in all
        .iter()
        .filter(|l| l.tick.is_none() && l.anchor == "start" && l.y < x_labels_top)
    {
        assert!(
            l.x > data_right,
            "{name}: legend label {:?} at x {} is inside the data area (up to {data_right})",
            l.text,
            l.x
        );
    }
    all
}

/// A run folder with the files plots read: metrics rows (step, loss), the last evaluation at
/// `lengths` (bits per byte when `bytes`), run.json.
fn fake_run(
    dir: &Path,
    losses: &[(u64, f64)],
    flops_per_token: f64,
    arch: &str,
    lengths: &[usize],
    bytes: bool,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), "").unwrap();
    let mut m = String::from("step,tokens,loss,lr,grad_norm,tokens_per_s,elapsed_s,peak_mem_mb\n");
    for (s, l) in losses {
        m += &format!("{s},{},{l},0.001,1,1000,1,10\n", s * 1000);
    }
    std::fs::write(dir.join("metrics.csv"), m).unwrap();
    let mut e = String::from("step,split,length,loss,accuracy,bits_per_byte\n");
    let last = losses.last().unwrap().0;
    for step in [last / 2, last] {
        for (i, l) in lengths.iter().enumerate() {
            let loss = 1.0 + 0.01 * i as f64 + 1.0 / (1 + step) as f64;
            let bpb = if bytes {
                format!("{}", loss / std::f64::consts::LN_2)
            } else {
                String::new()
            };
            e += &format!("{step},val,{l},{loss},{},{bpb}\n", 0.9 - 0.1 * i as f64);
        }
    }
    std::fs::write(dir.join("eval.csv"), e).unwrap();
    let convention = match arch {
        "hybrid" => "6N + Σ_attn 6·L·d_model + Σ_mamba 27·d_inner·d_state (N all params)",
        _ => "6N + 27·n_layer·d_inner·d_state (N all params, tied embedding once)",
    };
    std::fs::write(
        dir.join("run.json"),
        format!(
            r#"{{"arch": "{arch}", "flops_per_token": {flops_per_token}, "flops_convention": "{convention}"}}"#
        ),
    )
    .unwrap();
}

/// A sweep folder over `lengths` × two widths with summary.csv, its points as fake runs.
fn fake_sweep(dir: &Path, lengths: &[usize], losses: &[(u64, f64)], fpt: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut s = String::from(
        "point,model.mamba.d_model,task.seq_len,status,arch,seq_len,input_len,num_params,flops_per_token,steps,final_loss,tokens_per_s,peak_mem_mb,elapsed_s\n",
    );
    for d in [32, 64] {
        for &l in lengths {
            let point = format!("d_model={d}_seq_len={l}");
            let arch = if d == 32 { "mamba" } else { "hybrid" };
            fake_run(&dir.join(&point), losses, fpt * l as f64, arch, &[l], false);
            s += &format!(
                "{point},{d},{l},ok,{arch},{l},{l},1000,{fpt},10,1,{},{},1\n",
                1e5 / d as f64 + l as f64,
                20.0 + (l * d) as f64 / 1e3
            );
        }
    }
    std::fs::write(dir.join("summary.csv"), s).unwrap();
}

#[test]
fn every_plot_kind_has_readable_axes_and_legend_outside() {
    let dir = tmp_dir("svg-plots");
    let narrow: Vec<(u64, f64)> = (1..=30).map(|s| (s, 5.6 - 0.003 * s as f64)).collect();
    let wide: Vec<(u64, f64)> = (1..=300)
        .map(|s| (s * 10, 10.0 * (s as f64).powf(-1.5)))
        .collect();
    let single = [(50u64, 2.3)];
    // Losses within 2%, FLOPs within 6e10 .. 1.5e11, test lengths 64 and 128, byte-level evals.
    fake_run(
        &dir.join("narrow/mamba"),
        &narrow,
        2.0e6,
        "mamba",
        &[64, 128],
        true,
    );
    fake_run(
        &dir.join("narrow/hybrid"),
        &narrow,
        2.2e6,
        "hybrid",
        &[64, 128],
        true,
    );
    // Seven decades of loss and FLOPs, test lengths 64 .. 65536.
    let lengths: Vec<usize> = (6..=16).map(|e| 1 << e).collect();
    fake_run(&dir.join("wide/run"), &wide, 1e6, "mamba", &lengths, false);
    // One metrics row and one test length.
    fake_run(&dir.join("single/run"), &single, 1e6, "mamba", &[48], true);
    fake_sweep(&dir.join("sweep2"), &[64, 128], &narrow, 3e5);
    fake_sweep(&dir.join("sweep11"), &lengths, &wide, 3e5);

    let cases: [(&str, &[&str]); 5] = [
        ("narrow", &["narrow/mamba", "narrow/hybrid"]),
        ("wide", &["wide/run"]),
        ("single", &["single/run"]),
        ("sweep2", &["sweep2"]),
        ("sweep11", &["sweep11"]),
    ];
    let mut kinds = std::collections::BTreeSet::new();
    for (case, inputs) in cases {
        let inputs: Vec<_> = inputs.iter().map(|i| dir.join(i)).collect();
        let out = dir.join("plots").join(case);
        for file in plot(&inputs, &out).unwrap() {
            if file.extension().is_some_and(|e| e == "svg") {
                let labels = check_svg(&file);
                let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
                if stem == "loss_vs_flops" && case == "narrow" {
                    let text: Vec<&str> = labels.iter().map(|l| l.text.as_str()).collect();
                    assert!(
                        text.iter().any(|t| t.contains("hybrid: 6N + Σ_attn")),
                        "the hybrid's FLOPs convention is in the footnote: {text:?}"
                    );
                    assert!(!text.iter().any(|t| t.contains("fit")), "{text:?}");
                }
                kinds.insert(stem);
            }
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "accuracy_vs_length",
            "bits_per_byte",
            "loss",
            "loss_vs_flops",
            "throughput_memory"
        ]
    );
}
