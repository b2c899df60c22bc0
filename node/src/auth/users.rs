//! The users file (`users-file`): static users who CONNECT with a login and a passcode.
//!
//! One user per line, `name:hash` or `name:hash:role,role`, as `htpasswd -B` writes them plus
//! an optional list of roles; blank lines and lines starting with `#` are ignored. Hashes are
//! argon2 in PHC form (`$argon2id$v=19$m=19456,t=2,p=1$...`) or bcrypt (`$2b$12$...`); plain
//! passwords are refused at start-up. Verifying a hash is slow on purpose, so it runs on a
//! blocking thread; a login that is not in the file is checked against a stand-in hash of the
//! same cost, so the answer takes as long either way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};

use super::{valid_user_name, AuthError, Grants, Identity, LoadError, Method};
use crate::config::settings::USERS_FILE;

const SETTING: &str = USERS_FILE.name;

/// A password hash as read from the file, checked to be well formed.
#[derive(Clone, Debug)]
enum Hash {
    Argon2(Arc<str>),
    Bcrypt(Arc<str>),
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        if text.starts_with("$argon2") {
            let parsed = PasswordHash::new(text).map_err(|e| format!("invalid argon2 hash: {e}"))?;
            if !matches!(parsed.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
                return Err(format!("unknown argon2 variant {}", parsed.algorithm));
            }
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err("invalid argon2 hash: it has no salt or no hash".to_owned());
            }
            argon2::Params::try_from(&parsed).map_err(|e| format!("invalid argon2 hash: {e}"))?;
            return Ok(Hash::Argon2(Arc::from(text)));
        }
        if ["$2a$", "$2b$", "$2y$", "$2x$"].iter().any(|p| text.starts_with(p)) {
            text.parse::<bcrypt::HashParts>().map_err(|e| format!("invalid bcrypt hash: {e}"))?;
            return Ok(Hash::Bcrypt(Arc::from(text)));
        }
        Err("expected an argon2 ($argon2id$...) or bcrypt ($2b$...) hash, never a plain password".to_owned())
    }

    /// Slow: call it on a blocking thread.
    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Argon2(text) => PasswordHash::new(text)
                .is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()),
            Hash::Bcrypt(text) => bcrypt::verify(password, text).unwrap_or(false),
        }
    }
}

#[derive(Debug)]
struct User {
    hash: Hash,
    roles: Vec<String>,
}

/// The users of the file, by name.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, User>,
    /// Checked when the login is unknown, so that costs as much as a wrong passcode.
    stand_in: Option<Hash>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            setting: SETTING,
            path: path.to_owned(),
            source,
        })?;
        Users::parse(&text).map_err(|reason| LoadError::Invalid {
            setting: SETTING,
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut by_name = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |reason: String| format!("line {}: {reason}", n + 1);
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(hash)) = (parts.next(), parts.next()) else {
                return Err(at("expected name:hash or name:hash:role,role".to_owned()));
            };
            if !valid_user_name(name) {
                return Err(at(format!(
                    "user name {name:?} must be 1 to 256 characters without /, *, spaces or control \
                     characters"
                )));
            }
            let hash = Hash::parse(hash).map_err(at)?;
            let roles = parts
                .next()
                .map(|roles| {
                    roles.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect()
                })
                .unwrap_or_default();
            if by_name.insert(name.to_owned(), User { hash, roles }).is_some() {
                return Err(at(format!("user {name:?} is listed twice")));
            }
        }
        let stand_in = by_name.values().next().map(|u| u.hash.clone());
        Ok(Users { by_name, stand_in })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Checks a login and passcode; the error never says which of the two was wrong.
    pub async fn verify(&self, login: &str, passcode: &str) -> Result<Identity, AuthError> {
        let user = self.by_name.get(login);
        let Some(hash) = user.map(|u| &u.hash).or(self.stand_in.as_ref()).cloned() else {
            return Err(AuthError::BadPassword);
        };
        let passcode = passcode.to_owned();
        let matched = tokio::task::spawn_blocking(move || hash.verify(&passcode)).await.unwrap_or(false);
        match user {
            Some(user) if matched => Ok(Identity {
                user: Some(login.to_owned()),
                roles: user.roles.clone(),
                grants: Grants::default(),
                method: Method::Password,
                expires: None,
            }),
            _ => Err(AuthError::BadPassword),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};

    /// A cheap argon2id hash (tests run unoptimized).
    fn argon2_hash(password: &str) -> String {
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon.hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng)).unwrap().to_string()
    }

    #[tokio::test]
    async fn argon2_and_bcrypt_users_log_in_with_their_roles() {
        let text = format!(
            "# users\n\nann:{}:admin, traders\nbob:{}\n",
            argon2_hash("ann-pw"),
            bcrypt::hash("bob-pw", 4).unwrap()
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        let ann = users.verify("ann", "ann-pw").await.unwrap();
        assert_eq!(ann.user.as_deref(), Some("ann"));
        assert_eq!(ann.roles, ["admin", "traders"]);
        assert_eq!(ann.method, Method::Password);
        let bob = users.verify("bob", "bob-pw").await.unwrap();
        assert!(bob.roles.is_empty());
        assert_eq!(users.verify("ann", "bob-pw").await, Err(AuthError::BadPassword));
        assert_eq!(users.verify("bob", "").await, Err(AuthError::BadPassword));
        assert_eq!(users.verify("carol", "ann-pw").await, Err(AuthError::BadPassword));
    }

    #[test]
    fn bad_lines_are_named() {
        let e = Users::parse("ann:plaintext").unwrap_err();
        assert!(e.starts_with("line 1: expected an argon2") && e.contains("never a plain password"), "{e}");
        let e = Users::parse("# x\nann").unwrap_err();
        assert!(e.starts_with("line 2: expected name:hash"), "{e}");
        let e = Users::parse("a/b:$2b$04$abcdefghijklmnopqrstuu").unwrap_err();
        assert!(e.contains("user name \"a/b\""), "{e}");
        let e = Users::parse("ann:$argon2id$broken").unwrap_err();
        assert!(e.contains("invalid argon2 hash"), "{e}");
        let e = Users::parse("ann:$2b$99$x").unwrap_err();
        assert!(e.contains("invalid bcrypt hash"), "{e}");
        let hash = bcrypt::hash("x", 4).unwrap();
        let e = Users::parse(&format!("ann:{hash}\nann:{hash}")).unwrap_err();
        assert!(e.contains("line 2: user \"ann\" is listed twice"), "{e}");
    }

    #[tokio::test]
    async fn an_empty_file_refuses_everyone() {
        let users = Users::parse("# nobody yet\n").unwrap();
        assert!(users.is_empty());
        assert_eq!(users.verify("ann", "x").await, Err(AuthError::BadPassword));
    }
}
