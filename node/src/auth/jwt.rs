//! JSON Web Token verification (`jwt-*` settings), with the `jsonwebtoken` crate on `ring`.
//!
//! Keys come from configuration only: an HMAC secret (`jwt-secret`), an RSA or EC public key in
//! PEM form (`jwt-public-key`) and a JWKS file (`jwt-jwks`, keys chosen by `kid`). A token is
//! checked in this order, and the first failure is the refusal:
//!
//! 1. its header: `alg` must be in the allowlist (`jwt-algorithms`, by default the algorithm of
//!    each configured key); `none` is never accepted, whatever the allowlist says;
//! 2. its key: only keys of the algorithm's family are tried (an RSA public key is never used as
//!    an HMAC secret, which defeats the HS/RS key-confusion attack), matching `kid` when both
//!    the token and the key carry one;
//! 3. its signature, then `exp` (required) and `nbf` with `jwt-leeway`, then `aud` and `iss`
//!    when configured;
//! 4. its claims: the user (`jwt-user-claim`, `sub` by default), the roles (`jwt-roles-claim`)
//!    and the optional `stampede` claim, `{"publish": [patterns], "subscribe": [patterns]}`.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::settings::JwtSettings;
use super::{valid_user_name, AuthError, Grants, Identity, LoadError, Method, MAX_TOKEN_LEN};
use crate::config::settings::{JWT_ALGORITHMS, JWT_JWKS, JWT_PUBLIC_KEY};

/// The claim with a token's own grants.
pub const GRANTS_CLAIM: &str = "stampede";

/// Which kind of key an algorithm verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
}

impl Family {
    fn of(alg: Algorithm) -> Option<Family> {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => Some(Family::Hmac),
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
            ES256 | ES384 => Some(Family::Ec),
            EdDSA => None,
        }
    }

    /// The algorithm a key of this family is used with unless configured otherwise.
    fn default_algorithm(self) -> Algorithm {
        match self {
            Family::Hmac => Algorithm::HS256,
            Family::Rsa => Algorithm::RS256,
            Family::Ec => Algorithm::ES256,
        }
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    /// The one algorithm this key may be used with (a JWK's `alg`), if it says.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn serves(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        Family::of(alg) == Some(self.family)
            && self.alg.is_none_or(|a| a == alg)
            && match (kid, self.kid.as_deref()) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            }
    }
}

/// Verifies tokens against the configured keys and rules.
pub struct Verifier {
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    audience: Option<Vec<String>>,
    issuer: Option<Vec<String>>,
    user_claim: String,
    roles_claim: String,
}

