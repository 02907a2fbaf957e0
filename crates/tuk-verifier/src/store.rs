//! Durable state: registered instances, every attestation result, webhooks, the audit log of
//! registrations, replacements and deletions. SQLite (a file;
//! the default) or PostgreSQL (a `postgres://` URL). Both run the same SQL (written with
//! `$N` parameters; SQLite gets `?N`), so the two cannot drift.
//!
//! Contract: every write is committed before the call returns, so a verifier that restarts
//! loses nothing it acknowledged.

use std::sync::Mutex;

/// A stored value: everything tuk keeps is an integer or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Int(i64),
    Text(String),
    Null,
}

impl Val {
    pub fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            _ => 0,
        }
    }
    pub fn text(&self) -> String {
        match self {
            Val::Text(s) => s.clone(),
            _ => String::new(),
        }
    }
    pub fn opt_text(&self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// A query parameter.
#[derive(Clone, Copy, Debug)]
pub enum Param<'a> {
    Int(i64),
    Text(&'a str),
    OptText(Option<&'a str>),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Url(String),
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

/// The database. One connection behind a mutex: the verifier's writes are small and few (one
/// row per attestation), and SQLite serializes writers anyway.
pub struct Store {
    backend: Mutex<Backend>,
    kind: &'static str,
}

/// A registered instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub url: String,
    /// Unix ms.
    pub registered_at: i64,
    /// The identity document the instance served at registration (JSON), whose AK credential
    /// activation bound to the certified EK.
    pub identity: String,
    /// The instance's service URL (what a gateway forwards to), when registered with one.
    pub service_url: Option<String>,
    /// Hex of the AK's name (one AK is registered under one id only).
    pub ak_name: String,
    /// Where the out-of-guest monitor's signed report for the instance is served, when
    /// registered with one.
    pub monitor_url: Option<String>,
}

/// One audit record: who registered, replaced or deleted which instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Unix ms.
    pub at: i64,
    pub instance: String,
    /// `register`, `replace` or `delete`.
    pub action: String,
    /// The token id that did it.
    pub actor: String,
    /// What changed (JSON).
    pub detail: String,
}

/// One attestation's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultRow {
    pub seq: i64,
    pub instance: String,
    /// Unix ms when the result was made.
    pub at: i64,
    /// `affirming`, `warning`, `contraindicated` or `unavailable`.
    pub status: String,
    /// The signed EAR (a JWT), when there is a result.
    pub ear: Option<String>,
    /// Why there is no result (`unavailable`), or a refusal's reason.
    pub error: Option<String>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, url TEXT NOT NULL, registered_at BIGINT NOT NULL, identity TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS results (seq BIGINT NOT NULL, instance TEXT NOT NULL, at BIGINT NOT NULL, status TEXT NOT NULL, ear TEXT, error TEXT, PRIMARY KEY (instance, seq))",
    "CREATE INDEX IF NOT EXISTS results_at ON results (at)",
    "CREATE TABLE IF NOT EXISTS webhooks (id TEXT PRIMARY KEY, url TEXT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, at BIGINT NOT NULL, instance TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL, detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_instance ON audit (instance, at)",
    "CREATE TABLE IF NOT EXISTS tpm_clocks (ak_name TEXT PRIMARY KEY, reset_count BIGINT NOT NULL, restart_count BIGINT NOT NULL, clock BIGINT NOT NULL)",
    // Scale-out (docs/verifier.md, "Scaling out"): one lease per instance (who attests it,
    // until when the lease holds, when it is due next; times in the database's clock, ms),
    // and a counter bumped on every registration change so other processes reload.
    "CREATE TABLE IF NOT EXISTS leases (instance TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at BIGINT NOT NULL, due_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet (name TEXT PRIMARY KEY, version BIGINT NOT NULL)",
    // The webhook outbox (docs/verifier.md, "Webhooks"): one row per status change and hook,
    // inserted in the transaction that stores the changing result, deleted once delivered
    // (or given up). `holder`/`expires_at`: the delivery claim of one process; `next_at`:
    // when the next try is due. Times in the database's clock, ms.
    "CREATE TABLE IF NOT EXISTS outbox (hook TEXT NOT NULL, instance TEXT NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL, \
     created_at BIGINT NOT NULL, attempts BIGINT NOT NULL, next_at BIGINT NOT NULL, holder TEXT NOT NULL, expires_at BIGINT NOT NULL, \
     PRIMARY KEY (hook, instance, seq))",
    // The event log of each instance's latest attestation with evidence (CEL-JSON records as
    // the appraisal replayed them), replaced by every new one: one row per instance.
    "CREATE TABLE IF NOT EXISTS eventlogs (instance TEXT PRIMARY KEY, seq BIGINT NOT NULL, at BIGINT NOT NULL, log TEXT NOT NULL)",
];

/// A notification claimed from the outbox for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub hook: String,
    pub instance: String,
    pub seq: i64,
    /// The JSON body to POST.
    pub body: String,
    /// Tries made before this one.
    pub attempts: i64,
}

