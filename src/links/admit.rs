//! Answers nginx's question for every public request: may it be served, and as what kind of use?

use std::sync::Arc;

use super::event::EventKind;
use super::guard::Terms;
use super::passwords::Visitor;
use super::rules::{self, Admission, Method, Refusal};
use super::service::Links;
use super::token;
use crate::data_dir::DataDir;
use crate::model::{ClientKey, Link, LinkState, TunnelId, Use};
use crate::store::Write;

impl Links {
    /// Answers nginx's question for every public request: may this request be served?
    pub async fn check(
        &self,
        id: &str,
        token: &str,
        visitor: &Visitor<'_>,
        mut admission: Admission,
    ) -> Result<(Arc<Link>, Use), Refusal> {
        let id = TunnelId::parse(id).map_err(|_| Refusal::Malformed)?;
        let now = self.clock.now_ms();
        let generation = self.keys.verify(token, &id, now / 1000).map_err(token_refusal)?;
        // A request whose log line cannot be written would deliver bytes nobody counts.
        if admission.method != Method::Head && self.log_writes.failing() {
            return Err(Refusal::LogUnwritable);
        }
        let link = self.still_the_shared_file(&id).await?;
        self.guard(&link, generation, visitor, &admission.client.address)
            .await?;
        let terms = Terms::of(&link);
        // The record is dropped before the admitting update, so that the update does not need to
        // copy it.
        drop(link);
        self.take_baseline(&mut admission);
        // On a reused connection, the request before this one has now ended. Usually it was on
        // this same link, and the admitting update marks it as ended. If it was on another link,
        // ending it takes a separate update.
        let previous = self.previous_on_connection(&admission);
        let ended_here = previous
            .as_ref()
            .filter(|(prev_id, _)| *prev_id == id)
            .map(|(_, rid)| rid);
        let (admitted, link) = self.admit_in_store(&id, &admission, &terms, ended_here, now).await?;
        if admitted.new_claim {
            self.emit(EventKind::Started, &link);
        }
        if let Some((conn, _)) = admission.conn {
            self.conns
                .lock()
                .expect("conns mutex")
                .insert(conn, (id.clone(), admission.request_id.clone()));
        }
        if let Some((prev_id, prev_rid)) = previous.filter(|(prev_id, _)| *prev_id != id) {
            let _ = self
                .store
                .update(&prev_id, &mut |l| match rules::end_on_reuse(l, &prev_rid) {
                    true => Write::Soft(()),
                    false => Write::No(()),
                })
                .await;
        }
        Ok((link, admitted.what))
    }

    /// Refuses a request for a link that is unknown or closed, and closes (as `error`) a link
    /// whose file is no longer the one it shared. Returns the link as it is now.
    async fn still_the_shared_file(&self, id: &TunnelId) -> Result<Arc<Link>, Refusal> {
        let link = self
            .store
            .get(id)
            .await
            .map_err(|_| Refusal::Unavailable)?
            .ok_or(Refusal::Unknown)?;
        if link.state == LinkState::Closed {
            return Err(Refusal::Closed);
        }
        // An upload link has nothing to download.
        if link.is_upload() {
            return Err(Refusal::Unknown);
        }
        // An archive's members are checked as they are read (see `crate::zip`).
        if link.is_zip() {
            return Ok(link);
        }
        // nginx is about to open the link's symlink, so one stat of the symlink answers the
        // question. When there is no symlink here (it is not made yet, or it was made on another
        // instance), the data dir answers instead.
        let same = match DataDir::identity_at(&self.tunnels_dir.join(id.as_str()).join("file")) {
            Some(served) => served == link.identity,
            None => self.data.identity(&link.file_path).ok() == Some(link.identity),
        };
        if same {
            return Ok(link);
        }
        let why = self.why_file_differs();
        tracing::warn!(tunnel_id = %id, reason = %why, "the shared file is not the one shared; closing the link");
        // Closing the link (with the tunnel's teardown) is rare here, but its state would make up
        // most of a check's state. It is boxed so that every check does not carry room for it.
        let _ = Box::pin(self.close_error(id, why)).await;
        Err(Refusal::FileChanged)
    }

    /// Records what the request's (possibly reused) connection had already acknowledged, or
    /// forgets the connection when ferry cannot see sockets.
    fn take_baseline(&self, admission: &mut Admission) {
        if let (Some((conn, base)), Some(diag)) = (admission.conn.as_mut(), &self.diag) {
            *base = baseline(admission.first_on_connection, || diag.bytes_acked(*conn).ok().flatten());
        } else {
            admission.conn = None;
        }
    }

