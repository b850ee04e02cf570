//! PNG plots of the report, drawn with plotters' bitmap backend.
//!
//! Text needs a font, and a fresh machine may have none: the binary carries a 13 KB
//! subset of DejaVu Sans (printable ASCII and a few symbols; `src/eval/font/`, with its
//! license), registered once as plotters' `sans-serif`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const FONT: &[u8] = include_bytes!("font/DejaVuSans-subset.ttf");
const FONT_FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 520;

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered =
        *REGISTERED.get_or_init(|| register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok());
    if !registered {
        return Err(anyhow!(
            "the bundled font src/eval/font/DejaVuSans-subset.ttf did not load"
        ));
    }
    Ok(())
}

/// One line of a chart: a label and its points (x, y), with gaps where y is undefined.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, Option<f64>)>,
    /// Dashed lines for references (oracle, random, the diagonal).
    pub reference: bool,
    /// A 95% interval `(low, high)` per point, drawn as an error bar; empty for none.
    pub intervals: Vec<Option<(f64, f64)>>,
}

/// A panel of a figure.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Line>,
    /// Draw the y = x diagonal (reliability diagrams).
    pub diagonal: bool,
    /// A categorical x axis: point `i` of a line sits at category `i` (tier groups, the
    /// knob settings of the transfer map); empty for a numeric axis.
    pub categories: Vec<String>,
    /// x values are log10 of the quantity: ticks show the quantity (`1k`, `30k`).
    pub log_x: bool,
}

fn plot_error<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |error| anyhow!("drawing {}: {error:?}", path.display())
}

/// Draws `panels` side by side into one PNG at `path`.
pub fn draw(path: &Path, caption: &str, panels: &[Panel]) -> Result<PathBuf> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error(path))?;
    let root = root
        .titled(caption, (FONT_FAMILY, 22).into_font())
        .map_err(plot_error(path))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel).with_context(|| format!("drawing {}", path.display()))?;
    }
    root.present().map_err(plot_error(path))?;
    Ok(path.to_path_buf())
}

