//! Small trend charts of a measurement's recent values for the chart
//! summary, drawn on the server as inline SVG markup.
//!
//! The Content Security Policy forbids inline styles, so the SVG carries
//! only geometry and class names; `app.css` colours it. Every chart has a
//! text alternative (`role="img"`, `aria-label` and `<title>`) that lists
//! the values oldest to newest, so screen reader users get the same
//! information as sighted ones.

use super::html::escape;

/// Maximum number of values one chart shows (the newest ones).
pub const MAX_POINTS: usize = 10;
/// Drawing width in SVG units (also the CSS pixel width).
const WIDTH: f64 = 132.0;
/// Drawing height in SVG units (also the CSS pixel height).
const HEIGHT: f64 = 40.0;
/// Space kept free around the lines, so dots are not cut off.
const PAD: f64 = 4.0;

/// One line of a chart: the values of one quantity, oldest first.
pub struct Series {
    /// The legend of the line, such as "systolic", or empty for a single line.
    pub label: String,
    /// The unit of the values, such as "mmHg".
    pub unit: String,
    /// The values, oldest first.
    pub values: Vec<f64>,
}

/// Shows a UCUM unit code the way people write it (`mm[Hg]` → `mmHg`,
/// `Cel` → `°C`, `10*3/uL` → `10³/µL`, `{beats}/min` → `/min`). Annotations
/// in braces are dropped unless they are a number (`{1.73_m2}` → `1.73 m²`).
pub fn unit_text(unit: &str) -> String {
    match unit {
        "Cel" => return "°C".to_owned(),
        "[degF]" => return "°F".to_owned(),
        "[lb_av]" => return "lb".to_owned(),
        "[in_i]" => return "in".to_owned(),
        _ => {}
    }
    let mut text = String::with_capacity(unit.len());
    let mut annotation: Option<String> = None;
    for c in unit.chars() {
        match (c, annotation.as_mut()) {
            ('{', None) => annotation = Some(String::new()),
            ('}', Some(inside)) => {
                if inside.starts_with(|d: char| d.is_ascii_digit()) {
                    text.push_str(&inside.replace('_', " "));
                }
                annotation = None;
            }
            (_, Some(inside)) => inside.push(c),
            ('[' | ']', None) => {}
            (_, None) => text.push(c),
        }
    }
    let text = text
        .replace("10*12", "10¹²")
        .replace("10*9", "10⁹")
        .replace("10*6", "10⁶")
        .replace("10*3", "10³")
        .replace("m2", "m²")
        .replace("uL", "µL")
        .replace("ug", "µg")
        .replace("umol", "µmol");
    if text == "1" { String::new() } else { text }
}

/// Formats a measured value with the precision its unit deserves: whole
/// numbers for pressures and rates, one decimal for body measurements and
/// percentages, and for lab units two decimals (three significant digits
/// below 1). Trailing zeros are dropped.
pub fn number_in(value: f64, unit: &str) -> String {
    let decimals: i32 = match unit_text(unit).as_str() {
        "mmHg" | "/min" | "beats/min" | "breaths/min" => 0,
        "kg" | "g" | "lb" | "cm" | "in" | "°C" | "°F" | "kg/m²" | "%" => 1,
        _ if value.abs() >= 1.0 || value == 0.0 => 2,
        // Three significant digits for small lab values (0.045678 → 0.0457).
        _ => (2 - value.abs().log10().floor() as i32).clamp(2, 6),
    };
    let factor = 10f64.powi(decimals);
    let rounded = (value * factor).round() / factor;
    let text = format!("{rounded:.prec$}", prec = decimals as usize);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text.as_str()
    };
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Builds the text alternative of a chart.
fn describe(name: &str, series: &[Series]) -> String {
    let lines: Vec<String> = series
        .iter()
        .map(|line| {
            let values: Vec<String> = line
                .values
                .iter()
                .map(|&value| number_in(value, &line.unit))
                .collect();
            let label = if line.label.is_empty() {
                String::new()
            } else {
                format!("{} ", line.label)
            };
            format!("{label}{} {}", values.join(", "), unit_text(&line.unit))
                .trim()
                .to_owned()
        })
        .collect();
    format!("Trend of {name}, oldest to newest: {}", lines.join("; "))
}

