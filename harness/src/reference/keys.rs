//! The key and channel schema, compatible with the seed designs by default.
//!
//! Feedback (seed `000_*`): request hash `feedback:request:{id}`, response hash
//! `feedback:response:{id}` (fields `feedback_id`, `response_type`, `approved`,
//! `responded_at`, plus the payload), notification channel `feedback:{id}`. Streaming (seed
//! `003_*`): chunk list `stream:{task}:chunks`, channel `stream:{task}`. Control signals (seed
//! `004_*`): channel `datahub:control`. Everything is behind an optional prefix so runs can
//! share a server without colliding; the empty prefix is exactly the seeds' schema, so an
//! existing service using it interoperates.

/// Names every key and channel the reference implementation touches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn feedback_request(&self, id: &str) -> String {
        format!("{}feedback:request:{id}", self.prefix)
    }

    pub fn feedback_response(&self, id: &str) -> String {
        format!("{}feedback:response:{id}", self.prefix)
    }

    pub fn feedback_channel(&self, id: &str) -> String {
        format!("{}feedback:{id}", self.prefix)
    }

    pub fn stream_chunks(&self, task: &str) -> String {
        format!("{}stream:{task}:chunks", self.prefix)
    }

    pub fn stream_channel(&self, task: &str) -> String {
        format!("{}stream:{task}", self.prefix)
    }

    pub fn control_channel(&self) -> String {
        format!("{}datahub:control", self.prefix)
    }

    /// The fan-out channel of seed `004_*`: `market:{symbol}:{timeframe}`.
    pub fn market_channel(&self, symbol: &str, timeframe: &str) -> String {
        format!("{}market:{symbol}:{timeframe}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prefix_is_the_seed_schema() {
        let k = Keys::default();
        assert_eq!(k.feedback_response("deploy_abc123"), "feedback:response:deploy_abc123");
        assert_eq!(k.feedback_request("x"), "feedback:request:x");
        assert_eq!(k.feedback_channel("x"), "feedback:x");
        assert_eq!(k.stream_chunks("t"), "stream:t:chunks");
        assert_eq!(k.stream_channel("t"), "stream:t");
        assert_eq!(k.control_channel(), "datahub:control");
    }

    #[test]
    fn prefix_applies_to_everything() {
        let k = Keys::new("hc:run1:");
        assert_eq!(k.feedback_channel("x"), "hc:run1:feedback:x");
        assert_eq!(k.stream_chunks("t"), "hc:run1:stream:t:chunks");
    }
}
