//! `data.prompt_syntax`: how the prompt texts are read.
//!
//! - `"plain"` (the default): as diffusers' SDXL pipeline reads them. Each text is tokenized as it is, cut to the
//!   77-token window (with a warning) — `(word:1.3)` is just text.
//! - `"weighted"`: A1111's emphasis syntax and prompts of any length, as A1111 / ComfyUI users write them:
//!   [`parse_attention`] reads `(text)` ×1.1, `((text))` ×1.21, `[text]` ÷1.1, `(text:1.5)`, the escapes
//!   `\(` `\)` `\[` `\]` `\\`, and `BREAK` (which starts a new 75-token chunk); the tokens go to the encoders in
//!   chunks of 75 ([`crate::pipeline::prompt_chunks`]) and each token's weight is applied to its hidden states as
//!   ComfyUI and compel do it ([`crate::pipeline::text`]).
//!
//! The parser follows A1111's `modules/prompt_parser.py` `parse_prompt_attention` token for token, including what
//! A1111 does with unbalanced brackets (an unclosed bracket weights the rest of the prompt; a stray `)` or `]` is
//! text) and with a weight that is not a number (`(a:xyz)` is the text `a:xyz` at ×1.1). Where A1111 fails with a
//! Python exception — a weight of dots and digits that is no number, like `(a:1.2.3)` — this is an error naming the
//! field. Two deliberate differences: `BREAK` always breaks, also inside brackets (A1111 multiplies its marker
//! weight there and then encodes the word `BREAK` as text), and weights are numbers of ASCII digits (Python's `\d`
//! takes any Unicode digit).

use crate::error::{Error, Result};

/// How the prompt texts of a request are read (`data.prompt_syntax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptSyntax {
    /// diffusers' reading: the literal text, cut to 77 tokens.
    #[default]
    Plain,
    /// A1111's emphasis syntax and `BREAK`, prompts of any length in 75-token chunks.
    Weighted,
}

impl PromptSyntax {
    /// The field's name.
    pub const FIELD: &'static str = "data.prompt_syntax";
    /// The accepted values.
    pub const NAMES: [&'static str; 2] = ["plain", "weighted"];

    /// The syntax a `data.prompt_syntax` value names; another value is an error naming the field.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "plain" => Ok(PromptSyntax::Plain),
            "weighted" => Ok(PromptSyntax::Weighted),
            other => Err(Error::field(Self::FIELD, format!("must be \"plain\" or \"weighted\", got {other:?}"))),
        }
    }

    /// The value's name as the request spells it.
    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::Plain => "plain",
            PromptSyntax::Weighted => "weighted",
        }
    }
}

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text and the weight of its tokens (A1111's float64 product of the brackets around it).
    Text {
        /// The text, escapes resolved and brackets removed.
        text: String,
        /// The weight.
        weight: f64,
    },
    /// `BREAK`: the tokens after it start a new chunk.
    Break,
}

/// A1111's multiplier of `( )`.
const ROUND: f64 = 1.1;

