//! `handoff-ledger config check`, and the same checks `serve` runs before it binds: load the layered
//! configuration exactly as `serve` does, refuse keys nobody reads and values the service cannot run with
//! (each problem names the key's path), and print the effective configuration with its secrets masked.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use chrono::Utc;

use crate::config::{Config, OpeningHours, Route};
use crate::model::Backend;
use crate::outbound::clients::schedule;
use crate::redact::{self, MASK};

/// Longest answer target: a day.
pub const MAX_SLA_SECONDS: u64 = 86_400;

/// Longest timeout or deadline a limit may be set to: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Longest retention or report range, days: a hundred years.
pub const MAX_DAYS: u64 = 36_500;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `routing.teams.sales.backend`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in key order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration is not valid:")?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Loads the configuration as `serve` does (defaults, `file`, `LEDGER__*` variables) and checks it.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let figment = Config::figment(file).map_err(|e| ConfigError {
        problems: vec![Problem::new("--config", e.to_string())],
    })?;
    let mut problems = Vec::new();
    // Keys no field reads: deserialize the merged tree once more, noting what serde skips (again after
    // an unreadable value was put back, since serde stops at the first).
    let mut unknown = BTreeSet::new();
    let original = figment.extract::<figment::value::Value>().ok();
    if let Some(tree) = &original {
        note_unknown_keys(tree, &mut unknown);
    }
    let mut config = None;
    let mut refused: Vec<String> = Vec::new();
    match figment.extract::<Config>() {
        Ok(c) => config = Some(c),
        Err(errors) => {
            // A value that does not read (an unknown backend, a word for a number) is named by its key, and
            // the rest is still checked: the value is put back to its default (or its table dropped when it
            // has none) and the tree read again, so one `config check` names every problem.
            let mut tree = original.clone();
            let defaults = figment::value::Value::serialize(Config::default()).ok();
            let mut errors = Some(errors);
            for _ in 0..MAX_UNREADABLE {
                let Some(errs) = errors.take() else { break };
                let mut first = None;
                for e in errs {
                    let key = if e.path.is_empty() {
                        "(root)".to_string()
                    } else {
                        e.path.join(".")
                    };
                    let already = refused
                        .iter()
                        .any(|r| key.starts_with(r.as_str()) || r.starts_with(key.as_str()));
                    // Unknown keys are reported above with their full path.
                    if !matches!(e.kind, figment::error::Kind::UnknownField(..)) && !already {
                        let source = e
                            .metadata
                            .as_ref()
                            .map(|m| m.name.to_string())
                            .or_else(|| figment.find_metadata(&key).map(|m| m.name.to_string()))
                            .map(|name| format!(" (set in {name})"))
                            .unwrap_or_default();
                        problems.push(Problem::new(key.clone(), format!("{}{source}", e.kind)));
                        refused.push(key);
                    }
                    if first.is_none() {
                        first = Some(e.path.clone());
                    }
                }
                let (Some(tree), Some(path)) = (tree.as_mut(), first) else {
                    break;
                };
                if path.is_empty() || !reset(tree, defaults.as_ref(), &path) {
                    break;
                }
                note_unknown_keys(tree, &mut unknown);
                match tree.deserialize::<Config>() {
                    Ok(c) => config = Some(c),
                    Err(e) => errors = Some(e),
                }
            }
        }
    }
    for key in unknown {
        let source = figment
            .find_metadata(&key)
            .map(|m| format!(" (set in {})", m.name))
            .unwrap_or_default();
        problems.push(Problem::new(key, format!("unknown key{source}")));
    }
    if let Some(config) = &config {
        // A value put back to its default is not checked again under its own key.
        problems.extend(
            check(config)
                .into_iter()
                .filter(|p| !refused.iter().any(|r| p.key.starts_with(r.as_str()))),
        );
    }
    match config {
        Some(config) if problems.is_empty() && refused.is_empty() => Ok(config),
        _ => {
            problems.sort_by(|a, b| a.key.cmp(&b.key));
            Err(ConfigError { problems })
        }
    }
}

