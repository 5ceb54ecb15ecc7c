//! containerd's filter language: `field.path==value,other!=x,labels."a.b"~=re`.
//! Terms joined by `,` must all match; the list of filter strings a request carries
//! matches when any one of them does. An empty list matches everything.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(SimpleRegex),
}

#[derive(Debug, Clone, PartialEq)]
struct Term {
    path: Vec<String>,
    op: Op,
}

/// Anything a filter can look into: `field(["labels", "foo"])` is the value of label foo.
pub trait Filterable {
    fn field(&self, path: &[String]) -> Option<String>;
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    any_of: Vec<Vec<Term>>,
}

impl Filter {
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Self> {
        let mut any_of = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                continue;
            }
            any_of.push(parse_terms(f)?);
        }
        Ok(Filter { any_of })
    }

    pub fn matches(&self, item: &dyn Filterable) -> bool {
        self.any_of.is_empty()
            || self.any_of.iter().any(|terms| {
                terms.iter().all(|t| {
                    let v = item.field(&t.path);
                    match &t.op {
                        Op::Present => v.is_some(),
                        Op::Equal(want) => v.as_deref() == Some(want.as_str()),
                        Op::NotEqual(want) => v.as_deref() != Some(want.as_str()),
                        Op::Matches(re) => v.is_some_and(|v| re.is_match(&v)),
                    }
                })
            })
    }
}

fn invalid(input: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("invalid filter {input:?}: {why}"))
}

struct Scanner<'a> {
    input: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
            self.pos += 1;
        }
    }
    fn eat(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        if self.chars[self.pos..].iter().take(n).copied().eq(s.chars()) {
            self.pos += n;
            true
        } else {
            false
        }
    }
    fn quoted(&mut self, quote: char) -> Result<String> {
        self.pos += 1;
        let mut out = String::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let e = self
                        .peek()
                        .ok_or_else(|| invalid(self.input, "dangling escape"))?;
                    self.pos += 1;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        Err(invalid(self.input, "unterminated quoted string"))
    }
    fn field(&mut self) -> Result<String> {
        self.skip_ws();
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(c) if is_field_char(c) => {
                let start = self.pos;
                while self.peek().is_some_and(is_field_char) {
                    self.pos += 1;
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
            _ => Err(invalid(
                self.input,
                &format!("expected a field name at offset {}", self.pos),
            )),
        }
    }
    fn value(&mut self) -> Result<String> {
        self.skip_ws();
        match self.peek() {
            Some(q @ ('"' | '/' | '|')) => self.quoted(q),
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != ',') {
                    self.pos += 1;
                }
                let v: String = self.chars[start..self.pos].iter().collect();
                let v = v.trim_end().to_owned();
                if v.is_empty() || v.contains(['=', '!', '~', '"']) {
                    return Err(invalid(self.input, "expected a value"));
                }
                Ok(v)
            }
        }
    }
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/' || c == ':'
}

fn parse_terms(input: &str) -> Result<Vec<Term>> {
    let mut s = Scanner {
        input,
        chars: input.chars().collect(),
        pos: 0,
    };
    let mut terms = Vec::new();
    loop {
        let mut path = vec![s.field()?];
        while s.peek() == Some('.') {
            s.pos += 1;
            path.push(s.field()?);
        }
        s.skip_ws();
        let op = if s.eat("==") {
            Op::Equal(s.value()?)
        } else if s.eat("!=") {
            Op::NotEqual(s.value()?)
        } else if s.eat("~=") {
            Op::Matches(SimpleRegex::new(&s.value()?).map_err(|why| invalid(input, &why))?)
        } else {
            Op::Present
        };
        terms.push(Term { path, op });
        s.skip_ws();
        match s.peek() {
            None => return Ok(terms),
            Some(',') => s.pos += 1,
            Some(c) => {
                return Err(invalid(
                    input,
                    &format!("unexpected {c:?} at offset {}", s.pos),
                ))
            }
        }
    }
}

/// A small regular-expression matcher for `~=` (search semantics, like Go's
/// `regexp.MatchString`): literals, `.`, `^`, `$`, `*`, `+`, `?`, character classes
/// `[a-z]`/`[^..]`, and `\` escapes. Alternation and groups are refused with a clear error.
#[derive(Debug, Clone, PartialEq)]
pub struct SimpleRegex {
    anchored_start: bool,
    anchored_end: bool,
    items: Vec<(Atom, Rep)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Any,
    Char(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rep {
    One,
    ZeroOrOne,
    ZeroOrMore,
    OneOrMore,
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Any => true,
            Atom::Char(x) => *x == c,
            Atom::Class { negated, ranges } => {
                ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != *negated
            }
        }
    }
}

