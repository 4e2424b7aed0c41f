//! Configuration: embedded defaults, then a TOML file (`--config FILE`), then `LEDGER__SECTION__KEY`
//! environment variables. Keys are the contract of API.md, "Configuration".

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::model::Backend;

/// A credential: its `Debug` and `Display` print `***`, so it cannot reach a log line by accident.
/// Read it with [`Secret::expose`] where it is sent.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether none is set (empty or blank).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// A platform's webhook tokens: one string, or a list (rotation: any listed token is accepted).
/// Empty strings are no token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tokens(Vec<Secret>);

impl Tokens {
    /// The tokens that are set.
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter().filter(|t| !t.is_empty())
    }

    /// Whether no token is set (the endpoint is open, or closed on a non-loopback bind).
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Secret),
            Many(Vec<Secret>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(t) => Tokens(vec![t]),
            OneOrMany::Many(ts) => Tokens(ts),
        })
    }
}

impl From<&str> for Tokens {
    fn from(s: &str) -> Self {
        Tokens(vec![Secret::from(s)])
    }
}

impl From<Vec<&str>> for Tokens {
    fn from(v: Vec<&str>) -> Self {
        Tokens(v.into_iter().map(Secret::from).collect())
    }
}

/// A URL with its password (and any `password=` query value) replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                out = format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..]);
            }
        }
    }
    if let Some(start) = out.find("password=") {
        let value_start = start + "password=".len();
        let value_end = out[value_start..].find('&').map_or(out.len(), |i| value_start + i);
        out.replace_range(value_start..value_end, "***");
    }
    out
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Event log and projections.
    pub store: StoreConfig,
    /// SLA targets.
    pub sla: SlaConfig,
    /// Aivo Live.
    pub aivo_live: AivoLiveConfig,
    /// Ultimate (the bot).
    pub ultimate: UltimateConfig,
    /// Bright Pattern.
    pub bright_pattern: BrightPatternConfig,
    /// VCC Live.
    pub vcc: VccConfig,
    /// ClickHouse analytics.
    pub clickhouse: ClickHouseConfig,
    /// Escalation routing.
    pub routing: RoutingConfig,
    /// Outbound command delivery.
    pub outbox: OutboxConfig,
    /// Logging.
    pub log: LogConfig,
    /// Access control.
    pub auth: AuthConfig,
    /// How long personal data and refused deliveries are kept.
    pub retention: RetentionConfig,
}

