//! Straight to the destination: resolved here, dialled from this machine.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ferryman_http::upstream::{Conn, Connect, Connecting};
use tokio::time::Instant;

use ferryman_http::dial::{dial, OwnAddrs, Source};

pub(crate) struct Direct {
    name: Arc<str>,
    source: Source,
    own: OwnAddrs,
    key: u64,
}

impl Direct {
    pub(crate) fn new(name: &str, source: Source, own: OwnAddrs) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ("direct", name, &source).hash(&mut hasher);
        Self {
            name: name.into(),
            source,
            own,
            key: hasher.finish(),
        }
    }
}

impl Connect for Direct {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_key(&self) -> u64 {
        self.key
    }

    fn connect<'a>(&'a self, host: &'a str, port: u16, deadline: Instant) -> Connecting<'a> {
        Box::pin(async move {
            let stream = dial(host, port, deadline, &self.source, &self.own).await?;
            Ok(Conn::Tcp(stream))
        })
    }
}
