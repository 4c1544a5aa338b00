//! Finds the line a config key sits on, so that errors found after parsing (a missing secret, an
//! unknown vendor) still point at the right line. serde_yaml keeps no spans, and the config is small.

/// One step of a key path such as `watches[0].path` or `vendors.erp.client_id`.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(key: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        for index in rest.split('[') {
            if let Ok(n) = index.trim_end_matches(']').parse() {
                out.push(Step::Index(n));
            }
        }
    }
    out
}

/// A line's content column and text, with any `- ` sequence markers stepped over.
fn content(line: &str) -> (usize, &str) {
    let mut col = line.len() - line.trim_start().len();
    let mut rest = line.trim_start();
    while let Some(after) = rest.strip_prefix("- ") {
        let trimmed = after.trim_start();
        col += rest.len() - trimmed.len();
        rest = trimmed;
    }
    // A `-` alone on its line: the item's keys follow on the lines below, indented past it.
    if rest == "-" {
        col += 1;
        rest = "";
    }
    (col, rest)
}

fn is_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn key_matches(text: &str, key: &str) -> bool {
    let unquoted = text.trim_start_matches(['"', '\'']);
    unquoted
        .strip_prefix(key)
        .map(|r| {
            r.trim_start_matches(['"', '\''])
                .trim_start()
                .starts_with(':')
        })
        .unwrap_or(false)
}

/// The 1-based line of `key` in `text`; the nearest enclosing key's line when the key itself is
/// absent (a missing required key points at its parent), line 1 when nothing matches.
pub fn line_of(text: &str, key: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut best = 1;
    let mut start = 0;
    let mut parent_indent: Option<usize> = None;
    for step in steps(key) {
        let inside = |line: &str| parent_indent.is_none_or(|p| indent(line) > p);
        let found = match step {
            Step::Key(name) => lines.iter().enumerate().skip(start).find_map(|(i, line)| {
                if is_blank(line) {
                    return None;
                }
                let (col, text) = content(line);
                let in_block = i == start && parent_indent.is_some_and(|p| col > p) || inside(line);
                if !in_block {
                    return Some(Err(()));
                }
                key_matches(text, name).then_some(Ok((i, col)))
            }),
            Step::Index(n) => {
                let mut seen = 0;
                let mut item_indent = None;
                lines.iter().enumerate().skip(start).find_map(|(i, line)| {
                    if is_blank(line) {
                        return None;
                    }
                    if !inside(line) {
                        return Some(Err(()));
                    }
                    let trimmed = line.trim_start();
                    if !trimmed.starts_with('-') {
                        return None;
                    }
                    let this = indent(line);
                    if *item_indent.get_or_insert(this) != this {
                        return None;
                    }
                    seen += 1;
                    (seen == n + 1).then_some(Ok((i, this)))
                })
            }
        };
        match found {
            Some(Ok((i, col))) => {
                best = i + 1;
                // A key on a `- key:` line shares the dash's line: search it again for the next step.
                start = if matches!(step, Step::Index(_)) {
                    i
                } else {
                    i + 1
                };
                parent_indent = Some(col);
            }
            _ => break,
        }
    }
    best
}

/// The line where `key` is given a second time in its block (a map key written twice, which
/// serde_yaml would take silently, keeping the last); `line_of`'s when it is not.
pub fn line_of_second(text: &str, key: &str) -> usize {
    let first = line_of(text, key);
    let lines: Vec<&str> = text.lines().collect();
    let (Some(name), Some(line)) = (key.rsplit('.').next(), lines.get(first - 1)) else {
        return first;
    };
    let (col, _) = content(line);
    for (i, line) in lines.iter().enumerate().skip(first) {
        if is_blank(line) {
            continue;
        }
        let (this, text) = content(line);
        if this < col {
            break;
        }
        if this == col && key_matches(text, name) {
            return i + 1;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "\
journal: /tmp/j.sqlite3
workers: 4
vendors:
  erp:
    kind: kingdee
    client_id: \"1\"
  other:
    kind: kingdee
    client_id: \"2\"
watches:
  - path: /a
    vendor: erp
  - vendor: other
    path: /b
";

    #[test]
    fn finds_top_level_and_nested_keys() {
        assert_eq!(line_of(TEXT, "workers"), 2);
        assert_eq!(line_of(TEXT, "vendors.erp.client_id"), 6);
        assert_eq!(line_of(TEXT, "vendors.other.client_id"), 9);
    }

    #[test]
    fn finds_keys_inside_sequence_items() {
        assert_eq!(line_of(TEXT, "watches[0].path"), 11);
        assert_eq!(line_of(TEXT, "watches[0].vendor"), 12);
        assert_eq!(line_of(TEXT, "watches[1].vendor"), 13);
        assert_eq!(line_of(TEXT, "watches[1].path"), 14);
    }

    #[test]
    fn finds_keys_of_an_item_whose_dash_is_alone_on_its_line() {
        let text = "watches:\n  -\n    path: /a\n    vendor: erp\n    poll: often\n";
        assert_eq!(line_of(text, "watches[0].poll"), 5);
        assert_eq!(line_of(text, "watches[0].path"), 3);
    }

    #[test]
    fn a_missing_key_points_at_its_parent() {
        assert_eq!(line_of(TEXT, "vendors.erp.app_key"), 4);
        assert_eq!(line_of(TEXT, "vendors.other.domain"), 7);
    }
}
