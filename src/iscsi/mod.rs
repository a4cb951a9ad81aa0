//! iSCSI (RFC 7143): PDU codec, login and key negotiation, sessions, and the tokio transport.

pub mod login;
pub mod pdu;
pub mod session;
pub mod text;
pub mod transport;
