//! Read-only inspection of any Redis: `INFO`, `CLIENT LIST`, `PUBSUB NUMSUB`.
//!
//! Checkers compare these against a baseline taken before a run (subscriptions and client
//! connections back to where they were, memory growth bounded). Each call opens a short-lived
//! direct connection named [`ADMIN_CLIENT_NAME`] so it can be told apart from (and excluded
//! from) the connections under test. Parsing is split out as pure functions and unit-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Result;

/// `CLIENT SETNAME` of the harness's inspection connections.
pub const ADMIN_CLIENT_NAME: &str = "hybrid-chaos-admin";
/// Connect and response limit for inspection calls, in milliseconds.
const ADMIN_TIMEOUT_MS: u64 = 2_000;

/// A direct connection with bounded connect and response times, named as an admin client.
pub async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let limit = Some(Duration::from_millis(ADMIN_TIMEOUT_MS));
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(limit).set_response_timeout(limit);
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg(ADMIN_CLIENT_NAME).query_async(&mut conn).await?;
    Ok(conn)
}

/// `INFO [section]` as a field map (`used_memory`, `connected_clients`, ...).
pub async fn info(url: &str, section: Option<&str>) -> Result<BTreeMap<String, String>> {
    let mut conn = connect(url).await?;
    let mut cmd = redis::cmd("INFO");
    if let Some(s) = section {
        cmd.arg(s);
    }
    let text: String = cmd.query_async(&mut conn).await?;
    Ok(parse_info(&text))
}

/// `CLIENT LIST`, one field map per connection, the asking admin connection included.
pub async fn client_list(url: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let mut conn = connect(url).await?;
    let text: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await?;
    Ok(parse_client_list(&text))
}

/// Connections that are not the harness's own inspection connections.
pub async fn clients_under_test(url: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let all = client_list(url).await?;
    Ok(all.into_iter().filter(|c| c.get("name").map(String::as_str) != Some(ADMIN_CLIENT_NAME)).collect())
}

/// `PUBSUB NUMSUB ch...`: subscriber count per channel, in the order asked.
pub async fn pubsub_numsub(url: &str, channels: &[&str]) -> Result<Vec<(String, u64)>> {
    let mut conn = connect(url).await?;
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg("NUMSUB");
    for ch in channels {
        cmd.arg(*ch);
    }
    // The reply is a flat [name, count, name, count, ...] array; redis-rs pairs it up.
    Ok(cmd.query_async(&mut conn).await?)
}

/// Parses `INFO` text: `field:value` lines; section headers and blanks are skipped.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Parses `CLIENT LIST` text: one line per client of space-separated `key=value` fields.
pub fn parse_client_list(text: &str) -> Vec<BTreeMap<String, String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_parse_and_headers_are_skipped() {
        let m = parse_info("# Server\r\nredis_version:7.0.15\r\n\r\n# Memory\r\nused_memory:1024\r\n");
        assert_eq!(m.get("redis_version").map(String::as_str), Some("7.0.15"));
        assert_eq!(m.get("used_memory").map(String::as_str), Some("1024"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn client_list_parses_one_map_per_line() {
        let text = "id=3 addr=127.0.0.1:5 name= sub=1 cmd=subscribe\nid=4 addr=127.0.0.1:6 name=hybrid-chaos-admin sub=0 cmd=client|list\n";
        let v = parse_client_list(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["sub"], "1");
        assert_eq!(v[0]["name"], "");
        assert_eq!(v[1]["name"], ADMIN_CLIENT_NAME);
    }
}
