//! The overhead plot: each workload's time per call under each condition, as a multiple of the
//! same workload with nothing attached (median of the rounds, whiskers from min to max).
//! Drawn by plotters into a buffer, with Debian's DejaVu Sans (fonts-dejavu-core), and
//! encoded by png: no image crate, no font-kit.

use std::{fs, io::BufWriter, path::Path, sync::OnceLock};

use anyhow::{anyhow, Context, Result};
use plotters::{
    prelude::*,
    style::{register_font, FontStyle},
};

use super::{
    conditions::{Condition, CONDITIONS},
    overhead::WorkloadSummary,
    stats,
};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 600;
/// The highest ratio drawn to scale.
const CLIP: f64 = 8.0;

fn colour(condition: Condition) -> RGBColor {
    match condition {
        Condition::Bare => RGBColor(200, 200, 200),
        Condition::Floor => RGBColor(150, 150, 150),
        Condition::Sockwatch => RGBColor(31, 119, 180),
        Condition::Article => RGBColor(255, 127, 14),
    }
}

/// Registers the font once per process.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = fs::read(FONT).map_err(|e| {
                format!("{FONT}: {e} (cargo xtask setup installs fonts-dejavu-core)")
            })?;
            register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| format!("{FONT} is not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Draws the plot into `path` (PNG). `subtitle` says where and how it was measured.
pub fn overhead(path: &Path, summaries: &[WorkloadSummary], subtitle: &str) -> Result<()> {
    font()?;
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    draw(&mut pixels, summaries, subtitle).map_err(|e| anyhow!("drawing the plot: {e}"))?;
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&pixels))
        .with_context(|| format!("writing {}", path.display()))
}

fn draw(
    pixels: &mut [u8],
    summaries: &[WorkloadSummary],
    subtitle: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(64);
    title.draw(&Text::new(
        "sockwatch: overhead on the traced program, per call",
        (20, 10),
        ("sans-serif", 24).into_font(),
    ))?;
    title.draw(&Text::new(
        subtitle.to_owned(),
        (20, 40),
        ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
    ))?;
    let shown = &CONDITIONS[1..];
    // Bars beyond CLIP are cut at the top and say their value: one huge ratio must not
    // flatten the others.
    let top = summaries
        .iter()
        .flat_map(|s| shown.iter().map(|c| s.ratio[c.index()].max))
        .fold(2.0f64, f64::max)
        .min(CLIP)
        * 1.12;
    let groups = summaries.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&body)
        .margin_left(20)
        .margin_right(20)
        .margin_bottom(10)
        .x_label_area_size(56)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(0)
        .y_desc("time per call ÷ same loop with nothing attached")
        .y_label_formatter(&|y| format!("{y:.1}x"))
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 14))
        .draw()?;
    // The baseline: nothing attached.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (groups, 1.0)],
        BLACK.stroke_width(1),
    )))?;
    let bar = 0.24;
    for (i, summary) in summaries.iter().enumerate() {
        let left = i as f64 + (1.0 - bar * shown.len() as f64) / 2.0;
        for (j, condition) in shown.iter().enumerate() {
            let ratio = summary.ratio[condition.index()];
            let clip = |y: f64| y.min(top);
            let x0 = left + j as f64 * bar;
            let (x1, mid) = (x0 + bar * 0.9, x0 + bar * 0.45);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x1, clip(ratio.median))],
                colour(*condition).filled(),
            )))?;
            if ratio.n > 1 {
                let cap = bar * 0.15;
                for points in [
                    vec![(mid, clip(ratio.min)), (mid, clip(ratio.max))],
                    vec![(mid - cap, clip(ratio.min)), (mid + cap, clip(ratio.min))],
                    vec![(mid - cap, clip(ratio.max)), (mid + cap, clip(ratio.max))],
                ] {
                    chart.draw_series(std::iter::once(PathElement::new(points, BLACK)))?;
                }
            }
            let (label, at) = if ratio.max > top {
                (format!("{} ↑", stats::times(ratio.median)), (-20, 6))
            } else {
                (stats::times(ratio.median), (-16, -18))
            };
            chart.draw_series(std::iter::once(
                EmptyElement::at((mid, clip(ratio.max)))
                    + Text::new(label, at, ("sans-serif", 13).into_font()),
            ))?;
        }
        let name = summary.workload.label();
        chart.draw_series(std::iter::once(
            EmptyElement::at((i as f64 + 0.5, 0.0))
                + Text::new(
                    name.to_owned(),
                    (-(name.len() as i32) * 7 / 2, 10),
                    ("sans-serif", 14).into_font(),
                )
                + Text::new(
                    format!("(a) {}", stats::duration_ns(summary.ns[0].median)),
                    (-40, 30),
                    ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
                ),
        ))?;
    }
    // Legend, top left inside the plot.
    for (j, condition) in shown.iter().enumerate() {
        let y = 80 + j as i32 * 22;
        body.draw(&Rectangle::new(
            [(110, y), (126, y + 14)],
            colour(*condition).filled(),
        ))?;
        let note = if *condition == Condition::Article {
            ": hooks sendto and close only"
        } else {
            ""
        };
        body.draw(&Text::new(
            format!("({}) {}{note}", condition.letter(), condition.name()),
            (134, y),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    root.present()?;
    Ok(())
}