/// Adds the keys of `tree` that no field of [`Config`] reads.
fn note_unknown_keys(tree: &figment::value::Value, unknown: &mut BTreeSet<String>) {
    let _ = serde_ignored::deserialize(tree, |path| {
        unknown.insert(path.to_string());
    }) as Result<Config, _>;
}

/// Most unreadable values one check names before it gives up reading the rest.
const MAX_UNREADABLE: usize = 64;

/// Puts the value at `path` back to its default, or removes it (and so its table) when it has none.
/// False when nothing could be changed.
fn reset(tree: &mut figment::value::Value, defaults: Option<&figment::value::Value>, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let default = defaults.and_then(|d| d.find_ref(&path.join("."))).cloned();
    let mut node = tree;
    for key in parents {
        match node {
            figment::value::Value::Dict(_, dict) => match dict.get_mut(key) {
                Some(child) => node = child,
                None => return false,
            },
            _ => return false,
        }
    }
    let figment::value::Value::Dict(_, dict) = node else {
        return false;
    };
    match default {
        Some(value) => {
            dict.insert(last.clone(), value);
            true
        }
        None => dict.remove(last).is_some(),
    }
}

fn check_url(problems: &mut Vec<Problem>, key: &str, value: &str, required: bool) {
    let value = value.trim();
    if value.is_empty() {
        if required {
            problems.push(Problem::new(key, "must be set"));
        }
        return;
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        problems.push(Problem::new(key, "is not a URL (expected http://... or https://...)"));
        return;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.starts_with('/') {
        problems.push(Problem::new(
            key,
            format!(
                "`{}` is not an http(s) URL with a host",
                redact::mask_url_passwords(value)
            ),
        ));
    }
}

fn check_bind(problems: &mut Vec<Problem>, key: &str, value: &str) {
    let ok = value.parse::<std::net::SocketAddr>().is_ok()
        || value
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        problems.push(Problem::new(
            key,
            format!("`{value}` is not an address to listen on (HOST:PORT, e.g. 127.0.0.1:8080)"),
        ));
    }
}

fn check_range(problems: &mut Vec<Problem>, key: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        problems.push(Problem::new(key, format!("{value} is out of range ({min} to {max})")));
    }
}

fn check_hours(problems: &mut Vec<Problem>, key: &str, hours: &OpeningHours) {
    // Every day and range is validated whatever the time, so any instant will do.
    if let Err(e) = schedule::is_open(hours, Utc::now()) {
        problems.push(Problem::new(key, e));
    }
}

fn check_route(problems: &mut Vec<Problem>, key: &str, route: &Route, config: &Config) {
    // An unknown backend name is refused when the configuration is read (see `load`).
    match route.backend {
        Backend::AivoLive => {
            if config.aivo_live.bot_token.is_empty() || config.aivo_live.base_url.trim().is_empty() {
                problems.push(Problem::new(
                    format!("{key}.backend"),
                    "routes to aivo_live, which has no credentials: set aivo_live.base_url and aivo_live.bot_token",
                ));
            }
        }
        Backend::BrightPattern => {
            if config.bright_pattern.base_url.trim().is_empty() {
                problems.push(Problem::new(
                    format!("{key}.backend"),
                    "routes to bright_pattern, which has no credentials: set bright_pattern.base_url (and \
                     tenant_url, app_id, client_id)",
                ));
            }
        }
    }
    if let Some(hours) = &route.hours {
        check_hours(problems, &format!("{key}.hours"), hours);
    }
}