/// The part of a token's header read before any key is chosen.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// Whether a passcode is shaped like a JWT (three base64url parts; the last may be empty, as in
/// an unsigned token, so that one is refused as a token, by name).
pub fn looks_like_jwt(text: &str) -> bool {
    let mut parts = text.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !header.is_empty()
        && !payload.is_empty()
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

impl Verifier {
    pub fn load(settings: &JwtSettings) -> Result<Verifier, LoadError> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.secret {
            keys.push(Key {
                kid: None,
                family: Family::Hmac,
                alg: None,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            });
        }
        if let Some(path) = &settings.public_key {
            keys.push(pem_key(path)?);
        }
        if let Some(path) = &settings.jwks {
            keys.extend(jwks_keys(path)?);
        }
        let algorithms = match &settings.algorithms {
            Some(algorithms) => {
                for &alg in algorithms {
                    if !keys.iter().any(|k| k.serves(alg, None)) {
                        return Err(LoadError::Setting {
                            setting: JWT_ALGORITHMS.name,
                            reason: format!(
                                "{alg:?} has no key of its kind (jwt-secret for HS*, an RSA key for \
                                 RS* and PS*, an EC key for ES*)"
                            ),
                        });
                    }
                }
                algorithms.clone()
            }
            None => {
                let mut algorithms = Vec::new();
                for key in &keys {
                    let alg = key.alg.unwrap_or(key.family.default_algorithm());
                    if !algorithms.contains(&alg) {
                        algorithms.push(alg);
                    }
                }
                algorithms
            }
        };
        Ok(Verifier {
            keys,
            algorithms,
            leeway: settings.leeway,
            audience: settings.audience.clone(),
            issuer: settings.issuer.clone(),
            user_claim: settings.user_claim.clone(),
            roles_claim: settings.roles_claim.clone(),
        })
    }

    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let bad = |why: &str| AuthError::BadToken(why.to_owned());
        if token.len() > MAX_TOKEN_LEN {
            return Err(bad("token is longer than 16 KiB"));
        }
        let header = raw_header(token).ok_or_else(|| bad("malformed token: not a JSON Web Token"))?;
        let alg = header.alg.ok_or_else(|| bad("malformed token: its header has no alg"))?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(bad("unsigned tokens (alg none) are never accepted"));
        }
        let alg_name = alg.chars().take(16).collect::<String>();
        let alg =
            alg.parse::<Algorithm>().ok().filter(|alg| self.algorithms.contains(alg)).ok_or_else(|| {
                AuthError::BadToken(format!("algorithm {alg_name:?} is not accepted (jwt-algorithms)"))
            })?;
        let kid = header.kid.as_deref();
        let candidates: Vec<&Key> = self.keys.iter().filter(|k| k.serves(alg, kid)).collect();
        if candidates.is_empty() {
            return Err(match kid {
                Some(kid) => AuthError::BadToken(format!(
                    "no {alg:?} key with kid {:?}",
                    kid.chars().take(64).collect::<String>()
                )),
                None => AuthError::BadToken(format!("no key for algorithm {alg:?}")),
            });
        }
        let validation = self.validation(alg);
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => continue,
                Err(e) => return Err(describe(e.kind())),
            }
        }
        Err(bad("token signature is invalid"))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(audience);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn identity(&self, claims: Value) -> Result<Identity, AuthError> {
        let user = claim(&claims, &self.user_claim)
            .and_then(Value::as_str)
            .filter(|user| valid_user_name(user))
            .ok_or_else(|| {
                AuthError::BadToken(format!(
                    "the {} claim must name the user (1 to 256 characters without /, *, spaces or \
                     control characters)",
                    self.user_claim
                ))
            })?;
        let roles = match claim(&claims, &self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(roles)) => {
                roles.split([' ', ',']).filter(|r| !r.is_empty()).map(str::to_owned).collect()
            }
            Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(_) => {
                return Err(AuthError::BadToken(format!(
                    "the {} claim must be a list of role names",
                    self.roles_claim
                )))
            }
        };
        let grants = match claims.get(GRANTS_CLAIM) {
            None | Some(Value::Null) => Grants::default(),
            Some(value) => grants(value).ok_or_else(|| {
                AuthError::BadToken(format!(
                    "the {GRANTS_CLAIM} claim must be {{\"publish\": [patterns], \"subscribe\": \
                     [patterns]}} with patterns starting with /"
                ))
            })?,
        };
        let expires = claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f.max(0.0) as u64)))
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs.min(u64::from(u32::MAX) * 4)));
        Ok(Identity { user: Some(user.to_owned()), roles, grants, method: Method::Token, expires })
    }
}

/// A claim by name; dots reach into nested objects (`realm_access.roles`). A claim whose own
/// name contains dots is found too.
fn claim<'v>(claims: &'v Value, path: &str) -> Option<&'v Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.').try_fold(claims, |value, name| value.get(name))
}

fn grants(value: &Value) -> Option<Grants> {
    let object = value.as_object()?;
    if object.keys().any(|k| k != "publish" && k != "subscribe") {
        return None;
    }
    let patterns = |name: &str| -> Option<Vec<String>> {
        match object.get(name) {
            None => Some(Vec::new()),
            Some(list) => list
                .as_array()?
                .iter()
                .map(|p| p.as_str().filter(|p| p.starts_with('/') && !p.contains(char::is_control)))
                .map(|p| p.map(str::to_owned))
                .collect(),
        }
    };
    Some(Grants { publish: patterns("publish")?, subscribe: patterns("subscribe")? })
}

fn raw_header(token: &str) -> Option<RawHeader> {
    let encoded = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&json).ok()
}