/// The database's clock in Unix ms (SQLite: one process, the host's clock).
const SQLITE_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// The database's clock in Unix ms (PostgreSQL): lease times of every process come from one
/// clock.
const PG_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// One outbox row per webhook for a status change ($1 instance, $2 seq, $3 body); `NOW` is
/// replaced by the backend's clock.
const OUTBOX_INSERT: &str = "INSERT INTO outbox (hook, instance, seq, body, created_at, attempts, next_at, holder, expires_at) \
     SELECT id, $1, $2, $3, NOW, 0, 0, '', 0 FROM webhooks";

/// The webhook body of a status change, from (seq, previous status).
pub type NotifyBody<'a> = &'a dyn Fn(i64, &str) -> String;

/// An undelivered notification: (hook, instance, seq, claim holder (empty: unclaimed), tries).
pub type OutboxRow = (String, String, i64, String, i64);

/// A lease: (instance, holder (empty when free), expires_at, due_at), in the database's clock.
pub type Lease = (String, String, i64, i64);

/// What [`Store::add_result_leased`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored as `seq`; `previous` is the instance's status before it (`pending` when it has
    /// no result since its registration): the one decision whether a webhook fires.
    Added {
        seq: i64,
        previous: String,
        /// Outbox rows inserted with it (one per webhook when the status changed).
        notifications: u64,
    },
    /// Not stored: the lease was taken over by another process (this one was too slow).
    LeaseLost { holder: String },
}

/// Columns added since the first schema: (table, column, type). Added to an older database
/// when missing.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("instances", "service_url", "TEXT"),
    ("instances", "ak_name", "TEXT"),
    ("instances", "monitor_url", "TEXT"),
];