/// `[retention]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Quarantine entries older than this are deleted (checked hourly); 0 = kept.
    pub quarantine_days: u64,
    /// At most this many quarantine entries are kept (the oldest go first); 0 = no cap.
    pub quarantine_max_entries: u64,
    /// Most bytes of a refused body kept in the quarantine (with the whole body's size and SHA-256).
    pub quarantine_body_bytes: usize,
    /// Conversations closed (and untouched) longer ago than this many days are erased by a background
    /// job, as `POST /v1/erasures` would (checked hourly); 0 = never.
    pub erase_closed_after_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            quarantine_days: 30,
            quarantine_max_entries: 10_000,
            quarantine_body_bytes: crate::quarantine::DEFAULT_BODY_CAP,
            erase_closed_after_days: 0,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Open the API (`/v1/*`, docs, console) to requests without a key, even when keys exist.
    pub allow_anonymous: bool,
    /// On a non-loopback bind, accept deliveries on a platform endpoint that has no token configured.
    pub open_webhooks: bool,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Listen address; port 0 picks a free port.
    pub bind: String,
    /// Largest accepted body; larger is 413.
    pub max_body_bytes: usize,
    /// Most deliveries the writer commits in one transaction.
    pub max_batch: usize,
    /// Serve `GET /metrics` on this address instead of `bind` (empty = on `bind`).
    pub metrics_bind: String,
    /// On SIGTERM: longest wait, seconds, for in-flight requests, the outbox's calls in flight and the
    /// sink's batch before the process exits.
    pub shutdown_grace_seconds: u64,
    /// A request whose head (request line and headers) has not arrived within this is answered 408
    /// and closed, milliseconds.
    pub head_timeout_ms: u64,
    /// A webhook body that has not fully arrived within this is answered 408, milliseconds.
    pub body_timeout_ms: u64,
    /// An idle kept-alive connection is closed after this, seconds (0 = no keep-alive).
    pub keep_alive_seconds: u64,
    /// Most open connections per worker thread; more wait in the accept queue.
    pub max_connections: usize,
    /// HTTP worker threads; 0 = one per physical CPU core.
    pub workers: usize,
    /// Longest wait for the writer to commit a request's events; past it the answer is 503 with
    /// `Retry-After` (milliseconds).
    pub commit_deadline_ms: u64,
    /// Largest list answer (`/v1/events`, `/v1/conversations`, a conversation's events), bytes: a page
    /// ends early (with its cursor) rather than grow past it.
    pub max_answer_bytes: usize,
    /// Longest `[since, until)` range of one report call, days.
    pub max_report_days: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 1_048_576,
            max_batch: 512,
            metrics_bind: String::new(),
            shutdown_grace_seconds: 30,
            head_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            keep_alive_seconds: 5,
            max_connections: 1_024,
            workers: 0,
            commit_deadline_ms: 10_000,
            max_answer_bytes: 8 * 1024 * 1024,
            max_report_days: 93,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `sqlite://path` or `postgres://...`.
    pub url: String,
    /// Connection pool size of the readers (the writer has a pool of its own).
    pub max_connections: u32,
    /// PostgreSQL: a reader's statement running longer than this is cancelled, milliseconds (0 = none).
    /// The writer's own connections have no such limit.
    pub read_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/ledger.db".into(),
            max_connections: 8,
            read_timeout_ms: 30_000,
        }
    }
}

impl StoreConfig {
    /// The URL the readers' pool connects with: on PostgreSQL it sets `statement_timeout`.
    pub fn reader_url(&self) -> String {
        let postgres = self.url.starts_with("postgres:") || self.url.starts_with("postgresql:");
        if !postgres || self.read_timeout_ms == 0 || self.url.contains("options=") {
            return self.url.clone();
        }
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-c%20statement_timeout%3D{}",
            self.url, self.read_timeout_ms
        )
    }
}

/// `[sla]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlaConfig {
    /// Default target for time to answer, seconds.
    pub answer_seconds: u64,
    /// Abandons quicker than this are short abandons, seconds.
    pub short_abandon_seconds: u64,
    /// Per-queue answer targets.
    pub queues: BTreeMap<String, u64>,
}

impl Default for SlaConfig {
    fn default() -> Self {
        Self {
            answer_seconds: 60,
            short_abandon_seconds: 20,
            queues: BTreeMap::new(),
        }
    }
}

impl SlaConfig {
    /// The answer target for a queue.
    pub fn target_for(&self, queue: Option<&str>) -> u64 {
        queue
            .and_then(|q| self.queues.get(q).copied())
            .unwrap_or(self.answer_seconds)
    }
}

/// `[aivo_live]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AivoLiveConfig {
    /// Base URL of the live handler.
    pub base_url: String,
    /// Bot id given by Aivo.
    pub bot_id: i64,
    /// Bot token given by Aivo.
    pub bot_token: Secret,
    /// When set, webhooks must carry it (one token or a list).
    pub webhook_token: Tokens,
    /// Path (relative to base_url) of the undocumented close call, `{conversationId}` substituted; empty = none.
    pub close_path: String,
    /// Request timeout, seconds.
    pub timeout_seconds: u64,
}

impl Default for AivoLiveConfig {
    fn default() -> Self {
        Self {
            base_url: "https://gateway.aivo.co/api/v1/live-handler".into(),
            bot_id: 1000,
            bot_token: Secret::default(),
            webhook_token: Tokens::default(),
            close_path: String::new(),
            timeout_seconds: 10,
        }
    }
}

