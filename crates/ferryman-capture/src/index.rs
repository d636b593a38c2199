//! The embedded index: one SQLite row per exchange, with the fields people
//! filter on and the whole record. Writes go through one thread in batches;
//! reads use their own connection (WAL lets them run side by side).

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::record::{ExchangeId, ExchangeRecord};
use crate::Inner;

/// Records waiting for the index thread; past this they are dropped and
/// counted. With its JSON a record is a few KiB: this bounds the queue's
/// memory to about 10 MiB when the index falls behind.
const QUEUE: usize = 4 * 1024;
/// Rows written per transaction, at most.
const BATCH: usize = 1024;
/// How long a first record waits for others to share its transaction: one
/// commit per record would cost more than the rest of capture together.
const LINGER: Duration = Duration::from_millis(10);

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS exchanges (
        id TEXT PRIMARY KEY,
        started_ms INTEGER NOT NULL,
        host TEXT NOT NULL,
        method TEXT NOT NULL,
        url TEXT NOT NULL,
        status INTEGER,
        content_type TEXT,
        request_size INTEGER NOT NULL,
        response_size INTEGER NOT NULL,
        duration_ms REAL,
        error TEXT,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS exchanges_started ON exchanges (started_ms);
    CREATE INDEX IF NOT EXISTS exchanges_host ON exchanges (host, started_ms);
";

/// Which records a query returns; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<i64>,
    /// Host name, without port, case-insensitive.
    pub host: Option<String>,
    pub method: Option<String>,
    pub status: Option<u16>,
    /// Response content type, by prefix (`image/`, `application/json`).
    pub content_type: Option<String>,
    /// Text anywhere in the URL.
    pub text: Option<String>,
    pub limit: Option<usize>,
    pub offset: usize,
}

pub(crate) struct Index {
    writes: SyncSender<(ExchangeRecord, String)>,
    reads: Mutex<Connection>,
}

/// The thread that owns the writing connection.
pub(crate) struct IndexWorker {
    conn: Connection,
    records: Receiver<(ExchangeRecord, String)>,
}

