//! Changing how many downloads a live link allows (SPEC §13).

use std::cmp::Reverse;

use super::policy::{Policy, claim_active};
use crate::model::{Link, LinkState, Slot, Use};

/// Gives `link` an allowance of `n` downloads. Refused below the downloads that are complete
/// plus those in progress. Lowering keeps the slots in use and, of the others, those with the
/// most coverage; raising a completed link lets it serve again.
pub fn set_max_downloads(link: &mut Link, n: u32, now: u64, p: &Policy) -> Result<(), String> {
    let Link { claims, inflight, .. } = link;
    claims.retain(|c| claim_active(inflight, c, now, p));
    let in_use: Vec<bool> = (0..link.slots.len())
        .map(|i| {
            link.slots[i].complete
                || link.claims.iter().any(|c| c.slot as usize == i)
                || link
                    .inflight
                    .iter()
                    .any(|f| matches!(&f.what, Use::Claim { slot, .. } if *slot as usize == i))
        })
        .collect();
    let needed = in_use.iter().filter(|u| **u).count();
    let wanted = n as usize;
    if wanted < needed {
        let complete = link.slots.iter().filter(|s| s.complete).count();
        return Err(format!(
            "must be at least {needed}: {complete} downloads are complete and {} in progress",
            needed - complete
        ));
    }
    if wanted >= link.slots.len() {
        link.slots.resize(wanted, Slot::default());
    } else {
        let mut order: Vec<usize> = (0..link.slots.len()).collect();
        order.sort_by_key(|&i| (!in_use[i], Reverse(link.slots[i].coverage.covered())));
        let mut keep = order[..wanted].to_vec();
        keep.sort_unstable();
        // Slots keep their order; claims and requests in flight follow their slot's new place.
        let place = |old: u32| keep.iter().position(|&k| k == old as usize).map(|i| i as u32);
        for c in &mut link.claims {
            c.slot = place(c.slot).expect("a claimed slot is kept");
        }
        for f in &mut link.inflight {
            if let Use::Claim { slot, .. } = &mut f.what
                && let Some(new) = place(*slot)
            {
                *slot = new;
            }
        }
        link.slots = keep.iter().map(|&i| link.slots[i].clone()).collect();
    }
    link.max_downloads = n;
    link.downloads_completed = link.slots.iter().filter(|s| s.complete).count() as u32;
    let used_up = link.downloads_completed >= n;
    match link.state {
        LinkState::Completed if !used_up => {
            link.state = LinkState::Downloading;
            link.grace_until_ms = None;
        }
        LinkState::Open | LinkState::Downloading if used_up => {
            // The grace period serves the client that completed the last download.
            link.state = LinkState::Completed;
            link.grace_until_ms = Some(now + p.grace_ms);
            link.completer = link
                .slots
                .iter()
                .filter_map(|s| s.completed_by.as_ref())
                .max_by_key(|(_, at)| *at)
                .map(|(client, _)| client.clone());
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::link::test_link;
    use crate::model::{Claim, ClientKey, coverage::ByteRange};

    fn policy() -> Policy {
        crate::links::rules::TEST_POLICY
    }

    fn claim(link: &mut Link, slot: u32, now: u64) {
        link.claims.push(Claim {
            id: format!("c{slot}").into(),
            slot,
            client: ClientKey::new("127.0.0.9", "x").unwrap(),
            last_end_ms: now,
            bytes: 0,
        });
    }

    #[test]
    fn a_late_line_with_the_old_slot_number_credits_the_claims_slot() {
        use super::super::settle::{Delivery, Settled, credit};
        let p = policy();
        let mut link = test_link(1000, 3);
        link.state = LinkState::Downloading;
        claim(&mut link, 2, 100);
        let client = link.claims[0].client.clone();
        set_max_downloads(&mut link, 1, 100, &p).unwrap();
        assert_eq!(link.claims[0].slot, 0);
        // The line names slot 2, as nginx logged it before the change.
        let logged = Use::Claim {
            slot: 2,
            id: "c2".into(),
        };
        let d = Delivery {
            charged: 400,
            proven: ByteRange::new(0, 400),
        };
        credit(&mut link, &client, Some(&logged), d, 200, &p, &mut Settled::default());
        assert_eq!(link.slots[0].coverage.covered(), 400);
        assert_eq!(link.resent, 0);
        // A line for a claim that is gone, naming a slot that is gone, only adds re-sent bytes.
        let gone = Use::Claim {
            slot: 2,
            id: "old".into(),
        };
        let d = Delivery {
            charged: 300,
            proven: ByteRange::new(0, 300),
        };
        credit(&mut link, &client, Some(&gone), d, 200, &p, &mut Settled::default());
        assert_eq!((link.slots[0].coverage.covered(), link.resent), (400, 300));
    }

    #[test]
    fn raising_a_completed_link_lets_it_serve_again() {
        let mut link = test_link(1000, 1);
        link.slots[0].complete = true;
        link.downloads_completed = 1;
        link.state = LinkState::Completed;
        link.grace_until_ms = Some(5);
        set_max_downloads(&mut link, 2, 0, &policy()).unwrap();
        assert_eq!((link.max_downloads, link.slots.len()), (2, 2));
        assert_eq!((link.state, link.grace_until_ms), (LinkState::Downloading, None));
    }

    #[test]
    fn lowering_keeps_what_is_in_use_and_moves_claims_with_their_slot() {
        let p = policy();
        let mut link = test_link(1000, 4);
        link.slots[0].complete = true;
        link.slots[1].coverage.insert(ByteRange::new(0, 10).unwrap());
        link.slots[2].coverage.insert(ByteRange::new(0, 500).unwrap());
        claim(&mut link, 3, 100);
        link.state = LinkState::Downloading;
        let e = set_max_downloads(&mut link, 1, 100, &p).unwrap_err();
        assert!(
            e.contains("at least 2: 1 downloads are complete and 1 in progress"),
            "{e}"
        );
        set_max_downloads(&mut link, 3, 100, &p).unwrap();
        // The complete slot, the most covered free slot and the claimed slot, in their order.
        assert_eq!(link.slots.len(), 3);
        assert!(link.slots[0].complete);
        assert_eq!(link.slots[1].coverage.covered(), 500);
        assert_eq!(link.claims[0].slot, 2);
        // A claim that lapsed holds nothing. The grace period serves whoever completed last.
        let last = ClientKey::new("127.0.0.7", "wget").unwrap();
        link.slots[0].completed_by = Some((last.clone(), 50));
        set_max_downloads(&mut link, 1, 100 + p.resume_ms, &p).unwrap();
        assert_eq!((link.downloads_completed, link.state), (1, LinkState::Completed));
        assert_eq!(link.grace_until_ms, Some(100 + p.resume_ms + p.grace_ms));
        assert_eq!(link.completer, Some(last));
    }
}
