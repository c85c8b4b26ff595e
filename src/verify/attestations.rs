//! Required attestations of a rule (`[[rules.attestations]]`), checked once the image's
//! signatures are: the `sha256-<hex>.att` attachment cosign writes (`cosign attest`), one DSSE
//! envelope per layer over an in-toto statement.
//!
//! Every layer is verified against the rule's attestors (the signature over the DSSE PAE,
//! Rekor when the attestor requires it, the statement's subject is this digest); the
//! predicate type that counts is the *signed* statement's, never the layer's `predicateType`
//! annotation (that one only names unverified layers in messages). A requirement is met by one
//! verified statement of its predicate type, signed by one of its attestors, whose predicate
//! meets every condition. The first unmet requirement decides the denial, and its message
//! names the predicate type.

use oci_client::Reference;

use super::cosign::DSSE_MEDIA_TYPE;
use super::cosign::intoto::AttestationFailure;
use super::cosign::tag::attestation::{self, VerifiedAttestation};
use super::policy::{AttestationRule, Rule};
use super::{Attached, Denial, Finding, State, attachment_tag, fetch_attached};
use crate::registry::Auth;

/// Layer annotation cosign writes with the predicate type (unverified; messages only).
const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";

/// One layer of the `.att` attachment, checked against every attestor of the rule.
struct Checked {
    /// What the layer's annotation claims (for layers no attestor verified).
    claimed: Option<String>,
    /// (attestor index, what it verified) for every attestor whose check passed.
    verified: Vec<(usize, VerifiedAttestation)>,
    /// The most telling failure among the attestors that did not verify it.
    failure: Option<AttestationFailure>,
}

/// Checks the rule's required attestations of `digest`; returns what was found, or the denial
/// naming the first predicate type not satisfied (with what was found).
pub(super) async fn verify(
    state: &State,
    reference: &Reference,
    rule: &Rule,
    digest: &str,
    auth: &Auth,
) -> Result<Vec<Finding>, Denial> {
    let repo = rule.signatures_repository.as_ref().unwrap_or(reference);
    let tag = attachment_tag(digest, "att");
    let max = state.policy.fetch.max_attestation_size;
    let Attached {
        place,
        found,
        layers,
        skipped,
    } = fetch_attached(state, repo, &tag, DSSE_MEDIA_TYPE, max, auth).await?;

    let checked: Vec<Checked> = layers
        .iter()
        .map(|layer| {
            let mut c = Checked {
                claimed: layer.annotations.get(PREDICATE_TYPE_ANNOTATION).cloned(),
                verified: Vec::new(),
                failure: None,
            };
            for (i, attestor) in rule.attestors.iter().enumerate() {
                match attestation::verify_attestation_layer(
                    layer,
                    &attestor.authority,
                    digest,
                    attestor.rekor.as_ref(),
                ) {
                    Ok(v) => c.verified.push((i, v)),
                    Err(f) => {
                        if c.failure
                            .as_ref()
                            .is_none_or(|best| f.specificity() > best.specificity())
                        {
                            c.failure = Some(f);
                        }
                    }
                }
            }
            c
        })
        .collect();

    let mut findings: Vec<Finding> = checked
        .iter()
        .map(|c| match c.verified.first() {
            Some((i, v)) => Finding {
                predicate_type: v.statement.predicate_type.clone(),
                accepted: false,
                detail: why_not_counted(rule, *i, v),
            },
            None => Finding {
                predicate_type: c
                    .claimed
                    .clone()
                    .unwrap_or_else(|| "(unknown predicate type)".into()),
                accepted: false,
                detail: match &c.failure {
                    Some(f) => format!("not verified: {f}"),
                    None => "not verified: the rule has no attestors".into(),
                },
            },
        })
        .collect();
    findings.extend(skipped.iter().map(|what| Finding {
        predicate_type: "(not an attestation)".into(),
        accepted: false,
        detail: format!("skipped: {what}"),
    }));

    let mut unmet = None;
    for req in &rule.attestations {
        match satisfy(rule, req, &checked) {
            Ok((layer, detail)) => {
                let f = &mut findings[layer];
                f.accepted = true;
                f.detail = detail;
            }
            Err(why) => {
                unmet.get_or_insert(why);
            }
        }
    }
    match unmet {
        None => Ok(findings),
        Some(why) => {
            let mut d = Denial::new(if !found {
                format!("{why} (nothing at {place})")
            } else {
                why
            });
            d.attestations = findings.into();
            Err(d)
        }
    }
}