fn open_connection(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| format!("index {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .and_then(|()| conn.execute_batch(SCHEMA))
        .map_err(|e| format!("index {}: {e}", path.display()))?;
    Ok(conn)
}

impl Index {
    pub(crate) fn open(path: &Path) -> Result<(Index, IndexWorker), String> {
        let conn = open_connection(path)?;
        let reads = open_connection(path)?;
        let (writes, records) = sync_channel(QUEUE);
        Ok((
            Index {
                writes,
                reads: Mutex::new(reads),
            },
            IndexWorker { conn, records },
        ))
    }

    /// Queues a record with its JSON; false if the index thread is too far
    /// behind or gone.
    pub(crate) fn insert(&self, record: ExchangeRecord, json: String) -> bool {
        match self.writes.try_send((record, json)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    pub(crate) fn writes(&self) -> SyncSender<(ExchangeRecord, String)> {
        self.writes.clone()
    }

    pub(crate) fn query(&self, filter: &Filter) -> Result<Vec<ExchangeRecord>, String> {
        let mut sql = String::from("SELECT record FROM exchanges WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(since) = filter.since_ms {
            sql.push_str(" AND started_ms >= ?");
            values.push(since.into());
        }
        if let Some(until) = filter.until_ms {
            sql.push_str(" AND started_ms < ?");
            values.push(until.into());
        }
        if let Some(host) = &filter.host {
            sql.push_str(" AND host = ?");
            values.push(host.to_ascii_lowercase().into());
        }
        if let Some(method) = &filter.method {
            sql.push_str(" AND method = ?");
            values.push(method.to_ascii_uppercase().into());
        }
        if let Some(status) = filter.status {
            sql.push_str(" AND status = ?");
            values.push(i64::from(status).into());
        }
        if let Some(prefix) = &filter.content_type {
            sql.push_str(" AND substr(lower(content_type), 1, ?) = ?");
            values.push((prefix.len() as i64).into());
            values.push(prefix.to_ascii_lowercase().into());
        }
        if let Some(text) = &filter.text {
            sql.push_str(" AND instr(url, ?) > 0");
            values.push(text.clone().into());
        }
        sql.push_str(" ORDER BY started_ms DESC, id DESC LIMIT ? OFFSET ?");
        values.push(filter.limit.map_or(-1, |l| l as i64).into());
        values.push((filter.offset as i64).into());
        let conn = self.reads.lock().map_err(|_| "index lock poisoned")?;
        let mut statement = conn.prepare_cached(&sql).map_err(|e| e.to_string())?;
        let rows = statement
            .query_map(params_from_iter(values), |row| row.get::<_, String>(0))
            .map_err(|e| e.to_string())?;
        let mut records = Vec::new();
        for row in rows {
            let json = row.map_err(|e| e.to_string())?;
            match serde_json::from_str(&json) {
                Ok(record) => records.push(record),
                Err(e) => tracing::warn!(error = %e, "unreadable record in the index"),
            }
        }
        Ok(records)
    }

    pub(crate) fn get(&self, id: ExchangeId) -> Result<Option<ExchangeRecord>, String> {
        let conn = self.reads.lock().map_err(|_| "index lock poisoned")?;
        let json: Option<String> = conn
            .query_row(
                "SELECT record FROM exchanges WHERE id = ?",
                [id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        json.map(|json| serde_json::from_str(&json).map_err(|e| e.to_string()))
            .transpose()
    }
}

impl IndexWorker {
    pub(crate) fn spawn(self, weak: Weak<Inner>, nice: u8) -> Result<(), String> {
        std::thread::Builder::new()
            .name("ferryman-index".into())
            .spawn(move || {
                crate::priority::yield_to_traffic(nice);
                self.run(weak)
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the index thread: {e}"))
    }

    fn run(mut self, weak: Weak<Inner>) {
        let mut rows = self
            .conn
            .query_row("SELECT count(*) FROM exchanges", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_or(0, |n| n.max(0) as u64);
        while let Ok(first) = self.records.recv() {
            let mut batch = vec![first];
            let deadline = Instant::now() + LINGER;
            while batch.len() < BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.records.recv_timeout(left) {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            let Some(capture) = weak.upgrade() else {
                return;
            };
            let count = batch.len();
            match self.write(&batch) {
                Ok(added) => {
                    rows += added;
                    // Only once committed: a watcher may look the record up.
                    if capture.indexed.receiver_count() > 0 {
                        for (record, _) in batch.drain(..) {
                            let _ = capture.indexed.send(Arc::new(record));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = batch.len(), "index write failed");
                    capture
                        .stats
                        .records_failed
                        .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let retention = &capture.config.retention;
            match self.expire(&mut rows, retention.max_count, retention.max_age) {
                Ok(expired) if !expired.is_empty() => capture.delete_objects(expired),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "index retention failed"),
            }
            capture.end_pending(count);
        }
    }

    /// Returns how many rows were new.
    fn write(&mut self, batch: &[(ExchangeRecord, String)]) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        let mut added = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO exchanges (id, started_ms, host, method, url, status,
                 content_type, request_size, response_size, duration_ms, error, record)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?;
            for (record, json) in batch {
                let response = record.response.as_ref();
                added += insert.execute(params![
                    record.id,
                    record.started_ms,
                    host_of(&record.request.url),
                    record.request.method,
                    record.request.url,
                    response.map(|r| r.status),
                    response.and_then(|r| header(&r.headers, "content-type")),
                    record.request.body.size as i64,
                    response.map_or(0, |r| r.body.size as i64),
                    record.timings.end_ms,
                    record.error,
                    json,
                ])? as u64;
            }
        }
        tx.commit()?;
        Ok(added)
    }

    /// Deletes rows past the count limit or older than `max_age` (two
    /// probes of the time index, cheap enough for every batch); returns
    /// their ids so their objects go too.
    fn expire(
        &mut self,
        rows: &mut u64,
        max_count: u64,
        max_age: Duration,
    ) -> rusqlite::Result<Vec<String>> {
        let mut ids: Vec<String> = Vec::new();
        {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let cutoff = now.saturating_sub(max_age).as_millis() as i64;
            let mut old = self
                .conn
                .prepare_cached("SELECT id FROM exchanges WHERE started_ms < ? LIMIT 10000")?;
            for id in old.query_map([cutoff], |row| row.get(0))? {
                ids.push(id?);
            }
        }
        if *rows > max_count {
            let mut oldest = self
                .conn
                .prepare_cached("SELECT id FROM exchanges ORDER BY started_ms, id LIMIT ?")?;
            for id in oldest.query_map([(*rows - max_count) as i64], |row| row.get(0))? {
                ids.push(id?);
            }
        }
        if ids.is_empty() {
            return Ok(ids);
        }
        ids.sort();
        ids.dedup();
        let tx = self.conn.transaction()?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM exchanges WHERE id = ?")?;
            for id in &ids {
                *rows = rows.saturating_sub(delete.execute([id])? as u64);
            }
        }
        tx.commit()?;
        Ok(ids)
    }
}

pub(crate) fn host_of(url: &str) -> String {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.to_ascii_lowercase()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_urls() {
        assert_eq!(host_of("http://Example.com:8080/a?b"), "example.com");
        assert_eq!(host_of("https://u:p@h.test/x"), "h.test");
        assert_eq!(host_of("http://[::1]:80/"), "::1");
        assert_eq!(host_of("example.com:443"), "example.com");
    }
}