/// `[ultimate]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UltimateConfig {
    /// Ultimate API base.
    pub api_url: String,
    /// API key (sent raw in `Authorization`).
    pub api_key: Secret,
    /// Bot id (sent as `botid`).
    pub bot_id: String,
    /// When set, webhooks must carry it (one token or a list).
    pub webhook_token: Tokens,
    /// Deadline of a synchronous `escalate`, seconds.
    pub escalate_deadline_seconds: u64,
    /// Request timeout, seconds.
    pub timeout_seconds: u64,
}

impl Default for UltimateConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.ultimate.ai".into(),
            api_key: Secret::default(),
            bot_id: String::new(),
            webhook_token: Tokens::default(),
            escalate_deadline_seconds: 10,
            timeout_seconds: 10,
        }
    }
}

/// `[bright_pattern]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrightPatternConfig {
    /// `https://<tenant>/clientweb/api/v1`.
    pub base_url: String,
    /// Tenant URL (query `tenantUrl`).
    pub tenant_url: String,
    /// App id.
    pub app_id: String,
    /// Client id.
    pub client_id: String,
    /// When set, webhooks must carry it (one token or a list).
    pub webhook_token: Tokens,
    /// Request timeout, seconds (the long poll adds its own hold time).
    pub timeout_seconds: u64,
    /// Long-poll request timeout, seconds.
    pub poll_timeout_seconds: u64,
}

impl Default for BrightPatternConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            tenant_url: String::new(),
            app_id: String::new(),
            client_id: String::new(),
            webhook_token: Tokens::default(),
            timeout_seconds: 10,
            poll_timeout_seconds: 30,
        }
    }
}

/// `[vcc]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VccConfig {
    /// VCC sends it as `?secret-key=...` (one or a list); empty = none.
    pub secret_key: Tokens,
    /// Hex of a 32-byte key: a delivery with `?iv=<hex>` is base64 AES-256-CTR, decrypted before parsing.
    pub encryption_key: Secret,
}

/// `[clickhouse]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClickHouseConfig {
    /// e.g. `http://127.0.0.1:8123`; empty = analytics off.
    pub url: String,
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: Secret,
    /// Connecting to ClickHouse gives up after this, milliseconds.
    pub connect_timeout_ms: u64,
    /// A report query gives up after this, milliseconds, and the report is read from the store instead
    /// (unless `source=clickhouse` was asked for: then 503).
    pub query_timeout_ms: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            database: "handoff".into(),
            user: "default".into(),
            password: Secret::default(),
            connect_timeout_ms: 2_000,
            query_timeout_ms: 10_000,
        }
    }
}

/// One route: which live backend and queue a team goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// `aivo_live` or `bright_pattern`; any other name is refused when the configuration loads.
    pub backend: Backend,
    /// Aivo group ids.
    #[serde(default)]
    pub groups: Vec<i64>,
    /// Opening hours; empty = always open.
    #[serde(default)]
    pub hours: Option<OpeningHours>,
}

/// A weekly schedule in a time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpeningHours {
    /// IANA time zone, e.g. `Europe/Madrid`.
    pub timezone: String,
    /// Day (`mon`..`sun`) -> list of `"HH:MM-HH:MM"` ranges.
    #[serde(default)]
    pub days: BTreeMap<String, Vec<String>>,
}

/// `[routing]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// Route when no team matches.
    pub default: Option<Route>,
    /// Named teams.
    pub teams: BTreeMap<String, Route>,
}

impl RoutingConfig {
    /// The route of a team (`escalateTo`, `teamId`), else the default.
    pub fn resolve(&self, team: Option<&str>) -> Option<&Route> {
        team.and_then(|t| self.teams.get(t)).or(self.default.as_ref())
    }
}