/// The values the service cannot run with, each with its key's path.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let server = &config.server;
    check_bind(&mut p, "server.bind", &server.bind);
    if !server.metrics_bind.trim().is_empty() {
        check_bind(&mut p, "server.metrics_bind", &server.metrics_bind);
        if server.metrics_bind.trim() == server.bind.trim() {
            p.push(Problem::new("server.metrics_bind", "must differ from server.bind"));
        }
    }
    check_range(
        &mut p,
        "server.max_body_bytes",
        server.max_body_bytes as u64,
        1,
        1 << 30,
    );
    check_range(&mut p, "server.max_batch", server.max_batch as u64, 1, 100_000);
    // A host name is resolved at bind time, where the same rule is enforced on the bound address.
    let public_bind = server
        .bind
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| !a.ip().is_loopback());
    if config.auth.allow_anonymous && public_bind {
        p.push(Problem::new(
            "auth.allow_anonymous",
            format!(
                "refused: server.bind {} is not a loopback address; use API keys (handoff-ledger keys create) \
                 or bind to 127.0.0.1",
                server.bind
            ),
        ));
    }
    check_range(
        &mut p,
        "server.shutdown_grace_seconds",
        server.shutdown_grace_seconds,
        1,
        3600,
    );
    // Resource limits: none may be switched off by a zero (except where 0 is documented as "off"), and
    // none may be so large that it bounds nothing.
    check_range(
        &mut p,
        "server.head_timeout_ms",
        server.head_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    );
    check_range(
        &mut p,
        "server.body_timeout_ms",
        server.body_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    );
    check_range(&mut p, "server.keep_alive_seconds", server.keep_alive_seconds, 0, 3600);
    check_range(
        &mut p,
        "server.max_connections",
        server.max_connections as u64,
        1,
        1_000_000,
    );
    check_range(&mut p, "server.workers", server.workers as u64, 0, 1024);
    check_range(
        &mut p,
        "server.commit_deadline_ms",
        server.commit_deadline_ms,
        1,
        MAX_TIMEOUT_MS,
    );
    check_range(
        &mut p,
        "server.max_answer_bytes",
        server.max_answer_bytes as u64,
        1,
        1 << 30,
    );
    check_range(
        &mut p,
        "server.max_report_days",
        server.max_report_days.into(),
        1,
        MAX_DAYS,
    );

    let url = config.store.url.trim();
    if !(url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        p.push(Problem::new(
            "store.url",
            format!(
                "`{}` names no supported store (use sqlite://PATH or postgres://...)",
                redact::mask_url_passwords(url)
            ),
        ));
    }
    check_range(
        &mut p,
        "store.max_connections",
        config.store.max_connections.into(),
        1,
        1000,
    );
    check_range(
        &mut p,
        "store.read_timeout_ms",
        config.store.read_timeout_ms,
        0,
        MAX_TIMEOUT_MS,
    );
    let retention = &config.retention;
    check_range(
        &mut p,
        "retention.quarantine_days",
        retention.quarantine_days,
        0,
        MAX_DAYS,
    );
    check_range(
        &mut p,
        "retention.quarantine_max_entries",
        retention.quarantine_max_entries,
        0,
        100_000_000,
    );
    check_range(
        &mut p,
        "retention.quarantine_body_bytes",
        retention.quarantine_body_bytes as u64,
        1,
        16 << 20,
    );
    check_range(
        &mut p,
        "retention.erase_closed_after_days",
        retention.erase_closed_after_days,
        0,
        MAX_DAYS,
    );

    check_range(
        &mut p,
        "sla.answer_seconds",
        config.sla.answer_seconds,
        1,
        MAX_SLA_SECONDS,
    );
    check_range(
        &mut p,
        "sla.short_abandon_seconds",
        config.sla.short_abandon_seconds,
        0,
        MAX_SLA_SECONDS,
    );
    for (queue, target) in &config.sla.queues {
        check_range(&mut p, &format!("sla.queues.\"{queue}\""), *target, 1, MAX_SLA_SECONDS);
    }

    check_url(&mut p, "aivo_live.base_url", &config.aivo_live.base_url, false);
    check_range(
        &mut p,
        "aivo_live.timeout_seconds",
        config.aivo_live.timeout_seconds,
        1,
        600,
    );
    check_url(&mut p, "ultimate.api_url", &config.ultimate.api_url, false);
    check_range(
        &mut p,
        "ultimate.timeout_seconds",
        config.ultimate.timeout_seconds,
        1,
        600,
    );
    check_range(
        &mut p,
        "ultimate.escalate_deadline_seconds",
        config.ultimate.escalate_deadline_seconds,
        1,
        600,
    );
    check_url(
        &mut p,
        "bright_pattern.base_url",
        &config.bright_pattern.base_url,
        false,
    );
    check_range(
        &mut p,
        "bright_pattern.timeout_seconds",
        config.bright_pattern.timeout_seconds,
        1,
        600,
    );
    check_range(
        &mut p,
        "bright_pattern.poll_timeout_seconds",
        config.bright_pattern.poll_timeout_seconds,
        1,
        600,
    );
    if !config.vcc.encryption_key.is_empty() {
        if let Err(e) = crate::sources::vcc_crypto::VccKey::from_hex(config.vcc.encryption_key.expose()) {
            p.push(Problem::new("vcc.encryption_key", e));
        }
    }
    check_url(&mut p, "clickhouse.url", &config.clickhouse.url, false);
    check_range(
        &mut p,
        "clickhouse.connect_timeout_ms",
        config.clickhouse.connect_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    );
    check_range(
        &mut p,
        "clickhouse.query_timeout_ms",
        config.clickhouse.query_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    );
    if !config.clickhouse.url.trim().is_empty() && config.clickhouse.database.trim().is_empty() {
        p.push(Problem::new(
            "clickhouse.database",
            "must be set when clickhouse.url is",
        ));
    }

    if let Some(route) = &config.routing.default {
        check_route(&mut p, "routing.default", route, config);
    }
    for (team, route) in &config.routing.teams {
        check_route(&mut p, &format!("routing.teams.{team}"), route, config);
    }

    check_range(&mut p, "outbox.max_attempts", config.outbox.max_attempts.into(), 1, 100);
    check_range(
        &mut p,
        "outbox.max_response_bytes",
        config.outbox.max_response_bytes as u64,
        1024,
        64 << 20,
    );
    if config.outbox.initial_backoff_ms > config.outbox.max_backoff_ms {
        p.push(Problem::new(
            "outbox.initial_backoff_ms",
            format!(
                "{} is more than outbox.max_backoff_ms ({})",
                config.outbox.initial_backoff_ms, config.outbox.max_backoff_ms
            ),
        ));
    }

    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        p.push(Problem::new(
            "log.level",
            format!(
                "`{}` is not a log filter (e.g. info, debug, info,sqlx=warn): {e}",
                config.log.level
            ),
        ));
    }
    p
}

