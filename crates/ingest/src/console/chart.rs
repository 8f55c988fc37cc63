//! Charts, drawn on the server as inline SVG.
//!
//! A few dozen lines of Herald's own instead of a plotting crate: the
//! charts are a line or two over the last hour, and SVG written here needs
//! no font, no script and no style attribute (colours come from the
//! stylesheet's classes), so it passes the pages' policy as it is.

use maud::{Markup, html};

const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// One line of a chart: a value per minute, oldest first (`None`: no
/// data that minute).
#[derive(Debug)]
pub struct Series<'a> {
    /// Its name in the legend.
    pub name: &'a str,
    /// Its colour class in the stylesheet (`s1` … `s4`).
    pub class: &'a str,
    /// Its values.
    pub values: Vec<Option<f64>>,
}

/// A line chart of `series` over the minutes they cover; `unit` follows
/// the values on the axis and in the legend.
pub fn line_chart(title: &str, unit: &str, series: &[Series<'_>]) -> Markup {
    let minutes = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .fold(0.0_f64, f64::max);
    let top = nice_ceiling(top);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |i: usize| LEFT + plot_w * i as f64 / (minutes.max(2) - 1) as f64;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);
    let summary: Vec<String> = series
        .iter()
        .map(|s| match s.values.iter().rev().flatten().next() {
            Some(last) => format!(
                "{}: {} {unit} in the last minute with data",
                s.name,
                format_value(*last)
            ),
            None => format!("{}: no data", s.name),
        })
        .collect();
    html! {
        figure class="chart" {
            figcaption { (title) }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                desc { (summary.join("; ")) }
                line class="axis" x1=(LEFT) y1=(y(0.0)) x2=(WIDTH - RIGHT) y2=(y(0.0)) {}
                line class="grid" x1=(LEFT) y1=(y(top / 2.0)) x2=(WIDTH - RIGHT) y2=(y(top / 2.0)) {}
                line class="grid" x1=(LEFT) y1=(y(top)) x2=(WIDTH - RIGHT) y2=(y(top)) {}
                text class="label" x=(LEFT - 6.0) y=(y(top) + 4.0) text-anchor="end" { (format_value(top)) }
                text class="label" x=(LEFT - 6.0) y=(y(top / 2.0) + 4.0) text-anchor="end" { (format_value(top / 2.0)) }
                text class="label" x=(LEFT - 6.0) y=(y(0.0) + 4.0) text-anchor="end" { "0" }
                text class="label" x=(LEFT) y=(HEIGHT - 6.0) { (minutes) " min ago" }
                text class="label" x=(WIDTH - RIGHT) y=(HEIGHT - 6.0) text-anchor="end" { "now" }
                @for s in series {
                    @for run in runs(&s.values) {
                        @if run.len() == 1 {
                            circle class={ "dot " (s.class) } cx=(x(run[0].0)) cy=(y(run[0].1)) r="2.5" {}
                        } @else {
                            polyline class={ "line " (s.class) } points=(points(&run, &x, &y)) {}
                        }
                    }
                }
            }
            ul class="legend" {
                @for s in series {
                    li { span class={ "swatch " (s.class) } {} (s.name) @if !unit.is_empty() { " (" (unit) ")" } }
                }
            }
        }
    }
}

/// The stretches of consecutive minutes with data: `(minute index, value)`.
fn runs(values: &[Option<f64>]) -> Vec<Vec<(usize, f64)>> {
    let mut all = Vec::new();
    let mut current = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match value {
            Some(v) => current.push((i, *v)),
            None if !current.is_empty() => all.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

fn points(run: &[(usize, f64)], x: &impl Fn(usize) -> f64, y: &impl Fn(f64) -> f64) -> String {
    run.iter()
        .map(|(i, v)| format!("{:.1},{:.1}", x(*i), y(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A round number at or above `value` (1, 2 or 5 times a power of ten), so
/// the axis reads easily; at least 1.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 1.0 {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * power)
}

fn format_value(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{:.1}M", value / 1_000_000.0)
    } else if value >= 10_000.0 {
        format!("{:.0}k", value / 1_000.0)
    } else if value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(17.0), 20.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
    }

    #[test]
    fn gaps_split_the_line() {
        let values = [Some(1.0), Some(2.0), None, Some(3.0), None, None];
        let runs = runs(&values);
        assert_eq!(runs, vec![vec![(0, 1.0), (1, 2.0)], vec![(3, 3.0)]]);
    }

    #[test]
    fn a_chart_is_svg_with_its_lines_and_no_style_attribute() {
        let chart = line_chart(
            "Deliveries",
            "per minute",
            &[Series {
                name: "delivered",
                class: "s1",
                values: vec![Some(1.0), Some(4.0), None, Some(2.0)],
            }],
        )
        .into_string();
        assert!(chart.contains("<svg"), "{chart}");
        assert!(chart.contains("<polyline class=\"line s1\""), "{chart}");
        assert!(chart.contains("<circle class=\"dot s1\""), "{chart}");
        assert!(!chart.contains("style="), "{chart}");
    }
}
