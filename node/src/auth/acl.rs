//! Access rules: may this client publish to, or subscribe to, this destination?
//!
//! Rules are allow rules, from the configuration (`[[acl]]`, `--acl`) for users, roles or every
//! authenticated client, plus the grants of the client's own token. Patterns match the
//! destination as routed (`/topic/a`, `/queue/b`, `/user/ann/queue/c`), `*` matching any run of
//! characters, `/` included. Where no rule allows an action, `acl-default` decides, except:
//!
//! - a client may always SUBSCRIBE to its own user destinations (a SUBSCRIBE to `/user/...` is
//!   always its own: the session puts its user name in) and SEND to them;
//! - SENDing to another user's `/user/<name>/...` needs a rule; `acl-default = allow` does not
//!   open it.
//!
//! With authentication off every client may do everything, as before access rules existed.

use crate::destination::{wildcard_match, Kind, Route};

use super::settings::{AclDefault, AclRule};
use super::{AuthError, Identity};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Publish,
    Subscribe,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        }
    }
}

/// The configured rules and the default.
#[derive(Debug)]
pub struct Acl {
    rules: Vec<AclRule>,
    default: AclDefault,
}

impl Acl {
    pub fn new(rules: Vec<AclRule>, default: AclDefault) -> Acl {
        Acl { rules, default }
    }

    pub fn may_publish(&self, identity: &Identity, route: &Route) -> Result<(), AuthError> {
        self.check(identity, route, Action::Publish)
    }

    pub fn may_subscribe(&self, identity: &Identity, route: &Route) -> Result<(), AuthError> {
        self.check(identity, route, Action::Subscribe)
    }

    fn check(&self, identity: &Identity, route: &Route, action: Action) -> Result<(), AuthError> {
        if !identity.authenticated() || identity.is_backend() {
            return Ok(());
        }
        let user = identity.user.as_deref().unwrap_or_default();
        let mut default = self.default;
        if route.kind == Kind::User {
            if owner(&route.name) == Some(user) {
                return Ok(());
            }
            // Another user's destination: only an explicit rule opens it.
            default = AclDefault::Deny;
        }
        if self.allows(identity, user, &route.name, action) || default == AclDefault::Allow {
            return Ok(());
        }
        Err(AuthError::Forbidden {
            action: action.as_str(),
            destination: route.name.chars().take(128).collect(),
        })
    }

    fn allows(&self, identity: &Identity, user: &str, destination: &str, action: Action) -> bool {
        let matches = |patterns: &[String]| {
            patterns.iter().any(|p| wildcard_match(p.as_bytes(), destination.as_bytes()))
        };
        let granted = match action {
            Action::Publish => matches(&identity.grants.publish),
            Action::Subscribe => matches(&identity.grants.subscribe),
        };
        granted
            || self.rules.iter().filter(|rule| rule.applies_to(user, &identity.roles)).any(
                |rule| match action {
                    Action::Publish => matches(&rule.publish),
                    Action::Subscribe => matches(&rule.subscribe),
                },
            )
    }
}

/// The user a `/user/<name>/...` destination belongs to.
fn owner(name: &str) -> Option<&str> {
    name.strip_prefix("/user/")?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::settings::Subject;
    use crate::auth::{Grants, Method};
    use crate::destination::{for_send, for_subscribe};

    fn id(user: &str, roles: &[&str]) -> Identity {
        Identity {
            user: Some(user.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            grants: Grants::default(),
            method: Method::Password,
            expires: None,
        }
    }

    fn rule(subject: Subject, publish: &[&str], subscribe: &[&str]) -> AclRule {
        AclRule {
            subject,
            publish: publish.iter().map(|p| p.to_string()).collect(),
            subscribe: subscribe.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn acl() -> Acl {
        Acl::new(
            vec![
                rule(Subject::Role("traders".into()), &["/queue/orders"], &["/topic/prices/*"]),
                rule(Subject::User("ops".into()), &["/user/*"], &[]),
                rule(Subject::Anyone, &[], &["/topic/public.*"]),
            ],
            AclDefault::Deny,
        )
    }

    #[test]
    fn rules_allow_by_role_user_and_anyone() {
        let acl = acl();
        let trader = id("ann", &["traders"]);
        assert!(acl.may_publish(&trader, &for_send("/queue/orders").unwrap()).is_ok());
        assert!(acl.may_subscribe(&trader, &for_send("/topic/prices/eur/usd").unwrap()).is_ok());
        assert!(acl.may_subscribe(&trader, &for_send("/topic/public.news").unwrap()).is_ok());
        let e = acl.may_publish(&trader, &for_send("/topic/prices/eur").unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "not authorized to publish to /topic/prices/eur");
        let guest = id("bob", &[]);
        assert!(acl.may_publish(&guest, &for_send("/queue/orders").unwrap()).is_err());
        assert!(acl.may_subscribe(&guest, &for_send("/topic/public.x").unwrap()).is_ok());
    }

    #[test]
    fn user_destinations_are_private() {
        let acl = Acl::new(Vec::new(), AclDefault::Allow);
        let ann = id("ann", &[]);
        assert!(acl.may_subscribe(&ann, &for_subscribe("/user/queue/inbox", Some("ann")).unwrap()).is_ok());
        assert!(acl.may_publish(&ann, &for_send("/user/ann/queue/inbox").unwrap()).is_ok());
        // acl-default = allow does not open another user's destinations.
        let e = acl.may_publish(&ann, &for_send("/user/bob/queue/inbox").unwrap()).unwrap_err();
        assert!(matches!(e, AuthError::Forbidden { .. }));
        // A prefix of another name is not the same user.
        assert!(acl.may_publish(&id("bo", &[]), &for_send("/user/bob/queue/inbox").unwrap()).is_err());
        // A rule opens them.
        assert!(self::acl()
            .may_publish(&id("ops", &[]), &for_send("/user/bob/queue/inbox").unwrap())
            .is_ok());
    }

    #[test]
    fn token_grants_add_to_the_rules() {
        let acl = acl();
        let mut ann = id("ann", &[]);
        ann.grants.publish = vec!["/topic/chat.*".into()];
        assert!(acl.may_publish(&ann, &for_send("/topic/chat.room1").unwrap()).is_ok());
        assert!(acl.may_subscribe(&ann, &for_send("/topic/chat.room1").unwrap()).is_err());
    }

    #[test]
    fn everything_is_allowed_without_authentication() {
        let anonymous = Identity::trusted(Some("ann"));
        assert!(acl().may_publish(&anonymous, &for_send("/user/bob/queue/x").unwrap()).is_ok());
        assert!(acl().may_subscribe(&anonymous, &for_send("/topic/secret").unwrap()).is_ok());
    }
}
