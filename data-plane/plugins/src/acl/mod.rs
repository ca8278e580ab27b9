//! `acl`: which authenticated consumers may use a route, by group.
//!
//! `allow: [groups]` admits only consumers in at least one of them; `deny:
//! [groups]` admits everyone except consumers in any of them (validation
//! guarantees exactly one list is set). Group names compare exactly.
//!
//! The check runs in the authorize phase, after authentication: a request
//! that reaches it without a consumer means the route has an `acl` but no
//! authentication plugin, and it is refused (403) rather than let through.
//! An `anonymous` consumer is judged by its own groups like anyone else.

use tollgate_shared::plugins::AclConfig;

use tollgate_plugin_api::Identity;

use crate::auth::AuthError;

mod plugin;
pub use plugin::AclFactory;

#[derive(Debug)]
pub struct Acl {
    rule: Rule,
}

#[derive(Debug)]
enum Rule {
    Allow(Box<[Box<str>]>),
    Deny(Box<[Box<str>]>),
}

impl Acl {
    pub fn new(config: &AclConfig) -> Result<Acl, String> {
        let list = |groups: &[String]| groups.iter().map(|g| Box::from(g.as_str())).collect();
        let rule = match (config.allow.is_empty(), config.deny.is_empty()) {
            (false, true) => Rule::Allow(list(&config.allow)),
            (true, false) => Rule::Deny(list(&config.deny)),
            _ => {
                return Err("config: exactly one of allow or deny must be a non-empty list".into())
            }
        };
        Ok(Acl { rule })
    }

    pub fn authorize(&self, consumer: Option<&Identity>) -> Result<(), AuthError> {
        let Some(consumer) = consumer else {
            return Err(AuthError::NoConsumer);
        };
        let member = |groups: &[Box<str>]| {
            consumer
                .groups
                .iter()
                .any(|mine| groups.iter().any(|listed| **mine == **listed))
        };
        let admitted = match &self.rule {
            Rule::Allow(groups) => member(groups),
            Rule::Deny(groups) => !member(groups),
        };
        if admitted {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn acl(config: serde_json::Value) -> Acl {
        Acl::new(&serde_json::from_value(config).expect("config")).expect("acl")
    }

    fn who(groups: &[&str]) -> Identity {
        Identity {
            consumer: Arc::from("c"),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            credential: None,
            anonymous: false,
        }
    }

    #[test]
    fn allow_admits_members_only() {
        let acl = acl(json!({"allow": ["partners", "staff"]}));
        assert_eq!(acl.authorize(Some(&who(&["x", "staff"]))), Ok(()));
        assert_eq!(acl.authorize(Some(&who(&["x"]))), Err(AuthError::Forbidden));
        assert_eq!(acl.authorize(Some(&who(&[]))), Err(AuthError::Forbidden));
        assert_eq!(
            acl.authorize(Some(&who(&["Staff"]))),
            Err(AuthError::Forbidden)
        );
        assert_eq!(acl.authorize(None), Err(AuthError::NoConsumer));
    }

    #[test]
    fn deny_refuses_members_only() {
        let acl = acl(json!({"deny": ["banned"]}));
        assert_eq!(acl.authorize(Some(&who(&["a"]))), Ok(()));
        assert_eq!(acl.authorize(Some(&who(&[]))), Ok(()));
        assert_eq!(
            acl.authorize(Some(&who(&["a", "banned"]))),
            Err(AuthError::Forbidden)
        );
        assert_eq!(acl.authorize(None), Err(AuthError::NoConsumer));
    }

    #[test]
    fn both_or_neither_list_is_an_error() {
        assert!(Acl::new(&AclConfig::default()).is_err());
        let both = AclConfig {
            allow: vec!["a".into()],
            deny: vec!["b".into()],
        };
        assert!(Acl::new(&both).is_err());
    }
}
