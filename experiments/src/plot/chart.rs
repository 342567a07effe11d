//! Line charts drawn on any plotters backend and saved as PNG and SVG: our own ticks (see
//! `ticks`), the legend in a strip to the right of the data, footnotes below.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;

use super::ticks::{Axis, CHAR_PX, LABEL_FONT, Scale};

pub const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";
const MARGIN: u32 = 12;
const X_LABEL_AREA: u32 = 44;
const Y_LABEL_AREA: u32 = 70;
const CAPTION_FONT: u32 = 22;
/// Height the caption takes above the data, with its spacing.
const CAPTION_PX: u32 = 40;
const NOTE_LINE_PX: u32 = 18;
/// Height of one legend entry.
const LEGEND_ROW_PX: i32 = 20;
/// Width of the legend strip: the sample line, its spacing and the margins around the text.
const LEGEND_SAMPLE_PX: f64 = 44.0;
const LEGEND_MAX_PX: f64 = 320.0;
/// Matplotlib's tab10, then the light halves of tab20: twenty distinct colours before a
/// comparison of many runs repeats one.
const COLORS: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Registers the embedded font once per process.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font is valid"));
    });
}

/// The shaded range (x, low, high) under the series of a given index.
pub type Band = (usize, Vec<(f64, f64, f64)>);

/// A series of (x, y) points with a legend label.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart that draws itself on any plotters backend.
pub trait Chart {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Draws `chart` into `out/<stem>.png` and `out/<stem>.svg`. Each file is drawn under a hidden
/// name and renamed into place, so a kill never leaves half a plot.
pub fn save(chart: &impl Chart, out: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let path = |ext: &str| out.join(format!("{stem}.{ext}"));
    // The hidden names keep their extension: plotters picks the image format from it.
    let drawing = |ext: &str| out.join(format!(".{stem}.drawing.{ext}"));
    let (png, svg) = (path("png"), path("svg"));
    let (png_drawing, svg_drawing) = (drawing("png"), drawing("svg"));
    {
        let root = BitMapBackend::new(&png_drawing, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|_| chart.draw(&root))
            .and_then(|_| root.present())
            .map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    let mut drawn = String::new();
    {
        let root = SVGBackend::with_string(&mut drawn, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|_| chart.draw(&root))
            .and_then(|_| root.present())
            .map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    std::fs::write(&svg_drawing, embed_font(&drawn))
        .with_context(|| format!("cannot write {}", svg_drawing.display()))?;
    for (drawn, path) in [(&png_drawing, &png), (&svg_drawing, &svg)] {
        std::fs::File::open(drawn)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", drawn.display()))?;
        ssm::io::rename(drawn, path)?;
    }
    Ok(vec![png, svg])
}

/// The font family of the text of our SVGs, embedded in each.
pub const SVG_FONT: &str = "DejaVu Sans";

/// `svg` with DejaVu Sans embedded as an `@font-face` (the TTF as a data URL) and every text set
/// in it, so that an SVG shows the glyphs of the PNG on a machine without that font.
pub fn embed_font(svg: &str) -> String {
    use base64::Engine;
    static FACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let face = FACE.get_or_init(|| {
        format!(
            "<defs><style>@font-face{{font-family:\"{SVG_FONT}\";src:url(data:font/ttf;base64,{})}}</style></defs>",
            base64::engine::general_purpose::STANDARD.encode(dejavu::sans::regular())
        )
    });
    let svg = svg.replace(
        &format!("font-family=\"{FONT}\""),
        &format!("font-family=\"{SVG_FONT}, {FONT}\""),
    );
    match svg
        .find("<svg")
        .and_then(|start| svg[start..].find('>').map(|end| start + end + 1))
    {
        Some(at) => format!("{}\n{face}{}", &svg[..at], &svg[at..]),
        None => svg,
    }
}

/// Range of positive finite values, widened by `pad` (a factor) on both sides.
pub fn log_range(values: impl Iterator<Item = f64>, pad: f64) -> Option<Range<f64>> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let (lo, hi) = if lo == hi {
        (lo / 2.0, hi * 2.0)
    } else {
        (lo, hi)
    };
    Some(lo / pad..hi * pad)
}

/// An axis as plotters' coordinate: our mapping and our ticks (no light grid lines).
struct Coord<'a>(&'a Axis);

impl Ranged for Coord<'_> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = f64::from(limit.1 - limit.0);
        limit.0 + (self.0.fraction(*value) * span).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.0.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.0.range.clone()
    }
}