impl Store {
    /// Opens (creating if needed) `location`: a `postgres://` or `postgresql://` URL, or a
    /// SQLite file path (optionally prefixed `sqlite:`).
    pub fn open(location: &str) -> Result<Store, StoreError> {
        let (backend, kind) =
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                let client = postgres::Client::connect(location, postgres::NoTls)?;
                (Backend::Postgres(client), "postgresql")
            } else {
                let path = location.strip_prefix("sqlite:").unwrap_or(location);
                if path.is_empty() {
                    return Err(StoreError::Url(
                        "empty database path: give a file (or sqlite:FILE, postgres://...)".into(),
                    ));
                }
                let conn = rusqlite::Connection::open(path)?;
                // One process: the connection takes the database's lock on first access and
                // keeps it until it closes (several processes share a fleet through
                // PostgreSQL). Durable on commit.
                conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
                conn.busy_timeout(std::time::Duration::ZERO)?;
                let locked = conn
                    .pragma_update(None, "journal_mode", "WAL")
                    .and_then(|()| conn.execute_batch("BEGIN IMMEDIATE; COMMIT;"));
                match locked {
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy =>
                    {
                        return Err(StoreError::Url(format!(
                            "another process uses the SQLite database {path}: a SQLite verifier \
                             is one process; stop the other one, or run several against one \
                             PostgreSQL (--db postgres://..., docs/verifier.md \"Scaling out\")"
                        )));
                    }
                    other => other?,
                }
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                (Backend::Sqlite(conn), "sqlite")
            };
        let store = Store {
            backend: Mutex::new(backend),
            kind,
        };
        for stmt in SCHEMA {
            store.execute(stmt, &[])?;
        }
        for (table, column, ty) in ADDED_COLUMNS {
            if store
                .query(&format!("SELECT {column} FROM {table} LIMIT 0"), &[])
                .is_err()
            {
                store.execute(
                    &format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"),
                    &[],
                )?;
            }
        }
        // Instances registered before leases existed get theirs.
        store.execute(
            "INSERT INTO leases (instance, holder, expires_at, due_at) SELECT id, '', 0, 0 FROM instances WHERE true \
             ON CONFLICT (instance) DO NOTHING",
            &[],
        )?;
        Ok(store)
    }

    /// `sqlite` or `postgresql`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backend> {
        // A panic while holding the lock leaves the connection usable: every statement is
        // its own transaction.
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a statement; returns the number of rows changed.
    pub fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        match &mut *self.lock() {
            Backend::Sqlite(c) => sqlite_execute(c, sql, params),
            Backend::Postgres(c) => pg_execute(c, sql, params),
        }
    }

    /// Runs a query; every column must be BIGINT or TEXT.
    pub fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Val>>, StoreError> {
        match &mut *self.lock() {
            Backend::Sqlite(c) => sqlite_query(c, sql, params),
            Backend::Postgres(c) => pg_query(c, sql, params),
        }
    }

    pub fn put_instance(&self, i: &InstanceRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO instances (id, url, registered_at, identity, service_url, ak_name, monitor_url) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, registered_at = excluded.registered_at, identity = excluded.identity, \
             service_url = excluded.service_url, ak_name = excluded.ak_name, monitor_url = excluded.monitor_url",
            &[
                Param::Text(&i.id),
                Param::Text(&i.url),
                Param::Int(i.registered_at),
                Param::Text(&i.identity),
                Param::OptText(i.service_url.as_deref()),
                Param::Text(&i.ak_name),
                Param::OptText(i.monitor_url.as_deref()),
            ],
        )?;
        // Due at once (a replacement too); a lease in flight stays with its holder.
        self.execute(
            "INSERT INTO leases (instance, holder, expires_at, due_at) VALUES ($1, '', 0, 0) \
             ON CONFLICT (instance) DO UPDATE SET due_at = 0",
            &[Param::Text(&i.id)],
        )?;
        self.bump_fleet()?;
        Ok(())
    }

    /// Counts a change of the registered instances (every process reloads on a new count).
    fn bump_fleet(&self) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO fleet (name, version) VALUES ('instances', 1) \
             ON CONFLICT (name) DO UPDATE SET version = fleet.version + 1",
            &[],
        )?;
        Ok(())
    }

    /// The count of registration changes so far (0 before the first).
    pub fn fleet_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .query("SELECT version FROM fleet WHERE name = 'instances'", &[])?
            .first()
            .map_or(0, |r| r[0].int()))
    }

    /// Removes an instance; false if there was none. Its results stay (for the audit trail;
    /// they age out with the retention like any others, and a re-registration of the id
    /// continues their `seq`).
    pub fn delete_instance(&self, id: &str) -> Result<bool, StoreError> {
        let gone = self.execute("DELETE FROM instances WHERE id = $1", &[Param::Text(id)])? > 0;
        self.execute(
            "DELETE FROM eventlogs WHERE instance = $1",
            &[Param::Text(id)],
        )?;
        self.execute("DELETE FROM leases WHERE instance = $1", &[Param::Text(id)])?;
        self.bump_fleet()?;
        Ok(gone)
    }

    /// Appends an audit record.
    pub fn add_audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        let id = tuk_measure::hex(&tuk_attest::attester::random_bytes(8));
        self.execute(
            "INSERT INTO audit (id, at, instance, action, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                Param::Text(&id),
                Param::Int(a.at),
                Param::Text(&a.instance),
                Param::Text(&a.action),
                Param::Text(&a.actor),
                Param::Text(&a.detail),
            ],
        )?;
        Ok(())
    }

    /// Audit records, newest first: of `instance` if given, at most `limit`.
    pub fn audit(&self, instance: Option<&str>, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        Ok(self
            .query(
                "SELECT at, instance, action, actor, detail FROM audit \
                 WHERE ($1 = '' OR instance = $1) ORDER BY at DESC, id LIMIT $2",
                &[Param::Text(instance.unwrap_or("")), Param::Int(limit)],
            )?
            .into_iter()
            .map(|r| AuditRow {
                at: r[0].int(),
                instance: r[1].text(),
                action: r[2].text(),
                actor: r[3].text(),
                detail: r[4].text(),
            })
            .collect())
    }

    pub fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        Ok(self
            .query(
                "SELECT id, url, registered_at, identity, service_url, ak_name, monitor_url FROM instances ORDER BY id",
                &[],
            )?
            .into_iter()
            .map(|r| InstanceRow {
                id: r[0].text(),
                url: r[1].text(),
                registered_at: r[2].int(),
                identity: r[3].text(),
                service_url: r[4].opt_text(),
                ak_name: r[5].text(),
                monitor_url: r[6].opt_text(),
            })
            .collect())
    }

    /// Appends a result; its `seq` is one more than the instance's last.
    pub fn add_result(&self, r: &ResultRow) -> Result<i64, StoreError> {
        match self.add_result_leased(r, None, 0, 0, None)? {
            Stored::Added { seq, .. } => Ok(seq),
            Stored::LeaseLost { holder } => Err(StoreError::Url(format!(
                "the lease of {} is held by {holder}",
                r.instance
            ))),
        }
    }

    /// Appends a result in one transaction that serializes the instance's writers: its `seq`
    /// is one more than the instance's last (gap-free; `(instance, seq)` is the primary key),
    /// and the previous status is read in the same transaction (whether the status changed is
    /// decided once, by the writer of the changing result). `registered_at`: results made
    /// before it count as none (`pending`). With `holder` (PostgreSQL), the result is stored
    /// only while that process holds the instance's lease, which is then released with the
    /// instance due again `next_due_ms` from now. With `notify`, a result whose status differs
    /// from the previous one also gets a row in the webhook outbox per webhook, in the same
    /// transaction, with the body `notify(seq, previous)` (so a crash after the commit loses no
    /// notification: any process delivers it).
    pub fn add_result_leased(
        &self,
        r: &ResultRow,
        holder: Option<&str>,
        registered_at: i64,
        next_due_ms: i64,
        notify: Option<NotifyBody<'_>>,
    ) -> Result<Stored, StoreError> {
        let id = Param::Text(&r.instance);
        let insert = |seq: i64| -> [Param<'_>; 6] {
            [
                Param::Int(seq),
                Param::Text(&r.instance),
                Param::Int(r.at),
                Param::Text(&r.status),
                Param::OptText(r.ear.as_deref()),
                Param::OptText(r.error.as_deref()),
            ]
        };
        const LAST: &str =
            "SELECT seq, status, at FROM results WHERE instance = $1 ORDER BY seq DESC LIMIT 1";
        const INSERT: &str = "INSERT INTO results (seq, instance, at, status, ear, error) VALUES ($1, $2, $3, $4, $5, $6)";
        let decide = |last: Vec<Vec<Val>>| -> (i64, String) {
            match last.first() {
                Some(l) => (
                    l[0].int() + 1,
                    if l[2].int() >= registered_at {
                        l[1].text()
                    } else {
                        "pending".to_owned()
                    },
                ),
                None => (1, "pending".to_owned()),
            }
        };
        match &mut *self.lock() {
            Backend::Sqlite(c) => {
                if holder.is_some() {
                    return Err(StoreError::Url(
                        "leases need PostgreSQL (SQLite is one process)".into(),
                    ));
                }
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let (seq, previous) = decide(sqlite_query(&tx, LAST, &[id])?);
                sqlite_execute(&tx, INSERT, &insert(seq))?;
                let mut notifications = 0;
                if let Some(body) = notify.filter(|_| previous != r.status) {
                    let body = body(seq, &previous);
                    notifications = sqlite_execute(
                        &tx,
                        &OUTBOX_INSERT.replace("NOW", SQLITE_NOW),
                        &[id, Param::Int(seq), Param::Text(&body)],
                    )?;
                }
                tx.commit()?;
                Ok(Stored::Added {
                    seq,
                    previous,
                    notifications,
                })
            }
            Backend::Postgres(c) => {
                let mut tx = c.transaction()?;
                // Every writer of this instance's results queues here.
                pg_execute(&mut tx, "SELECT pg_advisory_xact_lock(hashtext($1))", &[id])?;
                if let Some(me) = holder {
                    let lease = pg_query(
                        &mut tx,
                        "SELECT holder FROM leases WHERE instance = $1 FOR UPDATE",
                        &[id],
                    )?;
                    let current = lease.first().map(|l| l[0].text()).unwrap_or_default();
                    if current != me {
                        return Ok(Stored::LeaseLost {
                            holder: if current.is_empty() {
                                "nobody (it expired and was released)".into()
                            } else {
                                current
                            },
                        });
                    }
                }
                let (seq, previous) = decide(pg_query(&mut tx, LAST, &[id])?);
                pg_execute(&mut tx, INSERT, &insert(seq))?;
                let mut notifications = 0;
                if let Some(body) = notify.filter(|_| previous != r.status) {
                    let body = body(seq, &previous);
                    notifications = pg_execute(
                        &mut tx,
                        &OUTBOX_INSERT.replace("NOW", PG_NOW),
                        &[id, Param::Int(seq), Param::Text(&body)],
                    )?;
                }
                if let Some(me) = holder {
                    pg_execute(
                        &mut tx,
                        &format!(
                            "UPDATE leases SET holder = '', expires_at = 0, due_at = {PG_NOW} + $3 \
                             WHERE instance = $1 AND holder = $2"
                        ),
                        &[id, Param::Text(me), Param::Int(next_due_ms)],
                    )?;
                }
                tx.commit()?;
                Ok(Stored::Added {
                    seq,
                    previous,
                    notifications,
                })
            }
        }
    }

    /// The database's clock expression.
    fn now_sql(&self) -> &'static str {
        if self.kind == "postgresql" {
            PG_NOW
        } else {
            SQLITE_NOW
        }
    }

    /// Claims the oldest due, unclaimed (or claim-expired) notification of `hook` for
    /// `holder` until `ttl_ms` from now (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so processes
    /// delivering at once claim different rows). One at a time: a hook that hangs holds one.
    pub fn claim_notification(
        &self,
        hook: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<Notification>, StoreError> {
        let skip_locked = if self.kind == "postgresql" {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE outbox SET holder = $2, expires_at = NOW + $3 WHERE (hook, instance, seq) IN (\
             SELECT hook, instance, seq FROM outbox WHERE hook = $1 AND next_at <= NOW \
             AND (holder = '' OR expires_at <= NOW) ORDER BY created_at, instance, seq LIMIT 1 {skip_locked}) \
             RETURNING instance, seq, body, attempts"
        )
        .replace("NOW", self.now_sql());
        Ok(self
            .query(
                &sql,
                &[Param::Text(hook), Param::Text(holder), Param::Int(ttl_ms)],
            )?
            .into_iter()
            .next()
            .map(|r| Notification {
                hook: hook.to_owned(),
                instance: r[0].text(),
                seq: r[1].int(),
                body: r[2].text(),
                attempts: r[3].int(),
            }))
    }

    /// Removes a notification from the outbox: delivered, or given up.
    pub fn notification_done(&self, n: &Notification) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM outbox WHERE hook = $1 AND instance = $2 AND seq = $3",
            &[
                Param::Text(&n.hook),
                Param::Text(&n.instance),
                Param::Int(n.seq),
            ],
        )?;
        Ok(())
    }

    /// Gives a notification back after a failed try: counted, due again `retry_ms` from now,
    /// unclaimed.
    pub fn notification_failed(&self, n: &Notification, retry_ms: i64) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "UPDATE outbox SET attempts = attempts + 1, next_at = {} + $4, holder = '', expires_at = 0 \
                 WHERE hook = $1 AND instance = $2 AND seq = $3",
                self.now_sql()
            ),
            &[
                Param::Text(&n.hook),
                Param::Text(&n.instance),
                Param::Int(n.seq),
                Param::Int(retry_ms),
            ],
        )?;
        Ok(())
    }

    /// Keeps `log` (the CEL-JSON records, as JSON) as the event log of `instance`'s result
    /// `seq`, replacing an older one (a later one, stored by another process, stays).
    pub fn put_eventlog(
        &self,
        instance: &str,
        seq: i64,
        at: i64,
        log: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO eventlogs (instance, seq, at, log) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (instance) DO UPDATE SET seq = excluded.seq, at = excluded.at, log = excluded.log \
             WHERE eventlogs.seq < excluded.seq",
            &[
                Param::Text(instance),
                Param::Int(seq),
                Param::Int(at),
                Param::Text(log),
            ],
        )?;
        Ok(())
    }

    /// The latest event log of `instance`: (seq, at, CEL-JSON records as JSON).
    pub fn eventlog(&self, instance: &str) -> Result<Option<(i64, i64, String)>, StoreError> {
        Ok(self
            .query(
                "SELECT seq, at, log FROM eventlogs WHERE instance = $1",
                &[Param::Text(instance)],
            )?
            .into_iter()
            .next()
            .map(|r| (r[0].int(), r[1].int(), r[2].text())))
    }

    /// (hook, instance, seq, holder, attempts) of every notification not yet delivered.
    pub fn outbox(&self) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(self
            .query(
                "SELECT hook, instance, seq, holder, attempts FROM outbox ORDER BY created_at, instance, seq",
                &[],
            )?
            .into_iter()
            .map(|r| (r[0].text(), r[1].text(), r[2].int(), r[3].text(), r[4].int()))
            .collect())
    }

    /// Claims up to `limit` instances that are due and not leased (or whose lease expired)
    /// for `holder`, until `ttl_ms` from now (PostgreSQL; `FOR UPDATE SKIP LOCKED`: processes
    /// claiming at once get disjoint sets). Returns their ids.
    pub fn claim_due(
        &self,
        holder: &str,
        ttl_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.pg_only("leases")?;
        Ok(self
            .query(
                &format!(
                    "UPDATE leases SET holder = $1, expires_at = {PG_NOW} + $2 WHERE instance IN (\
                     SELECT instance FROM leases WHERE due_at <= {PG_NOW} \
                     AND (holder = '' OR expires_at <= {PG_NOW}) \
                     ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING instance"
                ),
                &[Param::Text(holder), Param::Int(ttl_ms), Param::Int(limit)],
            )?
            .into_iter()
            .map(|r| r[0].text())
            .collect())
    }

    /// Claims `id` for `holder` now, due or not, unless another holds an unexpired lease.
    pub fn claim_one(&self, holder: &str, id: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        self.pg_only("leases")?;
        Ok(self.execute(
            &format!(
                "UPDATE leases SET holder = $1, expires_at = {PG_NOW} + $2 \
                 WHERE instance = $3 AND (holder = '' OR expires_at <= {PG_NOW})"
            ),
            &[Param::Text(holder), Param::Int(ttl_ms), Param::Text(id)],
        )? > 0)
    }

    /// Extends every lease `holder` holds to `ttl_ms` from now; returns how many.
    pub fn renew_leases(&self, holder: &str, ttl_ms: i64) -> Result<u64, StoreError> {
        self.pg_only("leases")?;
        self.execute(
            &format!("UPDATE leases SET expires_at = {PG_NOW} + $2 WHERE holder = $1"),
            &[Param::Text(holder), Param::Int(ttl_ms)],
        )
    }

    /// Gives up `holder`'s lease of `id` without a result, due again `next_due_ms` from now.
    pub fn release_lease(
        &self,
        holder: &str,
        id: &str,
        next_due_ms: i64,
    ) -> Result<(), StoreError> {
        self.pg_only("leases")?;
        self.execute(
            &format!(
                "UPDATE leases SET holder = '', expires_at = 0, due_at = {PG_NOW} + $3 \
                 WHERE instance = $1 AND holder = $2"
            ),
            &[
                Param::Text(id),
                Param::Text(holder),
                Param::Int(next_due_ms),
            ],
        )?;
        Ok(())
    }

    /// (instance, holder, expires_at, due_at) of every lease, in the database's clock, and
    /// that clock now (for the API and tests).
    pub fn leases(&self) -> Result<(i64, Vec<Lease>), StoreError> {
        self.pg_only("leases")?;
        let now = self
            .query(&format!("SELECT {PG_NOW}"), &[])?
            .first()
            .map_or(0, |r| r[0].int());
        let rows = self
            .query(
                "SELECT instance, holder, expires_at, due_at FROM leases ORDER BY instance",
                &[],
            )?
            .into_iter()
            .map(|r| (r[0].text(), r[1].text(), r[2].int(), r[3].int()))
            .collect();
        Ok((now, rows))
    }

    fn pg_only(&self, what: &str) -> Result<(), StoreError> {
        if self.kind == "postgresql" {
            Ok(())
        } else {
            Err(StoreError::Url(format!(
                "{what} need PostgreSQL (SQLite is one process)"
            )))
        }
    }

    /// Every instance's latest result (of those with any).
    pub fn latest_results(&self) -> Result<Vec<ResultRow>, StoreError> {
        Ok(self
            .query(
                "SELECT r.seq, r.instance, r.at, r.status, r.ear, r.error FROM results r \
                 JOIN (SELECT instance, MAX(seq) AS seq FROM results GROUP BY instance) m \
                 ON r.instance = m.instance AND r.seq = m.seq",
                &[],
            )?
            .into_iter()
            .map(|r| ResultRow {
                seq: r[0].int(),
                instance: r[1].text(),
                at: r[2].int(),
                status: r[3].text(),
                ear: r[4].opt_text(),
                error: r[5].opt_text(),
            })
            .collect())
    }

    /// The TPM counters of an AK's last quote: (reset count, restart count, clock).
    pub fn tpm_clock(&self, ak_name: &str) -> Result<Option<(u64, u64, u64)>, StoreError> {
        let u = |v: &Val| u64::try_from(v.int()).unwrap_or(0);
        Ok(self
            .query(
                "SELECT reset_count, restart_count, clock FROM tpm_clocks WHERE ak_name = $1",
                &[Param::Text(ak_name)],
            )?
            .first()
            .map(|r| (u(&r[0]), u(&r[1]), u(&r[2]))))
    }

    /// An instance's results, newest first: at most `limit`, with `seq` below `before` if given.
    pub fn results(
        &self,
        instance: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<ResultRow>, StoreError> {
        Ok(self
            .query(
                "SELECT seq, instance, at, status, ear, error FROM results \
                 WHERE instance = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                &[
                    Param::Text(instance),
                    Param::Int(before.unwrap_or(i64::MAX)),
                    Param::Int(limit),
                ],
            )?
            .into_iter()
            .map(|r| ResultRow {
                seq: r[0].int(),
                instance: r[1].text(),
                at: r[2].int(),
                status: r[3].text(),
                ear: r[4].opt_text(),
                error: r[5].opt_text(),
            })
            .collect())
    }

    /// Rows in `results` and the bytes of their EAR and error text (storage growth).
    pub fn result_volume(&self) -> Result<(i64, i64), StoreError> {
        let rows = self.query(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(COALESCE(ear, '')) + LENGTH(COALESCE(error, ''))), 0) FROM results",
            &[],
        )?;
        Ok(rows.first().map_or((0, 0), |r| (r[0].int(), r[1].int())))
    }

    /// Deletes results made before `before` (Unix ms), but never an instance's latest; returns
    /// how many went.
    pub fn prune(&self, before: i64) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM results WHERE at < $1 AND seq < (SELECT MAX(r.seq) FROM results r WHERE r.instance = results.instance)",
            &[Param::Int(before)],
        )
    }

    /// Keeps the TPM counters of an AK's last quote.
    pub fn put_tpm_clock(
        &self,
        ak_name: &str,
        reset_count: i64,
        restart_count: i64,
        clock: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO tpm_clocks (ak_name, reset_count, restart_count, clock) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (ak_name) DO UPDATE SET reset_count = excluded.reset_count, \
             restart_count = excluded.restart_count, clock = excluded.clock",
            &[
                Param::Text(ak_name),
                Param::Int(reset_count),
                Param::Int(restart_count),
                Param::Int(clock),
            ],
        )?;
        Ok(())
    }

    /// (AK name, reset count, restart count, clock) of every AK's last quote.
    pub fn tpm_clocks(&self) -> Result<Vec<(String, u64, u64, u64)>, StoreError> {
        let u = |v: &Val| u64::try_from(v.int()).unwrap_or(0);
        Ok(self
            .query(
                "SELECT ak_name, reset_count, restart_count, clock FROM tpm_clocks",
                &[],
            )?
            .into_iter()
            .map(|r| (r[0].text(), u(&r[1]), u(&r[2]), u(&r[3])))
            .collect())
    }

    pub fn add_webhook(&self, id: &str, url: &str, created_at: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO webhooks (id, url, created_at) VALUES ($1, $2, $3)",
            &[Param::Text(id), Param::Text(url), Param::Int(created_at)],
        )?;
        Ok(())
    }

    pub fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.execute("DELETE FROM outbox WHERE hook = $1", &[Param::Text(id)])?;
        Ok(self.execute("DELETE FROM webhooks WHERE id = $1", &[Param::Text(id)])? > 0)
    }

    /// (id, url) of every webhook.
    pub fn webhooks(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .query("SELECT id, url FROM webhooks ORDER BY created_at, id", &[])?
            .into_iter()
            .map(|r| (r[0].text(), r[1].text()))
            .collect())
    }
}

