//! The ClickHouse schema: versioned SQL files under `migrations/clickhouse/`, compiled in, applied in order,
//! each version recorded in `schema_migrations`. Statements are idempotent (`IF NOT EXISTS`), so a migration
//! interrupted half way is simply applied again.

use clickhouse::Row;
use serde::Deserialize;

use super::{client_for, Analytics, AnalyticsError, AnalyticsResult};
use crate::config::ClickHouseConfig;

/// One migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migration {
    /// Version (the file's numeric prefix).
    pub version: u32,
    /// File name.
    pub name: &'static str,
    /// Its SQL text.
    pub sql: &'static str,
}

/// Every migration, in order. A test checks this list against the directory.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_facts.sql",
        sql: include_str!("../../migrations/clickhouse/0001_facts.sql"),
    },
    Migration {
        version: 2,
        name: "0002_rollups.sql",
        sql: include_str!("../../migrations/clickhouse/0002_rollups.sql"),
    },
];

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version UInt32, name String, applied_at DateTime('UTC')) \
     ENGINE = ReplacingMergeTree() ORDER BY version";

/// Splits a migration file into statements: drops `--` comment lines, splits on `;` (the HTTP interface
/// takes one statement per request). The files contain no `;` inside literals.
pub(crate) fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Row, Deserialize)]
struct VersionRow {
    version: u32,
}

/// Creates the database when missing and applies every migration not yet recorded. Returns the handle and
/// the versions applied by this call.
pub async fn migrate_reporting(config: &ClickHouseConfig) -> AnalyticsResult<(Analytics, Vec<u32>)> {
    let server = client_for(config);
    server
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_identifier(&config.database)
        ))
        .execute()
        .await?;
    let analytics = Analytics::new(config);
    let client = analytics.client();
    client.query(CREATE_MIGRATIONS_TABLE).execute().await?;
    let done: Vec<u32> = client
        .query("SELECT DISTINCT version FROM schema_migrations")
        .fetch_all::<VersionRow>()
        .await?
        .into_iter()
        .map(|r| r.version)
        .collect();
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        for statement in statements(migration.sql) {
            client
                .query(&escape_placeholders(&statement))
                .execute()
                .await
                .map_err(|source| AnalyticsError::Migration {
                    version: migration.version,
                    name: migration.name,
                    source,
                })?;
        }
        client
            .query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, now())")
            .bind(migration.version)
            .bind(migration.name)
            .execute()
            .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "clickhouse migration applied"
        );
        applied.push(migration.version);
    }
    Ok((analytics, applied))
}

/// Creates the database when missing and applies every pending migration.
pub async fn migrate(config: &ClickHouseConfig) -> AnalyticsResult<Analytics> {
    Ok(migrate_reporting(config).await?.0)
}

/// Back-quotes an identifier (database names come from configuration).
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// The client treats `?` as a bind placeholder; SQL text run verbatim must double it.
pub(crate) fn escape_placeholders(sql: &str) -> String {
    sql.replace('?', "??")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_the_directory_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn statements_drop_comments_and_split() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n\n-- b\nSELECT 1;\n";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE TABLE a (x UInt8) ENGINE = Memory".to_string(),
                "SELECT 1".to_string()
            ]
        );
    }

    #[test]
    fn schema_avoids_what_18_16_lacks() {
        for m in MIGRATIONS {
            let upper = statements(m.sql).join(";").to_uppercase();
            for banned in [
                "DATETIME64",
                "LOWCARDINALITY",
                "MAP(",
                " TTL ",
                "OVER (",
                "MATERIALIZED VIEW",
                "JSON",
            ] {
                assert!(!upper.contains(banned), "{} uses {banned}", m.name);
            }
            assert!(statements(m.sql).len() >= 2);
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("handoff"), "`handoff`");
        assert_eq!(quote_identifier("a`b"), "`a\\`b`");
    }
}