/// One chart of lines (with markers when a series has few points).
pub struct Lines {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    /// A linear x axis starts at 0; log axes span the data.
    pub x_scale: Scale,
    /// A linear y axis starts at 0 and ends at `y_max` (the data's maximum plus 10% if `None`).
    pub y_scale: Scale,
    pub y_max: Option<f64>,
    /// Footnote lines under the chart.
    pub note: Vec<String>,
    /// Shaded ranges (x, low, high) drawn under the series of the same index, in its colour:
    /// the min-max band of a mean over seeds.
    pub bands: Vec<Band>,
    /// Series drawn as markers alone, not joined: measured points beside a fitted curve.
    pub markers_only: bool,
    /// Lines (a fitted law) drawn in the colour of the series of the same index, without a
    /// legend entry of their own.
    pub curves: Vec<Curve>,
}

/// A line drawn in the colour of the series of a given index.
pub type Curve = (usize, Vec<(f64, f64)>);

impl Lines {
    fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let bands = self
            .bands
            .iter()
            .flat_map(|b| b.1.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]));
        let curves = self.curves.iter().flat_map(|c| c.1.iter().copied());
        self.series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .chain(bands)
            .chain(curves)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    }

    fn range(&self, scale: Scale, values: Vec<f64>, top: Option<f64>) -> Range<f64> {
        let max = values.iter().copied().fold(0.0, f64::max);
        match scale {
            Scale::Linear => 0.0..top.unwrap_or(max * 1.1).max(1e-9),
            Scale::Log10 => log_range(values.into_iter(), 1.15).unwrap_or(0.1..10.0),
            Scale::Log2 => log_range(values.into_iter(), 1.1).unwrap_or(1.0..16.0),
        }
    }

    /// Draws the chart into `area`, with its legend in a strip at the right when `legend`.
    fn draw_in<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        legend: bool,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let area = if legend {
            let labels: Vec<&str> = self.series.iter().map(|s| s.label.as_str()).collect();
            let (chart, strip) =
                area.split_horizontally(area.dim_in_pixel().0 - legend_width(&labels));
            draw_legend(&strip, &labels)?;
            chart
        } else {
            area.clone()
        };
        let (w, h) = area.dim_in_pixel();
        let x_px = f64::from(w - 2 * MARGIN - Y_LABEL_AREA);
        let y_px = f64::from(h - 2 * MARGIN - X_LABEL_AREA - CAPTION_PX);
        let x_axis = Axis::new(
            self.x_scale,
            self.range(self.x_scale, self.points().map(|p| p.0).collect(), None),
            x_px,
            true,
        );
        let y_axis = Axis::new(
            self.y_scale,
            self.range(
                self.y_scale,
                self.points().map(|p| p.1).collect(),
                self.y_max,
            ),
            y_px,
            false,
        );
        let mut builder = ChartBuilder::on(&area);
        builder
            .caption(&self.title, (FONT, CAPTION_FONT))
            .margin(MARGIN)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(Y_LABEL_AREA);
        let mut chart = builder.build_cartesian_2d(Coord(&x_axis), Coord(&y_axis))?;
        self.draw_data(&mut chart, &x_axis, &y_axis)
    }

    fn draw_data<DB: DrawingBackend>(
        &self,
        chart: &mut ChartContext<'_, DB, Cartesian2d<Coord<'_>, Coord<'_>>>,
        x_axis: &Axis,
        y_axis: &Axis,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (x_label, y_label) = (|v: &f64| x_axis.label(*v), |v: &f64| y_axis.label(*v));
        chart
            .configure_mesh()
            .x_desc(self.x_desc.as_str())
            .y_desc(self.y_desc.as_str())
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .label_style((FONT, LABEL_FONT))
            .draw()?;
        for (i, band) in &self.bands {
            let shown: Vec<&(f64, f64, f64)> = band
                .iter()
                .filter(|&&(x, lo, hi)| x_axis.shows(x) && y_axis.shows(lo) && y_axis.shows(hi))
                .collect();
            let outline: Vec<(f64, f64)> = shown
                .iter()
                .map(|p| (p.0, p.1))
                .chain(shown.iter().rev().map(|p| (p.0, p.2)))
                .collect();
            chart.draw_series([Polygon::new(outline, color(*i).mix(0.2).filled())])?;
        }
        let shown = |points: &[(f64, f64)]| -> Vec<(f64, f64)> {
            points
                .iter()
                .copied()
                .filter(|&(x, y)| x_axis.shows(x) && y_axis.shows(y))
                .collect()
        };
        for (i, curve) in &self.curves {
            chart.draw_series(LineSeries::new(shown(curve), color(*i).stroke_width(2)))?;
        }
        for (i, s) in self.series.iter().enumerate() {
            let c = color(i);
            let pts = shown(&s.points);
            if self.markers_only {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.filled())))?;
                continue;
            }
            chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            if pts.len() <= 32 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
        }
        Ok(())
    }
}

