//! `RouteFilter` masking section -> model: pointers split, builtin and
//! custom patterns compiled once, limits resolved.

use portcullis_api::route_filter::masking as api;
use portcullis_model::route_filter::json_pointer::JsonPointer;
use portcullis_model::route_filter::masking::{
    FieldMask, MaskAction, MaskingConfig, MatchCheck, PatternMask, SearchPattern,
};

use super::SectionContext;

const DEFAULT_MAX_BODY: u64 = 1 << 20;
const MAX_MAX_BODY: u64 = 64 << 20;
const DEFAULT_REPLACEMENT: &str = "[REDACTED]";

/// Candidates of the builtin patterns; the checksum (`MatchCheck`) decides.
const PAYMENT_CARD: &str = r"\b\d(?:[ -]?\d){12,18}\b";
const IBAN: &str = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b";
const EMAIL: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";
const US_SSN: &str = r"\b\d{3}-\d{2}-\d{4}\b";

pub(crate) fn compile(
    spec: &api::MaskingSpec,
    _ctx: &SectionContext<'_>,
) -> Result<MaskingConfig, String> {
    let max_body = spec.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_body == 0 || max_body > MAX_MAX_BODY {
        return Err(format!(
            "maxBodyBytes must be between 1 and {MAX_MAX_BODY}, got {max_body}"
        ));
    }
    if spec.fields.is_empty() && spec.patterns.is_empty() {
        return Err("give at least one of fields and patterns".into());
    }
    let fields = spec
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let pointer =
                JsonPointer::parse(&f.pointer).map_err(|e| format!("fields[{i}]: {e}"))?;
            if pointer.tokens.is_empty() {
                return Err(format!("fields[{i}]: the pointer must name a member"));
            }
            Ok(FieldMask {
                pointer,
                action: action(&f.action).map_err(|e| format!("fields[{i}]: {e}"))?,
            })
        })
        .collect::<Result<_, String>>()?;
    let patterns = spec
        .patterns
        .iter()
        .enumerate()
        .map(|(i, p)| pattern(p).map_err(|e| format!("patterns[{i}]: {e}")))
        .collect::<Result<_, String>>()?;
    Ok(MaskingConfig {
        fields,
        patterns,
        text_bodies: spec.text_bodies.unwrap_or(false),
        // Bounded by MAX_MAX_BODY above.
        max_body_bytes: max_body as usize,
        reject_over_limit: spec.over_limit != Some(api::MaskOverLimit::PassThrough),
    })
}

fn pattern(spec: &api::PatternMaskSpec) -> Result<PatternMask, String> {
    let (source, check) = match (&spec.builtin, &spec.regex) {
        (Some(b), None) => match b {
            api::BuiltinPattern::PaymentCard => (PAYMENT_CARD, MatchCheck::Luhn),
            api::BuiltinPattern::Iban => (IBAN, MatchCheck::Iban),
            api::BuiltinPattern::Email => (EMAIL, MatchCheck::None),
            api::BuiltinPattern::UsSsn => (US_SSN, MatchCheck::UsSsn),
        },
        (None, Some(r)) => (r.as_str(), MatchCheck::None),
        _ => return Err("give exactly one of builtin and regex".into()),
    };
    let pattern = SearchPattern::new(source).map_err(|e| format!("invalid regex: {e}"))?;
    if pattern.regex().is_match("") {
        return Err(format!("regex {source:?} matches the empty string"));
    }
    Ok(PatternMask {
        pattern,
        check,
        action: action(&spec.action)?,
    })
}

fn action(spec: &api::MaskActionSpec) -> Result<MaskAction, String> {
    Ok(match spec.action {
        api::MaskAction::Remove => MaskAction::Remove,
        api::MaskAction::Replace => MaskAction::Replace(
            spec.replacement
                .clone()
                .unwrap_or_else(|| DEFAULT_REPLACEMENT.to_string()),
        ),
        api::MaskAction::Mask => {
            let character = match spec.mask_character.as_deref() {
                None => '*',
                Some(c) => {
                    let mut chars = c.chars();
                    match (chars.next(), chars.next()) {
                        (Some(ch), None) => ch,
                        _ => return Err(format!("maskCharacter {c:?} must be one character")),
                    }
                }
            };
            MaskAction::Mask {
                keep_last: spec.keep_last.unwrap_or(0) as usize,
                character,
            }
        }
    })
}
