//! A small SVG line plot (throughput against block size), written by hand:
//! one file, no font or image dependencies.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// Renders `series` (name, points of block size in bytes and MB/s) with a
/// log2 x axis and a linear y axis from zero.
pub fn svg(title: &str, series: &[(String, Vec<(u64, f64)>)]) -> String {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|&(x, _)| (x as f64).log2()))
        .collect();
    let (x_min, x_max) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let (x_min, x_max) = if x_min < x_max {
        (x_min, x_max)
    } else {
        (12.0, 20.0)
    };
    let y_top = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max);
    let y_step = nice_step(y_top.max(1.0) / 5.0);
    let y_max = (y_top / y_step).ceil().max(1.0) * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_w;
    let py = |y: f64| TOP + plot_h - y / y_max * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="13">{}</text>"#,
        escape(title)
    );
    // Y grid and labels.
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{y}</text>"##,
            py(y),
            LEFT + plot_w,
            LEFT - 6.0,
            py(y) + 4.0
        );
        y += y_step;
    }
    // X ticks at every power of two present.
    let mut x = x_min.ceil();
    while x <= x_max {
        let bytes = 2f64.powf(x);
        let label = if bytes >= 1048576.0 {
            format!("{}M", bytes / 1048576.0)
        } else {
            format!("{}K", bytes / 1024.0)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{label}</text>"##,
            px(x),
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
        x += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle">block size</text><text x="16" y="{2:.1}" transform="rotate(-90 16 {2:.1})" text-anchor="middle">MB/s</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        TOP + plot_h / 2.0
    );
    for (index, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px((x as f64).log2()), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for point in &path {
            let (cx, cy) = point.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>"#);
        }
        let ly = TOP + 10.0 + index as f64 * 20.0;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{0}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{1}" y="{2}">{3}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_one_svg_with_every_series() {
        let series = vec![
            ("a".to_owned(), vec![(4096, 100.0), (131072, 900.0)]),
            ("b<".to_owned(), vec![(4096, 50.0)]),
        ];
        let text = svg("t", &series);
        assert!(text.starts_with("<svg") && text.ends_with("</svg>\n"));
        assert_eq!(text.matches("<polyline").count(), 2);
        assert!(text.contains("b&lt;"));
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(180.0), 200.0);
        assert_eq!(nice_step(0.3), 0.5);
    }
}
