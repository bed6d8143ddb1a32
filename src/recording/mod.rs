//! Encrypted call recordings: the file format, the keystore that holds each recording's data key,
//! the writer behind the media session's recording queue, retention and erasure.

pub mod format;
pub mod keystore;
