//! A list of ways out tried in order: the next member when a connection
//! through the previous one cannot be made (Clash's `fallback`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ferryman_http::upstream::{Connect, Connecting, Connector};
use ferryman_http::UpstreamError;
use tokio::time::Instant;
use tracing::debug;

pub(crate) struct Group {
    name: Arc<str>,
    members: Vec<Connector>,
    key: u64,
}

impl Group {
    pub(crate) fn new(name: &str, members: Vec<Connector>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ("group", name).hash(&mut hasher);
        for member in &members {
            member.pool_key().hash(&mut hasher);
        }
        Self {
            name: name.into(),
            members,
            key: hasher.finish(),
        }
    }
}

impl Connect for Group {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_key(&self) -> u64 {
        self.key
    }

    /// Each member gets an equal share of the time left, so one that hangs
    /// until the deadline cannot keep the next from being tried; the last
    /// gets all that remains.
    fn connect<'a>(&'a self, host: &'a str, port: u16, deadline: Instant) -> Connecting<'a> {
        Box::pin(async move {
            let mut failures = Vec::new();
            for (i, member) in self.members.iter().enumerate() {
                let now = Instant::now();
                let members_left = (self.members.len() - i) as u32;
                let share = deadline.saturating_duration_since(now) / members_left;
                match member.connect(host, port, now + share).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) => {
                        debug!(group = %self.name, member = member.name(), error = %e, "trying the next member");
                        failures.push(format!("{}: {e}", member.name()));
                    }
                }
            }
            Err(UpstreamError::Outbound {
                outbound: self.name.to_string(),
                reason: format!("every member failed ({})", failures.join("; ")),
            })
        })
    }
}
