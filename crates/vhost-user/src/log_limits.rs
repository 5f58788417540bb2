//! The limits on the log lines a front end's guest can make a back end
//! print beyond those its device crate counts.

use vmkit_virtio::LogLimiter;

/// What a driver repeats at will through the front end that the device
/// model's own limits ([`vmkit_blk::BlockLogLimits`],
/// [`vmkit_net::NetLogLimits`]) have no kind for: feature negotiations,
/// which the driver restarts with every reset. A back end keeps one for its
/// whole life, across vhost-user resets.
#[derive(Debug, Default)]
pub(crate) struct FeatureLogLimits {
    /// Feature selections accepted (logged as information).
    pub(crate) accepted: LogLimiter,
    /// Feature selections refused, and (virtio-blk) the queue
    /// notifications ignored because of one.
    pub(crate) refused: LogLimiter,
}