/// Plotters' errors carry the backend's error type; the report only needs their text.
fn failed<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("{error:?}")
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(area: &Area<'_>, panel: &Panel) -> Result<()> {
    let bar_ends = panel.lines.iter().flat_map(|line| {
        line.points
            .iter()
            .zip(&line.intervals)
            .filter_map(|((x, _), bar)| bar.map(|(low, high)| [(*x, Some(low)), (*x, Some(high))]))
            .flatten()
    });
    let values = panel
        .lines
        .iter()
        .flat_map(|line| line.points.iter().copied())
        .chain(bar_ends)
        .filter_map(|(x, y)| y.map(|y| (x, y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x_max, mut y_max, mut x_min, mut y_min) = (f64::MIN, f64::MIN, f64::MAX, f64::MAX);
    for (x, y) in values {
        x_max = x_max.max(x);
        x_min = x_min.min(x);
        y_max = y_max.max(y);
        y_min = y_min.min(y);
    }
    if x_max < x_min {
        (x_min, x_max, y_min, y_max) = (0.0, 1.0, 0.0, 1.0);
    }
    let categories = &panel.categories;
    if !categories.is_empty() {
        (x_min, x_max) = (-0.3, categories.len() as f64 - 0.7);
    }
    if panel.diagonal {
        let top = x_max.max(y_max);
        (x_min, y_min, x_max, y_max) = (0.0, 0.0, top, top);
    }
    // Start at zero for non-negative metrics, so that bar-free line charts do not
    // exaggerate small differences; leave headroom above.
    let y_low = if y_min >= 0.0 { 0.0 } else { y_min * 1.1 };
    // 8% of the range as headroom (y_max * 1.08 when the axis starts at zero; for
    // all-negative figures, such as AP losses, a plain factor would cut the top off).
    let y_high = if y_max > y_low {
        y_max + (y_max - y_low) * 0.08
    } else {
        y_low + 1.0
    };
    let x_pad = if !categories.is_empty() {
        0.0
    } else {
        (x_max - x_min).abs().max(1e-6) * 0.03
    };

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT_FAMILY, 18).into_font())
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((x_min - x_pad)..(x_max + x_pad), y_low..y_high)
        .map_err(failed)?;
    let log_x = panel.log_x;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_labels(if !categories.is_empty() {
            categories.len()
        } else if log_x {
            LOG_X_TICKS
        } else {
            6
        })
        .x_label_formatter(&|x| {
            if categories.is_empty() && log_x {
                format_count(10f64.powf(*x))
            } else if categories.is_empty() {
                format!("{x:.3}")
            } else {
                let index = x.round();
                if (x - index).abs() < 0.01 && index >= 0.0 {
                    categories.get(index as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            }
        })
        .y_label_formatter(&|y| format_axis(*y))
        .label_style((FONT_FAMILY, 13).into_font())
        .draw()
        .map_err(failed)?;
    if panel.diagonal {
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (x_max, x_max)],
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(failed)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.4)));
    }
    for (index, line) in panel.lines.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let style = if line.reference {
            color.mix(0.55).stroke_width(2)
        } else {
            color.stroke_width(2)
        };
        // Split at undefined points so that a tier without data leaves a gap.
        let mut segment: Vec<(f64, f64)> = Vec::new();
        let mut segments = Vec::new();
        for (x, y) in &line.points {
            match y {
                Some(y) if y.is_finite() => segment.push((*x, *y)),
                _ => segments.push(std::mem::take(&mut segment)),
            }
        }
        segments.push(segment);
        let mut labelled = false;
        for segment in segments.into_iter().filter(|s| !s.is_empty()) {
            let series = chart
                .draw_series(LineSeries::new(segment.clone(), style))
                .map_err(failed)?;
            if !labelled {
                series
                    .label(line.label.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
                labelled = true;
            }
            chart
                .draw_series(
                    segment
                        .into_iter()
                        .map(|point| Circle::new(point, 3, style.filled())),
                )
                .map_err(failed)?;
        }
        // Error bars: a vertical stroke from low to high with short caps, plain paths
        // (plotters' ErrorBar element needs a feature the rest of the plots do not).
        let cap = if categories.is_empty() {
            (x_max - x_min).abs().max(1e-6) * 0.01
        } else {
            0.06
        };
        let bars = line
            .points
            .iter()
            .zip(&line.intervals)
            .filter_map(|((x, _), bar)| bar.map(|(low, high)| (*x, low, high)))
            .filter(|(x, low, high)| x.is_finite() && low.is_finite() && high.is_finite());
        for (x, low, high) in bars {
            chart
                .draw_series([
                    PathElement::new([(x, low), (x, high)], style),
                    PathElement::new([(x - cap, low), (x + cap, low)], style),
                    PathElement::new([(x - cap, high), (x + cap, high)], style),
                ])
                .map_err(failed)?;
        }
    }
    // Learning curves that end high (AP) climb to the upper right: their legend goes
    // below them; those that end low (calibration error) keep it above.
    let ends_high = panel.log_x && {
        let ends: Vec<f64> = panel
            .lines
            .iter()
            .filter_map(|line| line.points.last().and_then(|(_, y)| *y))
            .collect();
        !ends.is_empty() && ends.iter().sum::<f64>() / ends.len() as f64 > (y_low + y_high) / 2.0
    };
    chart
        .configure_series_labels()
        // Reliability curves climb to the upper right; keep the legend off them.
        .position(if panel.diagonal {
            SeriesLabelPosition::UpperLeft
        } else if ends_high {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .label_font((FONT_FAMILY, 12).into_font())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(failed)?;
    Ok(())
}

/// Ticks of a log axis: a half-decade apart over the learning curves' 1k-100k.
const LOG_X_TICKS: usize = 5;

/// A count on a log axis, to two significant digits: `320`, `3.2k`, `100k`, `1.5M`.
fn format_count(value: f64) -> String {
    let (scaled, unit) = if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    if scaled >= 100.0 {
        format!("{:.0}{unit}", (scaled / 10.0).round() * 10.0)
    } else if scaled >= 10.0 {
        format!("{scaled:.0}{unit}")
    } else {
        format!("{scaled:.1}{unit}")
    }
}

fn format_axis(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 {
        "0".into()
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Whether `path` starts with the PNG signature: what the tests and the report check.
pub fn is_png(path: &Path) -> Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]))
}
