//! Field templates for a Jiandaoyun record (`create_record.fields`): literal text with placeholders
//! such as `{filename}` that are filled in per file. An unknown placeholder is a config error, so a
//! typo is found at `imgsyncd check`, never at upload time.

use std::fmt;

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The file's name, `photo.jpg`.
    Filename,
    /// The file's absolute path.
    Path,
    /// The path relative to the root of the watch that took the file, `shoes/photo.jpg`.
    Relpath,
    /// The SHA-256 of the bytes sent, lowercase hex.
    Sha256,
    /// The size in bytes.
    Size,
    /// The image's width and height in pixels.
    Width,
    Height,
}

impl Placeholder {
    pub const ALL: [Placeholder; 7] = [
        Placeholder::Filename,
        Placeholder::Path,
        Placeholder::Relpath,
        Placeholder::Sha256,
        Placeholder::Size,
        Placeholder::Width,
        Placeholder::Height,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Filename => "filename",
            Placeholder::Path => "path",
            Placeholder::Relpath => "relpath",
            Placeholder::Sha256 => "sha256",
            Placeholder::Size => "size",
            Placeholder::Width => "width",
            Placeholder::Height => "height",
        }
    }

    fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// A parsed template: `{name}` is a placeholder, `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; the error says what is wrong in words fit for a config error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let end = rest.find('}').ok_or_else(|| {
                        format!(
                            "unterminated placeholder `{}` (missing `}}`; write `{{{{` for a literal brace)",
                            &text[at..]
                        )
                    })?;
                    let name = &rest[..end];
                    let placeholder = Placeholder::from_name(name.trim()).ok_or_else(|| {
                        format!(
                            "unknown placeholder `{{{name}}}`; known: {}",
                            Placeholder::ALL
                                .iter()
                                .map(|p| format!("{{{}}}", p.name()))
                                .collect::<Vec<_>>()
                                .join(" ")
                        )
                    })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Value(placeholder));
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The text with each placeholder replaced by what `value` gives for it.
    pub fn render(&self, value: impl Fn(Placeholder) -> String) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(p) => out.push_str(&value(*p)),
            }
        }
        out
    }

    /// The placeholders the template uses, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Value(p) => Some(*p),
            Piece::Text(_) => None,
        })
    }
}

impl fmt::Display for Template {
    /// The template as it would be written in the config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Piece::Value(p) => write!(f, "{{{}}}", p.name())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(p: Placeholder) -> String {
        match p {
            Placeholder::Filename => "a.png".into(),
            Placeholder::Width => "640".into(),
            Placeholder::Height => "480".into(),
            other => format!("<{}>", other.name()),
        }
    }

    #[test]
    fn placeholders_are_filled_and_braces_escaped() {
        let t = Template::parse("{filename}: {width}×{height} px {{raw}} }").unwrap();
        assert_eq!(t.render(fill), "a.png: 640×480 px {raw} }");
        assert_eq!(t.to_string(), "{filename}: {width}×{height} px {{raw}} }}");
        assert_eq!(Template::parse("").unwrap().render(fill), "");
        assert_eq!(
            Template::parse("产品 {sha256}").unwrap().render(fill),
            "产品 <sha256>"
        );
        let all = Template::parse("{path}{relpath}{size}").unwrap();
        assert_eq!(
            all.placeholders().collect::<Vec<_>>(),
            [Placeholder::Path, Placeholder::Relpath, Placeholder::Size]
        );
    }

    #[test]
    fn unknown_and_unterminated_placeholders_are_refused() {
        assert_eq!(
            Template::parse("{file}").unwrap_err(),
            "unknown placeholder `{file}`; known: {filename} {path} {relpath} {sha256} {size} \
             {width} {height}"
        );
        assert!(Template::parse("size {size").unwrap_err().starts_with(
            "unterminated placeholder `{size` (missing `}`; write `{{` for a literal brace)"
        ));
        assert!(Template::parse("{}").is_err());
    }
}
