//! A Redis the harness was lent by URL: read and written under a unique per-run key prefix,
//! never restarted, crashed, stopped, frozen or flushed. Refusing is the point: a chaos run
//! pointed at a shared server must not take it down for everyone else.

use super::{admin, new_run_id, Error, Readiness, RedisNode, Restart, Result};

#[derive(Debug)]
pub struct ExternalRedis {
    url: String,
    addr: String,
    prefix: String,
}

impl ExternalRedis {
    /// Checks the URL and that the server answers `PING`.
    pub async fn connect(url: &str) -> Result<ExternalRedis> {
        let client =
            redis::Client::open(url).map_err(|e| Error::BadUrl { url: url.to_string(), reason: e.to_string() })?;
        let addr = client.get_connection_info().addr().to_string();
        let mut conn = admin::connect(url).await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(ExternalRedis { url: url.to_string(), addr, prefix: format!("hc:{}:", new_run_id()) })
    }

    fn refuse<T>(&self, op: &'static str) -> Result<T> {
        Err(Error::NotOwned { op, url: self.url.clone() })
    }
}

#[async_trait::async_trait]
impl RedisNode for ExternalRedis {
    fn addr(&self) -> String {
        self.addr.clone()
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn key_prefix(&self) -> &str {
        &self.prefix
    }

    fn owned(&self) -> bool {
        false
    }

    async fn restart(&mut self, how: Restart) -> Result<Readiness> {
        self.refuse(match how {
            Restart::Graceful => "restart",
            Restart::Crash => "crash",
        })
    }

    async fn stop(&mut self, _how: Restart) -> Result<()> {
        self.refuse("stop")
    }

    async fn start(&mut self) -> Result<Readiness> {
        self.refuse("start")
    }

    async fn freeze(&mut self) -> Result<()> {
        self.refuse("freeze")
    }

    async fn thaw(&mut self) -> Result<()> {
        self.refuse("thaw")
    }

    async fn flush(&mut self) -> Result<()> {
        self.refuse("flush")
    }
}
