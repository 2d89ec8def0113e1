//! Toxiproxy's JSON shapes and the typed toxics behind them.
//!
//! Attribute names, defaults and units follow Toxiproxy 2.x exactly (latency in ms, bandwidth
//! `rate` in KB/s, slicer `delay` in microseconds, ...), because real Toxiproxy clients, and a
//! real Toxiproxy behind `TOXIPROXY_URL`, must read and write the same documents. All
//! attributes are non-negative integers: that is what Toxiproxy's Go structs decode and what
//! clients such as `toxiproxy_rust` (which decodes them as `u32`) expect back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest value of any size or rate attribute (bytes, KB/s): Go's `int64` maximum, 2^63-1,
/// what a real Toxiproxy decodes. Deliberately stricter than Toxiproxy above it (it would
/// wrap); below it every value is honoured: a rate this large is no limit at all.
pub const ATTRIBUTE_MAX: u64 = i64::MAX as u64;
/// Longest delay a toxic can be asked for, in milliseconds (latency + jitter, slow_close
/// delay, timeout, reset_peer timeout): 365 days. Inside tokio's timer wheel (2^36 ms, about
/// 2.2 years) and far from `Instant` overflow, so every accepted delay is kept as asked.
pub const DELAY_MS_MAX: u64 = 365 * 24 * 3_600 * 1_000;
/// Longest slicer `delay`, in microseconds: [`DELAY_MS_MAX`] in microseconds.
pub const DELAY_US_MAX: u64 = DELAY_MS_MAX * 1_000;
/// Longest proxy or toxic name, in bytes of UTF-8: a longer one could be created but its URL
/// was too long to address it again (414 on delete).
pub const NAME_LEN_MAX_BYTES: usize = 255;

/// Direction of traffic a toxic applies to: `upstream` is client -> server, `downstream` is
/// server -> client (Toxiproxy's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }

    /// Parses Toxiproxy's stream field; an empty string means the default, downstream.
    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "" | "downstream" => Some(Stream::Downstream),
            "upstream" => Some(Stream::Upstream),
            _ => None,
        }
    }
}

/// A toxic's type and attributes, typed. Units are in the field names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToxicKind {
    /// Delays every chunk by `latency_ms` plus a uniform draw in `[-jitter_ms, jitter_ms]`.
    Latency { latency_ms: u64, jitter_ms: u64 },
    /// Caps throughput at `rate_kb_s` kilobytes (1000 bytes) per second; 0 means unlimited.
    Bandwidth { rate_kb_s: u64 },
    /// Delays closing the connection by `delay_ms` once the source side closes.
    SlowClose { delay_ms: u64 },
    /// Drops all data; closes the connection after `timeout_ms`, or, with 0, holds it until
    /// the toxic is removed and then closes it.
    Timeout { timeout_ms: u64 },
    /// Resets the connection (TCP RST) `timeout_ms` after it sees the toxic.
    ResetPeer { timeout_ms: u64 },
    /// Splits data into pieces of `average_size` +- `size_variation` bytes, `delay_us` apart.
    Slicer { average_size: u64, size_variation: u64, delay_us: u64 },
    /// Lets `bytes` bytes through, then closes the connection.
    LimitData { bytes: u64 },
    /// Does nothing (Toxiproxy's `noop`: a toxic clients add to test their own plumbing).
    Noop,
}

/// Why a toxic document was refused; the server maps each to Toxiproxy's error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid toxic type")]
    InvalidType,
    #[error("stream was invalid, can be either upstream or downstream")]
    InvalidStream,
    #[error("bad request body: {0}")]
    BadBody(String),
    /// A value this proxy cannot honour, or an attribute the toxic does not have; the text
    /// names the field in quotes.
    #[error("{0}")]
    BadAttribute(String),
}