/// Why a verified attestation did not satisfy a requirement (when it satisfies one, the
/// caller overwrites this).
fn why_not_counted(rule: &Rule, attestor: usize, v: &VerifiedAttestation) -> String {
    let pt = &v.statement.predicate_type;
    let mut reqs = rule
        .attestations
        .iter()
        .filter(|r| &r.predicate_type == pt)
        .peekable();
    if reqs.peek().is_none() {
        return format!(
            "signed by {}; the rule does not require this type",
            v.signer
        );
    }
    let mut accepted_signer = false;
    for req in reqs {
        if !req.attestors.contains(&attestor) {
            continue;
        }
        accepted_signer = true;
        if let Err(e) = req
            .conditions
            .iter()
            .try_for_each(|c| c.check(&v.statement.predicate))
        {
            return format!("signed by {}; does not meet a condition: {e}", v.signer);
        }
    }
    if accepted_signer {
        format!(
            "signed by {}; another attestation of this type was counted",
            v.signer
        )
    } else {
        format!(
            "signed by {}, which the rule does not accept for this type",
            v.signer
        )
    }
}

/// The layer satisfying `req` and a description, or why none does (naming the predicate type).
fn satisfy(
    rule: &Rule,
    req: &AttestationRule,
    checked: &[Checked],
) -> Result<(usize, String), String> {
    let pt = &req.predicate_type;
    let mut condition_failure = None;
    let mut other_signer = None;
    for (layer, c) in checked.iter().enumerate() {
        for (i, v) in &c.verified {
            if &v.statement.predicate_type != pt {
                continue;
            }
            if !req.attestors.contains(i) {
                other_signer.get_or_insert_with(|| v.signer.clone());
                continue;
            }
            match req
                .conditions
                .iter()
                .try_for_each(|cond| cond.check(&v.statement.predicate))
            {
                Ok(()) => {
                    let conditions = match req.conditions.len() {
                        0 => String::new(),
                        1 => "; 1 condition met".into(),
                        n => format!("; {n} conditions met"),
                    };
                    return Ok((layer, format!("signed by {}{conditions}", v.signer)));
                }
                Err(e) => {
                    condition_failure.get_or_insert_with(|| (v.signer.clone(), e));
                }
            }
        }
    }
    if let Some((signer, e)) = condition_failure {
        return Err(format!(
            "attestation {pt} (signed by {signer}) does not meet the rule's conditions: {e}"
        ));
    }
    let allowed: Vec<&str> = req
        .attestors
        .iter()
        .filter_map(|i| rule.attestors.get(*i))
        .map(|a| a.name.as_str())
        .collect();
    if let Some(signer) = other_signer {
        return Err(format!(
            "attestation {pt} is signed by {signer}, which this rule does not accept for it (accepted: {})",
            allowed.join(", ")
        ));
    }
    // Unverified layers that claim this type: say why the best of them failed.
    let claimed = checked
        .iter()
        .filter(|c| c.verified.is_empty() && c.claimed.as_deref() == Some(pt.as_str()))
        .filter_map(|c| c.failure.as_ref())
        .max_by_key(|f| f.specificity());
    if let Some(f) = claimed {
        return Err(format!(
            "attestation {pt} is not signed by a trusted attestor ({}): {f}",
            allowed.join(", ")
        ));
    }
    let unverified = checked.iter().filter(|c| c.verified.is_empty()).count();
    Err(if unverified > 0 {
        format!(
            "missing attestation {pt}: no verified attestation of that type ({unverified} attestation(s) did not verify with {})",
            allowed.join(", ")
        )
    } else {
        format!("missing attestation {pt}")
    })
}