/// Renders a chart of `series` (at most the newest [`MAX_POINTS`] values of
/// each), or `None` when no line has two values to connect.
pub fn chart(name: &str, series: &[Series]) -> Option<String> {
    let series: Vec<Series> = series
        .iter()
        .map(|line| Series {
            label: line.label.clone(),
            unit: line.unit.clone(),
            values: line
                .values
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .skip(line.values.len().saturating_sub(MAX_POINTS))
                .collect(),
        })
        .filter(|line| !line.values.is_empty())
        .collect();
    if series.iter().all(|line| line.values.len() < 2) {
        return None;
    }
    let all = series.iter().flat_map(|line| line.values.iter().copied());
    let (mut low, mut high) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if (high - low).abs() < f64::EPSILON {
        low -= 1.0;
        high += 1.0;
    }
    let longest = series.iter().map(|l| l.values.len()).max().unwrap_or(2);
    let step = (WIDTH - 2.0 * PAD) / (longest.max(2) - 1) as f64;
    let y_of = |v: f64| PAD + (high - v) / (high - low) * (HEIGHT - 2.0 * PAD);
    let mut shapes = String::new();
    for (index, line) in series.iter().enumerate() {
        // Lines end at the right edge, so the newest values line up.
        let offset = longest - line.values.len();
        let points: Vec<(f64, f64)> = line
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| (PAD + (offset + i) as f64 * step, y_of(v)))
            .collect();
        let class = if index == 0 { "line" } else { "line second" };
        let coordinates: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        shapes.push_str(&format!(
            "<polyline class=\"{class}\" points=\"{}\"/>",
            coordinates.join(" ")
        ));
        if let Some((x, y)) = points.last() {
            shapes.push_str(&format!(
                "<circle class=\"dot{}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"/>",
                if index == 0 { "" } else { " second" }
            ));
        }
    }
    let text = escape(&describe(name, &series));
    Some(format!(
        "<svg class=\"trend\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         role=\"img\" aria-label=\"{text}\" focusable=\"false\"><title>{text}</title>{shapes}</svg>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(values: &[f64]) -> Series {
        Series {
            label: String::new(),
            unit: "/min".to_owned(),
            values: values.to_vec(),
        }
    }

    #[test]
    fn one_value_draws_nothing() {
        assert!(chart("Heart rate", &[line(&[72.0])]).is_none());
        assert!(chart("Heart rate", &[]).is_none());
    }

    #[test]
    fn chart_text_alternative_and_no_style() {
        let svg = chart("Heart rate", &[line(&[70.0, 72.5, 88.0])]).expect("chart");
        assert!(svg.contains("role=\"img\""), "{svg}");
        assert!(
            svg.contains("<title>Trend of Heart rate, oldest to newest: 70, 73, 88 /min</title>"),
            "{svg}"
        );
        assert!(!svg.contains("style"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 1);
        // The highest value is drawn at the top, the lowest at the bottom.
        assert!(svg.contains("4.0,36.0"), "{svg}");
        assert!(svg.contains("128.0,4.0"), "{svg}");
    }

    #[test]
    fn two_lines_and_flat_values() {
        let systolic = Series {
            label: "systolic".into(),
            unit: "mmHg".into(),
            values: vec![120.0, 120.0],
        };
        let diastolic = Series {
            label: "diastolic".into(),
            unit: "mmHg".into(),
            values: vec![80.0, 80.0],
        };
        let svg = chart("Blood pressure", &[systolic, diastolic]).expect("chart");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(
            svg.contains("systolic 120, 120 mmHg; diastolic 80, 80 mmHg"),
            "{svg}"
        );
        assert!(!svg.contains("NaN"), "{svg}");
        let flat = chart("Weight", &[line(&[70.0, 70.0])]).expect("chart");
        assert!(!flat.contains("NaN"), "{flat}");
    }

    #[test]
    fn only_the_newest_values_are_drawn() {
        let values: Vec<f64> = (1..=15).map(f64::from).collect();
        let svg = chart("Count", &[line(&values)]).expect("chart");
        assert!(svg.contains("oldest to newest: 6, 7,"), "{svg}");
        assert!(svg.contains(", 15 /min"), "{svg}");
    }

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(unit_text("mm[Hg]"), "mmHg");
        assert_eq!(unit_text("Cel"), "°C");
        assert_eq!(unit_text("kg/m2"), "kg/m²");
        assert_eq!(unit_text("10*3/uL"), "10³/µL");
        assert_eq!(unit_text("{beats}/min"), "/min");
        assert_eq!(unit_text("mL/min/{1.73_m2}"), "mL/min/1.73 m²");
        assert_eq!(unit_text("mg/dL"), "mg/dL");
        assert_eq!(unit_text("1"), "");
    }

    #[test]
    fn values_are_rounded_per_unit() {
        assert_eq!(number_in(131.536_667_142_603_82, "mm[Hg]"), "132");
        assert_eq!(number_in(78.163_256_479_677_83, "mmHg"), "78");
        assert_eq!(number_in(179.221_397_606_933_3, "cm"), "179.2");
        assert_eq!(number_in(37.04, "Cel"), "37");
        assert_eq!(number_in(82.36, "kg"), "82.4");
        assert_eq!(number_in(98.0, "%"), "98");
        assert_eq!(number_in(5.83, "%"), "5.8");
        assert_eq!(number_in(6.854_21, "mmol/L"), "6.85");
        assert_eq!(number_in(0.045_678, "mg/dL"), "0.0457");
        assert_eq!(number_in(0.912_34, "mg/dL"), "0.912");
        assert_eq!(number_in(-0.001, "mmHg"), "0");
        assert_eq!(number_in(0.0, "mg/dL"), "0");
    }

    #[test]
    fn names_are_escaped() {
        let svg = chart("<b>x</b>", &[line(&[1.0, 2.0])]).expect("chart");
        assert!(!svg.contains("<b>"), "{svg}");
    }
}