/// Refuses a name longer than [`NAME_LEN_MAX_BYTES`].
pub fn check_name(what: &str, name: &str) -> Result<(), ModelError> {
    if name.len() > NAME_LEN_MAX_BYTES {
        return Err(ModelError::BadBody(format!(
            "{what} name is {} bytes; names are at most {NAME_LEN_MAX_BYTES} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// (JSON attribute name, how to read it from / write it into a kind). One table per type
/// keeps parsing, merging and serialising in one place.
fn attribute_names(type_name: &str) -> Option<&'static [&'static str]> {
    Some(match type_name {
        "latency" => &["latency", "jitter"],
        "bandwidth" => &["rate"],
        "slow_close" => &["delay"],
        "timeout" => &["timeout"],
        "reset_peer" => &["timeout"],
        "slicer" => &["average_size", "size_variation", "delay"],
        "limit_data" => &["bytes"],
        "noop" => &[],
        _ => return None,
    })
}

impl ToxicKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
            ToxicKind::Noop => "noop",
        }
    }

    fn values(&self) -> Vec<u64> {
        match *self {
            ToxicKind::Latency { latency_ms, jitter_ms } => vec![latency_ms, jitter_ms],
            ToxicKind::Bandwidth { rate_kb_s } => vec![rate_kb_s],
            ToxicKind::SlowClose { delay_ms } => vec![delay_ms],
            ToxicKind::Timeout { timeout_ms } | ToxicKind::ResetPeer { timeout_ms } => {
                vec![timeout_ms]
            }
            ToxicKind::Slicer { average_size, size_variation, delay_us } => {
                vec![average_size, size_variation, delay_us]
            }
            ToxicKind::LimitData { bytes } => vec![bytes],
            ToxicKind::Noop => vec![],
        }
    }

    fn from_values(type_name: &str, v: &[u64]) -> Result<ToxicKind, ModelError> {
        Ok(match type_name {
            "latency" => ToxicKind::Latency { latency_ms: v[0], jitter_ms: v[1] },
            "bandwidth" => ToxicKind::Bandwidth { rate_kb_s: v[0] },
            "slow_close" => ToxicKind::SlowClose { delay_ms: v[0] },
            "timeout" => ToxicKind::Timeout { timeout_ms: v[0] },
            "reset_peer" => ToxicKind::ResetPeer { timeout_ms: v[0] },
            "slicer" => ToxicKind::Slicer { average_size: v[0], size_variation: v[1], delay_us: v[2] },
            "limit_data" => ToxicKind::LimitData { bytes: v[0] },
            "noop" => ToxicKind::Noop,
            _ => return Err(ModelError::InvalidType),
        })
    }

    /// Toxiproxy's `attributes` object, every attribute present.
    pub fn attributes(&self) -> Map<String, Value> {
        let names = attribute_names(self.type_name()).expect("every kind has a table row");
        names.iter().zip(self.values()).map(|(n, v)| (n.to_string(), Value::from(v))).collect()
    }

    /// Builds a kind from a type name and an attributes object. Missing attributes are 0, as
    /// Go's decoder leaves them; unknown ones are refused (Toxiproxy ignores them, so a typo
    /// such as `latencyy` made a toxic that did nothing).
    pub fn from_attributes(type_name: &str, attrs: &Map<String, Value>) -> Result<ToxicKind, ModelError> {
        let names = attribute_names(type_name).ok_or(ModelError::InvalidType)?;
        Self::from_values(type_name, &vec![0; names.len()])?.merged(attrs)
    }

    /// This kind with the given attributes overwritten (Toxiproxy's partial toxic update).
    pub fn merged(&self, attrs: &Map<String, Value>) -> Result<ToxicKind, ModelError> {
        let names = attribute_names(self.type_name()).expect("every kind has a table row");
        if let Some(unknown) = attrs.keys().find(|k| !names.contains(&k.as_str())) {
            let has = if names.is_empty() {
                "none".to_string()
            } else {
                names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
            };
            return Err(ModelError::BadAttribute(format!(
                "unknown attribute {unknown:?}: a {} toxic has {has}",
                self.type_name()
            )));
        }
        let mut values = self.values();
        for (i, name) in names.iter().enumerate() {
            if let Some(raw) = attrs.get(*name) {
                values[i] = raw.as_u64().ok_or_else(|| {
                    ModelError::BadBody(format!("attribute {name:?} must be a non-negative integer, got {raw}"))
                })?;
            }
        }
        let kind = Self::from_values(self.type_name(), &values)?;
        kind.check_limits()?;
        Ok(kind)
    }

    /// Refuses what the proxy cannot honour (see [`ATTRIBUTE_MAX`], [`DELAY_MS_MAX`],
    /// [`DELAY_US_MAX`]), naming the field: before, latency 2^63 was applied as 0, jitter or
    /// size_variation 2^64-1 panicked the link and a rate of 2^62 wrapped to 0.
    pub fn check_limits(&self) -> Result<(), ModelError> {
        let over = |field: &str, value: u64, max: u64, unit: &str| {
            Err(ModelError::BadAttribute(format!(
                "attribute {field:?} is {value}, more than this proxy can honour (at most {max} {unit})"
            )))
        };
        match *self {
            ToxicKind::Latency { latency_ms, jitter_ms } => {
                if latency_ms > DELAY_MS_MAX {
                    return over("latency", latency_ms, DELAY_MS_MAX, "ms");
                }
                if jitter_ms > DELAY_MS_MAX - latency_ms {
                    return Err(ModelError::BadAttribute(format!(
                        "attribute \"jitter\" is {jitter_ms}: latency + jitter must be at most {DELAY_MS_MAX} ms"
                    )));
                }
            }
            ToxicKind::Bandwidth { rate_kb_s } if rate_kb_s > ATTRIBUTE_MAX => {
                return over("rate", rate_kb_s, ATTRIBUTE_MAX, "KB/s")
            }
            ToxicKind::SlowClose { delay_ms } if delay_ms > DELAY_MS_MAX => {
                return over("delay", delay_ms, DELAY_MS_MAX, "ms")
            }
            ToxicKind::Timeout { timeout_ms } | ToxicKind::ResetPeer { timeout_ms } if timeout_ms > DELAY_MS_MAX => {
                return over("timeout", timeout_ms, DELAY_MS_MAX, "ms")
            }
            ToxicKind::Slicer { average_size, size_variation, delay_us } => {
                if average_size > ATTRIBUTE_MAX {
                    return over("average_size", average_size, ATTRIBUTE_MAX, "bytes");
                }
                if size_variation > ATTRIBUTE_MAX {
                    return over("size_variation", size_variation, ATTRIBUTE_MAX, "bytes");
                }
                if delay_us > DELAY_US_MAX {
                    return over("delay", delay_us, DELAY_US_MAX, "us");
                }
            }
            ToxicKind::LimitData { bytes } if bytes > ATTRIBUTE_MAX => {
                return over("bytes", bytes, ATTRIBUTE_MAX, "bytes")
            }
            _ => {}
        }
        Ok(())
    }
}

/// A named toxic on one stream of a proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Toxic {
    pub name: String,
    pub kind: ToxicKind,
    pub stream: Stream,
    /// Probability in `[0, 1]` that the toxic applies to a connection; rolled once per
    /// connection.
    pub toxicity: f32,
}