    /// The link and request id of the request admitted before this one on its connection.
    fn previous_on_connection(&self, admission: &Admission) -> Option<(TunnelId, Arc<str>)> {
        let (conn, _) = admission.conn?;
        let conns = self.conns.lock().expect("conns mutex");
        conns
            .get(&conn)
            .filter(|(_, rid)| *rid != admission.request_id)
            .cloned()
    }

    /// Decides the request in one atomic update of the link, ending `ended_here` (the request
    /// before it on its connection) in the same write.
    async fn admit_in_store(
        &self,
        id: &TunnelId,
        admission: &Admission,
        terms: &Terms,
        ended_here: Option<&Arc<str>>,
        now: u64,
    ) -> Result<(rules::Admitted, Arc<Link>), Refusal> {
        let policy = self.policy;
        let outcome = self
            .store
            .update(id, &mut |link| match terms.still(link) {
                false => Write::No(Err(Refusal::TermsChanged)),
                true => admit_here(link, admission, ended_here, now, &policy),
            })
            .await
            .map_err(|_| Refusal::Unavailable)?
            .ok_or(Refusal::Unknown)?;
        Ok((outcome.0?, outcome.1))
    }

    /// A previewer's request: the token must be valid and the link open, but nothing is claimed.
    pub async fn preview(&self, id: &str, token: &str, visitor: &Visitor<'_>) -> Result<Arc<Link>, Refusal> {
        let link = self.live_link(id, token, visitor).await?;
        if link.is_upload() {
            return Err(Refusal::Closed);
        }
        Ok(link)
    }

    /// The link `id`, if `token` is its own and the link is open and not past its expiry.
    /// The client must also pass what the link asks of it (address, password).
    pub(super) async fn live_link(&self, id: &str, token: &str, visitor: &Visitor<'_>) -> Result<Arc<Link>, Refusal> {
        let id = TunnelId::parse(id).map_err(|_| Refusal::Malformed)?;
        let now = self.clock.now_ms();
        let generation = self.keys.verify(token, &id, now / 1000).map_err(token_refusal)?;
        let link = self
            .store
            .get(&id)
            .await
            .map_err(|_| Refusal::Unavailable)?
            .ok_or(Refusal::Unknown)?;
        if link.state == LinkState::Closed {
            return Err(Refusal::Closed);
        }
        if now >= link.expires_at_ms {
            return Err(Refusal::Expired);
        }
        let address = visitor
            .ip
            .and_then(|ip| ClientKey::new(&ip.to_string(), ""))
            .map(|c| c.address)
            .unwrap_or_default();
        self.guard(&link, generation, visitor, &address).await?;
        Ok(link)
    }
}

/// The admitting update itself: the decision, and the end of the request before it on its
/// connection, in one write.
fn admit_here(
    link: &mut Link,
    admission: &Admission,
    ended_here: Option<&Arc<str>>,
    now: u64,
    policy: &rules::Policy,
) -> Write<Result<rules::Admitted, Refusal>> {
    match rules::admit(link, admission, now, policy) {
        Ok(a) => {
            if let Some(rid) = ended_here {
                rules::end_on_reuse(link, rid);
            }
            // A new claim, and the charge for a read or a grace fetch, must survive a crash. A
            // request made under an existing claim need not.
            if a.new_claim || matches!(a.what, Use::Read | Use::Grace) {
                Write::Durable(Ok(a))
            } else {
                Write::Soft(Ok(a))
            }
        }
        Err(r) => Write::No(Err(r)),
    }
}

/// How many bytes a connection had acknowledged before the request being checked. On the
/// connection's first request this is 0, since most downloads come on a new connection. Otherwise
/// it is what the kernel says now through `ask`, or 0 if the kernel cannot tell.
fn baseline(first_on_connection: bool, ask: impl FnOnce() -> Option<u64>) -> u64 {
    if first_on_connection { 0 } else { ask().unwrap_or(0) }
}

/// Maps a token error to a refusal. A token that was correctly signed for this link and has merely
/// expired is bad luck (a recipient retrying an old link, perhaps one of many behind one NAT), not
/// forgery. It is refused as expired, which does not count toward a ban.
fn token_refusal(e: token::TokenError) -> Refusal {
    match e {
        token::TokenError::Expired => Refusal::Expired,
        _ => Refusal::BadToken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_connections_first_request_has_a_baseline_of_0_without_asking_the_kernel() {
        assert_eq!(baseline(true, || panic!("the kernel was asked")), 0);
        assert_eq!(baseline(false, || Some(4_321)), 4_321);
        assert_eq!(baseline(false, || None), 0, "a socket the kernel cannot find");
    }
}
