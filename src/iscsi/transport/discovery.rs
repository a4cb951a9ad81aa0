//! Text Requests of a session (SendTargets and friends), answered by the sans-IO
//! [`TextExchange`] with TargetAddress taken from the address the connection was accepted on.

use std::net::SocketAddr;
use std::sync::Arc;

use super::catalog::Catalog;
use crate::iscsi::login::SessionType;
use crate::iscsi::session::TextHandler;
use crate::iscsi::text::{TextContext, TextExchange};

/// The Text Request answerer of one session. `target` is the target of a normal session
/// (`None` for discovery); `local` is the portal the connection came in on.
pub fn text_handler(
    catalog: Arc<Catalog>,
    local: SocketAddr,
    session_type: SessionType,
    initiator: String,
    target: Option<String>,
) -> TextHandler {
    let mut exchange = TextExchange::new();
    Box::new(move |req, max_send_data_segment_length| {
        let portals = [local];
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