/// One lexical token of A1111's `re_attention`.
#[derive(Debug, PartialEq)]
enum Lexeme<'a> {
    /// An escape (`\(` …, or a lone `\`, which stands for nothing): its literal text.
    Literal(&'a str),
    Open(char),
    /// `:number)`: the number's text.
    Weight(&'a str),
    Close(char),
    /// A run of other characters, or a lone `:`.
    Text(&'a str),
}

/// Characters that end a text run (`[^\\()\[\]:]+`).
fn special(c: char) -> bool {
    matches!(c, '\\' | '(' | ')' | '[' | ']' | ':')
}

/// The lexeme at the start of `s` (not empty) and its length in bytes, in the order A1111's alternation tries them.
fn lex(s: &str) -> (Lexeme<'_>, usize) {
    let mut chars = s.chars();
    let first = chars.next().expect("lex is called on a non-empty string");
    match first {
        '\\' => match chars.next() {
            Some(c @ ('(' | ')' | '[' | ']' | '\\')) => (Lexeme::Literal(&s[1..1 + c.len_utf8()]), 1 + c.len_utf8()),
            _ => (Lexeme::Literal(""), 1),
        },
        '(' | '[' => (Lexeme::Open(first), 1),
        ':' => match weight_at(&s[1..]) {
            Some(n) => (Lexeme::Weight(&s[1..1 + n]), n + 2),
            None => (Lexeme::Text(":"), 1),
        },
        ')' | ']' => (Lexeme::Close(first), 1),
        _ => {
            let end = s.find(special).unwrap_or(s.len());
            (Lexeme::Text(&s[..end]), end)
        }
    }
}

/// `[+-]?[.\d]+\)` at the start of `s`: the length of the number (without the `)`).
fn weight_at(s: &str) -> Option<usize> {
    let sign = usize::from(s.starts_with(['+', '-']));
    let digits = s[sign..].find(|c: char| !(c == '.' || c.is_ascii_digit())).unwrap_or(s.len() - sign);
    (digits > 0 && s[sign + digits..].starts_with(')')).then_some(sign + digits)
}

/// Python's `\w`: letters, digits and `_`.
fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` split at A1111's `\s*\bBREAK\b\s*`: the parts between the markers.
fn split_breaks(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    let mut from = 0;
    while let Some(k) = rest[from..].find("BREAK").map(|k| k + from) {
        let before_ok = rest[..k].chars().next_back().is_none_or(|c| !word_char(c));
        let after_ok = rest[k + 5..].chars().next().is_none_or(|c| !word_char(c));
        if before_ok && after_ok {
            parts.push(rest[..k].trim_end());
            rest = rest[k + 5..].trim_start();
            from = 0;
        } else {
            from = k + 1;
        }
    }
    parts.push(rest);
    parts
}

/// An entry of the parse under construction; a `BREAK` carries a weight as in A1111 but never merges.
struct Entry {
    text: String,
    weight: f64,
    is_break: bool,
}

/// Parse `text`, the value of `field`, as A1111's `parse_prompt_attention` does: the pieces of text with their
/// weights and the `BREAK`s, runs of equal weight merged (so they are tokenized together).
///
/// Errors: a weight `(text:w)` whose `w` is dots and digits but not a number (A1111 raises there).
pub fn parse_attention(field: &str, text: &str) -> Result<Vec<Piece>> {
    let mut res: Vec<Entry> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Entry>, from: usize, by: f64| res[from..].iter_mut().for_each(|e| e.weight *= by);
    let push_text = |res: &mut Vec<Entry>, s: &str| {
        for (i, part) in split_breaks(s).into_iter().enumerate() {
            if i > 0 {
                res.push(Entry { text: "BREAK".into(), weight: -1.0, is_break: true });
            }
            res.push(Entry { text: part.into(), weight: 1.0, is_break: false });
        }
    };
    let mut at = 0;
    while at < text.len() {
        let (lexeme, len) = lex(&text[at..]);
        let whole = &text[at..at + len];
        at += len;
        match lexeme {
            Lexeme::Literal(s) => res.push(Entry { text: s.into(), weight: 1.0, is_break: false }),
            Lexeme::Open('(') => round.push(res.len()),
            Lexeme::Open(_) => square.push(res.len()),
            Lexeme::Weight(w) if !round.is_empty() => {
                let weight: f64 = w.parse().map_err(|_| {
                    Error::field(field, format!("`{whole}`: the weight {w:?} is not a number (write (text:1.2))"))
                })?;
                let from = round.pop().expect("checked non-empty");
                multiply(&mut res, from, weight);
            }
            Lexeme::Close(')') if !round.is_empty() => {
                let from = round.pop().expect("checked non-empty");
                multiply(&mut res, from, ROUND);
            }
            Lexeme::Close(']') if !square.is_empty() => {
                let from = square.pop().expect("checked non-empty");
                multiply(&mut res, from, 1.0 / ROUND);
            }
            Lexeme::Weight(_) | Lexeme::Close(_) | Lexeme::Text(_) => push_text(&mut res, whole),
        }
    }
    for from in round {
        multiply(&mut res, from, ROUND);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / ROUND);
    }
    let mut pieces: Vec<Piece> = Vec::with_capacity(res.len().max(1));
    for e in res {
        match (pieces.last_mut(), e.is_break) {
            (_, true) => pieces.push(Piece::Break),
            (Some(Piece::Text { text, weight }), false) if *weight == e.weight => text.push_str(&e.text),
            (_, false) => pieces.push(Piece::Text { text: e.text, weight: e.weight }),
        }
    }
    if pieces.is_empty() {
        pieces.push(Piece::Text { text: String::new(), weight: 1.0 });
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<(String, f64)> {
        parse_attention("data.prompt", s)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Text { text, weight } => (text, weight),
                Piece::Break => ("BREAK".into(), -1.0),
            })
            .collect()
    }

    fn pairs(want: &[(&str, f64)]) -> Vec<(String, f64)> {
        want.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    /// The examples of A1111's `parse_prompt_attention` docstring, with its float64 weights to the bit.
    #[test]
    fn a1111_docstring_examples_parse_to_the_same_pieces_and_weights() {
        assert_eq!(parse("normal text"), pairs(&[("normal text", 1.0)]));
        assert_eq!(parse("an (important) word"), pairs(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)]));
        assert_eq!(parse("(unbalanced"), pairs(&[("unbalanced", 1.1)]));
        assert_eq!(parse(r"\(literal\]"), pairs(&[("(literal]", 1.0)]));
        assert_eq!(parse("(unnecessary)(parens)"), pairs(&[("unnecessaryparens", 1.1)]));
        assert_eq!(
            parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            pairs(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn square_brackets_divide_by_one_point_one_and_nest() {
        assert_eq!(parse("[a]"), pairs(&[("a", 1.0 / 1.1)]));
        assert_eq!(parse("[[a]] b"), pairs(&[("a", (1.0 / 1.1) * (1.0 / 1.1)), (" b", 1.0)]));
        assert_eq!(parse("((a))"), pairs(&[("a", 1.1 * 1.1)]));
        assert_eq!(parse("(a:0.5) (b:1.5)"), pairs(&[("a", 0.5), (" ", 1.0), ("b", 1.5)]));
    }

    #[test]
    fn escapes_give_literal_brackets_and_backslashes() {
        assert_eq!(parse(r"\(a\) \[b\] c\\d"), pairs(&[("(a) [b] c\\d", 1.0)]));
        // A lone backslash stands for nothing, as in A1111.
        assert_eq!(parse(r"a\b"), pairs(&[("ab", 1.0)]));
        assert_eq!(parse(r"a\"), pairs(&[("a", 1.0)]));
    }

    #[test]
    fn unbalanced_brackets_are_text_or_weight_the_rest_as_in_a1111() {
        assert_eq!(parse("a) b]"), pairs(&[("a) b]", 1.0)]));
        assert_eq!(parse("[a"), pairs(&[("a", 1.0 / 1.1)]));
        assert_eq!(parse("a:1.5)"), pairs(&[("a:1.5)", 1.0)]));
        // A1111's order for unclosed brackets: the round ones first, from the outermost, then the square ones.
        assert_eq!(parse("([a (b"), pairs(&[("a ", 1.1 * (1.0 / 1.1)), ("b", 1.1 * 1.1 * (1.0 / 1.1))]));
    }

    #[test]
    fn a_weight_that_is_no_number_pattern_is_text_and_a_bad_number_is_an_error() {
        assert_eq!(parse("(a:xyz)"), pairs(&[("a:xyz", 1.1)]));
        assert_eq!(parse("(a: 1.5)"), pairs(&[("a: 1.5", 1.1)]));
        assert_eq!(parse("(a:-0.5)"), pairs(&[("a", -0.5)]));
        assert_eq!(parse("(a:+.5)"), pairs(&[("a", 0.5)]));
        let err = parse_attention("data.negative_prompt", "(a:1.2.3)").unwrap_err();
        assert!(err.to_string().contains("data.negative_prompt") && err.to_string().contains("1.2.3"), "{err}");
        assert!(parse_attention("data.prompt", "(a:.)").is_err());
    }

    #[test]
    fn break_splits_the_text_and_eats_the_spaces_around_it() {
        let b = ("BREAK", -1.0);
        assert_eq!(parse("a cat BREAK a dog"), pairs(&[("a cat", 1.0), b, ("a dog", 1.0)]));
        assert_eq!(parse("BREAKING news BREAK"), pairs(&[("BREAKING news", 1.0), b, ("", 1.0)]));
        assert_eq!(parse("a BREAK BREAK b"), pairs(&[("a", 1.0), b, ("", 1.0), b, ("b", 1.0)]));
        assert_eq!(parse("(a BREAK b)"), pairs(&[("a", 1.1), b, ("b", 1.1)]));
        assert_eq!(parse("break_BREAK,x"), pairs(&[("break_BREAK,x", 1.0)]));
        assert_eq!(parse("x,BREAK,y"), pairs(&[("x,", 1.0), b, (",y", 1.0)]));
    }

    #[test]
    fn an_empty_prompt_is_one_empty_piece() {
        assert_eq!(parse(""), pairs(&[("", 1.0)]));
        assert_eq!(parse("()"), pairs(&[("", 1.0)]));
    }

    #[test]
    fn the_syntax_field_takes_plain_or_weighted_only() {
        assert_eq!(PromptSyntax::parse("plain").unwrap(), PromptSyntax::Plain);
        assert_eq!(PromptSyntax::parse("weighted").unwrap(), PromptSyntax::Weighted);
        let err = PromptSyntax::parse("compel").unwrap_err().to_string();
        assert!(err.contains("data.prompt_syntax") && err.contains("compel"), "{err}");
        assert_eq!(PromptSyntax::default().name(), "plain");
    }
}
