//! Who may use a link besides the holder of its token (SPEC §13): the token must be of the link's
//! current generation, the client's address among those the link allows, and the client must
//! give the link's password when it has one.

use super::event::EventKind;
use super::passwords::{LOCK_AFTER, MAX_PASSWORD, Visitor, basic_password};
use super::rules::Refusal;
use super::service::Links;
use crate::model::Link;
use crate::store::Write;

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
        if self.passwords.matches(link, address, phc, given).await? {
            return Ok(());
        }
        self.wrong_password(link).await;
        Err(Refusal::WrongPassword)
    }

    /// Counts a wrong password against the link, and locks it at the limit.
    async fn wrong_password(&self, link: &Link) {
        let updated = self
            .store
            .update(&link.id, &mut |l| {
                let p = std::sync::Arc::make_mut(&mut l.policy);
                if p.locked || p.password_hash.is_none() {
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