/// `[outbox]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxConfig {
    /// Attempts before a transient failure is recorded as permanent.
    pub max_attempts: u32,
    /// First retry delay, milliseconds.
    pub initial_backoff_ms: u64,
    /// Longest retry delay, milliseconds.
    pub max_backoff_ms: u64,
    /// Most bytes of a platform's answer that are read; a longer answer fails the call (unparsable).
    pub max_response_bytes: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            max_response_bytes: crate::outbound::clients::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `info,sqlx=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` when given, then `LEDGER__*` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        Ok(Config::figment(file)?.extract()?)
    }

    /// The layered sources `load` reads (`config check` reads the same to name unknown keys).
    pub fn figment(file: Option<&Path>) -> anyhow::Result<Figment> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        Ok(figment.merge(Env::prefixed("LEDGER__").split("__")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        let mut c = Config::default();
        c.aivo_live.webhook_token = vec!["tok-a", "tok-b"].into();
        assert!(!format!("{c:?}").contains("tok-a"));
    }

    #[test]
    fn readers_get_a_statement_timeout_on_postgres() {
        let mut store = StoreConfig {
            url: "postgres://u@h/db".into(),
            ..StoreConfig::default()
        };
        assert_eq!(
            store.reader_url(),
            "postgres://u@h/db?options=-c%20statement_timeout%3D30000"
        );
        store.url = "postgres://u@h/db?sslmode=disable".into();
        assert_eq!(
            store.reader_url(),
            "postgres://u@h/db?sslmode=disable&options=-c%20statement_timeout%3D30000"
        );
        store.url = "sqlite://data/x.db".into();
        assert_eq!(store.reader_url(), "sqlite://data/x.db");
    }

    #[test]
    fn store_url_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://ledger:s3cr@t@db.internal:5432/ledger?sslmode=require"),
            "postgres://ledger:***@db.internal:5432/ledger?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=u&password=pw&x=1"),
            "postgres://db/x?user=u&password=***&x=1"
        );
        assert_eq!(redact_url("postgres://ledger@db/x"), "postgres://ledger@db/x");
        assert_eq!(redact_url("sqlite://data/ledger.db"), "sqlite://data/ledger.db");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn webhook_tokens_are_one_string_or_a_list() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ledger.toml",
                r#"
                [aivo_live]
                webhook_token = ["old", "new"]
                [ultimate]
                webhook_token = "one"
                "#,
            )?;
            let c = Config::load(Some(Path::new("ledger.toml"))).map_err(|e| e.to_string())?;
            let aivo: Vec<&str> = c.aivo_live.webhook_token.iter().map(Secret::expose).collect();
            assert_eq!(aivo, ["old", "new"]);
            let ultimate: Vec<&str> = c.ultimate.webhook_token.iter().map(Secret::expose).collect();
            assert_eq!(ultimate, ["one"]);
            assert!(c.bright_pattern.webhook_token.is_empty());
            assert!(!c.auth.allow_anonymous && !c.auth.open_webhooks);
            Ok(())
        });
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::default();
        assert_eq!(c.server.bind, "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 1_048_576);
        assert_eq!(c.store.url, "sqlite://data/ledger.db");
        assert_eq!(c.sla.answer_seconds, 60);
        assert_eq!(c.sla.short_abandon_seconds, 20);
        assert_eq!(c.clickhouse.database, "handoff");
        assert_eq!(c.retention.erase_closed_after_days, 0);
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_then_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ledger.toml",
                r#"
                [server]
                bind = "0.0.0.0:9000"
                [sla.queues]
                "2179" = 30
                [routing]
                default = { backend = "aivo_live", groups = [2179] }
                [routing.teams.support]
                backend = "bright_pattern"
                "#,
            )?;
            jail.set_env("LEDGER__SERVER__BIND", "127.0.0.1:0");
            jail.set_env("LEDGER__STORE__URL", "postgres://x/y");
            let c = Config::load(Some(Path::new("ledger.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.server.bind, "127.0.0.1:0");
            assert_eq!(c.store.url, "postgres://x/y");
            assert_eq!(c.sla.target_for(Some("2179")), 30);
            assert_eq!(c.sla.target_for(Some("other")), 60);
            assert_eq!(
                c.routing.resolve(Some("support")).map(|r| r.backend.as_str()),
                Some("bright_pattern")
            );
            assert_eq!(
                c.routing.resolve(Some("nope")).map(|r| r.groups.clone()),
                Some(vec![2179])
            );
            Ok(())
        });
    }
}
