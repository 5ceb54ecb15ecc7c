//! Output as Docker prints it: tables with columns three spaces apart, `--format json`
//! (one JSON object a line), and the `{{.Field}}` template form (`{{json .}}`,
//! `{{.A.B}}`, `\t` and `\n` escapes).

use serde_json::Value;

use crate::error::{Error, Result};

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                let pad = widths[i] - c.chars().count() + 3;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<no value>".into(),
        other => other.to_string(),
    }
}

/// Renders a Go-template-like `format` for one object.
pub fn template(format: &str, v: &Value) -> Result<String> {
    let format = format.strip_prefix("table ").unwrap_or(format);
    let mut out = String::new();
    let mut rest = format;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| Error::Invalid(format!("template {format:?}: unclosed {{{{")))?;
        let expr = after[..end].trim();
        let text = if let Some(arg) = expr.strip_prefix("json") {
            let arg = arg.trim();
            let target = if arg == "." {
                Some(v)
            } else {
                lookup(v, arg.trim_start_matches('.'))
            };
            serde_json::to_string(target.unwrap_or(&Value::Null)).unwrap_or_default()
        } else if let Some(path) = expr.strip_prefix('.') {
            lookup(v, path)
                .map(render_value)
                .unwrap_or_else(|| "<no value>".into())
        } else {
            return Err(Error::Invalid(format!(
                "template {format:?}: {expr:?} is not supported (use {{{{.Field}}}} or {{{{json .}}}})"
            )));
        };
        out.push_str(&text);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out.replace("\\t", "\t").replace("\\n", "\n"))
}

/// Prints `items` per `--format`: `json` one object a line, else a template; None → false
/// (the caller prints its table).
pub fn print_formatted(format: Option<&str>, items: &[Value]) -> Result<bool> {
    let Some(f) = format.filter(|f| *f != "table") else {
        return Ok(false);
    };
    for v in items {
        if f == "json" {
            println!("{}", serde_json::to_string(v).unwrap_or_default());
        } else {
            println!("{}", template(f, v)?);
        }
    }
    Ok(true)
}

/// A size as Docker prints it (`4.26MB`, decimal units).
pub fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{}B", bytes.max(0))
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        let s = if s.len() > 5 {
            format!("{v:.1}")
        } else {
            s.to_owned()
        };
        format!("{s}{}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_templates_and_sizes() {
        let t = table(&["A", "LONGER"], &[vec!["xx".into(), "y".into()]]);
        assert_eq!(t, "A    LONGER\nxx   y\n");
        let v = json!({"ID": "abc", "State": {"Status": "running"}, "N": 3});
        assert_eq!(
            template("{{.ID}}\\t{{.State.Status}}", &v).unwrap(),
            "abc\trunning"
        );
        assert_eq!(
            template("{{json .State}}", &v).unwrap(),
            r#"{"Status":"running"}"#
        );
        assert_eq!(template("{{.N}} {{.Nope}}", &v).unwrap(), "3 <no value>");
        assert!(template("{{if .ID}}", &v).is_err() && template("{{.ID", &v).is_err());
        assert_eq!(size(4_261_000), "4.261MB");
        assert_eq!(size(512), "512B");
        assert_eq!(size(1_500), "1.5kB");
    }
}