fn describe(kind: &ErrorKind) -> AuthError {
    let why = match kind {
        ErrorKind::ExpiredSignature => "token expired (exp is past, beyond jwt-leeway)".to_owned(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf is in the future)".to_owned(),
        ErrorKind::InvalidAudience => "token audience (aud) is not accepted (jwt-audience)".to_owned(),
        ErrorKind::InvalidIssuer => "token issuer (iss) is not accepted (jwt-issuer)".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the {claim} claim"),
        ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
        ErrorKind::InvalidAlgorithm => "token algorithm does not match its key".to_owned(),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            "malformed token".to_owned()
        }
        _ => "token could not be verified".to_owned(),
    };
    AuthError::BadToken(why)
}

fn read(setting: &'static str, path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read { setting, path: path.to_owned(), source })
}

fn pem_key(path: &Path) -> Result<Key, LoadError> {
    const SETTING: &str = JWT_PUBLIC_KEY.name;
    let text = read(SETTING, path)?;
    let invalid = |reason: &str| LoadError::Invalid {
        setting: SETTING,
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if text.contains("PRIVATE KEY") {
        return Err(invalid("this is a private key: give the public key (BEGIN PUBLIC KEY)"));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
        return Ok(Key { kid: None, family: Family::Rsa, alg: None, key });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(text.as_bytes()) {
        return Ok(Key { kid: None, family: Family::Ec, alg: None, key });
    }
    Err(invalid("expected an RSA or EC (P-256, P-384) public key in PEM form (BEGIN PUBLIC KEY)"))
}

fn jwks_keys(path: &Path) -> Result<Vec<Key>, LoadError> {
    const SETTING: &str = JWT_JWKS.name;
    let text = read(SETTING, path)?;
    let invalid = |reason: String| LoadError::Invalid { setting: SETTING, path: path.to_owned(), reason };
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("expected a JWKS {{\"keys\": [...]}}: {e}")))?;
    let mut keys = Vec::new();
    let mut kids = HashSet::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{}", i + 1));
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKey(_) => Family::Hmac,
            AlgorithmParameters::OctetKeyPair(_) => {
                return Err(invalid(format!("key {name}: EdDSA (OKP) keys are not supported")))
            }
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(alg) => {
                let alg = format!("{alg:?}")
                    .parse::<Algorithm>()
                    .ok()
                    .filter(|alg| Family::of(*alg) == Some(family))
                    .ok_or_else(|| invalid(format!("key {name}: alg {alg:?} does not fit its key type")))?;
                Some(alg)
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key {name}: {e}")))?;
        if let Some(kid) = &jwk.common.key_id {
            if !kids.insert(kid.clone()) {
                return Err(invalid(format!("kid {kid:?} is used twice")));
            }
        }
        keys.push(Key { kid: jwk.common.key_id.clone(), family, alg, key });
    }
    if keys.is_empty() {
        return Err(invalid("no signature keys".to_owned()));
    }
    Ok(keys)
}

