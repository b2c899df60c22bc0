//! The two text formats `/metrics` serves, chosen by the scrape's `Accept` header.
//!
//! prometheus-client encodes OpenMetrics 1.0 only. A scraper that does not ask for OpenMetrics
//! (Prometheus before 2.5, promtool, curl, most agents) gets the Prometheus text format 0.0.4,
//! converted from it line by line: a 0.0.4 parser reads a counter's samples under the family
//! named in its `# TYPE` line, so a counter family `x` (samples `x_total`) is announced as
//! `x_total`; an info family `x` (sample `x_info`) becomes the gauge `x_info`; `# UNIT` lines
//! and the closing `# EOF` do not exist in 0.0.4 and are dropped. Served as 0.0.4 but left in
//! OpenMetrics form, every counter parsed as untyped and `promtool check metrics` failed.

/// A text format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`: the classic Prometheus text format.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics when it is acceptable with a quality
    /// above that of plain text (Prometheus 2.5 and later send
    /// `application/openmetrics-text;version=1.0.0,...,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`),
    /// else the Prometheus text format, which is also the answer to no `Accept` at all.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Prometheus };
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default().to_ascii_lowercase();
            let mut quality = 1.0;
            for param in params {
                if let Some((name, value)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        quality = value.trim().parse().unwrap_or(0.0);
                    }
                }
            }
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics > text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text (as prometheus-client writes it:
/// every family's `# HELP` before its `# TYPE`, no exemplars, no `_created` samples).
pub(super) fn to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's `# HELP` line waits for its `# TYPE`, which decides the name both announce.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, "", text);
            }
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                _ => ("", "untyped"),
            };
            if let Some((help_name, text)) = help.take() {
                push_help(&mut out, help_name, if help_name == name { suffix } else { "" }, text);
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if !line.starts_with("# UNIT ") && line != "# EOF" {
            // A sample: the same in both formats (no exemplars, no timestamps here).
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some((name, text)) = help {
        push_help(&mut out, name, "", text);
    }
    out
}

fn push_help(out: &mut String, name: &str, suffix: &str, text: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push_str(suffix);
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_everyone_else_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Format::Prometheus);
        let text_first = "text/plain;version=0.0.4,application/openmetrics-text;q=0.5";
        assert_eq!(Format::negotiate(Some(text_first)), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("application/json")), Format::Prometheus);
    }

    #[test]
    fn counters_and_infos_are_announced_under_their_sample_names() {
        let openmetrics = "# HELP s_frames Frames.\n# TYPE s_frames counter\ns_frames_total{c=\"A\"} 1\n\
                           # HELP s_build Build.\n# TYPE s_build info\ns_build_info{version=\"1\"} 1\n\
                           # HELP s_depth Depth.\n# TYPE s_depth gauge\ns_depth 3\n\
                           # HELP s_sent_bytes Sent.\n# TYPE s_sent_bytes counter\n# UNIT s_sent_bytes bytes\n\
                           s_sent_bytes_total 9\n# EOF\n";
        assert_eq!(
            to_prometheus(openmetrics),
            "# HELP s_frames_total Frames.\n# TYPE s_frames_total counter\ns_frames_total{c=\"A\"} 1\n\
             # HELP s_build_info Build.\n# TYPE s_build_info gauge\ns_build_info{version=\"1\"} 1\n\
             # HELP s_depth Depth.\n# TYPE s_depth gauge\ns_depth 3\n\
             # HELP s_sent_bytes_total Sent.\n# TYPE s_sent_bytes_total counter\ns_sent_bytes_total 9\n"
        );
    }
}