impl Chart for Lines {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let area = with_note(root, &self.note)?;
        self.draw_in(&area, true)
    }
}

/// Two charts side by side with one legend (their series carry the same labels) and the first
/// one's note under both.
pub struct Pair(pub Lines, pub Lines);

impl Chart for Pair {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let root = with_note(root, &self.0.note)?;
        let labels: Vec<&str> = self.0.series.iter().map(|s| s.label.as_str()).collect();
        let (charts, strip) = root.split_horizontally(SIZE.0 - legend_width(&labels));
        draw_legend(&strip, &labels)?;
        let (left, right) = charts.split_horizontally(charts.dim_in_pixel().0 / 2);
        self.0.draw_in(&left, false)?;
        self.1.draw_in(&right, false)
    }
}

/// Writes the note's lines at the bottom of `root`; returns the area above them.
fn with_note<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    note: &[String],
) -> Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    if note.is_empty() {
        return Ok(root.clone());
    }
    let height = NOTE_LINE_PX * note.len() as u32 + 8;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 - height);
    let style = (FONT, LABEL_FONT - 1).into_text_style(&bottom);
    for (i, line) in note.iter().enumerate() {
        bottom.draw_text(line, &style, (12, 4 + (NOTE_LINE_PX * i as u32) as i32))?;
    }
    Ok(top)
}

/// Legend labels longer than the strip allows end in "…".
fn legend_label(label: &str) -> String {
    let max = ((LEGEND_MAX_PX - LEGEND_SAMPLE_PX) / CHAR_PX) as usize;
    if label.chars().count() <= max {
        label.to_string()
    } else {
        label.chars().take(max - 1).chain(['…']).collect()
    }
}

fn legend_width(labels: &[&str]) -> u32 {
    let chars = labels
        .iter()
        .map(|l| legend_label(l).chars().count())
        .max()
        .unwrap_or(0);
    (chars as f64 * CHAR_PX + LEGEND_SAMPLE_PX).clamp(120.0, LEGEND_MAX_PX) as u32
}

/// The legend, one coloured line and label per series, top-aligned with the data.
fn draw_legend<DB: DrawingBackend>(
    strip: &DrawingArea<DB, Shift>,
    labels: &[&str],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = (FONT, LABEL_FONT).into_text_style(strip);
    let top = (MARGIN + CAPTION_PX) as i32;
    for (i, label) in labels.iter().enumerate() {
        let y = top + LEGEND_ROW_PX * i as i32;
        let c = color(i);
        strip.draw(&PathElement::new(
            vec![(6, y + 7), (26, y + 7)],
            c.stroke_width(2),
        ))?;
        strip.draw_text(&legend_label(label), &style, (32, y))?;
    }
    Ok(())
}
