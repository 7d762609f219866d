//! Who may use a link besides the holder of its token (SPEC §13): the token must be of the link's
//! current generation, the client's address among those the link allows, and the client must
//! give the link's password when it has one.

use super::event::EventKind;
use super::passwords::{LOCK_AFTER, MAX_PASSWORD, Verdict, Visitor, basic_password};
use super::rules::Refusal;
use super::service::Links;
use std::sync::Arc;

use crate::model::{Link, LinkPolicy};
use crate::store::Write;

/// What a request was let in under: the link's token generation and who it admits. A request
/// that waited (for a password check, say) is admitted only if these still hold when its claim
/// is taken, so that a rotation, a new password or a lock takes effect at once.
pub(super) struct Terms {
    generation: u32,
    policy: Arc<LinkPolicy>,
}

impl Terms {
    pub(super) fn of(link: &Link) -> Terms {
        Terms {
            generation: link.generation,
            policy: link.policy.clone(),
        }
    }

    pub(super) fn still(&self, link: &Link) -> bool {
        let (then, now) = (&self.policy, &link.policy);
        link.generation == self.generation
            && !now.locked
            && now.password_hash == then.password_hash
            && now.allow_cidrs == then.allow_cidrs
    }
}

impl Links {
    /// Checks what a link asks of a client besides a valid token: the token's `generation`, the
    /// client's address, and the password. `address` is the client as bans count it.
    pub(super) async fn guard(
        &self,
        link: &Link,
        generation: u32,
        visitor: &Visitor<'_>,
        address: &str,
    ) -> Result<(), Refusal> {
        if generation != link.generation {
            return Err(Refusal::Rotated);
        }
        let policy = &link.policy;
        if policy.locked {
            return Err(Refusal::Locked);
        }
        if !policy.allow_cidrs.is_empty()
            && !visitor
                .ip
                .is_some_and(|ip| policy.allow_cidrs.iter().any(|c| c.contains(ip)))
        {
            return Err(Refusal::NotAllowed);
        }
        let Some(phc) = &policy.password_hash else {
            return Ok(());
        };
        let given = basic_password(visitor.authorization).ok_or(Refusal::PasswordNeeded)?;
        if given.len() > MAX_PASSWORD {
            return Err(Refusal::WrongPassword);
        }
        match self.passwords.matches(link, address, phc, given).await? {
            Verdict::Right => Ok(()),
            Verdict::WrongAgain => Err(Refusal::WrongPassword),
            Verdict::Wrong => {
                self.wrong_password(link, phc).await;
                Err(Refusal::WrongPassword)
            }
        }
    }

    /// Counts a wrong password against the link, and locks it at the limit. A password checked
    /// against a hash the owner has since replaced does not count.
    async fn wrong_password(&self, link: &Link, phc: &str) {
        let updated = self
            .store
            .update(&link.id, &mut |l| {
                let p = std::sync::Arc::make_mut(&mut l.policy);
                if p.locked || p.password_hash.as_deref() != Some(phc) {
                    return Write::No(false);
                }
                p.password_fails += 1;
                p.locked = p.password_fails >= LOCK_AFTER;
                Write::Durable(p.locked)
            })
            .await;
        if let Ok(Some((true, l))) = updated {
            tracing::warn!(tunnel_id = %l.id, "link locked after {LOCK_AFTER} wrong passwords");
            self.audit(
                "link.locked",
                None,
                Some(l.id.as_str()),
                Some(format!("{LOCK_AFTER} wrong passwords")),
            )
            .await;
            self.emit(EventKind::Locked, &l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cidr, link::test_link};

    #[test]
    fn terms_hold_until_the_token_password_addresses_or_lock_change() {
        let mut link = test_link(10, 1);
        Arc::make_mut(&mut link.policy).password_hash = Some("$argon2id$a".into());
        let terms = Terms::of(&link);
        Arc::make_mut(&mut link.policy).password_fails = 3;
        assert!(terms.still(&link), "a count of wrong passwords changes nothing");
        let changes: [fn(&mut Link); 4] = [
            |l| l.generation += 1,
            |l| Arc::make_mut(&mut l.policy).password_hash = Some("$argon2id$b".into()),
            |l| Arc::make_mut(&mut l.policy).allow_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()],
            |l| Arc::make_mut(&mut l.policy).locked = true,
        ];
        for change in changes {
            let mut changed = link.clone();
            change(&mut changed);
            assert!(!terms.still(&changed));
        }
    }
}