impl Toxic {
    /// A toxic with Toxiproxy's default name (`<type>_<stream>`) and toxicity 1.
    pub fn new(kind: ToxicKind, stream: Stream) -> Toxic {
        let name = format!("{}_{}", kind.type_name(), stream.as_str());
        Toxic { name, kind, stream, toxicity: 1.0 }
    }

    pub fn named(mut self, name: impl Into<String>) -> Toxic {
        self.name = name.into();
        self
    }

    pub fn with_toxicity(mut self, toxicity: f32) -> Toxic {
        self.toxicity = toxicity;
        self
    }

    pub fn to_json(&self) -> ToxicJson {
        ToxicJson {
            name: self.name.clone(),
            kind: self.kind.type_name().to_string(),
            stream: self.stream.as_str().to_string(),
            toxicity: self.toxicity,
            attributes: self.kind.attributes(),
        }
    }

    /// Parses a create-toxic request body, filling Toxiproxy's defaults.
    pub fn from_request(body: &Value) -> Result<Toxic, ModelError> {
        let obj = body.as_object().ok_or_else(|| ModelError::BadBody("expected a JSON object".into()))?;
        let type_name = obj.get("type").and_then(Value::as_str).ok_or(ModelError::InvalidType)?;
        let stream = match obj.get("stream") {
            None | Some(Value::Null) => Stream::Downstream,
            Some(Value::String(s)) => Stream::parse(s).ok_or(ModelError::InvalidStream)?,
            Some(_) => return Err(ModelError::InvalidStream),
        };
        let empty = Map::new();
        let attrs = match obj.get("attributes") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(ModelError::BadBody("attributes must be an object".into())),
        };
        let kind = ToxicKind::from_attributes(type_name, attrs)?;
        let toxicity = parse_toxicity(obj.get("toxicity"))?.unwrap_or(1.0);
        let mut toxic = Toxic::new(kind, stream).with_toxicity(toxicity);
        match obj.get("name") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => {
                check_name("toxic", s)?;
                toxic.name = s.clone()
            }
            Some(_) => return Err(ModelError::BadBody("name must be a string".into())),
        }
        Ok(toxic)
    }

    /// Applies an update-toxic body: attributes merge, toxicity replaces; name, type and stream
    /// stay (Toxiproxy does the same).
    pub fn updated(&self, body: &Value) -> Result<Toxic, ModelError> {
        let obj = body.as_object().ok_or_else(|| ModelError::BadBody("expected a JSON object".into()))?;
        let mut next = self.clone();
        match obj.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => next.kind = self.kind.merged(m)?,
            Some(_) => return Err(ModelError::BadBody("attributes must be an object".into())),
        }
        if let Some(t) = parse_toxicity(obj.get("toxicity"))? {
            next.toxicity = t;
        }
        Ok(next)
    }
}

