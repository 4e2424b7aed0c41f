//! Configuration: embedded defaults, then a TOML file (`--config FILE`), then `LEDGER__SECTION__KEY`
//! environment variables. Keys are the contract of API.md, "Configuration".

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

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
    /// How long personal data and refused deliveries are kept.
    pub retention: RetentionConfig,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 1_048_576,
            max_batch: 512,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `sqlite://path` or `postgres://...`.
    pub url: String,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/ledger.db".into(),
            max_connections: 8,
        }
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
    pub bot_token: String,
    /// When set, webhooks must carry it.
    pub webhook_token: String,
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
            bot_token: String::new(),
            webhook_token: String::new(),
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
    pub api_key: String,
    /// Bot id (sent as `botid`).
    pub bot_id: String,
    /// When set, webhooks must carry it.
    pub webhook_token: String,
    /// Deadline of a synchronous `escalate`, seconds.
    pub escalate_deadline_seconds: u64,
    /// Request timeout, seconds.
    pub timeout_seconds: u64,
}

impl Default for UltimateConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.ultimate.ai".into(),
            api_key: String::new(),
            bot_id: String::new(),
            webhook_token: String::new(),
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
    /// When set, webhooks must carry it.
    pub webhook_token: String,
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
            webhook_token: String::new(),
            timeout_seconds: 10,
            poll_timeout_seconds: 30,
        }
    }
}

/// `[vcc]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VccConfig {
    /// VCC sends it as `?secret-key=...`; empty = open.
    pub secret_key: String,
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
    pub password: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            database: "handoff".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

/// One route: which live backend and queue a team goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// `aivo_live` or `bright_pattern`.
    pub backend: String,
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
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Conversations closed (and untouched) longer ago than this many days are erased by a background
    /// job, as `POST /v1/erasures` would (checked hourly); 0 = never.
    pub erase_closed_after_days: u64,
}

impl Config {
    /// Loads defaults, then `file` when given, then `LEDGER__*` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("LEDGER__").split("__"));
        Ok(figment.extract()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