impl SimpleRegex {
    pub fn new(pattern: &str) -> std::result::Result<Self, String> {
        let mut chars: Vec<char> = pattern.chars().collect();
        let anchored_start = chars.first() == Some(&'^');
        if anchored_start {
            chars.remove(0);
        }
        let anchored_end =
            chars.last() == Some(&'$') && !(chars.len() >= 2 && chars[chars.len() - 2] == '\\');
        if anchored_end {
            chars.pop();
        }
        let mut items = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let atom = match chars[i] {
                '.' => Atom::Any,
                '\\' => {
                    i += 1;
                    let c = *chars
                        .get(i)
                        .ok_or("trailing backslash in regular expression")?;
                    match c {
                        'd' => Atom::Class {
                            negated: false,
                            ranges: vec![('0', '9')],
                        },
                        'w' => Atom::Class {
                            negated: false,
                            ranges: vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')],
                        },
                        c => Atom::Char(c),
                    }
                }
                '[' => {
                    i += 1;
                    let negated = chars.get(i) == Some(&'^');
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        let c = *chars.get(i).ok_or("unterminated character class")?;
                        if c == ']' && !ranges.is_empty() {
                            break;
                        }
                        if chars.get(i + 1) == Some(&'-')
                            && chars.get(i + 2).is_some_and(|c| *c != ']')
                        {
                            ranges.push((c, chars[i + 2]));
                            i += 3;
                        } else {
                            ranges.push((c, c));
                            i += 1;
                        }
                    }
                    Atom::Class { negated, ranges }
                }
                '(' | ')' | '|' | '{' | '}' => {
                    return Err(format!(
                        "regular expression {pattern:?}: {:?} is not supported",
                        chars[i]
                    ))
                }
                '*' | '+' | '?' => {
                    return Err(format!("regular expression {pattern:?}: nothing to repeat"))
                }
                c => Atom::Char(c),
            };
            i += 1;
            let rep = match chars.get(i) {
                Some('*') => Rep::ZeroOrMore,
                Some('+') => Rep::OneOrMore,
                Some('?') => Rep::ZeroOrOne,
                _ => Rep::One,
            };
            if rep != Rep::One {
                i += 1;
            }
            items.push((atom, rep));
        }
        Ok(SimpleRegex {
            anchored_start,
            anchored_end,
            items,
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let starts = if self.anchored_start {
            0..=0
        } else {
            0..=text.len()
        };
        starts
            .into_iter()
            .any(|s| self.match_at(&self.items, &text[s..]))
    }

    fn match_at(&self, items: &[(Atom, Rep)], text: &[char]) -> bool {
        let Some(((atom, rep), rest)) = items.split_first() else {
            return !self.anchored_end || text.is_empty();
        };
        let (min, max) = match rep {
            Rep::One => (1, 1),
            Rep::ZeroOrOne => (0, 1),
            Rep::ZeroOrMore => (0, usize::MAX),
            Rep::OneOrMore => (1, usize::MAX),
        };
        let mut n = 0;
        while n < max && n < text.len() && atom.matches(text[n]) {
            n += 1;
        }
        (min..=n).rev().any(|k| self.match_at(rest, &text[k..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Item {
        name: String,
        labels: BTreeMap<String, String>,
    }
    impl Filterable for Item {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "name" => Some(self.name.clone()),
                [l, k] if l == "labels" => self.labels.get(k).cloned(),
                _ => None,
            }
        }
    }

    fn item() -> Item {
        Item {
            name: "docker.io/library/busybox:latest".into(),
            labels: [
                ("a.b".to_string(), "c".to_string()),
                ("x".into(), "1".into()),
            ]
            .into(),
        }
    }

    #[test]
    fn matches_like_containerd() {
        let it = item();
        let m = |f: &[&str]| Filter::parse_all(f).unwrap().matches(&it);
        assert!(m(&[]));
        assert!(m(&["name==docker.io/library/busybox:latest"]));
        assert!(m(&[r#"labels."a.b"==c"#]));
        assert!(m(&["labels.x"]));
        assert!(!m(&["labels.y"]));
        assert!(m(&["name~=busybox", "name==nope"]));
        assert!(!m(&["name~=^busybox"]));
        assert!(m(&["name~=/^docker\\.io/"]));
        assert!(m(&["name!=foo,labels.x==1"]));
        assert!(!m(&["name!=foo,labels.x==2"]));
        assert!(m(&["name~=bus[a-z]+:l.*t$"]));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "==x",
            "name==",
            "name==a,",
            "labels.\"x",
            "name~=(a|b)",
            "name=x",
            "na me==x",
        ] {
            assert!(Filter::parse_all(&[bad]).is_err(), "{bad:?} accepted");
        }
    }
}
