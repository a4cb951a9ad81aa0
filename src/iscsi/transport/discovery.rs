//! Text Requests of a session (SendTargets and friends), answered by the sans-IO
//! [`TextExchange`], with TargetAddress listing every portal group of the server.

use std::net::SocketAddr;
use std::sync::Arc;

use super::catalog::Catalog;
use crate::iscsi::login::SessionType;
use crate::iscsi::session::TextHandler;
use crate::iscsi::text::{TextContext, TextExchange};

/// The Text Request answerer of one session. `target` is the target of a normal session
/// (`None` for discovery); `portals` are the addresses SendTargets reports, with their portal
/// group tags ([`advertised`]).
pub fn text_handler(
    catalog: Arc<Catalog>,
    portals: Vec<(SocketAddr, u16)>,
    session_type: SessionType,
    initiator: String,
    target: Option<String>,
) -> TextHandler {
    let mut exchange = TextExchange::new();
    Box::new(move |req, max_send_data_segment_length| {
        let ctx = TextContext {
            directory: &*catalog,
            session_type,
            initiator_name: &initiator,
            target_name: target.as_deref(),
            portals: &portals,
            max_send_data_segment_length,
        };
        exchange.handle(&ctx, req)
    })
}

/// The portals SendTargets reports to a connection accepted on `local` through portal group
/// `tag`, out of the server's `groups` (listening address and tag): the accepting one first,
/// then every other, so a multipath host finds all paths from one discovery. A group listening
/// on every address (0.0.0.0 or ::) is reported at the address the connection came to, or not
/// at all when that address is of the other family.
pub fn advertised(
    local: SocketAddr,
    tag: u16,
    groups: &[(SocketAddr, u16)],
) -> Vec<(SocketAddr, u16)> {
    let mut out = vec![(local, tag)];
    for &(addr, group) in groups {
        if group == tag {
            continue;
        }
        let addr = match addr.ip().is_unspecified() {
            false => addr,
            // Listening on every address of the family the connection came in by.
            true if addr.is_ipv4() == local.is_ipv4() => SocketAddr::new(local.ip(), addr.port()),
            // Of the other family: which of its addresses would reach us is unknown.
            true => continue,
        };
        if !out.contains(&(addr, group)) {
            out.push((addr, group));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_portal_group_is_reported_the_accepting_one_first() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let groups = [
            (a("0.0.0.0:3260"), 1),
            (a("10.0.0.5:3261"), 2),
            (a("[::]:3262"), 3),
        ];
        // The IPv6 wildcard group is left out for an IPv4 connection, and the IPv4 one for
        // an IPv6 connection.
        assert_eq!(
            advertised(a("10.0.0.5:3261"), 2, &groups),
            vec![(a("10.0.0.5:3261"), 2), (a("10.0.0.5:3260"), 1)]
        );
        assert_eq!(
            advertised(a("[fd00::5]:3262"), 3, &groups),
            vec![(a("[fd00::5]:3262"), 3), (a("10.0.0.5:3261"), 2)]
        );
        assert_eq!(
            advertised(a("127.0.0.1:3260"), 1, &groups[..1]),
            vec![(a("127.0.0.1:3260"), 1)]
        );
    }
}