/// Whether a key holds a secret (its values are masked when printed and scrubbed from logs).
fn is_secret_key(key: &str) -> bool {
    key.ends_with("token")
        || key.ends_with("_key")
        || key.ends_with("password")
        || key.ends_with("secret")
        || key == "tokens"
}

fn walk_secrets(value: &toml::Value, secret: bool, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if secret => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| walk_secrets(v, secret, out)),
        toml::Value::Table(table) => {
            for (k, v) in table {
                walk_secrets(v, secret || is_secret_key(k), out);
            }
        }
        _ => {}
    }
}

fn mask(value: &mut toml::Value, secret: bool) {
    match value {
        toml::Value::String(s) if secret && !s.is_empty() => *s = MASK.to_string(),
        toml::Value::String(s) if secret => {}
        toml::Value::String(s) => {
            let masked = redact::mask_url_passwords(s).into_owned();
            *s = masked;
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| mask(v, secret)),
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let secret = secret || is_secret_key(k);
                mask(v, secret);
            }
        }
        _ => {}
    }
}

fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = &authority[..authority.rfind('@')?];
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_string())
}

/// Every secret value the configuration holds (tokens, keys, passwords, passwords inside URLs), for the
/// log scrubber.
pub fn secrets(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(tree) = toml::Value::try_from(config) {
        walk_secrets(&tree, false, &mut out);
    }
    for url in [&config.store.url, &config.clickhouse.url] {
        out.extend(url_password(url));
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The effective configuration as TOML, secrets masked (`***`; an unset secret stays `""`, so that the
/// output also says which ones are set).
pub fn effective_toml(config: &Config) -> anyhow::Result<String> {
    let mut tree = toml::Value::try_from(config)?;
    mask(&mut tree, false);
    Ok(toml::to_string_pretty(&tree)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use std::collections::BTreeMap;

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn the_defaults_pass() {
        assert_eq!(check(&Config::default()), Vec::new());
    }

    #[test]
    fn impossible_values_are_named_by_their_key() {
        let mut c = Config::default();
        c.server.bind = "nowhere".into();
        c.store.url = "mysql://u:hunter22@h/db".into();
        c.sla.answer_seconds = 0;
        c.sla.queues.insert("2179".into(), 90_000);
        c.outbox.initial_backoff_ms = 5000;
        c.outbox.max_backoff_ms = 100;
        c.log.level = "info,sqlx=loud".into();
        c.routing.teams.insert(
            "support".into(),
            Route {
                backend: Backend::BrightPattern,
                groups: vec![],
                hours: Some(OpeningHours {
                    timezone: "Mars/Olympus".into(),
                    days: BTreeMap::new(),
                }),
            },
        );
        let problems = check(&c);
        assert_eq!(
            keys(&problems),
            vec![
                "server.bind",
                "store.url",
                "sla.answer_seconds",
                "sla.queues.\"2179\"",
                "routing.teams.support.backend",
                "routing.teams.support.hours",
                "outbox.initial_backoff_ms",
                "log.level",
            ]
        );
        let text: Vec<String> = problems.iter().map(Problem::to_string).collect();
        assert!(text[1].contains("mysql://u:***@h/db"), "{}", text[1]);
        assert!(!text.join("\n").contains("hunter22"));
        assert!(text[4].contains("no credentials"), "{}", text[4]);
        assert!(text[5].contains("Mars/Olympus"), "{}", text[5]);
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn an_unknown_backend_is_refused_at_load_by_its_key_and_the_rest_is_still_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ledger.toml",
                r#"
                [sla]
                answer_seconds = 0
                [routing.teams.sales]
                backend = "aivo"
                [routing.teams.support]
                backend = "bright_pattern"
                "#,
            )?;
            jail.set_env("LEDGER__SERVER__MAX_BATCH", "many");
            let err = load(Some(Path::new("ledger.toml"))).expect_err("an unknown backend is refused");
            assert_eq!(
                keys(&err.problems),
                vec![
                    "routing.teams.sales.backend",
                    "routing.teams.support.backend",
                    "server.max_batch",
                    "sla.answer_seconds",
                ]
            );
            let text: Vec<String> = err.problems.iter().map(Problem::to_string).collect();
            assert!(text[0].contains("unknown backend `aivo`"), "{}", text[0]);
            assert!(text[0].contains("expected aivo_live or bright_pattern"), "{}", text[0]);
            assert!(text[1].contains("no credentials"), "{}", text[1]);
            // `Config::load`, which `serve` and the tests use, refuses the name too, naming the key.
            let loaded = Config::load(Some(Path::new("ledger.toml"))).expect_err("refused");
            assert!(loaded.to_string().contains("routing.teams.sales.backend"), "{loaded}");
            Ok(())
        });
    }

    #[test]
    fn every_limit_refuses_zero_and_absurd_values() {
        let mut c = Config::default();
        c.server.head_timeout_ms = 0;
        c.server.body_timeout_ms = 0;
        c.server.max_connections = 0;
        c.server.commit_deadline_ms = 0;
        c.server.max_answer_bytes = 0;
        c.server.max_report_days = 0;
        c.retention.quarantine_body_bytes = 0;
        c.clickhouse.connect_timeout_ms = 0;
        c.clickhouse.query_timeout_ms = 0;
        c.outbox.max_response_bytes = 0;
        let zero = vec![
            "server.head_timeout_ms",
            "server.body_timeout_ms",
            "server.max_connections",
            "server.commit_deadline_ms",
            "server.max_answer_bytes",
            "server.max_report_days",
            "retention.quarantine_body_bytes",
            "clickhouse.connect_timeout_ms",
            "clickhouse.query_timeout_ms",
            "outbox.max_response_bytes",
        ];
        let problems = check(&c);
        assert_eq!(keys(&problems), zero);
        assert!(
            problems.iter().all(|p| p.message.starts_with("0 is out of range")),
            "{problems:?}"
        );

        let mut c = Config::default();
        c.server.head_timeout_ms = u64::MAX;
        c.server.keep_alive_seconds = 86_400;
        c.server.workers = 100_000;
        c.store.read_timeout_ms = 10 * MAX_TIMEOUT_MS;
        c.retention.quarantine_days = 1_000_000;
        c.retention.quarantine_max_entries = u64::MAX;
        c.retention.quarantine_body_bytes = 1 << 30;
        c.retention.erase_closed_after_days = 1_000_000;
        c.outbox.max_response_bytes = 1 << 30;
        let problems = check(&c);
        assert_eq!(
            keys(&problems),
            vec![
                "server.head_timeout_ms",
                "server.keep_alive_seconds",
                "server.workers",
                "store.read_timeout_ms",
                "retention.quarantine_days",
                "retention.quarantine_max_entries",
                "retention.quarantine_body_bytes",
                "retention.erase_closed_after_days",
                "outbox.max_response_bytes",
            ]
        );
        // 0 where it means "off" is fine.
        let mut c = Config::default();
        c.server.keep_alive_seconds = 0;
        c.server.workers = 0;
        c.store.read_timeout_ms = 0;
        c.retention.quarantine_days = 0;
        c.retention.quarantine_max_entries = 0;
        assert_eq!(check(&c), Vec::new());
    }

    #[test]
    fn allow_anonymous_is_refused_on_a_non_loopback_bind() {
        let mut c = Config::default();
        c.auth.allow_anonymous = true;
        assert_eq!(check(&c), Vec::new(), "loopback: the local trial");
        c.server.bind = "[::1]:8080".into();
        assert_eq!(check(&c), Vec::new());
        for bind in ["0.0.0.0:8080", "10.1.2.3:80", "[::]:8080"] {
            c.server.bind = bind.into();
            let problems = check(&c);
            assert_eq!(keys(&problems), vec!["auth.allow_anonymous"], "{bind}");
            assert!(
                problems[0].message.contains("not a loopback address"),
                "{}",
                problems[0]
            );
        }
        c.auth.allow_anonymous = false;
        assert_eq!(check(&c), Vec::new(), "keys decide at start");
    }

    #[test]
    fn bad_opening_hours_are_refused() {
        let mut c = Config::default();
        c.aivo_live.bot_token = "t0ken-value".into();
        c.routing.default = Some(Route {
            backend: Backend::AivoLive,
            groups: vec![2179],
            hours: Some(OpeningHours {
                timezone: "Europe/Madrid".into(),
                days: BTreeMap::from([("mon".to_string(), vec!["18:00-09:00".to_string()])]),
            }),
        });
        let problems = check(&c);
        assert_eq!(keys(&problems), vec!["routing.default.hours"]);
        assert!(problems[0].message.contains("ends before it starts"));
    }

    #[test]
    fn secrets_are_masked_and_listed() {
        let mut c = Config::default();
        c.aivo_live.bot_token = "aivo-bot-token".into();
        c.ultimate.api_key = "ultimate-api-key".into();
        c.vcc.secret_key = "vcc-secret".into();
        c.clickhouse.password = "ch-password".into();
        c.store.url = "postgres://ledger:pg-password@db/ledger".into();
        let printed = effective_toml(&c).unwrap();
        for secret in [
            "aivo-bot-token",
            "ultimate-api-key",
            "vcc-secret",
            "ch-password",
            "pg-password",
        ] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(printed.contains("bot_token = \"***\""), "{printed}");
        assert!(
            printed.contains("webhook_token = []"),
            "unset secrets stay empty: {printed}"
        );
        assert!(printed.contains("api_key = \"***\""), "{printed}");
        assert!(printed.contains("secret_key = [\"***\"]"), "{printed}");
        assert!(printed.contains("postgres://ledger:***@db/ledger"), "{printed}");
        assert!(printed.contains("bind = \"127.0.0.1:8080\""), "{printed}");
        let listed = secrets(&c);
        for secret in [
            "aivo-bot-token",
            "ultimate-api-key",
            "vcc-secret",
            "ch-password",
            "pg-password",
        ] {
            assert!(listed.iter().any(|s| s == secret), "{secret} not listed: {listed:?}");
        }
    }
}
