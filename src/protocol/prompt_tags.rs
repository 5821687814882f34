//! A1111's LoRA tags in a prompt: `<lora:name>`, `<lora:name:weight>`, `<lora:name:te:unet>` and the named forms
//! `te=` / `unet=` (`<lyco:…>` is A1111's alias). Users bring prompts from A1111 with these tags; tokenized as
//! text they would do nothing, silently. They are taken out of the prompt and become LoRA requests, after those
//! of `data.lora.models`, as A1111's `extra_networks.parse_prompt` and `extra_networks_lora.activate` read them:
//!
//! - every `<word:args>` is removed from the text (nothing else is touched, so the text the encoders see is the
//!   prompt without its tags);
//! - `args` split at `:`; an item `key=value` is named, the others positional; the first positional is the name;
//! - the text-encoder weight is named `te`, else the second positional, else 1; the UNet weight is named `unet`,
//!   else the third positional, else the text-encoder weight.
//!
//! What A1111 would skip with a console warning is an error here, naming `data.prompt`: other tag kinds
//! (`<hypernet:…>`), `dyn=` (dynamic rank, not supported), unknown named items, weights that are not numbers.
//! Tags in the negative prompt are an error too (A1111 does not apply them from there either), and so are tags in
//! `prompt_2` / `negative_prompt_2` (diffusers' second-encoder texts, which A1111 does not have).

use super::params::LoraRequest;
use crate::error::{Error, Result};

/// The field tags are read from.
pub const FIELD: &str = "data.prompt";

/// `prompt` without its tags, and the LoRAs they ask for (with `weight` the text-encoder weight and `unet_weight`
/// set when it differs).
pub fn extract(prompt: &str) -> Result<(String, Vec<LoraRequest>)> {
    let mut text = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some((before, kind, args, after)) = next_tag(rest) {
        text.push_str(before);
        match kind {
            "lora" | "lyco" => loras.push(lora(args)?),
            other => {
                return Err(Error::field(
                    FIELD,
                    format!("`<{other}:{args}>`: only <lora:name:weight> tags are supported in prompts"),
                ))
            }
        }
        rest = after;
    }
    text.push_str(rest);
    Ok((text, loras))
}

/// An error when `text`, the value of `field` (a prompt other than `data.prompt`), holds a tag.
pub fn refuse_in(field: &str, text: &str) -> Result<()> {
    match next_tag(text) {
        Some((_, kind, args, _)) => Err(Error::field(
            field,
            format!("`<{kind}:{args}>`: LoRA tags are read from data.prompt (or give the LoRA in data.lora.models)"),
        )),
        None => Ok(()),
    }
}

/// The first `<word:args>` of `s` (word: letters, digits, `_`; args: anything but `>`, not empty), as (text before,
/// word, args, text after) — Python's `<(\w+):([^>]+)>`.
fn next_tag(s: &str) -> Option<(&str, &str, &str, &str)> {
    let mut from = 0;
    while let Some(open) = s[from..].find('<').map(|i| from + i) {
        let tail = &s[open + 1..];
        let word_len = tail.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let after_word = &tail[word_len..];
        if word_len > 0 && after_word.starts_with(':') {
            if let Some(close) = after_word[1..].find('>').filter(|&n| n > 0) {
                let args = &after_word[1..1 + close];
                let end = open + 1 + word_len + 1 + close + 1;
                return Some((&s[..open], &tail[..word_len], args, &s[end..]));
            }
        }
        from = open + 1;
    }
    None
}

/// One `<lora:args>` tag as a request.
fn lora(args: &str) -> Result<LoraRequest> {
    let bad = |what: String| Error::field(FIELD, format!("`<lora:{args}>`: {what}"));
    let mut positional = Vec::new();
    let (mut te, mut unet) = (None, None);
    for item in args.split(':') {
        match item.split_once('=') {
            Some(("te", v)) => te = Some(v),
            Some(("unet", v)) => unet = Some(v),
            Some(("dyn", _)) => return Err(bad("dyn (a dynamic rank) is not supported".into())),
            Some((key, _)) => return Err(bad(format!("unknown setting `{key}` (te= and unet= are known)"))),
            None => positional.push(item),
        }
    }
    let name = positional.first().map(|n| n.trim()).filter(|n| !n.is_empty());
    let Some(name) = name else { return Err(bad("no LoRA name".into())) };
    if positional.len() > 3 {
        return Err(bad("a dynamic rank (4th value) is not supported".into()));
    }
    let number = |v: &str| -> Result<f32> {
        match v.trim().parse::<f64>() {
            Ok(w) if w.is_finite() && w.abs() <= super::normalize::MAX_LORA_WEIGHT => Ok(w as f32),
            _ => Err(bad(format!(
                "weight {v:?} is not a number from -{m} to {m}",
                m = super::normalize::MAX_LORA_WEIGHT
            ))),
        }
    };
    let te = te.or(positional.get(1).copied()).map(number).transpose()?.unwrap_or(1.0);
    let unet = unet.or(positional.get(2).copied()).map(number).transpose()?.unwrap_or(te);
    Ok(LoraRequest {
        name: name.to_string(),
        weight: te,
        unet_weight: (unet != te).then_some(unet),
        text_encoder_weight: None,
        field: FIELD.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, weight: f32, unet: Option<f32>) -> LoraRequest {
        LoraRequest { name: name.into(), weight, unet_weight: unet, text_encoder_weight: None, field: FIELD.into() }
    }

    #[test]
    fn tags_leave_the_prompt_and_become_loras_as_a1111_reads_them() {
        let (text, loras) =
            extract("a cat <lora:detail:0.8>, <lyco:ink>, (sharp:1.2) <lora:styles/x:0.5:1.5><lora:y:unet=0.3>")
                .unwrap();
        assert_eq!(text, "a cat , , (sharp:1.2) ");
        assert_eq!(
            loras,
            vec![
                req("detail", 0.8, None),
                req("ink", 1.0, None),
                req("styles/x", 0.5, Some(1.5)),
                req("y", 1.0, Some(0.3))
            ]
        );
        let (_, named) = extract("<lora:z:unet=2:te=0>").unwrap();
        assert_eq!(named, vec![req("z", 0.0, Some(2.0))]);
    }

    #[test]
    fn text_that_is_not_a_tag_stays_as_it_is() {
        for prompt in ["a <3 b", "x < y > z", "<:a>", "<lora>", "<lora:>", "tag <b c:d>", "a <lora:x"] {
            assert_eq!(extract(prompt).unwrap(), (prompt.to_string(), vec![]), "{prompt}");
        }
        assert!(refuse_in("data.negative_prompt", "blurry, <3").is_ok());
    }

    #[test]
    fn what_a1111_would_skip_is_an_error_naming_the_field() {
        for (prompt, needle) in [
            ("a <hypernet:h:1>", "only <lora:name:weight>"),
            ("<lora:x:1:1:16>", "dynamic rank"),
            ("<lora:x:dyn=8>", "dyn"),
            ("<lora:x:strength=1>", "unknown setting `strength`"),
            ("<lora:x:heavy>", "\"heavy\" is not a number"),
            ("<lora:x:80>", "from -20 to 20"),
            ("<lora: :1>", "no LoRA name"),
        ] {
            let e = extract(prompt).unwrap_err().to_string();
            assert!(e.contains("data.prompt") && e.contains(needle), "{prompt}: {e}");
        }
        let e = refuse_in("data.negative_prompt", "ugly <lora:x:1>").unwrap_err().to_string();
        assert!(e.contains("data.negative_prompt") && e.contains("<lora:x:1>"), "{e}");
    }
}
