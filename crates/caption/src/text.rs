//! Word pieces to text, as `BertTokenizer.decode(ids, skip_special_tokens=True)` of
//! transformers 3.0.2, then `str.capitalize()` as CATR's demo does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The special tokens of bert-base-uncased: `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`.
const SPECIAL: [usize; 5] = [0, UNK, 101, 102, 103];
/// `[UNK]`, for words the vocabulary cannot spell.
pub const UNK: usize = 100;

/// Cleanup replacements of `clean_up_tokenization`, in order.
const CLEANUP: [(&str, &str); 10] = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
];

/// A word-piece vocabulary: token `i` is line `i` of `vocab.txt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub tokens: Vec<String>,
}

/// A vocabulary that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct VocabError {
    pub path: PathBuf,
    pub message: String,
}

impl Vocab {
    /// Reads `vocab.txt` (one token per line) or a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, VocabError> {
        let err = |message: String| VocabError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        if path.extension().is_some_and(|e| e == "json") {
            #[derive(serde::Deserialize)]
            struct Model {
                vocab: HashMap<String, usize>,
            }
            #[derive(serde::Deserialize)]
            struct TokenizerJson {
                model: Model,
            }
            let parsed: TokenizerJson =
                serde_json::from_str(&text).map_err(|e| err(format!("not a tokenizer.json: {e}")))?;
            let mut tokens = vec![String::new(); parsed.model.vocab.len()];
            for (token, id) in parsed.model.vocab {
                *tokens
                    .get_mut(id)
                    .ok_or_else(|| err(format!("id {id} out of range")))? = token;
            }
            return Ok(Self { tokens });
        }
        Ok(Self {
            tokens: text.lines().map(str::to_string).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Id of `token`, if the vocabulary has it.
    pub fn id(&self, token: &str) -> Option<usize> {
        self.tokens.iter().position(|t| t == token)
    }

    /// Word-piece ids of `text` as `BertTokenizer.encode(text, add_special_tokens=False)`
    /// (uncased): lower-cased, split at white space and punctuation, each word split greedily
    /// into the longest pieces in the vocabulary (`##` marks a continuation); a word that
    /// cannot be split becomes `[UNK]` (100).
    pub fn encode(&self, text: &str) -> Vec<usize> {
        let index: HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let lower = text.to_lowercase();
        let mut words: Vec<String> = Vec::new();
        for chunk in lower.split_whitespace() {
            let mut word = String::new();
            for c in chunk.chars() {
                if c.is_ascii_punctuation() || (!c.is_alphanumeric() && !c.is_whitespace()) {
                    words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)));
                    words.push(c.to_string());
                } else {
                    word.push(c);
                }
            }
            words.extend((!word.is_empty()).then_some(word));
        }
        let mut ids = Vec::new();
        for word in &words {
            let chars: Vec<char> = word.chars().collect();
            let (mut start, mut pieces) = (0, Vec::new());
            while start < chars.len() {
                let found = (start + 1..=chars.len()).rev().find_map(|end| {
                    let piece: String = chars[start..end].iter().collect();
                    let piece = if start > 0 { format!("##{piece}") } else { piece };
                    index.get(piece.as_str()).map(|&id| (id, end))
                });
                match found {
                    Some((id, end)) => {
                        pieces.push(id);
                        start = end;
                    }
                    None => {
                        pieces = vec![UNK];
                        break;
                    }
                }
            }
            ids.extend(pieces);
        }
        ids
    }

    /// The caption text of `ids`.
    pub fn decode(&self, ids: &[usize]) -> String {
        let pieces: Vec<&str> = ids
            .iter()
            .filter(|id| !SPECIAL.contains(id))
            .map(|&id| self.tokens.get(id).map(String::as_str).unwrap_or("[UNK]"))
            .collect();
        let mut text = pieces.join(" ").replace(" ##", "").trim().to_string();
        for (from, to) in CLEANUP {
            text = text.replace(from, to);
        }
        capitalize(&text)
    }
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// One word of a caption and the decoding steps of its pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    /// Indices into the generated ids (= decoding steps) of this word's pieces.
    pub steps: Vec<usize>,
}

/// Words of a caption: `##` pieces joined to the word before them (special tokens
/// dropped), each with the steps whose attention maps belong to it.
pub fn words(vocab: &Vocab, ids: &[usize]) -> Vec<Word> {
    let mut out: Vec<Word> = Vec::new();
    for (step, &id) in ids.iter().enumerate() {
        if SPECIAL.contains(&id) {
            continue;
        }
        let piece = vocab.tokens.get(id).map(String::as_str).unwrap_or("[UNK]");
        match (piece.strip_prefix("##"), out.last_mut()) {
            (Some(rest), Some(word)) => {
                word.text.push_str(rest);
                word.steps.push(step);
            }
            _ => out.push(Word {
                text: piece.to_string(),
                steps: vec![step],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocab {
        let mut tokens: Vec<String> = (0..104).map(|i| format!("[unused{i}]")).collect();
        tokens[0] = "[PAD]".into();
        tokens[100] = "[UNK]".into();
        tokens[101] = "[CLS]".into();
        tokens[102] = "[SEP]".into();
        tokens[103] = "[MASK]".into();
        for w in [
            "a", "man", "'", "s", "cat", "##s", "sitting", ".", "don", "n't", ",", "?", "NASA",
        ] {
            tokens.push(w.into());
        }
        Vocab { tokens }
    }

    #[test]
    fn decode_follows_transformers_3() {
        let v = vocab();
        // a man ' s cats sitting . -> "a man's cats sitting." (the " ' " rule fires first)
        assert_eq!(
            v.decode(&[101, 104, 105, 106, 107, 108, 109, 110, 111, 102]),
            "A man's cats sitting."
        );
        assert_eq!(v.decode(&[112, 113, 114, 115]), "Donn't,?");
        assert_eq!(v.decode(&[0, 116, 105]), "Nasa man");
        assert_eq!(v.decode(&[]), "");
    }

    #[test]
    fn encode_splits_words_into_longest_pieces() {
        let v = vocab();
        // "cats" is `cat ##s`; punctuation splits off; unknown words become [UNK].
        assert_eq!(
            v.encode("A man's cats sitting."),
            [104, 105, 106, 107, 108, 109, 110, 111]
        );
        assert_eq!(v.encode("  cat  zebra,"), [108, UNK, 114]);
        assert_eq!(v.decode(&v.encode("a man sitting")), "A man sitting");
        assert_eq!(v.id("[CLS]"), Some(101));
    }

    #[test]
    fn word_pieces_share_a_word() {
        let v = vocab();
        let w = words(&v, &[104, 108, 109, 110]);
        assert_eq!(
            w.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(),
            ["a", "cats", "sitting"]
        );
        assert_eq!(w[1].steps, [1, 2]);
        assert_eq!(w[2].steps, [3]);
    }
}