fn sqlite_execute(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[Param<'_>],
) -> Result<u64, StoreError> {
    let sql = sql.replace('$', "?");
    let p = sqlite_params(params);
    let refs: Vec<&dyn rusqlite::ToSql> = p.iter().map(|v| v as _).collect();
    Ok(c.execute(&sql, refs.as_slice())? as u64)
}

fn sqlite_query(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Vec<Val>>, StoreError> {
    let sql = sql.replace('$', "?");
    let p = sqlite_params(params);
    let refs: Vec<&dyn rusqlite::ToSql> = p.iter().map(|v| v as _).collect();
    let mut stmt = c.prepare(&sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map(refs.as_slice(), |row| {
        (0..n)
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Integer(v) => Val::Int(v),
                    rusqlite::types::ValueRef::Text(t) => {
                        Val::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    _ => Val::Null,
                })
            })
            .collect::<Result<Vec<Val>, rusqlite::Error>>()
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn pg_execute(
    c: &mut impl postgres::GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> Result<u64, StoreError> {
    let p = pg_params(params);
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = p.iter().map(|v| v.as_ref()).collect();
    Ok(c.execute(sql, &refs)?)
}

fn pg_query(
    c: &mut impl postgres::GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Vec<Val>>, StoreError> {
    let p = pg_params(params);
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = p.iter().map(|v| v.as_ref()).collect();
    let rows = c.query(sql, &refs)?;
    Ok(rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    if let Ok(Some(v)) = row.try_get::<_, Option<i64>>(i) {
                        Val::Int(v)
                    } else if let Ok(Some(v)) = row.try_get::<_, Option<String>>(i) {
                        Val::Text(v)
                    } else {
                        Val::Null
                    }
                })
                .collect()
        })
        .collect())
}

fn sqlite_params(params: &[Param<'_>]) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    params
        .iter()
        .map(|p| match p {
            Param::Int(i) => Value::Integer(*i),
            Param::Text(t) => Value::Text((*t).to_owned()),
            Param::OptText(Some(t)) => Value::Text((*t).to_owned()),
            Param::OptText(None) => Value::Null,
        })
        .collect()
}

fn pg_params(params: &[Param<'_>]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|p| -> Box<dyn postgres::types::ToSql + Sync> {
            match p {
                Param::Int(i) => Box::new(*i),
                Param::Text(t) => Box::new((*t).to_owned()),
                Param::OptText(t) => Box::new(t.map(str::to_owned)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, at: i64, status: &str) -> ResultRow {
        ResultRow {
            seq: 0,
            instance: instance.into(),
            at,
            status: status.into(),
            ear: Some(format!("jwt-{at}")),
            error: None,
        }
    }

    #[test]
    fn sqlite_keeps_everything_across_reopen() {
        let dir = std::env::temp_dir().join(format!("tuk-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.db");
        let loc = format!("sqlite:{}", path.display());
        {
            let s = Store::open(&loc).unwrap();
            assert_eq!(s.kind(), "sqlite");
            let i = InstanceRow {
                id: "a".into(),
                url: "http://x".into(),
                registered_at: 5,
                identity: "{}".into(),
                service_url: None,
                ak_name: "00".into(),
                monitor_url: None,
            };
            s.put_instance(&i).unwrap();
            s.put_instance(&InstanceRow {
                url: "http://y".into(),
                service_url: Some("http://svc".into()),
                monitor_url: Some("http://mon/report".into()),
                ..i
            })
            .unwrap();
            assert_eq!(s.add_result(&row("a", 1, "affirming")).unwrap(), 1);
            assert_eq!(s.add_result(&row("a", 2, "warning")).unwrap(), 2);
            assert_eq!(s.add_result(&row("b", 3, "affirming")).unwrap(), 1);
            s.add_webhook("w1", "http://hook", 9).unwrap();
        }
        let s = Store::open(path.to_str().unwrap()).unwrap();
        let inst = s.instances().unwrap();
        assert_eq!(inst.len(), 1);
        assert_eq!(inst[0].url, "http://y");
        assert_eq!(inst[0].service_url.as_deref(), Some("http://svc"));
        assert_eq!(inst[0].monitor_url.as_deref(), Some("http://mon/report"));
        assert_eq!(inst[0].ak_name, "00");
        let r = s.results("a", 10, None).unwrap();
        assert_eq!(
            r.iter()
                .map(|r| (r.seq, r.status.as_str()))
                .collect::<Vec<_>>(),
            [(2, "warning"), (1, "affirming")]
        );
        assert_eq!(s.results("a", 10, Some(2)).unwrap().len(), 1);
        assert_eq!(
            s.results("a", 10, None).unwrap()[0].ear.as_deref(),
            Some("jwt-2")
        );
        assert_eq!(s.result_volume().unwrap(), (3, 15));
        // Pruning keeps each instance's latest result however old it is.
        assert_eq!(s.prune(10).unwrap(), 1);
        assert_eq!(s.results("a", 10, None).unwrap().len(), 1);
        assert_eq!(s.results("b", 10, None).unwrap().len(), 1);
        assert_eq!(s.webhooks().unwrap(), [("w1".into(), "http://hook".into())]);
        assert!(s.delete_instance("a").unwrap());
        assert!(!s.delete_instance("a").unwrap());
        // The results stay for the audit trail.
        assert_eq!(s.results("a", 10, None).unwrap().len(), 1);
        for (at, instance) in [(1, "a"), (2, "b"), (3, "a")] {
            s.add_audit(&AuditRow {
                at,
                instance: instance.into(),
                action: "register".into(),
                actor: "admin-1".into(),
                detail: "{}".into(),
            })
            .unwrap();
        }
        let a = s.audit(Some("a"), 10).unwrap();
        assert_eq!(a.iter().map(|r| r.at).collect::<Vec<_>>(), [3, 1]);
        assert_eq!(s.audit(None, 10).unwrap().len(), 3);
        assert!(s.delete_webhook("w1").unwrap());
        s.put_tpm_clock("ak", 1, 2, 3).unwrap();
        s.put_tpm_clock("ak", 1, 2, 4).unwrap();
        assert_eq!(s.tpm_clocks().unwrap(), [("ak".into(), 1, 2, 4)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sqlite_database_is_opened_by_one_store_at_a_time() {
        let dir = std::env::temp_dir().join(format!("tuk-store-one-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let loc = format!("sqlite:{}", dir.join("v.db").display());
        let first = Store::open(&loc).unwrap();
        let err = Store::open(&loc).err().expect("a second store on the file");
        assert!(
            err.to_string()
                .contains("another process uses the SQLite database"),
            "{err}"
        );
        // The first keeps working; once it closes, the file opens again.
        assert_eq!(first.add_result(&row("a", 1, "affirming")).unwrap(), 1);
        drop(first);
        let again = Store::open(&loc).unwrap();
        assert_eq!(again.results("a", 10, None).unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sqlite_outbox_and_eventlog() {
        let dir = std::env::temp_dir().join(format!("tuk-store-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Store::open(&format!("sqlite:{}", dir.join("v.db").display())).unwrap();
        s.add_webhook("h", "http://hook", 1).unwrap();
        let body = |seq: i64, previous: &str| format!("{seq} {previous}");
        let mut added = Vec::new();
        for (at, status) in [(1, "affirming"), (2, "affirming"), (3, "warning")] {
            match s
                .add_result_leased(&row("a", at, status), None, 0, 0, Some(&body))
                .unwrap()
            {
                Stored::Added {
                    seq, notifications, ..
                } => added.push((seq, notifications)),
                other => panic!("{other:?}"),
            }
        }
        // A notification for each change only, in the result's transaction.
        assert_eq!(added, [(1, 1), (2, 0), (3, 1)]);
        let n = s.claim_notification("h", "me", 60_000).unwrap().unwrap();
        assert_eq!((n.seq, n.body.as_str()), (1, "1 pending"));
        let m = s.claim_notification("h", "me", 60_000).unwrap().unwrap();
        assert_eq!((m.seq, m.body.as_str()), (3, "3 affirming"));
        // Both claimed: nothing more to claim until a claim expires or is given back.
        assert!(s
            .claim_notification("h", "other", 60_000)
            .unwrap()
            .is_none());
        s.notification_failed(&m, 0).unwrap();
        let again = s.claim_notification("h", "other", 60_000).unwrap().unwrap();
        assert_eq!((again.seq, again.attempts), (3, 1));
        s.notification_done(&n).unwrap();
        s.notification_done(&again).unwrap();
        assert!(s.outbox().unwrap().is_empty());
        // The event log: one per instance, a later one replaces it, an earlier one does not.
        assert_eq!(s.eventlog("a").unwrap(), None);
        s.put_eventlog("a", 2, 20, "[2]").unwrap();
        s.put_eventlog("a", 3, 30, "[3]").unwrap();
        s.put_eventlog("a", 1, 10, "[1]").unwrap();
        assert_eq!(s.eventlog("a").unwrap(), Some((3, 30, "[3]".into())));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_locations_are_errors() {
        assert!(Store::open("sqlite:").is_err());
        assert!(Store::open("/nonexistent-dir/x/y.db").is_err());
        assert!(Store::open("postgres://127.0.0.1:1/nothing").is_err());
    }
}
