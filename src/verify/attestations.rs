//! Required attestations of a rule (`[[rules.attestations]]`), checked once the image's
//! signatures are, in both formats: the `sha256-<hex>.att` attachment (one DSSE envelope per
//! layer, `cosign attest --new-bundle-format=false`) and the Sigstore bundles among the image's
//! referrers (`cosign attest`, cosign 3's default).
//!
//! Every layer and bundle is verified against the rule's attestors (the signature over the
//! DSSE PAE, the transparency-log and timestamp proofs the attestor requires, the statement's
//! subject is this digest); the predicate type that counts is the *signed* statement's, never
//! the layer's `predicateType` or the referrer's `dev.sigstore.bundle.predicateType`
//! annotation (those only name unverified attestations in messages). A requirement is met by one
//! verified statement of its predicate type, signed by one of its attestors, whose predicate
//! meets every condition. The first unmet requirement decides the denial, and its message
//! names the predicate type.

use oci_client::Reference;

use super::cosign::tag::attestation::{self, VerifiedAttestation};
use super::discovery::{Found, Want};
use super::policy::{AttestationRule, Rule};
use super::{Denial, Finding, State, signer_name, tag_based_unsupported, verify_image_bundle};
use crate::registry::Auth;

/// Layer annotation cosign writes with the predicate type (unverified; messages only).
const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
/// The predicate type of `cosign sign` bundles: signatures, not attestations.
const SIGN_PREDICATE_TYPE: &str = super::cosign::bundle::SIGN_PREDICATE_TYPE;

/// One attestation (a layer of the `.att` attachment or a Sigstore bundle), checked against
/// every attestor of the rule.
struct Checked {
    /// What the layer's or referrer's annotation claims (for those no attestor verified).
    claimed: Option<String>,
    /// (attestor index, what it verified) for every attestor whose check passed.
    verified: Vec<(usize, VerifiedAttestation)>,
    /// The most telling failure (specificity, message) among the attestors that did not
    /// verify it.
    failure: Option<(u8, String)>,
}

impl Checked {
    fn new(claimed: Option<String>) -> Checked {
        Checked {
            claimed,
            verified: Vec::new(),
            failure: None,
        }
    }

    fn failed(&mut self, specificity: u8, message: String) {
        if self
            .failure
            .as_ref()
            .is_none_or(|(best, _)| specificity > *best)
        {
            self.failure = Some((specificity, message));
        }
    }
}

/// Checks the rule's required attestations of `digest`; returns what was found, or the denial
/// naming the first predicate type not satisfied (with what was found).
pub(super) async fn verify(
    state: &State,
    repo: &Reference,
    rule: &Rule,
    digest: &str,
    auth: &Auth,
    found: &mut Found,
) -> Result<Vec<Finding>, Denial> {
    // What the `.att` tag holds could not be read: attestations found elsewhere (Sigstore
    // bundles among the referrers) still count, as for signatures; if the requirement stays
    // unmet, that failure is the denial.
    let (att_place, att_found, layers, skipped, att_error) = match &found.att {
        Some(Ok(a)) => (
            a.place.clone(),
            a.found,
            &a.layers[..],
            a.skipped.clone(),
            None,
        ),
        Some(Err(denial)) => (String::new(), false, &[][..], Vec::new(), Some(denial)),
        None => (String::new(), false, &[][..], Vec::new(), None),
    };
    let mut checked: Vec<Checked> = layers
        .iter()
        .map(|layer| {
            let mut c = Checked::new(layer.annotations.get(PREDICATE_TYPE_ANNOTATION).cloned());
            for (i, attestor) in rule.attestors.iter().enumerate() {
                if let Some(why) = tag_based_unsupported(attestor) {
                    c.failed(3, why);
                    continue;
                }
                match attestation::verify_attestation_layer(
                    layer,
                    &attestor.authority,
                    digest,
                    attestor.rekor.as_ref(),
                ) {
                    Ok(v) => c.verified.push((i, v)),
                    Err(f) => c.failed(f.specificity(), f.to_string()),
                }
            }
            c
        })
        .collect();

    let mut bundles_found = 0;
    if found.referrers.error.is_none() {
        let bundles = found
            .referrers
            .bundles(state, repo, digest, &[Want::Attestations], auth)
            .await;
        for b in bundles
            .iter()
            .filter(|b| b.claimed.as_deref() != Some(SIGN_PREDICATE_TYPE))
        {
            bundles_found += 1;
            let mut c = Checked::new(b.claimed.clone());
            match &b.bytes {
                Err(why) => c.failed(1, format!("{}: {why}", b.place)),
                Ok(bytes) => {
                    for (i, attestor) in rule.attestors.iter().enumerate() {
                        match verify_image_bundle(rule, attestor, bytes, digest, None) {
                            Ok(v) => match v.statement {
                                Some(statement) => c.verified.push((
                                    i,
                                    VerifiedAttestation {
                                        statement,
                                        signer: signer_name(attestor, v.identity),
                                        tlog: v.tlog,
                                        integrated_time: v.signed_at,
                                    },
                                )),
                                None => c.failed(
                                    4,
                                    format!("{}: a message signature, not an attestation", b.place),
                                ),
                            },
                            Err(f) => c.failed(f.specificity(), f.to_string()),
                        }
                    }
                }
            }
            checked.push(c);
        }
    }

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
                    Some((_, f)) => format!("not verified: {f}"),
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
            let referrers = &found.referrers;
            let unseen = att_error
                .or(referrers.error.as_ref())
                .or(referrers.unavailable.as_ref());
            let mut d = match unseen {
                // What could not be looked at may have held it.
                Some(e) => {
                    let mut d = e.clone();
                    d.reason = format!("{why}; {}", e.reason);
                    d
                }
                None if !att_found && bundles_found == 0 => Denial::new(format!(
                    "{why} (nothing at {att_place}; {})",
                    referrers.nothing("attestation bundle")
                )),
                None => Denial::new(why),
            };
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
        .max_by_key(|(s, _)| *s)
        .map(|(_, f)| f);
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