/// Seconds since the Unix epoch, as JWTs count time.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::settings::Secret;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> JwtSettings {
        JwtSettings {
            secret: Some(Secret::new(SECRET)),
            public_key: None,
            jwks: None,
            algorithms: None,
            leeway: Duration::from_secs(5),
            audience: None,
            issuer: None,
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
        }
    }

    fn hs256(claims: Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn refusal(verifier: &Verifier, token: &str) -> String {
        match verifier.verify(token) {
            Ok(id) => panic!("accepted: {id:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_token_names_user_roles_grants_and_expiry() {
        let v = Verifier::load(&settings()).unwrap();
        let exp = now_secs() + 60;
        let token = hs256(json!({
            "sub": "ann", "exp": exp, "roles": ["traders", 7],
            "stampede": {"publish": ["/topic/a.*"], "subscribe": ["/topic/*"]}
        }));
        let id = v.verify(&token).unwrap();
        assert_eq!(id.user.as_deref(), Some("ann"));
        assert_eq!(id.roles, ["traders"]);
        assert_eq!(id.grants.publish, ["/topic/a.*"]);
        assert_eq!(id.method, Method::Token);
        assert_eq!(id.expires, Some(UNIX_EPOCH + Duration::from_secs(exp)));
    }

    #[test]
    fn nested_roles_claims_and_string_roles() {
        let mut s = settings();
        s.roles_claim = "realm_access.roles".into();
        let v = Verifier::load(&s).unwrap();
        let token = hs256(json!({"sub": "ann", "exp": now_secs() + 60, "realm_access": {"roles": "a b,c"}}));
        assert_eq!(v.verify(&token).unwrap().roles, ["a", "b", "c"]);
    }

    #[test]
    fn refusals_say_why() {
        let mut s = settings();
        s.audience = Some(vec!["stampede".into()]);
        s.issuer = Some(vec!["https://idp".into()]);
        let v = Verifier::load(&s).unwrap();
        let now = now_secs();
        let good = json!({"sub": "ann", "exp": now + 60, "aud": "stampede", "iss": "https://idp"});
        assert!(v.verify(&hs256(good.clone())).is_ok());
        let with = |key: &str, value: Value| {
            let mut claims = good.clone();
            claims[key] = value;
            hs256(claims)
        };
        assert!(refusal(&v, &with("exp", json!(now - 60))).contains("token expired"));
        assert!(v.verify(&with("exp", json!(now - 2))).is_ok(), "within the leeway");
        assert!(refusal(&v, &with("nbf", json!(now + 60))).contains("not valid yet"));
        assert!(refusal(&v, &with("aud", json!("other"))).contains("audience"));
        assert!(refusal(&v, &with("iss", json!("https://evil"))).contains("issuer"));
        assert!(refusal(&v, &with("sub", json!("a/b"))).contains("sub claim must name the user"));
        assert!(refusal(&v, &with("stampede", json!({"publish": "x"}))).contains("stampede claim"));
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(refusal(&v, &hs256(no_exp)).contains("lacks the exp claim"));
        let signed = hs256(good.clone());
        let forged =
            hs256(json!({"sub": "mallory", "exp": now + 60, "aud": "stampede", "iss": "https://idp"}));
        let head = signed.split('.').next().unwrap();
        let signature = signed.rsplit('.').next().unwrap();
        let payload = forged.split('.').nth(1).unwrap();
        assert!(refusal(&v, &format!("{head}.{payload}.{signature}")).contains("signature is invalid"));
        let other = encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"another secret of 32 bytes......"),
        )
        .unwrap();
        assert!(refusal(&v, &other).contains("signature is invalid"));
        assert!(refusal(&v, "not.a.token").contains("malformed"));
        assert!(refusal(&v, &"x".repeat(MAX_TOKEN_LEN + 1)).contains("longer"));
    }

    #[test]
    fn unsigned_and_unlisted_algorithms_are_refused() {
        let v = Verifier::load(&settings()).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = b64(&json!({"sub": "ann", "exp": now_secs() + 60}).to_string());
        for alg in ["none", "None", "NONE"] {
            let token = format!("{}.{payload}.", b64(&format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}")));
            assert!(looks_like_jwt(&token));
            assert!(refusal(&v, &token).contains("alg none"), "{alg}");
        }
        let token = format!("{}.{payload}.sig", b64("{\"alg\":\"HS384\"}"));
        assert!(refusal(&v, &token).contains("algorithm \"HS384\" is not accepted"));
        let token = format!("{}.{payload}.sig", b64("{\"typ\":\"JWT\"}"));
        assert!(refusal(&v, &token).contains("no alg"));
    }

    #[test]
    fn an_allowlist_needs_keys_of_its_kinds() {
        let mut s = settings();
        s.algorithms = Some(vec![Algorithm::HS256, Algorithm::RS256]);
        let Err(e) = Verifier::load(&s) else { panic!("loaded") };
        assert!(e.to_string().contains("RS256 has no key of its kind"), "{e}");
    }

    #[test]
    fn passcodes_that_look_like_tokens() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt("secret"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("my pass.word.x"));
        assert!(!looks_like_jwt(".b.c"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary text never panics the verifier and is never accepted.
        #[test]
        fn arbitrary_tokens_are_refused(text in "[A-Za-z0-9_.=-]{0,200}|\\PC{0,64}") {
            let v = Verifier::load(&settings()).unwrap();
            proptest::prop_assert!(v.verify(&text).is_err());
        }
    }
}
