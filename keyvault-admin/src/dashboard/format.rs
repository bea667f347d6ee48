//! How figures read on the pages: percentages, milliseconds, lengths of time, counts (grouped
//! per language). The scripts format live figures the same way (`static/js/format.js`).

use keyvault_core::StatsOverview;

use super::i18n::Lang;

/// A fraction in [0, 1] as a percentage with one decimal; a dash without data.
pub(crate) fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// Milliseconds, to three significant figures at most; a dash without data.
pub(crate) fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
    }
}

/// A length of time in seconds in its two largest units ("2 d 23 h", "45 min 10 s"); none
/// left reads as "0 s".
pub(crate) fn span(secs: f64, lang: Lang) -> String {
    let mut left = if secs.is_finite() && secs > 0.0 {
        secs.round() as u64
    } else {
        0
    };
    let units = [
        (86_400, "unit.day"),
        (3_600, "unit.hour"),
        (60, "unit.minute"),
        (1, "unit.second"),
    ];
    let parts: Vec<String> = units
        .iter()
        .filter_map(|&(size, name)| {
            let n = left / size;
            left %= size;
            (n > 0).then(|| format!("{n} {}", lang.t(name)))
        })
        .take(2)
        .collect();
    if parts.is_empty() {
        format!("0 {}", lang.t("unit.second"))
    } else {
        parts.join(" ")
    }
}

/// The overview's headline figures, as shown.
#[derive(Debug, Clone)]
pub(crate) struct Kpis {
    pub(crate) calls: String,
    pub(crate) success_rate: String,
    pub(crate) p50: String,
    pub(crate) p95: String,
    pub(crate) p99: String,
}

impl Kpis {
    pub(crate) fn of(s: &StatsOverview, lang: Lang) -> Self {
        Self {
            calls: lang.num(s.calls),
            success_rate: percent(s.success_rate),
            p50: ms(s.latency_ms.p50),
            p95: ms(s.latency_ms.p95),
            p99: ms(s.latency_ms.p99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(percent(Some(0.98765)), "98.8%");
        assert_eq!(span(259_140.0, Lang::En), "2 d 23 h");
        assert_eq!(span(2_710.4, Lang::En), "45 min 10 s");
        assert_eq!(span(86_400.0, Lang::ZhCn), "1 天");
        assert_eq!(span(-5.0, Lang::En), "0 s");
        assert_eq!(percent(None), "–");
        assert_eq!(ms(Some(1.234)), "1.23 ms");
        assert_eq!(ms(Some(42.0)), "42.0 ms");
        assert_eq!(ms(Some(1234.4)), "1234 ms");
    }
}