fn parse_toxicity(v: Option<&Value>) -> Result<Option<f32>, ModelError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => Ok(Some(t as f32)),
            _ => Err(ModelError::BadBody(format!("toxicity must be a number in [0, 1], got {v}"))),
        },
    }
}

/// A toxic as Toxiproxy's API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToxicJson {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub stream: String,
    /// Written as Go writes a float32: `1`, not `1.0`.
    #[serde(serialize_with = "go_float32")]
    pub toxicity: f32,
    pub attributes: Map<String, Value>,
}

/// Serialises an `f32` as Go's `encoding/json` does: a whole number without a fraction
/// (`1`, `0`), anything else in its shortest form (`0.5`).
fn go_float32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f32(*v)
    }
}

/// A proxy as Toxiproxy's API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyJson {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    #[serde(default)]
    pub toxics: Vec<ToxicJson>,
}

/// Toxiproxy's error body: `{"error": "...", "status": N}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorJson {
    pub error: String,
    pub status: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_toxiproxy() {
        let t = Toxic::from_request(&json!({"type": "latency", "attributes": {"latency": 100}})).unwrap();
        assert_eq!(t.name, "latency_downstream");
        assert_eq!(t.stream, Stream::Downstream);
        assert_eq!(t.toxicity, 1.0);
        // Toxiproxy (Go, float32) writes toxicity 1 as `1` and 0.3 as `0.3`.
        let shown = serde_json::to_string(&t.to_json()).unwrap();
        assert!(shown.contains(r#""toxicity":1,"#), "{shown}");
        let third = serde_json::to_string(&t.clone().with_toxicity(0.3).to_json()).unwrap();
        assert!(third.contains(r#""toxicity":0.3,"#), "{third}");
        // noop: accepted, with no attributes.
        let noop = Toxic::from_request(&json!({"type": "noop"})).unwrap();
        assert_eq!((noop.kind.clone(), noop.to_json().attributes.len()), (ToxicKind::Noop, 0));
        assert_eq!(t.kind, ToxicKind::Latency { latency_ms: 100, jitter_ms: 0 });
        assert_eq!(t.to_json().attributes, json!({"latency": 100, "jitter": 0}).as_object().unwrap().clone());
    }

    #[test]
    fn refuses_what_toxiproxy_refuses() {
        assert_eq!(Toxic::from_request(&json!({"type": "nope"})), Err(ModelError::InvalidType));
        assert_eq!(Toxic::from_request(&json!({"attributes": {}})), Err(ModelError::InvalidType));
        assert_eq!(
            Toxic::from_request(&json!({"type": "timeout", "stream": "sideways"})),
            Err(ModelError::InvalidStream)
        );
        assert!(matches!(
            Toxic::from_request(&json!({"type": "latency", "attributes": {"latency": -1}})),
            Err(ModelError::BadBody(_))
        ));
        assert!(matches!(Toxic::from_request(&json!({"type": "latency", "toxicity": 2})), Err(ModelError::BadBody(_))));
    }

    #[test]
    fn update_merges_attributes_and_keeps_identity() {
        let t = Toxic::new(ToxicKind::Slicer { average_size: 10, size_variation: 2, delay_us: 5 }, Stream::Upstream)
            .named("s");
        let u = t.updated(&json!({"attributes": {"delay": 50}, "toxicity": 0.5, "name": "other"})).unwrap();
        assert_eq!(u.name, "s");
        assert_eq!(u.toxicity, 0.5);
        assert_eq!(u.kind, ToxicKind::Slicer { average_size: 10, size_variation: 2, delay_us: 50 });
    }

    #[test]
    fn every_kind_round_trips_through_json() {
        let kinds = [
            ToxicKind::Latency { latency_ms: 1, jitter_ms: 2 },
            ToxicKind::Bandwidth { rate_kb_s: 3 },
            ToxicKind::SlowClose { delay_ms: 4 },
            ToxicKind::Timeout { timeout_ms: 5 },
            ToxicKind::ResetPeer { timeout_ms: 6 },
            ToxicKind::Slicer { average_size: 7, size_variation: 8, delay_us: 9 },
            ToxicKind::LimitData { bytes: 10 },
        ];
        for kind in kinds {
            let t = Toxic::new(kind, Stream::Upstream);
            let back = Toxic::from_request(&serde_json::to_value(t.to_json()).unwrap()).unwrap();
            assert_eq!(back, t);
        }
    }
}
